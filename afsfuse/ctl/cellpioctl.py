"""The cell pioctls' InData and OutData (VIOCGETCELL, VIOCNEWCELL, VIOC_GETCELLSTATUS,
VIOC_SETCELLSTATUS, VIOC_NEWALIAS, VIOC_GETALIAS), as OpenAFS's fs lays them out
(src/venus/fs.c, src/afs/afs_pioctl.c); ctl/pioctl.py names them in its table.

Of these rmtsys turns big-endian only GETCELL's index, GETCELLSTATUS's answer and
SETCELLSTATUS's two flag words; NEWCELL's words and GETALIAS's index stay native.
"""

from __future__ import annotations

import errno
import ipaddress
from typing import Any

from afsfuse.ctl.pioctlio import BE, PioctlError, Reader, cstr, ipv4

#: The hosts GETCELL lists and NEWCELL takes per cell (AFS_MAXCELLHOSTS); a 3.4 fs sent
#: AFS_MAXHOSTS for NEWCELL, told apart by an empty cell name where the 3.5 one has it.
CELL_HOSTS = 8
_OLD_CELL_HOSTS = 13
#: NEWCELL's first word, and its linked-state bit.
_NEWCELL_MAGIC = 0x12345678
_LINKED = 1
#: Ports under this are not taken from NEWCELL (OpenAFS's rule: privileged ports).
_LOWEST_PORT = 1024
#: The setuid bit of a cell's flags (CNoSUID).
_NO_SETUID = 0x02


def decode_index(reader: Reader) -> dict[str, Any]:
    return {"index": reader.be()}


def decode_alias_index(reader: Reader) -> dict[str, Any]:
    return {"index": reader.native()}


def encode_listcell(result: Any, args: dict[str, Any]) -> bytes:
    (cell,) = result["cells"]
    hosts = [ipv4(host) for host in cell["servers"][:CELL_HOSTS]]
    hosts += [b"\0\0\0\0"] * (CELL_HOSTS - len(hosts))
    return b"".join(hosts) + cstr(cell["name"])


def encode_alias(result: Any, args: dict[str, Any]) -> bytes:
    ((alias, cell),) = result["aliases"]
    return cstr(alias) + cstr(cell)


def decode_cellname(reader: Reader) -> dict[str, Any]:
    return {"cell": reader.string()}


def encode_cellstatus(result: Any, args: dict[str, Any]) -> bytes:
    return BE.pack(result["flags"])


def decode_setcellstatus(reader: Reader) -> dict[str, Any]:
    """{int32 flags, int32 unused, cell name}: only the setuid bit is taken, as OpenAFS
    takes only it."""
    flags = reader.be()
    reader.be()
    return {"setuid": not flags & _NO_SETUID, "cell": reader.string()}


def decode_newcell(reader: Reader) -> dict[str, Any]:
    """{magic, 8 (or 13) IPv4 addresses, fileserver port, VL port, linked state, cell
    name, [linked cell]}; empty address slots are zero."""
    if reader.remaining < (CELL_HOSTS + 4) * 4 or reader.native() != _NEWCELL_MAGIC:
        raise PioctlError(errno.EINVAL, "not a NEWCELL request")
    newer = reader.data[reader.at + (CELL_HOSTS + 3) * 4 : reader.at + (CELL_HOSTS + 4) * 4]
    count = CELL_HOSTS if newer[:1] not in (b"", b"\0") else _OLD_CELL_HOSTS
    packed = [reader.take(4) for _ in range(count)][:CELL_HOSTS]
    servers = [str(ipaddress.IPv4Address(p)) for p in packed if p != b"\0\0\0\0"]
    fsport, vlport, linked = reader.native(), reader.native(), reader.native()
    if fsport >= _LOWEST_PORT:
        raise PioctlError(errno.EINVAL, "fileservers are reached on their own ports only")
    args: dict[str, Any] = {"cell": reader.string(), "servers": servers}
    if vlport >= _LOWEST_PORT:
        args["vlport"] = vlport
    if linked & _LINKED:
        args["linked_cell"] = reader.string()
    return args


def decode_newalias(reader: Reader) -> dict[str, Any]:
    return {"alias": reader.string(), "cell": reader.string()}
