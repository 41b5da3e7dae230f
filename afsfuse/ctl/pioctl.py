"""The pioctl ABI as OpenAFS's tools send it over rmtsys, and its control ops.

Each pioctl the rmtsys service answers is a control op (ctl/ops.py, ctl/pathops.py): its
InData decodes into the op's arguments, and the op's result encodes into the OutData the
tool expects, so one handler serves `afsfuse-ctl` and `fs` alike.  Layouts and limits are
OpenAFS's (src/afs/afs_pioctl.c, src/venus/fs.c, src/auth/ktc.c); the data is raw C memory
in the client's byte order, except for the fields rmtsys itself turns big-endian
(src/sys/rmtsysnet.c; afs-protocol-facts.md 4.3 and 4.4).  What stays native is read and
written in this host's order: loopback callers share it, and remote ones almost always do.

A decoder raises PioctlError with the errno OpenAFS gives for input it cannot use; an
unknown command is EINVAL, as for every pioctl OpenAFS does not serve.

The table names every pioctl served, so the ABI is checked against OpenAFS's in one place;
the cell pioctls' codecs are in ctl/cellpioctl.py, what all codecs share in ctl/pioctlio.py.
"""

from __future__ import annotations

import errno
import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from afsfuse.ctl.cellpioctl import (
    decode_alias_index,
    decode_cellname,
    decode_index,
    decode_newalias,
    decode_newcell,
    decode_setcellstatus,
    encode_alias,
    encode_cellstatus,
    encode_listcell,
)  # fmt: skip
from afsfuse.ctl.pioctlio import BE as _BE
from afsfuse.ctl.pioctlio import NATIVE as _NATIVE
from afsfuse.ctl.pioctlio import PioctlError as PioctlError
from afsfuse.ctl.pioctlio import Reader as Reader
from afsfuse.ctl.pioctlio import cstr as _cstr
from afsfuse.ctl.pioctlio import ipv4 as _ipv4
from afsfuse.ctl.protocol import token_from_wire, token_to_wire
from afsfuse.keyring.token import Token
from afsfuse.rx import xdr
from afsfuse.rx.rxkad import MAX_TICKET_LEN

#: Input OpenAFS accepts (MAXPIOCTLTOKENLEN: three ints, a ticket, a ClearToken, a realm).
MAX_IN = 3 * 4 + MAX_TICKET_LEN + 24 + 64
#: Output a pioctl may produce (AFS_LRALLOCSIZ), and for the token gets (MAXPIOCTLTOKENLEN).
MAX_OUT = 4096
MAX_TOKEN_OUT = MAX_IN
#: GETTOK pads tickets to this many bytes ("for compat").
_MIN_GETTOK_TICKET = 56
#: The hosts WHEREIS lists per volume (AFS_MAXHOSTS).
_VOLUME_HOSTS = 13
#: chservinfo's magic, and the size of its cell name.
_CHSERV_MAGIC = 0x12345678
_CHSERV_CELL = 128
#: The SETTOK primary-flag bit and the SETTOK2 flag asking for a new PAG.
_SETTOK_SETPAG = 0x8000
_SETTOK2_SETPAG = 0x1
#: SETTOK2 takes at most this many tokens in one set (MAX_PIOCTL_TOKENS).
_MAX_TOKENS = 10
_AUTH_HANDLE_OLD = 999
#: A caller in no PAG (NOPAG).
NOPAG = 0xFFFFFFFF

_CLEAR_TOKEN = struct.Struct(">i8siii")
#: AFSFetchVolumeStatus as C lays it out: two ids, four chars, six ints (36 bytes).
_VOLSTAT = struct.Struct(">II4b6i")

_token_rxkad = xdr.struct(
    "token_rxkad",
    rk_viceid=xdr.int32,
    rk_kvno=xdr.int32,
    rk_key=xdr.fixed_opaque(8),
    rk_begintime=xdr.int32,
    rk_endtime=xdr.int32,
    rk_primary_flag=xdr.int32,
    rk_ticket=xdr.opaque(MAX_TICKET_LEN),
)
_AFSTOKEN_UNION_KAD = 2
_ktc_setTokenData = xdr.struct(
    "ktc_setTokenData",
    flags=xdr.int32,
    cell=xdr.string(64),
    tokens=xdr.varray(xdr.opaque(16384), 8),
)


class PathUse(Enum):
    """What a pioctl's path names."""

    NONE = "none"
    #: The object itself (a mount point: its volume's root).
    OBJECT = "object"
    #: A directory, with the name of an entry in it as the InData string.
    PARENT = "parent"


@dataclass(frozen=True)
class Pioctl:
    name: str
    op: str
    path: PathUse
    decode: Callable[[Reader], dict[str, Any]]
    #: OutData from the op's result and the arguments it was given.
    encode: Callable[[Any, dict[str, Any]], bytes]
    max_out: int = MAX_OUT


def command_key(cmd: int) -> tuple[str, int]:
    """('V', 2) for VIOCGETAL: only the low 16 bits of the ioctl number count."""
    return chr((cmd >> 8) & 0xFF), cmd & 0xFF


def _nothing(reader: Reader) -> dict[str, Any]:
    return {}


def _empty(result: Any, args: dict[str, Any]) -> bytes:
    return b""


# -- access control lists ------------------------------------------------------------------


def _decode_setacl(reader: Reader) -> dict[str, Any]:
    text = reader.string()
    if len(text.encode("utf-8", "surrogateescape")) + 1 > 1024:
        raise PioctlError(errno.EINVAL, "ACL text over 1024 bytes")
    return {"text": text}


def _encode_acl(result: Any, args: dict[str, Any]) -> bytes:
    return _cstr(result["text"])


# -- tokens ------------------------------------------------------------------------------


def _token_args(
    ticket: bytes, kvno: int, key: bytes, viceid: int, begin: int, end: int, cell: str
) -> dict[str, Any]:
    if not 1 <= len(ticket) <= MAX_TICKET_LEN or end < begin or begin < 0:
        raise PioctlError(errno.EINVAL, "not a usable rxkad token")
    token = Token(
        cell=cell.lower(),
        realm="",
        client="",
        session_key=key,
        ticket=ticket,
        begin=begin,
        end=end,
        viceid=viceid,
        kvno=_AUTH_HANDLE_OLD if kvno == -1 else kvno,
    )
    wire = token_to_wire(token)
    if not cell:
        del wire["cell"]  # the workstation's own cell
    return {"token": wire}


def _decode_settok(reader: Reader) -> dict[str, Any]:
    ticket = reader.take(reader.be())
    if reader.be() != _CLEAR_TOKEN.size:
        raise PioctlError(errno.EINVAL, "ClearToken of the wrong size")
    kvno, key, viceid, begin, end = _CLEAR_TOKEN.unpack(reader.take(_CLEAR_TOKEN.size))
    cell = ""
    if reader.remaining:
        reader.be()  # the primary flag; setpag (0x8000) waits for PAGs
        cell = reader.string()
    return _token_args(ticket, kvno, key, viceid, begin, end, cell)


def _decode_settok2(reader: Reader) -> dict[str, Any]:
    try:
        jar = xdr.decode(_ktc_setTokenData, reader.take(reader.remaining))
    except xdr.XdrError as e:
        raise PioctlError(errno.EINVAL, f"ktc_setTokenData: {e}") from None
    if len(jar.tokens) > _MAX_TOKENS:
        raise PioctlError(errno.E2BIG, "too many tokens in one set")
    for opaque in jar.tokens:
        try:
            kind, at = xdr.decode_from(xdr.int32, opaque)
            if kind != _AFSTOKEN_UNION_KAD:
                continue
            rk = xdr.decode(_token_rxkad, memoryview(opaque)[at:])
        except xdr.XdrError as e:
            raise PioctlError(errno.EINVAL, f"ktc_tokenUnion: {e}") from None
        return _token_args(
            rk.rk_ticket, rk.rk_kvno, rk.rk_key, rk.rk_viceid, rk.rk_begintime,
            rk.rk_endtime, jar.cell,
        )  # fmt: skip
    raise PioctlError(errno.EINVAL, "no rxkad token in the set")


def _decode_gettok(reader: Reader) -> dict[str, Any]:
    return {"index": reader.be()} if reader.remaining else {}


def _decode_gettok2(reader: Reader) -> dict[str, Any]:
    """Four bytes are an index, unless they spell a three-letter cell name (OpenAFS's own
    rule); anything else is a cell name, and nothing the primary cell."""
    data = reader.data
    if len(data) == 4 and not (data[3] == 0 and b"\0" not in data[:3]):
        return {"index": reader.native()}
    if reader.remaining:
        return {"cell": reader.string()}
    return {}


def _clear_token(token: Token, uid: int) -> tuple[int, int, int]:
    """ViceId, begin and end as OpenAFS's tools read them: an odd lifetime says the ViceId
    is an AFS id, an even one that it is only a Unix uid."""
    begin, end = token.begin, token.end
    viceid = uid if token.viceid is None else token.viceid
    if ((end - begin) & 1) != (token.viceid is not None):
        begin += 1
    return viceid, begin, end


def _token_of(result: Any) -> Token:
    return token_from_wire(result["token"])


def _encode_gettok(result: Any, args: dict[str, Any]) -> bytes:
    token = _token_of(result)
    viceid, begin, end = _clear_token(token, result["uid"])
    ticket = token.ticket.ljust(_MIN_GETTOK_TICKET, b"\0")
    out = _BE.pack(len(ticket)) + ticket + _BE.pack(_CLEAR_TOKEN.size)
    out += _CLEAR_TOKEN.pack(token.kvno, token.session_key, viceid, begin, end)
    if "index" in args:
        out += _BE.pack(1 if result["primary"] else 0) + _cstr(token.cell)
    return out


def _encode_gettok2(result: Any, args: dict[str, Any]) -> bytes:
    token = _token_of(result)
    viceid, begin, end = _clear_token(token, result["uid"])
    rxkad = xdr.encode(xdr.int32, _AFSTOKEN_UNION_KAD) + xdr.encode(
        _token_rxkad,
        _token_rxkad(
            rk_viceid=viceid, rk_kvno=token.kvno, rk_key=token.session_key,
            rk_begintime=begin, rk_endtime=end, rk_primary_flag=0, rk_ticket=token.ticket,
        ),
    )  # fmt: skip
    return xdr.encode(
        _ktc_setTokenData, _ktc_setTokenData(flags=0, cell=token.cell, tokens=[rxkad])
    )


# -- volumes -------------------------------------------------------------------------------


def _encode_volstat(result: Any, args: dict[str, Any]) -> bytes:
    head = _VOLSTAT.pack(
        result["volume_id"], result["parent_id"], int(result["online"]), int(result["in_service"]), int(result["blessed"]),
        int(result["needs_salvage"]), result["type"], result["min_quota"], result["quota"],
        result["used"], result["partition_free"], result["partition_size"],
    )  # fmt: skip
    return head + _cstr(result["volume"]) + _cstr(result["offline_message"]) + _cstr(result["motd"])


def _decode_setvolstat(reader: Reader) -> dict[str, Any]:
    fields = _VOLSTAT.unpack(reader.take(_VOLSTAT.size))
    max_quota = fields[8]
    reader.string()  # the volume's name: never changed from here, as in OpenAFS
    offline = reader.string()
    motd = reader.string()
    if len(offline) > 256 or len(motd) > 256:
        raise PioctlError(errno.E2BIG, "volume message over 256 bytes")
    args: dict[str, Any] = {}
    if max_quota != -1:
        args["max"] = max_quota
    if offline:
        args["offline_message"] = offline
    return args


def _encode_whereis(result: Any, args: dict[str, Any]) -> bytes:
    hosts = [_ipv4(host) for host in result["servers"][:_VOLUME_HOSTS]]
    if len(hosts) < _VOLUME_HOSTS:
        hosts.append(b"\0\0\0\0")
    return b"".join(hosts)


def _literal(reader: Reader) -> dict[str, Any]:
    """GETLITERALFID: the entry itself, named in its directory (a mount point or symbolic
    link, not what it leads to)."""
    return {**_decode_name(reader), "literal": True}


def _encode_fid(result: Any, args: dict[str, Any]) -> bytes:
    return struct.pack(
        "=iIII", result["cell_number"], result["volume"], result["vnode"], result["unique"]
    )


def _encode_cell(result: Any, args: dict[str, Any]) -> bytes:
    return _cstr(result["cell"])


def _decode_name(reader: Reader) -> dict[str, Any]:
    name = reader.string()
    if not name or "/" in name or name in (".", ".."):
        raise PioctlError(errno.EINVAL, f"not a name in a directory: {name!r}")
    return {"name": name}


def _encode_mountpoint(result: Any, args: dict[str, Any]) -> bytes:
    return _cstr(result["mountpoint"])


# -- cells, servers, the @sys list -----------------------------------------------------------


def _decode_sysname(reader: Reader) -> dict[str, Any]:
    count = reader.be()
    if count & _SETTOK_SETPAG:
        raise PioctlError(errno.EINVAL, "every PAG's sysname is the NFS translator's")
    if not count:
        return {}
    if not 0 < count <= 32:
        raise PioctlError(errno.EINVAL, f"{count} sysnames")
    return {"names": [reader.string() for _ in range(count)]}


def _encode_sysname(result: Any, args: dict[str, Any]) -> bytes:
    if "names" in args:
        return b""
    names = result["names"]
    return _BE.pack(len(names)) + b"".join(_cstr(name) for name in names)


def _decode_checkservers(reader: Reader) -> dict[str, Any]:
    """chservinfo (magic, then native fields), or the old form: flags and a cell."""
    if reader.remaining < 4:
        raise PioctlError(errno.EINVAL, "checkservers needs its flags")
    if reader.be() == _CHSERV_MAGIC:
        raw_cell = reader.take(_CHSERV_CELL)
        size, interval, flags = reader.native(), reader.native(), reader.native()
        cell = raw_cell.split(b"\0", 1)[0].decode("utf-8", "surrogateescape") if size else ""
        if interval >= 0:
            return {"interval": interval}
    else:
        reader.at -= 4
        flags = reader.be()
        cell = reader.string() if reader.remaining else ""
    return {"cell": cell or None, "fast": bool(flags & 1), "all": not flags & 2}


def _encode_checkservers(result: Any, args: dict[str, Any]) -> bytes:
    if "interval" in args:
        return _NATIVE.pack(result["interval"])
    return b"".join(_ipv4(host) for host in result["down"])


#: struct spref: an IPv4 address (network order), an unsigned short rank, padding.
_SPREF = struct.Struct("=4sHxx")
_DB_SERVERS = 1


def _decode_getsprefs(reader: Reader) -> dict[str, Any]:
    """sprefrequest {offset, num_servers, flags}, or the 3.3 one without flags."""
    if reader.remaining < 4:
        raise PioctlError(errno.ENOENT, "no sprefrequest")
    offset, _count = struct.unpack("=HH", reader.take(4))
    flags = struct.unpack("=H", reader.take(2))[0] if reader.remaining >= 2 else 0
    return {"vlservers": bool(flags & _DB_SERVERS), "offset": offset}


def _encode_sprefs(result: Any, args: dict[str, Any]) -> bytes:
    servers = result["servers"][args.get("offset", 0) :]
    out = struct.pack("=HH", 0, len(servers))
    return out + b"".join(_SPREF.pack(_ipv4(address), rank) for address, rank in servers)


def _sprefs(reader: Reader, count: int) -> list[list[Any]]:
    if reader.remaining < count * _SPREF.size:
        raise PioctlError(errno.EINVAL, f"fewer than {count} server preferences")
    found = []
    for _ in range(count):
        packed, rank = _SPREF.unpack(reader.take(_SPREF.size))
        found.append([str(ipaddress.IPv4Address(packed)), rank])
    return found


def _decode_setsprefs(reader: Reader) -> dict[str, Any]:
    """setspref {flags, num_servers, spref[]}.  fs setserverprefs -vlservers first sends
    the fileservers' list even when it is empty: that is taken as setting none (OpenAFS's
    kernel refuses it, and fs falls back to the old pioctl, but over rmtsys the refusal
    prints a warning)."""
    if reader.remaining < 4:
        raise PioctlError(errno.EINVAL, "no setspref")
    flags, count = struct.unpack("=HH", reader.take(4))
    return {"vlservers": bool(flags & _DB_SERVERS), "servers": _sprefs(reader, count)}


def _decode_setsprefs33(reader: Reader) -> dict[str, Any]:
    return {"servers": _sprefs(reader, reader.remaining // _SPREF.size)}


#: The mvstat of a volume's root (AFS_MVSTAT_ROOT); a plain file or directory is 0.
_MVSTAT_ROOT = 2


def _encode_vcxstat2(result: Any, args: dict[str, Any]) -> bytes:
    """struct vcxstat2 {callerAccess, cbExpires, anyAccess, char mvstat}, native."""
    mvstat = _MVSTAT_ROOT if result["volume_root"] else 0
    return struct.pack("=iiib3x", result["rights"], 0, result["anyone"], mvstat)


def _encode_pag(result: Any, args: dict[str, Any]) -> bytes:
    pag = result["pag"]
    return struct.pack("=I", NOPAG if pag is None else pag)


def _decode_nukecreds(reader: Reader) -> dict[str, Any]:
    return {"host": str(ipaddress.IPv4Address(reader.take(4)))}


def _decode_cacheparms(reader: Reader) -> dict[str, Any]:
    if reader.remaining not in (0, 4):
        raise PioctlError(errno.EINVAL, "getcacheparms takes one int or nothing")
    return {"detail": reader.native()} if reader.remaining else {}


def _encode_cacheparms(result: Any, args: dict[str, Any]) -> bytes:
    counts = [result["blocks"], result["used"], *result.get("detail", [])]
    counts += [0] * (16 - len(counts))
    return struct.pack(">16i", *counts[:16])


_O, _P, _N = PathUse.OBJECT, PathUse.PARENT, PathUse.NONE

#: The pioctls served, by (table, index): their OpenAFS names, ops and codecs.
TABLE: dict[tuple[str, int], Pioctl] = {
    ("V", 1): Pioctl("VIOCSETAL", "setacl", _O, _decode_setacl, _empty),
    ("V", 2): Pioctl("VIOCGETAL", "listacl", _O, _nothing, _encode_acl),
    ("V", 3): Pioctl("VIOCSETTOK", "settoken", _N, _decode_settok, _empty),
    ("V", 4): Pioctl("VIOCGETVOLSTAT", "listquota", _O, _nothing, _encode_volstat),
    ("V", 5): Pioctl("VIOCSETVOLSTAT", "setquota", _O, _decode_setvolstat, _encode_volstat),
    ("V", 6): Pioctl("VIOCFLUSH", "flush", _O, _nothing, _empty),
    ("V", 8): Pioctl("VIOCGETTOK", "gettoken", _N, _decode_gettok, _encode_gettok, MAX_TOKEN_OUT),
    ("V", 9): Pioctl("VIOCUNLOG", "unlog", _N, _nothing, _empty),
    ("V", 10): Pioctl("VIOCCKSERV", "checkservers", _N, _decode_checkservers, _encode_checkservers),
    ("V", 11): Pioctl("VIOCCKBACK", "checkvolumes", _N, _nothing, _empty),
    ("V", 14): Pioctl("VIOCWHEREIS", "whereis", _O, _nothing, _encode_whereis),
    ("V", 21): Pioctl("VIOCUNPAG", "unlog", _N, _nothing, _empty),
    ("V", 22): Pioctl("VIOCGETFID", "getfid", _O, _nothing, _encode_fid),
    ("V", 26): Pioctl("VIOCNEWCELL", "newcell", _N, decode_newcell, _empty),
    ("V", 27): Pioctl("VIOCGETCELL", "listcells", _N, decode_index, encode_listcell),
    ("V", 28): Pioctl("VIOC_AFS_DELETE_MT_PT", "rmmount", _P, _decode_name, _empty),
    ("V", 29): Pioctl("VIOC_AFS_STAT_MT_PT", "lsmount", _P, _decode_name, _encode_mountpoint),
    ("V", 30): Pioctl("VIOC_FILE_CELL_NAME", "whichcell", _O, _nothing, _encode_cell),
    ("V", 31): Pioctl("VIOC_GET_WS_CELL", "wscell", _N, _nothing, _encode_cell),
    ("V", 35): Pioctl("VIOC_GETCELLSTATUS", "getcellstatus", _N, decode_cellname, encode_cellstatus),
    ("V", 36): Pioctl("VIOC_SETCELLSTATUS", "setcell", _N, decode_setcellstatus, _empty),
    ("V", 37): Pioctl("VIOC_FLUSHVOLUME", "flushvolume", _O, _nothing, _empty),
    ("V", 38): Pioctl("VIOC_AFS_SYSNAME", "sysname", _N, _decode_sysname, _encode_sysname),
    ("V", 40): Pioctl("VIOCGETCACHEPARMS", "getcacheparms", _N, _decode_cacheparms, _encode_cacheparms),
    ("V", 42): Pioctl("VIOC_SETSPREFS33", "setserverprefs", _N, _decode_setsprefs33, _empty),
    ("V", 43): Pioctl("VIOC_GETSPREFS", "getserverprefs", _N, _decode_getsprefs, _encode_sprefs),
    ("V", 46): Pioctl("VIOC_SETSPREFS", "setserverprefs", _N, _decode_setsprefs, _empty),
    ("V", 52): Pioctl("VIOC_AFS_FLUSHMOUNT", "flushmount", _P, _decode_name, _empty),
    ("V", 69): Pioctl("VIOC_GETVCXSTATUS2", "getcalleraccess", _O, _nothing, _encode_vcxstat2),
    ("C", 1): Pioctl("VIOC_NEWALIAS", "newalias", _N, decode_newalias, _empty),
    ("C", 2): Pioctl("VIOC_GETALIAS", "listaliases", _N, decode_alias_index, encode_alias),
    ("C", 7): Pioctl("VIOC_GETTOK2", "gettoken", _N, _decode_gettok2, _encode_gettok2, MAX_TOKEN_OUT),
    ("C", 8): Pioctl("VIOC_SETTOK2", "settoken", _N, _decode_settok2, _empty),
    ("C", 13): Pioctl("VIOC_GETPAG", "getpag", _N, _nothing, _encode_pag),
    ("C", 14): Pioctl("VIOC_FLUSHALL", "flushall", _N, _nothing, _empty),
    ("C", 15): Pioctl("VIOC_GETLITERALFID", "getfid", _P, _literal, _encode_fid),
    ("O", 1): Pioctl("VIOC_NFS_NUKE_CREDS", "discard", _N, _decode_nukecreds, _empty),
}  # fmt: skip

#: 'V' pioctls OpenAFS answers with success and nothing else (old group calls).
NOOPS = frozenset({("V", 17), ("V", 18)})
