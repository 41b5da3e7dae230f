"""Configuration of `afsfuse mount`: defaults, a TOML file, command-line overrides.

The file takes the command line's long option names as keys (`cache-size` or
`cache_size`), e.g.

    thiscell = "example.com"
    cache-dir = "/var/cache/afsfuse"
    cache-size = "4G"
    sysname = ["amd64_linux26", "amd64_linux"]
    security = "crypt"
    dns-server = ["192.0.2.53:53"]   # cell lookups ask these, not the system resolver
    dead-time = 12                   # a fileserver silent this long is given up
    server-timeout = 120             # bound on one operation over every site: ETIMEDOUT
    rmtsys = "127.0.0.1:7009"        # where OpenAFS's tools reach the mount; false: nowhere
    rmtsys-allow = ["192.0.2.0/24"]  # other hosts whose tools may use it (default: none)
    metrics-listen = "127.0.0.1:9731"  # Prometheus scrapes GET /metrics here (default: off)

Below the file come the files other AFS clients leave (clientfiles.py), and the lowest
layer wins least: built-in defaults, kAFS's client.conf, OpenAFS's files (ThisCell,
afs.conf.client, cacheinfo), afsfuse.toml, the command line.  OpenAFS's files go over kAFS's
because a machine that has both most likely ran OpenAFS's afsd, whose files an
administrator edits; afsfuse's own settings go over both.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from afsfuse.cache.store import parse_size
from afsfuse.clientfiles import (
    FileError,
    Found,
    parse_afs_conf_client,
    parse_cacheinfo,
    read_kafs_config,
    read_text,
)
from afsfuse.fs.sysname import check_sysnames, default_sysname
from afsfuse.rx.connection import DEFAULT_DEAD_TIME
from afsfuse.rx.rxkad import LEVELS_BY_NAME
from afsfuse.vl import cellservdb

DEFAULT_CONFIG = Path("/etc/afsfuse/afsfuse.toml")
DEFAULT_MOUNTPOINT = Path("/afs")
DEFAULT_OPENAFS_DIR = cellservdb.CONFIG_DIR
DEFAULT_KAFS_CONFIG = Path("/etc/kafs/client.conf")
#: Where the rmtsys service listens unless told otherwise (OpenAFS's tools send to 7009).
RMTSYS_ADDRESS = ("127.0.0.1", 7009)
DEFAULT_CACHE_SIZE = 1 << 30
#: The port OpenAFS cache managers use for callbacks; root's mount takes it when free.
CALLBACK_PORT = 7001
SECURITY_LEVELS = tuple(LEVELS_BY_NAME)

#: Used when neither --cellservdb nor /etc/openafs/CellServDB exists; other cells are
#: found through DNS.
BUILTIN_CELLSERVDB = """\
>grand.central.org      #GCO Public CellServDB
18.9.48.14                      #grand.mit.edu
128.2.13.219                    #grand-old-opry.central.org
"""


class ConfigError(ValueError):
    """The configuration cannot be used; the message says why."""


@dataclass
class MountConfig:
    mountpoint: Path = DEFAULT_MOUNTPOINT
    #: Where OpenAFS's client files are (afsd's -confdir), and kAFS's client.conf.
    openafs_dir: Path = field(default_factory=lambda: DEFAULT_OPENAFS_DIR)
    kafs_config: Path = field(default_factory=lambda: DEFAULT_KAFS_CONFIG)
    cellservdb: Path | None = None
    thiscell: str | None = None
    cache_dir: Path | None = None
    cache_size: int = DEFAULT_CACHE_SIZE
    #: None: 7001 for root when free, else any free port.
    port: int | None = None
    sysname: list[bytes] = field(default_factory=lambda: [default_sysname()])
    security: str = "crypt"
    foreground: bool = False
    #: FUSE requests served at once (each may wait on the network).
    max_tasks: int = 256
    log_file: Path | None = None
    debug: bool = False
    #: Nameservers (address, port) asked for cells missing from CellServDB; None: the system's.
    dns_server: list[tuple[str, int]] | None = None
    #: Seconds of silence after which a fileserver or VL call is given up and the server
    #: marked down, so rotation moves on to another site.
    dead_time: float = DEFAULT_DEAD_TIME
    #: How long a request waits for fileservers (every site, read-ahead it needs included),
    #: counted from its start or from their last answer to it; past it, ETIMEDOUT.
    server_timeout: float = 120.0
    #: Seconds between tries to store data whose store failed (doubling while it fails).
    store_retry: float = 30.0
    #: The afs.* extended attributes.  Off, getxattr answers ENOSYS once and the kernel
    #: asks no more: `ls -l` stops asking two per file and each write(2) one, at ~50 us each.
    xattrs: bool = True
    #: Cells no file lists are looked up in DNS (AFSDB, SRV), as OpenAFS's afsd -afsdb.
    dns: bool = True
    #: Where Prometheus may scrape GET /metrics: (address, port), or a unix socket's path.
    #: None: nowhere (`afsfuse-ctl metrics` still shows the same text).
    metrics_listen: tuple[str, int] | Path | None = None
    #: The other clients' files read, lowest first, and where each setting came from.
    found: list[Found] = field(default_factory=list, compare=False, repr=False)
    origins: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    #: Where the rmtsys service listens (OpenAFS's fs, tokens, aklog, unlog); None: off.
    #: Root's mount listens on 127.0.0.1:7009 unless told otherwise; a user's mount only
    #: where told: whoever holds the port receives the tokens the tools hand over.
    rmtsys: tuple[str, int] | None = field(
        default_factory=lambda: RMTSYS_ADDRESS if os.geteuid() == 0 else None
    )
    #: Networks of other hosts whose rmtsys requests are served (loopback always is).
    rmtsys_allow: list[ipaddress.IPv4Network] = field(default_factory=list)

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir
        if os.geteuid() == 0:
            return Path("/var/cache/afsfuse")
        base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        return Path(base) / "afsfuse"


_KEYS = {f.name for f in fields(MountConfig)} - {"found", "origins"}


def _convert(key: str, value: Any) -> Any:
    if value is None:
        return None
    if key in ("mountpoint", "openafs_dir", "kafs_config", "cellservdb", "cache_dir", "log_file"):
        return Path(str(value))
    if key == "cache_size":
        return value if isinstance(value, int) else parse_size(str(value))
    if key in ("port", "max_tasks"):
        number = int(value)
        if not 0 <= number < 65536 and key == "port":
            raise ValueError(f"port out of range: {number}")
        return number
    if key == "rmtsys":
        if value is False:
            return False
        if not isinstance(value, str):
            raise ValueError('"ADDRESS[:PORT]", or false to turn it off')
        return _host_port(value, RMTSYS_ADDRESS[1])
    if key == "rmtsys_allow":
        texts = [value] if isinstance(value, str) else list(value)
        return [ipaddress.IPv4Network(str(text), strict=False) for text in texts]
    if key == "dns_server":
        texts = [value] if isinstance(value, str) else list(value)
        return [_host_port(str(text)) for text in texts]
    if key in ("dead_time", "server_timeout", "store_retry"):
        seconds = float(value)
        if not 0 < seconds < 86400:
            raise ValueError(f"out of range: {seconds:g}")
        return seconds
    if key == "metrics_listen":
        return _listen_address(str(value))
    if key == "sysname":
        names = [value] if isinstance(value, str) else list(value)
        return list(check_sysnames([os.fsencode(n) for n in names]))
    if key == "security":
        if value not in SECURITY_LEVELS:
            raise ValueError(f"security is one of {', '.join(SECURITY_LEVELS)}")
        return value
    if key in ("foreground", "debug", "xattrs", "dns"):
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value
    return str(value)


def _host_port(text: str, default_port: int = 53) -> tuple[str, int]:
    """`ADDRESS[:PORT]` (default_port when absent), the address an IPv4 literal."""
    host, _, port_text = text.partition(":")
    try:
        ipaddress.IPv4Address(host)
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise ValueError(f"not ADDRESS[:PORT]: {text!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"port out of range: {text!r}")
    return host, port


def _listen_address(text: str) -> tuple[str, int] | Path:
    """`ADDRESS:PORT` (an IPv4 address, or localhost) or the absolute path of a unix socket."""
    if text.startswith("/"):
        return Path(text)
    host, sep, port_text = text.rpartition(":")
    try:
        if host != "localhost":
            ipaddress.IPv4Address(host)
        port = int(port_text)
    except ValueError:
        raise ValueError(f"not ADDRESS:PORT or /PATH: {text!r}") from None
    if not sep or not 0 < port < 65536:
        raise ValueError(f"not ADDRESS:PORT or /PATH: {text!r}")
    return host, port


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            raw = tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: {e}") from None
    return {key.replace("-", "_"): value for key, value in raw.items()}


def build_config(
    mountpoint: str | os.PathLike[str] | None,
    file_values: dict[str, Any],
    options: dict[str, Any],
    found: list[Found] | None = None,
) -> MountConfig:
    """Defaults, then what the other clients' files give (lowest first), then the settings
    file, then the command line (None: not given)."""
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    given = {k: v for k, v in options.items() if v is not None}
    if mountpoint is not None:
        given["mountpoint"] = mountpoint
    layers = [
        *((f.settings, f.where) for f in found or ()),
        (file_values, dict.fromkeys(file_values, "the settings file")),
        (given, dict.fromkeys(given, "the command line")),
    ]
    for settings, where in layers:
        values.update(settings)
        origins.update(where)
    unknown = set(values) - _KEYS
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    converted = {}
    for key, value in values.items():
        try:
            converted[key] = _convert(key, value)
        except ValueError as e:
            prefix = f"{origins[key]}: " if ":" in origins[key] else ""
            raise ConfigError(f"{prefix}{key.replace('_', '-')}: {e}") from None
    kept = {k: v for k, v in converted.items() if v is not None}
    if kept.get("rmtsys") is False:
        kept["rmtsys"] = None
    config = MountConfig(**kept)
    config.found, config.origins = list(found or ()), origins
    return config


def read_client_files(file_values: dict[str, Any], options: dict[str, Any]) -> list[Found]:
    """The other clients' files, lowest first, from the directories the settings file or
    the command line name.  cacheinfo is root's only: it describes the machine's /afs (as
    for afsd, which only root runs), never an ordinary user's own mount."""
    named = {**file_values, **{k: v for k, v in options.items() if v is not None}}
    openafs = Path(named.get("openafs_dir", DEFAULT_OPENAFS_DIR))
    kafs = Path(named.get("kafs_config", DEFAULT_KAFS_CONFIG))
    found = []
    try:
        if _present(kafs):
            found.append(read_kafs_config(kafs))
        this_cell = openafs / "ThisCell"
        if _present(this_cell):
            found.append(Found(this_cell))
            name = cellservdb.parse_thiscell(read_text(this_cell))
            if name:
                found[-1].give("thiscell", name, this_cell, 1)
        conf = openafs / "afs.conf.client"
        if _present(conf):
            found.append(parse_afs_conf_client(read_text(conf), conf))
        cacheinfo = openafs / "cacheinfo"
        if os.geteuid() == 0 and _present(cacheinfo):
            found.append(parse_cacheinfo(read_text(cacheinfo), cacheinfo))
    except FileError as e:
        raise ConfigError(str(e)) from None
    return found


def _present(path: Path) -> bool:
    """Whether to read path: it exists, or cannot be looked at (the read then says why)."""
    try:
        return path.exists()
    except PermissionError:
        return True


#: CellServDB entries, the home cell and the cell aliases.
Cells = tuple[dict[str, cellservdb.CellEntry], str, dict[str, str]]


def cellservdb_files(config: MountConfig) -> list[Path]:
    """The CellServDB files to read, a later one's cells over an earlier one's.

    The cellservdb setting alone when given.  Otherwise CellServDB, or where it is missing
    CellServDB.dist (the cells as OpenAFS distributes them), then CellServDB.local (the
    site's own cells) over either, as OpenAFS's init scripts merge them.
    """
    if config.cellservdb is not None:
        return [config.cellservdb]
    directory = config.openafs_dir
    base = next(
        (path for path in (directory / "CellServDB", directory / "CellServDB.dist")
         if path.exists()),
        None,
    )  # fmt: skip
    local = directory / "CellServDB.local"
    return [path for path in (base, local) if path is not None and path.exists()]


def kafs_cells(config: MountConfig) -> Found | None:
    """kAFS's client.conf, when it was read, gave cells and no cellservdb setting says
    that file alone."""
    if config.cellservdb is not None:
        return None
    return next((f for f in config.found if f.cells), None)


def load_cells(config: MountConfig) -> Cells:
    """Cells, the home cell and cell aliases as the configuration selects them: kAFS's cells,
    then the CellServDB files' over them (or the built-in CellServDB when there are none);
    CellAlias is the one beside the (last) CellServDB read."""
    files = cellservdb_files(config)
    kafs = kafs_cells(config)
    cells: dict[str, cellservdb.CellEntry] = dict(kafs.cells) if kafs else {}
    origin: dict[str, Path] = dict.fromkeys(cells, kafs.path) if kafs else {}
    for path in files:
        try:
            read = cellservdb.read_cellservdb(path)
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror}") from None
        except cellservdb.CellServDBError as e:
            raise ConfigError(str(e)) from None
        cells.update(read)
        origin.update(dict.fromkeys(read, path))
    if not cells:
        cells = cellservdb.parse_cellservdb(BUILTIN_CELLSERVDB, "built-in CellServDB")
    this_cell = config.thiscell
    if not this_cell:
        raise ConfigError(
            f"no home cell: give --thiscell or write {config.openafs_dir / 'ThisCell'}"
        )
    if origin:
        # Without any file's cells the home cell may still come from DNS.
        read_from = ([kafs.path] if kafs else []) + files
        named = origin.get(cellservdb.cell_key(this_cell)) or Path(
            " and ".join(map(str, read_from))
        )
        where = config.origins.get("thiscell", "")
        named_by = where if ":" in where else "the thiscell setting"
        _check_home_cell(named, cells, this_cell, named_by)
    alias_file = (files[-1].parent if files else config.openafs_dir) / "CellAlias"
    aliases = {}
    if alias_file.exists():
        try:
            aliases = cellservdb.read_cellalias(alias_file)
        except OSError as e:
            raise ConfigError(f"cannot read {alias_file}: {e.strerror}") from None
    return cells, this_cell.strip().lower(), aliases


def _check_home_cell(
    path: Path, cells: dict[str, cellservdb.CellEntry], this_cell: str, named_by: str
) -> None:
    """A CellServDB without the home cell mounts a tree where the home cell is simply
    missing: refuse it, saying which file lacks what."""
    home = cells.get(cellservdb.cell_key(this_cell))
    if home is None:
        raise ConfigError(f"{path}: no entry for the home cell {this_cell} (from {named_by})")
    if not home.servers:
        raise ConfigError(f"{path}:{home.line}: home cell {this_cell} has no usable server line")
