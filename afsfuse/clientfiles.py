"""The files other AFS clients leave on a machine, read as data: OpenAFS's `cacheinfo` and
Debian's `afs.conf.client`, kAFS's `client.conf` (with what it includes).

A site moving to afsfuse keeps the files it has; config.py layers what they give below
afsfuse.toml and the command line.  Nothing here runs a shell: `afs.conf.client` is shell
syntax, but only `KEY=value` lines are taken, and a line that is anything else (a command,
an expansion) is refused rather than guessed at.  Every refusal is a FileError whose one
line names the file and the line.  What a file gives is a Found: settings under afsfuse's
own names, the line each came from, the keys read and not followed, and (kAFS) cells.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from afsfuse.vl.cellservdb import CellEntry, CellServer, cell_key, not_text

log = logging.getLogger(__name__)


class FileError(ValueError):
    """A file that cannot be used; the message is `PATH[:LINE]: what is wrong`."""


@dataclass
class Found:
    """What one file gave."""

    path: Path
    #: afsfuse setting -> value, and where it came from (`PATH:LINE`).
    settings: dict[str, Any] = field(default_factory=dict)
    where: dict[str, str] = field(default_factory=dict)
    #: What the file says that afsfuse reads but does not follow (`AFS_DYNROOT=Sparse`).
    ignored: list[str] = field(default_factory=list)
    #: kAFS: the cells, and every file the configuration took in.
    cells: dict[str, CellEntry] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    def give(self, key: str, value: Any, path: Path, line: int) -> None:
        self.settings[key] = value
        self.where[key] = f"{path}:{line}"


def read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise FileError(f"cannot read {path}: {e.strerror}") from None
    why = not_text(data)
    if why is not None:
        raise FileError(f"{path}:{why}")
    return data.decode("utf-8", errors="replace")


# -- OpenAFS: cacheinfo ------------------------------------------------------------------------


#: What OpenAFS's afsd keeps in its cache directory: its index files, the V<n> chunk files
#: and (with -files_per_subdir) the D<n> directories holding them.
_AFSD_CACHE = re.compile(r"CacheItems|VolumeItems|CellItems|[VD]\d+")


def afsd_cache_file(path: Path) -> str | None:
    """The first file of an OpenAFS afsd cache found in path, if any (OSError: the
    directory cannot be looked at)."""
    try:
        with os.scandir(path) as entries:
            return next((e.name for e in entries if _AFSD_CACHE.fullmatch(e.name)), None)
    except (FileNotFoundError, NotADirectoryError):
        return None


def parse_cacheinfo(text: str, path: Path) -> Found:
    """afsd's one line, `MOUNTPOINT:CACHEDIR:SIZE` (SIZE in 1 KiB blocks).

    A cache directory afsd has used is not taken (afsd deletes files it does not know, and
    afsfuse would take afsd's for its own): the mount keeps its own default directory, with
    cacheinfo's size, so that installing afsfuse where openafs-client ran just works."""
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise FileError(f"{path}: is empty")
    if len(lines) > 1:
        raise FileError(f"{path}:{lines[1][0]}: cacheinfo has one line, MOUNTPOINT:CACHEDIR:SIZE")
    number, line = lines[0]
    parts = [part.strip() for part in line.split(":")]
    if len(parts) != 3:
        raise FileError(f"{path}:{number}: not MOUNTPOINT:CACHEDIR:SIZE: {line!r}")
    mountpoint, cache_dir, blocks = parts
    for what, value in (("mount point", mountpoint), ("cache directory", cache_dir)):
        if not value.startswith("/"):
            raise FileError(f"{path}:{number}: the {what} {value!r} is not an absolute path")
    if not blocks.isdigit() or int(blocks) == 0:
        raise FileError(f"{path}:{number}: the cache size {blocks!r} is not a number of KiB")
    found = Found(path)
    found.give("mountpoint", mountpoint, path, number)
    try:
        afsd_file = afsd_cache_file(Path(cache_dir))
    except OSError:
        afsd_file = None  # the mount's own check of the directory says what is wrong
    if afsd_file is None:
        found.give("cache_dir", cache_dir, path, number)
    else:
        found.ignored.append(f"cache directory {cache_dir} (afsd's: it holds {afsd_file})")
    found.give("cache_size", int(blocks) << 10, path, number)
    return found


# -- OpenAFS (Debian): afs.conf.client ---------------------------------------------------------

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: As Debian's scripts read them: yes or true (any case) is on, anything else off; only
#: these four are accepted, so that a typo is told rather than taken for "off".
_TRUE, _FALSE = ("yes", "true"), ("no", "false")


def parse_shell_variables(text: str, path: Path) -> dict[str, tuple[str, int]]:
    """NAME -> (value, line) from `NAME=value` lines (quotes and comments as in sh)."""
    variables = {}
    for number, raw in enumerate(text.splitlines(), 1):
        where = f"{path}:{number}"
        try:
            words = shlex.split(raw, comments=True)
        except ValueError as e:  # an unclosed quote
            raise FileError(f"{where}: {e}") from None
        if not words:
            continue
        name, equals, value = words[0].partition("=")
        if not equals or not _NAME.fullmatch(name):
            raise FileError(f"{where}: not a NAME=value line (the file is read, never run)")
        if any("$" in word or "`" in word for word in words):
            raise FileError(f"{where}: {name}: expansions ($, `) are not read")
        if len(words) != 1:
            raise FileError(f"{where}: not a NAME=value line (the file is read, never run)")
        variables[name] = (value, number)
    return variables


def parse_afs_conf_client(text: str, path: Path) -> Found:
    """The settings afsfuse has an equivalent for; the others are listed as ignored."""
    found = Found(path)
    for name, (value, number) in parse_shell_variables(text, path).items():
        flag = value.lower()
        if name == "AFS_CRYPT":
            if flag not in _TRUE + _FALSE:
                raise FileError(f"{path}:{number}: AFS_CRYPT is true or false, not {value!r}")
            found.give("security", "crypt" if flag in _TRUE else "clear", path, number)
        elif name == "AFS_SYSNAME":
            if value.split():
                found.give("sysname", value.split(), path, number)
        elif name == "AFS_AFSDB":
            if flag not in _TRUE + _FALSE:
                raise FileError(f"{path}:{number}: AFS_AFSDB is true or false, not {value!r}")
            found.give("dns", flag in _TRUE, path, number)
        elif name in ("AFS_DYNROOT", "AFS_FAKESTAT"):
            # afsfuse always has a dynamic /afs and fakes the stat of mount points: only a
            # setting that asks otherwise is not followed.
            if flag not in _TRUE:
                found.ignored.append(f"{name}={value}")
        else:
            found.ignored.append(name)
    return found


# -- kAFS: client.conf -------------------------------------------------------------------------

#: Includes nested deeper than this are taken for a loop.
MAX_INCLUDE_DEPTH = 8
#: kafs-client's boolean words.
_KAFS_TRUE = ("1", "t", "true", "y", "yes", "on")
_KAFS_FALSE = ("0", "f", "false", "n", "no", "off")


@dataclass
class _Node:
    """A relation of the profile: a string (value) or a braced list (children)."""

    name: str
    path: Path
    line: int
    value: str | None = None
    children: list[_Node] = field(default_factory=list)
    #: Closed with `}*`: later lists of the same name are ignored.
    final: bool = False

    def lists(self, name: str | None = None) -> list[_Node]:
        return [c for c in self.children if c.value is None and name in (None, c.name)]

    def string(self, name: str) -> _Node | None:
        """The first value given wins, as kafs-client reads it (client.d before the
        generic cell database)."""
        return next((c for c in self.children if c.value is not None and c.name == name), None)


class _ProfileReader:
    """kafs-client's profile format: `include`/`includedir` before the first section,
    `[section]` lines, `key = value`, `key = {` ... `}` (or `}*`), `#` and `;` comments.
    Lists of the same name under the same parent are merged."""

    def __init__(self) -> None:
        self.root = _Node("", Path(), 0)
        self.files: list[Path] = []

    def read(self, path: Path, depth: int = 0) -> None:
        if depth > MAX_INCLUDE_DEPTH:
            raise FileError(f"{path}: included more than {MAX_INCLUDE_DEPTH} deep (a loop?)")
        self.files.append(path)
        section: _Node | None = None
        stack: list[_Node] = []  # the open braced lists
        for number, raw in enumerate(read_text(path).splitlines(), 1):
            line = raw.strip()
            where = f"{path}:{number}"
            if not line or line[0] in "#;":
                continue
            if not stack and line.startswith("["):
                if not line.endswith("]") or len(line) < 3 or "]" in line[1:-1]:
                    raise FileError(f"{where}: bad section label {line!r}")
                section = self._list(self.root, line[1:-1], path, number)
                continue
            if section is None:
                self._include(line, raw, where, path, depth)
                continue
            if line.startswith("}"):
                if not stack:
                    raise FileError(f"{where}: '}}' closes nothing")
                if line not in ("}", "}*"):
                    raise FileError(f"{where}: unexpected text after '}}'")
                stack.pop().final |= line == "}*"
                continue
            key, equals, value = (part.strip() for part in line.partition("="))
            if not equals:
                raise FileError(f"{where}: expected 'key = value', got {line!r}")
            if not key:
                raise FileError(f"{where}: '=' without a key")
            parent = stack[-1] if stack else section
            if value.startswith("{"):
                if value != "{":
                    raise FileError(f"{where}: unexpected text after '{{'")
                stack.append(self._list(parent, key, path, number))
                continue
            parent.children.append(_Node(key, path, number, _unquote(value, where)))
        if stack:
            raise FileError(f"{path}:{stack[-1].line}: '{{' of {stack[-1].name} is never closed")

    def _list(self, parent: _Node, name: str, path: Path, line: int) -> _Node:
        """The list to add to: an earlier one of the same name, or a new one (detached, so
        ignored, after a final one)."""
        earlier = next(iter(parent.lists(name)), None)
        if earlier is not None:
            return _Node(name, path, line) if earlier.final else earlier
        node = _Node(name, path, line)
        parent.children.append(node)
        return node

    def _include(self, line: str, raw: str, where: str, path: Path, depth: int) -> None:
        """Before the first section: `include FILE` or `includedir DIR` (a relative name is
        taken from the including file's directory)."""
        word, _, rest = line.partition(" ")
        target = rest.strip()
        if raw[0].isspace() or word not in ("include", "includedir"):
            raise FileError(f"{where}: expected [section], include or includedir, got {line!r}")
        if not target:
            raise FileError(f"{where}: {word} without a name")
        named = path.parent / target
        if word == "include":
            self.read(named, depth + 1)
            return
        try:
            # As kafs-client: every file but dot-files and editor backups (`~`), in order.
            entries = sorted(p for p in named.iterdir() if not p.name.startswith("."))
        except OSError as e:
            raise FileError(f"{where}: cannot read {named}: {e.strerror}") from None
        for entry in entries:
            if not entry.name.endswith("~") and entry.is_file():
                self.read(entry, depth + 1)


def _unquote(value: str, where: str) -> str:
    if not value.startswith('"'):
        return value
    if len(value) < 2 or not value.endswith('"'):
        raise FileError(f"{where}: unterminated string")
    out, chars = [], iter(value[1:-1])
    for ch in chars:
        if ch == "\\":
            escaped = next(chars, None)
            if escaped is None:
                raise FileError(f"{where}: unfinished '\\' escape")
            ch = {"n": "\n", "t": "\t", "b": "\b"}.get(escaped, escaped)
        out.append(ch)
    return "".join(out)


def read_kafs_config(path: Path) -> Found:
    """thiscell and sysname of [defaults], the cells of [cells] with their VL servers."""
    reader = _ProfileReader()
    reader.read(path)
    found = Found(path, files=reader.files)
    for defaults in reader.root.lists("defaults"):
        for key in ("thiscell", "sysname"):
            node = defaults.string(key)
            if node is not None and key not in found.settings and node.value:
                value: Any = node.value.split() if key == "sysname" else node.value
                found.give(key, value, node.path, node.line)
    dns_cells = 0
    for cells in reader.root.lists("cells"):
        for cell in cells.lists():
            entry = _cell_entry(cell)
            found.cells.setdefault(cell_key(entry.name), entry)
            dns_cells += _flag(cell, "use_dns")
    if dns_cells:
        # kAFS asks DNS before the listed servers of such a cell; afsfuse uses the listed
        # servers, as for a CellServDB entry.
        found.ignored.append(f"use_dns of {dns_cells} cell(s)")
    return found


def _flag(node: _Node, key: str) -> bool:
    value = node.string(key)
    if value is None or value.value is None:
        return False
    word = value.value.lower()
    if word not in _KAFS_TRUE + _KAFS_FALSE:
        raise FileError(f"{value.path}:{value.line}: {key} is yes or no, not {value.value!r}")
    return word in _KAFS_TRUE


def _cell_entry(cell: _Node) -> CellEntry:
    description = cell.string("description")
    servers = []
    for listing in cell.lists("servers"):
        for server in listing.lists():
            kind = server.string("type")
            if kind is not None and kind.value not in ("vlserver", "ptserver"):
                raise FileError(f"{kind.path}:{kind.line}: unknown server type {kind.value!r}")
            if kind is not None and kind.value == "ptserver":
                continue  # the PT server is asked on the VL servers' hosts
            name, name_port = _host_port(server.name, server)
            port_node = server.string("port")
            port = _port(port_node.value or "", port_node) if port_node else name_port
            for address in server.children:
                if address.value is None or address.name != "address":
                    continue
                host, address_port = _host_port(address.value, address)
                try:
                    ipv4 = str(ipaddress.IPv4Address(host))
                except ValueError:
                    if _is_ipv6(host):
                        log.warning("%s:%d: IPv6 address skipped", address.path, address.line)
                        continue
                    raise FileError(
                        f"{address.path}:{address.line}: not an IP address: {address.value!r}"
                    ) from None
                servers.append(CellServer(ipv4, name, port=address_port or port))
    comment = (description.value or "") if description is not None else ""
    return CellEntry(cell.name, comment, tuple(servers), None, cell.line)


def _host_port(text: str, node: _Node) -> tuple[str, int | None]:
    """`[udp/]HOST[:PORT]`, `[udp/][IPV6][:PORT]` -> (host, port or None)."""
    text = text.removeprefix("udp/").removeprefix("tcp/")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, _port(rest[1:], node) if rest.startswith(":") else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, _port(port, node)
    return text, None


def _port(text: str, node: _Node) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise FileError(f"{node.path}:{node.line}: not a port: {text!r}")
    return int(text)


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True
