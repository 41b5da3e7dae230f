"""RPCs made as the cell admin through a cache manager's rotation: how tests put files,
directories and ACLs in place behind the back of the cache manager or mount under test."""

from __future__ import annotations

from managers import ADMIN

from afsfuse.fs.manager import CacheManager
from afsfuse.fs.vnode import AfsFid
from afsfuse.rx.interfaces.fs import AFS_SETMODE, FS, AFSFid, AFSStoreStatus


async def admin(m: CacheManager, fid: AfsFid, rpc, *args, **kwargs):
    """An RPC made as the cell admin, through the manager's rotation."""
    token = m.tokens.get(ADMIN, fid.cell)

    async def op(conn, server):
        return await rpc(conn, *args, **kwargs)

    return await m.rotator.call(fid.cell, fid.volume, token, rpc.name, op)


def afs(fid: AfsFid):
    return AFSFid(fid.volume, fid.vnode, fid.unique)


def fid_of(parent: AfsFid, out) -> AfsFid:
    return AfsFid(parent.cell, out.Volume, out.Vnode, out.Unique)


async def make_file(m: CacheManager, parent: AfsFid, name: str, data: bytes) -> AfsFid:
    status = AFSStoreStatus(Mask=AFS_SETMODE, UnixModeBits=0o644)
    reply = await admin(m, parent, FS.CreateFile, afs(parent), name, status)
    fid = fid_of(parent, reply.OutFid)
    await write(m, fid, data)
    return fid


async def write(m: CacheManager, fid: AfsFid, data: bytes, pos: int = 0, length: int | None = None):
    size = pos + len(data) if length is None else length
    await admin(m, fid, FS.StoreData64, afs(fid), AFSStoreStatus(), pos, len(data), size, data=data)
