"""The one mapping from AFS, Rx, rxkad and VL error codes to the errno a program sees.

Everything the cache manager core raises is an FsError carrying an errno, so the FUSE face
can answer with it unchanged.  The codes and the reasons for each choice are in
afs-protocol-facts.md 3.4 (what the OpenAFS cache manager does) and 3.3 (error translation).
"""

from __future__ import annotations

import errno
import os

from afsfuse.rx import rxkad
from afsfuse.rx.errors import (
    RX_CALL_DEAD,
    RX_CALL_TIMEOUT,
    RX_EOF,
    RX_INVALID_OPERATION,
    RX_MSGSIZE,
    RX_PROTOCOL_ERROR,
    RX_USER_ABORT,
    RXGEN_CC_MARSHAL,
    RXGEN_CC_UNMARSHAL,
    RXGEN_DECODE,
    RXGEN_OPCODE,
    RXGEN_SS_MARSHAL,
    RXGEN_SS_UNMARSHAL,
    error_name,
)
from afsfuse.rx.interfaces import fs as fsint
from afsfuse.rx.interfaces import vl as vlint


class FsError(OSError):
    """A cache-manager failure, as the errno a local filesystem would give."""

    # Always set, unlike an OSError's.
    errno: int
    strerror: str

    def __init__(self, err: int, message: str | None = None) -> None:
        super().__init__(err, message or os.strerror(err))


_VOLUME_ERRNO = {
    # The application sees ENOENT rather than OpenAFS's EIO: the fid is gone (deleted by
    # another client), which is what a local filesystem reports for a vanished file.
    fsint.VNOVNODE: errno.ENOENT,
    fsint.VSALVAGE: errno.ENODEV,
    fsint.VNOVOL: errno.ENODEV,
    fsint.VOFFLINE: errno.ENODEV,
    fsint.VMOVED: errno.ENODEV,
    fsint.VSALVAGING: errno.ENODEV,
    fsint.VNOSERVICE: errno.ETIMEDOUT,
    fsint.VDISKFULL: errno.ENOSPC,
    fsint.VOVERQUOTA: errno.EDQUOT,
    fsint.VBUSY: errno.EWOULDBLOCK,
    fsint.VRESTARTING: errno.EWOULDBLOCK,
    fsint.VIO: errno.EIO,
    fsint.VRESTRICTED: errno.EACCES,
    fsint.VICETOKENDEAD: errno.EKEYEXPIRED,
    fsint.VICECONNBAD: errno.ECONNREFUSED,
}

_RX_ERRNO = {
    RX_CALL_DEAD: errno.ETIMEDOUT,
    RX_CALL_TIMEOUT: errno.ETIMEDOUT,
    RX_EOF: errno.EIO,
    RX_INVALID_OPERATION: errno.EPROTO,
    RX_PROTOCOL_ERROR: errno.EPROTO,
    RX_USER_ABORT: errno.ECONNABORTED,
    RX_MSGSIZE: errno.EMSGSIZE,
    RXGEN_CC_MARSHAL: errno.EINVAL,
    RXGEN_CC_UNMARSHAL: errno.EIO,
    RXGEN_SS_MARSHAL: errno.EIO,
    RXGEN_SS_UNMARSHAL: errno.EPROTO,
    RXGEN_DECODE: errno.EIO,
    RXGEN_OPCODE: errno.EOPNOTSUPP,
}

_RXKAD_ERRNO = {
    rxkad.RXKADEXPIRED: errno.EKEYEXPIRED,
    rxkad.RXKADNOAUTH: errno.EKEYREJECTED,
    rxkad.RXKADBADKEY: errno.EKEYREJECTED,
    rxkad.RXKADBADTICKET: errno.EKEYREJECTED,
    rxkad.RXKADUNKNOWNKEY: errno.EKEYREJECTED,
    rxkad.RXKADTICKETLEN: errno.EKEYREJECTED,
}
_RXKAD_FIRST, _RXKAD_LAST = rxkad.RXKADINCONSISTENCY, rxkad.RXKADILLEGALLEVEL

_VL_ERRNO = {
    vlint.VL_NOENT: errno.ENOENT,
    vlint.VL_BADNAME: errno.ENOENT,
    vlint.VL_PERM: errno.EACCES,
}


def errno_for(code: int) -> int:
    """The errno for an abort code from a fileserver, VL server or the Rx layer."""
    if code in _VOLUME_ERRNO:
        return _VOLUME_ERRNO[code]
    if code in _RX_ERRNO:
        return _RX_ERRNO[code]
    if fsint.UAE_BASE <= code < fsint.UAE_BASE + fsint.UAE_COUNT:
        return code - fsint.UAE_BASE + 1
    if _RXKAD_FIRST <= code <= _RXKAD_LAST:
        return _RXKAD_ERRNO.get(code, errno.EPROTO)
    if code in _VL_ERRNO:
        return _VL_ERRNO[code]
    if 0 < code < 100:
        # A server that did not translate sends its own errno; OpenAFS servers run on
        # systems whose small errno values agree with Linux for the common ones.
        return code
    return errno.EIO


def fs_error(code: int, what: str = "") -> FsError:
    """An FsError for an abort code, whose message names both the code and the operation."""
    text = error_name(code)
    return FsError(errno_for(code), f"{what}: {text}" if what else text)


def is_volume_location_error(code: int) -> bool:
    """Codes after which the VLDB is asked again and another site is tried."""
    return code in (fsint.VSALVAGE, fsint.VNOVOL, fsint.VOFFLINE, fsint.VMOVED)


def is_busy(code: int) -> bool:
    """Codes after which the same server is asked again after a pause."""
    return code in (fsint.VBUSY, fsint.VRESTARTING)
