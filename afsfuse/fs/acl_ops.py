"""ACLs, quotas and volume status: the calls that ask a fileserver about a volume or a
directory's access list rather than a file's data."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from afsfuse.fs.acl import Acl
from afsfuse.fs.errors import FsError
from afsfuse.fs.server import FileServer
from afsfuse.fs.status import StatusKeeper, afs_fid
from afsfuse.fs.vnode import AfsFid
from afsfuse.fs.volume import VolumeStatus
from afsfuse.keyring.token import Token
from afsfuse.rx.driver import ClientConnection
from afsfuse.rx.errors import RXGEN_OPCODE, RxAbort
from afsfuse.rx.interfaces.fs import AFS_SETMAXQUOTA, FS, AFSStoreVolumeStatus


class AclOps:
    """`changed(fid)`: what the kernel holds of `fid` (its rights) must be asked again."""

    def __init__(self, status: StatusKeeper, changed: Callable[[AfsFid], None]) -> None:
        self.status = status
        self.vnodes = status.vnodes
        self.changed = changed

    async def volume_status(self, fid: AfsFid, token: Token | None) -> VolumeStatus:
        op = self.status.operation(token, "FS.GetVolumeStatus", self.vnodes.get(fid))
        reply = await op.run(lambda conn, server: FS.GetVolumeStatus(conn, fid.volume))
        return VolumeStatus.from_afs(reply)

    async def set_quota(
        self, fid: AfsFid, max_quota_kb: int | None, token: Token | None, offline_message: str
    ) -> None:
        if max_quota_kb is not None and not 0 <= max_quota_kb < 1 << 31:
            raise FsError(errno.EINVAL)
        quota = AFSStoreVolumeStatus(
            Mask=0 if max_quota_kb is None else AFS_SETMAXQUOTA, MaxQuota=max_quota_kb or 0
        )
        op = self.status.operation(token, "FS.SetVolumeStatus", self.vnodes.get(fid))
        # Empty name and messages are left as they are by the fileserver.
        await op.run(
            lambda conn, server: FS.SetVolumeStatus(
                conn, fid.volume, quota, "", offline_message, ""
            )
        )

    async def get_acl(self, fid: AfsFid, token: Token | None) -> str:
        op = self.status.operation(token, "FS.FetchACL", self.vnodes.get(fid))
        reply = await op.run(lambda conn, server: FS.FetchACL(conn, afs_fid(fid)))
        text: bytes = reply.AccessList
        return text.rstrip(b"\0").decode("utf-8", "surrogateescape")

    async def set_acl(self, fid: AfsFid, text: str | bytes, token: Token | None) -> None:
        try:
            body = Acl.parse(text).format().encode("utf-8", "surrogateescape") + b"\0"
        except ValueError as e:
            raise FsError(errno.EINVAL, str(e)) from None
        vnode = self.vnodes.get(fid)

        async def call(conn: ClientConnection, server: FileServer) -> Any:
            if not server.no_store_acl:
                try:
                    return await FS.StoreACL(conn, afs_fid(fid), body)
                except RxAbort as e:
                    if e.code != RXGEN_OPCODE:
                        raise
                    server.no_store_acl = True
            return await FS.OldStoreACL(conn, afs_fid(fid), body)

        op = self.status.operation(token, "FS.StoreACL", vnode)
        reply = await op.run(call)
        op.commit(vnode, reply.OutStatus)
        self.forget_rights_under(fid)

    def forget_rights_under(self, dir_fid: AfsFid) -> None:
        """A directory's ACL decides the rights on it and on its files.  The fileserver
        breaks other clients' callbacks, not ours, so our record of every identity's rights
        there goes here; each identity's next request asks the server again."""
        for vnode in self.vnodes.matching(dir_fid.volume):
            status = vnode.status
            if vnode.fid.cell != dir_fid.cell or status is None:
                continue
            if vnode.fid == dir_fid or (
                (status.parent_vnode, status.parent_unique) == (dir_fid.vnode, dir_fid.unique)
            ):
                vnode.access.clear()
                self.changed(vnode.fid)
