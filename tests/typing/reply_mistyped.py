"""Mistakes in XDR replies and arguments that mypy must reject (tests/unit/test_xdr_stubs.py
expects an error on each line marked `# error`)."""

from __future__ import annotations

from afsfuse.rx.interfaces.fs import FS, AFSFid
from afsfuse.rx.rpc import ConnectionLike


async def mistakes(conn: ConnectionLike, fid: AFSFid) -> None:
    reply = await FS.FetchStatus(conn, fid)
    print(reply.OutStatus.Lenght)  # error
    print(reply.Callback)  # error
    name: int = (await FS.FetchACL(conn, fid)).AccessList  # error
    await FS.FetchStatus(conn, 42)  # error
    await FS.StoreData64(conn, fid, 0, 0, 0, 0)  # error
    print(name)
