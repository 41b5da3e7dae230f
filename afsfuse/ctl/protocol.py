"""What the control socket's two ends share: where sockets live, and how tokens travel.

The wire format is one JSON object per line each way.  A request is {"op": NAME, ...args},
optionally with "uid" (root only: act for that uid).  A reply is {"ok": true, "result": ...}
or {"ok": false, "error": CODE, "message": TEXT}, CODE being an errno name.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from afsfuse.keyring.token import Token
from afsfuse.rx.rxkad import MAX_TICKET_LEN

#: Longest request or reply line.  A settoken request with the largest rxkad ticket
#: (12000 bytes, 16000 in base64) fits with room to spare.
MAX_LINE = 64 * 1024

#: Where root's mounts put their sockets; everyone may look here.
SYSTEM_DIR = Path("/run/afsfuse")
DEFAULT_MOUNTPOINT = "/afs"

#: The largest rxkad kvno OpenAFS accepts in a token (999 stands for the old -1).
_MAX_KVNO = 0xFFFF
#: A cell name is at most 64 bytes in the token interfaces (MAXKTCREALMLEN).
_MAX_CELL_LEN = 64


@dataclass(frozen=True)
class MountEntry:
    """One running mount, as its registry file describes it."""

    mountpoint: str
    socket: Path
    pid: int


def control_dir() -> Path:
    """Where this process puts the sockets of mounts it runs: system-wide for root.

    A user's own mounts keep their sockets in $XDG_RUNTIME_DIR (made private by logind),
    or in /tmp/afsfuse-UID when there is none.
    """
    uid = os.geteuid()
    if uid == 0:
        return SYSTEM_DIR
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "afsfuse" if runtime else Path(f"/tmp/afsfuse-{uid}")


def search_dirs() -> list[Path]:
    """Where `afsfuse-ctl` looks for mounts: root's, then the caller's own."""
    return list(dict.fromkeys([SYSTEM_DIR, control_dir()]))


def mount_key(mountpoint: str | os.PathLike[str]) -> str:
    """A short fixed-length name for a mountpoint (socket paths are limited to 107 bytes)."""
    resolved = os.path.realpath(mountpoint)
    return hashlib.sha256(resolved.encode()).hexdigest()[:16]


def control_socket_path(mountpoint: str | os.PathLike[str], directory: Path | None = None) -> Path:
    """The control socket of the mount at mountpoint, in directory (default control_dir())."""
    return (directory or control_dir()) / f"{mount_key(mountpoint)}.sock"


def registry_path(socket_path: Path) -> Path:
    """The registry file beside a socket: how `afsfuse-ctl` finds mounts it was not named."""
    return socket_path.with_suffix(".json")


def read_registry(directory: Path) -> list[MountEntry]:
    """The mounts registered in directory; unreadable or malformed entries are skipped."""
    entries = []
    try:
        files = sorted(directory.glob("*.json"))
    except OSError:
        return []
    for file in files:
        try:
            data = json.loads(file.read_text())
            entries.append(
                MountEntry(str(data["mountpoint"]), Path(data["socket"]), int(data["pid"]))
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return entries


def token_to_wire(token: Token) -> dict[str, Any]:
    """A token as settoken carries it, secrets included (only ever sent over the socket)."""
    return {
        **token_summary(token),
        "session_key": base64.b64encode(token.session_key).decode(),
        "ticket": base64.b64encode(token.ticket).decode(),
    }


def token_summary(token: Token) -> dict[str, Any]:
    """What may be shown about a token: everything except the key and the ticket."""
    return {
        "cell": token.cell,
        "realm": token.realm,
        "client": token.client,
        "viceid": token.viceid,
        "begin": token.begin,
        "end": token.end,
        "kvno": token.kvno,
    }


def token_from_wire(data: object) -> Token:
    """Check a token that arrived over the socket; ValueError says what is wrong with it."""
    if not isinstance(data, dict):
        raise ValueError("token must be an object")
    cell = _text(data, "cell", _MAX_CELL_LEN)
    if cell != cell.lower() or any(c.isspace() or c == "/" for c in cell):
        raise ValueError(f"bad cell name {cell!r}")
    session_key = _b64(data, "session_key")
    if len(session_key) != 8:
        raise ValueError("session_key must be 8 bytes")
    ticket = _b64(data, "ticket")
    if not 1 <= len(ticket) <= MAX_TICKET_LEN:
        raise ValueError(f"ticket must be 1 to {MAX_TICKET_LEN} bytes")
    begin = _int(data, "begin", 0, 2**32 - 1)
    end = _int(data, "end", begin, 2**32 - 1)
    viceid = None if data.get("viceid") is None else _int(data, "viceid", -(2**31), 2**31 - 1)
    return Token(
        cell=cell,
        # Empty for a token set by a pioctl: the ticket is sealed, and names no one to us.
        realm=_text(data, "realm", 256, empty=True),
        client=_text(data, "client", 512, empty=True),
        session_key=session_key,
        ticket=ticket,
        begin=begin,
        end=end,
        viceid=viceid,
        kvno=_int(data, "kvno", 0, _MAX_KVNO),
    )


def _text(data: dict[str, Any], name: str, limit: int, empty: bool = False) -> str:
    value = data.get(name)
    shortest = 0 if empty else 1
    if not isinstance(value, str) or not shortest <= len(value) <= limit or "\0" in value:
        raise ValueError(f"{name} must be a string of {shortest} to {limit} characters")
    return value


def _int(data: dict[str, Any], name: str, low: int, high: int) -> int:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high}")
    return value


def _b64(data: dict[str, Any], name: str) -> bytes:
    value = data.get(name)
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"{name} is not valid base64") from error
