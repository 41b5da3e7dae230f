"""What `afsfuse mount` needs before it starts, checked before the daemon forks.

Each failure is one line saying what is wrong and what to do about it, with an exit status
of its own (afsfuse(8)), so that an administrator, a mount helper and systemd
(`RestartPreventExitStatus=`) can all tell a configuration to fix from a crash worth a
retry.  `afsfuse check-config` runs the same checks and prints what it found.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import stat
import subprocess
from enum import IntEnum
from pathlib import Path

from afsfuse.clientfiles import afsd_cache_file
from afsfuse.config import (
    CALLBACK_PORT,
    Cells,
    ConfigError,
    MountConfig,
    cellservdb_files,
    kafs_cells,
    load_cells,
)
from afsfuse.ctl.protocol import control_socket_path, registry_path

log = logging.getLogger(__name__)


class Exit(IntEnum):
    """afsfuse's exit statuses (listed in afsfuse(8))."""

    OK = 0
    #: The daemon failed after it started (worth a retry).
    FAILED = 1
    USAGE = 2
    MOUNTPOINT = 3
    CACHE = 4
    FUSE = 5
    PORT = 6
    #: EX_CONFIG of sysexits.h: a setting or configuration file must be fixed.
    CONFIG = 78


class MountError(Exception):
    """A reason not to mount: one line for the person, and the exit status."""

    def __init__(self, status: Exit, message: str) -> None:
        super().__init__(message)
        self.status = status


def check(config: MountConfig, *, mounting: bool = False) -> tuple[Cells, list[str]]:
    """Every check `afsfuse mount` makes before it starts: the cells, and what was found,
    one line each."""
    try:
        cells, this_cell, aliases = load_cells(config)
    except ConfigError as e:
        raise MountError(Exit.CONFIG, str(e)) from None
    found = [*files_read(config), f"home cell: {this_cell} (from {_origin(config, 'thiscell')})"]
    kafs = kafs_cells(config)
    sources = ([kafs.path] if kafs else []) + cellservdb_files(config)
    found.append(
        f"cells: {len(cells)} known from "
        + (" + ".join(map(str, sources)) or "the built-in CellServDB")
        + (f", {len(aliases)} alias(es)" if aliases else "")
        + ", others looked up in DNS"
    )
    found.append(f"mount point: {check_mountpoint(config.mountpoint, detach_dead=mounting)}")
    found.append(f"FUSE: {check_fuse()}")
    cache_dir = check_cache_dir(config.resolved_cache_dir(), config.origins.get("cache_dir"))
    found.append(f"cache: {cache_dir}, {config.cache_size >> 20} MiB")
    found.append(f"callback port: {check_port(config.port)}")
    return (cells, this_cell, aliases), found


def files_read(config: MountConfig) -> list[str]:
    """A line per other client's file read: the settings it gave (and which of them a
    higher layer overrode), what of it is not followed."""
    lines = []
    for found in config.found:
        given = [
            f"{key.replace('_', '-')} = {_shown(value)}"
            + ("" if config.origins.get(key) == found.where[key]
               else f" (overridden by {_origin(config, key)})")
            for key, value in found.settings.items()
        ]  # fmt: skip
        if found.cells:
            given.append(f"{len(found.cells)} cell(s)")
        if len(found.files) > 1:
            given.append(f"with {', '.join(map(str, found.files[1:]))}")
        if found.ignored:
            given.append(f"not followed: {', '.join(found.ignored)}")
        lines.append(f"read {found.path}: {'; '.join(given) or 'nothing to take'}")
    return lines


def _origin(config: MountConfig, key: str) -> str:
    return config.origins.get(key, "the default")


def _shown(value: object) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def mounted_at(path: Path) -> str | None:
    """The type of the filesystem mounted on path, from mountinfo (never a stat of the
    mount, which could hang on a dead FUSE daemon)."""
    target = os.fsencode(path).replace(b"\\", b"\\134").replace(b" ", b"\\040")
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split()
            if fields[4] == target:
                return fields[fields.index(b"-") + 1].decode(errors="replace")
    return None


def check_mountpoint(path: Path, *, detach_dead: bool = False) -> str:
    """The mount point can be mounted on.  A dead afsfuse mount left there by a daemon that
    died (the kernel answers ENOTCONN) is detached when detach_dead, so that a restart
    after a crash (systemd's Restart=on-failure) mounts again."""
    fix = f"create it (mkdir {path}) or give another"
    kind = mounted_at(Path(os.path.abspath(path)))
    note = ""
    if kind == "fuse.afsfuse" and _dead(path):
        if not detach_dead:
            note = " (a dead afsfuse mount is there: mounting detaches it)"
        else:
            log.warning("%s: detaching the mount of an afsfuse daemon that died", path)
            subprocess.run(["fusermount3", "-u", "-z", os.fspath(path)], check=False)
            kind = mounted_at(Path(os.path.abspath(path)))
            note = " (detached the dead afsfuse mount that was there)"
    elif kind is not None:
        raise MountError(
            Exit.MOUNTPOINT,
            f"{path} already has a filesystem ({kind}) mounted on it: unmount it first "
            f"(umount {path}) or choose another mount point",
        )
    if note and detach_dead and kind is not None:
        raise MountError(Exit.MOUNTPOINT, f"{path}: a dead afsfuse mount could not be detached")
    if note and not detach_dead:
        return f"{path}{note}"
    try:
        is_dir = stat.S_ISDIR(path.stat().st_mode)
    except FileNotFoundError:
        raise MountError(Exit.MOUNTPOINT, f"mount point {path} does not exist: {fix}") from None
    except OSError as e:
        raise MountError(Exit.MOUNTPOINT, f"mount point {path}: {e.strerror}") from None
    if not is_dir:
        raise MountError(Exit.MOUNTPOINT, f"mount point {path} is not a directory: give one")
    if os.geteuid() != 0 and not os.access(path, os.W_OK):
        raise MountError(
            Exit.MOUNTPOINT,
            f"mount point {path} is not writable by you: an ordinary user may mount only "
            "on a directory of their own",
        )
    return f"{path}{note}"


def _dead(path: Path) -> bool:
    """Whether the afsfuse mount on path has lost its daemon: the pid in its control
    registry is gone (a stat could be answered from the kernel's attribute cache)."""
    registry = registry_path(control_socket_path(path))
    try:
        pid = int(json.loads(registry.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def check_fuse() -> str:
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
    except OSError as e:
        fix = "load the fuse module (modprobe fuse)" if e.errno == errno.ENOENT else ""
        fix = fix or "give this user access to /dev/fuse, or mount as root"
        raise MountError(Exit.FUSE, f"cannot open /dev/fuse: {e.strerror}: {fix}") from None
    os.close(fd)
    if os.geteuid() == 0:
        return "/dev/fuse"
    helper = shutil.which("fusermount3")
    if helper is None:
        raise MountError(
            Exit.FUSE, "fusermount3 is missing, and ordinary users mount through it: "
            "install the fuse3 package",
        )  # fmt: skip
    return f"/dev/fuse, {helper}"


def check_cache_dir(path: Path, origin: str | None = None) -> str:
    """The cache directory is usable, is not OpenAFS's afsd's (which would delete our files
    as strangers, and whose files we would count as ours), and no other afsfuse holds it
    (its lock is free)."""
    try:
        afsd_file = afsd_cache_file(path)
    except OSError as e:
        raise MountError(Exit.CACHE, f"cache directory {path}: {e.strerror}") from None
    if afsd_file is not None:
        named = f" (from {origin})" if origin and ":" in origin else ""
        raise MountError(
            Exit.CACHE,
            f"cache directory {path}{named} is OpenAFS afsd's cache (it holds {afsd_file}): "
            "give afsfuse a directory of its own (cache-dir in afsfuse.toml, or --cache-dir)",
        )
    lock = path / "lock"
    try:
        with open(lock, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise MountError(Exit.CACHE, cache_in_use(path)) from None
            fcntl.flock(f, fcntl.LOCK_UN)
    except FileNotFoundError:
        parent = next((p for p in path.parents if p.exists()), Path("/"))
        if not os.access(parent, os.W_OK | os.X_OK):
            raise MountError(
                Exit.CACHE, f"cache directory {path} cannot be created: {parent} is not writable"
            ) from None
        return f"{path} (to be created)"
    except OSError as e:
        raise MountError(Exit.CACHE, f"cache directory {path}: {e.strerror}") from None
    return str(path)


def cache_in_use(path: Path) -> str:
    return (
        f"cache directory {path} is in use by another afsfuse: give each mount a cache "
        "directory of its own (--cache-dir)"
    )


def check_port(port: int | None) -> str:
    """A port given explicitly must be free; otherwise any will do (see cli)."""
    if port is None or port == 0:
        return f"{CALLBACK_PORT} if free (root), else any free port"
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as probe:
        try:
            probe.bind(("0.0.0.0", port))
        except OSError as e:
            raise MountError(
                Exit.PORT,
                f"callback port {port} is not available ({e.strerror}), perhaps another AFS "
                "client's: leave the port unset and afsfuse picks a free one",
            ) from None
    return str(port)
