"""The OpenAFS client configuration files: CellServDB, ThisCell and CellAlias.

Parsing is forgiving in the way OpenAFS's own is: a line that makes no sense is skipped with
a warning naming the file and line, and never costs the rest of the file.  A file that is
no CellServDB at all (empty, not text, no cell in it) is an error: reading it must not look
like success with every cell missing.  Cell names are keyed in lower case (AFS
cell names, like DNS names, compare without case); each entry keeps the spelling it had.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger(__name__)

CONFIG_DIR = Path("/etc/openafs")
DEFAULT_CELLSERVDB = CONFIG_DIR / "CellServDB"
DEFAULT_CELLALIAS = CONFIG_DIR / "CellAlias"
#: OpenAFS keeps this many database servers per cell and warns about the rest.
MAX_HOSTS_PER_CELL = 8
#: Bytes no text file holds: C0 controls other than tab, newline, VT, FF and CR; DEL.
_NOT_TEXT = re.compile(rb"[\x00-\x08\x0e-\x1f\x7f]")


class CellServDBError(ValueError):
    """A CellServDB that cannot be used at all; the message names the file."""


class CellServer(NamedTuple):
    """One database server line.

    clone marks a `[a.b.c.d]` entry: a non-voting ubik member that clients may still ask.
    """

    address: str
    hostname: str
    clone: bool = False
    #: The VL server's UDP port, when not the standard one (kAFS's client.conf may say).
    port: int | None = None


@dataclass(frozen=True)
class CellEntry:
    """One `>cell` block: its name as written, the comment, an optional linked cell."""

    name: str
    comment: str
    servers: tuple[CellServer, ...]
    linked_cell: str | None = None
    #: The line of its `>cell` line (0: not from a file), for messages.
    line: int = field(default=0, compare=False)


def cell_key(name: str) -> str:
    """The key a cell name is stored under (and looked up by)."""
    return name.strip().rstrip(".").lower()


def _split_comment(text: str) -> tuple[str, str]:
    head, sep, comment = text.partition("#")
    return head.strip(), comment.strip() if sep else ""


def _parse_cell_line(body: str, where: str, number: int) -> CellEntry | None:
    head, comment = _split_comment(body)
    words = head.split()
    if not words:
        log.warning("%s: a '>' line without a cell name; skipped", where)
        return None
    if len(words) > 2:
        log.warning("%s: extra words after cell %s ignored", where, words[0])
    linked = words[1] if len(words) > 1 else None
    return CellEntry(words[0], comment, (), linked, number)


def _parse_host_line(line: str, where: str) -> CellServer | None:
    head, sep, hostname = line.partition("#")
    head = head.strip()
    clone = head.startswith("[") and head.endswith("]")
    if clone:
        head = head[1:-1].strip()
    try:
        address = str(ipaddress.IPv4Address(head))
    except ValueError:
        log.warning("%s: %r is not an IPv4 server line; skipped", where, line)
        return None
    hostname = hostname.strip()
    if not sep or not hostname:
        # OpenAFS refuses a host line without its '#hostname'.
        log.warning("%s: server %s has no '#hostname'; skipped", where, address)
        return None
    return CellServer(address, hostname.split()[0], clone)


def parse_cellservdb(text: str, source: str = "CellServDB") -> dict[str, CellEntry]:
    """Cells in file order, keyed by cell_key(name).  A later entry for a cell replaces an
    earlier one, as in OpenAFS."""
    cells: dict[str, CellEntry] = {}
    current: CellEntry | None = None
    servers: list[CellServer] = []

    def finish() -> None:
        if current is None:
            return
        kept = servers[:MAX_HOSTS_PER_CELL]
        if len(servers) > MAX_HOSTS_PER_CELL:
            log.warning(
                "%s: cell %s lists %d servers; only the first %d are used",
                source,
                current.name,
                len(servers),
                MAX_HOSTS_PER_CELL,
            )
        key = cell_key(current.name)
        cells.pop(key, None)
        cells[key] = replace(current, servers=tuple(kept))

    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        where = f"{source}:{number}"
        if not line or line.startswith("#"):
            continue
        if line.startswith(">"):
            finish()
            current = _parse_cell_line(line[1:], where, number)
            servers = []
            continue
        if current is None:
            log.warning("%s: server line before any '>cell' line; skipped", where)
            continue
        server = _parse_host_line(line, where)
        if server is not None:
            servers.append(server)
    finish()
    return cells


def not_text(data: bytes) -> str | None:
    """Why data is no text file (`LINE: not a text file (byte 0x..)`), or None if it is.

    A control byte marks random or binary data; bytes that are not UTF-8 are tolerated
    (old files have Latin-1 comments)."""
    control = _NOT_TEXT.search(data)
    if control is None:
        return None
    line = data.count(b"\n", 0, control.start()) + 1
    return f"{line}: not a text file (byte 0x{data[control.start()]:02x})"


def read_cellservdb(path: str | os.PathLike[str] = DEFAULT_CELLSERVDB) -> dict[str, CellEntry]:
    """The cells of a CellServDB file; CellServDBError if it is empty, not text or has no
    cell; OSError if it cannot be read."""
    path = Path(path)
    data = path.read_bytes()
    if not data.strip():
        raise CellServDBError(f"{path}: is empty")
    why = not_text(data)
    if why is not None:
        raise CellServDBError(f"{path}:{why}")
    cells = parse_cellservdb(data.decode("utf-8", errors="replace"), str(path))
    if not cells:
        raise CellServDBError(f"{path}: no '>cell' line; not a CellServDB")
    return cells


def parse_thiscell(text: str) -> str | None:
    """The home cell: the first word of the file (None if it is empty)."""
    words = text.split()
    return words[0] if words else None


def parse_cellalias(text: str, source: str = "CellAlias") -> dict[str, str]:
    """alias -> real cell name, from `realname alias` lines."""
    aliases: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        head, _ = _split_comment(raw)
        if not head:
            continue
        words = head.split()
        if len(words) != 2:
            log.warning("%s:%d: expected 'realname alias', got %r; skipped", source, number, raw)
            continue
        real, alias = words
        aliases[alias] = real
    return aliases


def read_cellalias(path: str | os.PathLike[str] = DEFAULT_CELLALIAS) -> dict[str, str]:
    path = Path(path)
    return parse_cellalias(path.read_text(encoding="utf-8", errors="replace"), str(path))
