"""Uses of typed XDR replies that mypy (strict) accepts: see tests/unit/test_xdr_stubs.py."""

from __future__ import annotations

from afsfuse.rx.interfaces.fs import FS, AFSFid
from afsfuse.rx.interfaces.vl import VL
from afsfuse.rx.rpc import ConnectionLike


async def file_length(conn: ConnectionLike, fid: AFSFid) -> int:
    reply = await FS.FetchStatus(conn, fid)
    return reply.OutStatus.Length | reply.OutStatus.Length_hi << 32


async def first_bytes(conn: ConnectionLike, fid: AFSFid) -> bytes:
    data, reply = await FS.FetchData64(conn, fid, 0, 16)
    assert reply.CallBack.ExpirationTime >= 0
    return data


async def volume_name(conn: ConnectionLike, volume: str) -> str:
    entry = await VL.GetEntryByNameU(conn, volume)
    return entry.name
