"""Name operations: create, mkdir, symlink, link, unlink, rmdir, rename.

Each is one RPC on a directory (an `FsOperation`, fs/operation.py) whose reply carries the
directory's new status; our own change is then made to the listing held (`edit_dir`,
fs/directories.py) when nothing else changed it.  A removed or replaced name's vnode is
fetched again when next asked, and its unsent data goes with its last name (`unlinked`).
"""

from __future__ import annotations

import errno
import time
from collections.abc import Awaitable, Callable
from typing import Any

from afsfuse.fs import dir as afsdir
from afsfuse.fs.dir_edit import ListingEdit, adding, removing, renaming
from afsfuse.fs.directories import DirectoryCache
from afsfuse.fs.errors import FsError
from afsfuse.fs.mntpt import link_mode
from afsfuse.fs.operation import NO_CALLBACK, FsOperation
from afsfuse.fs.status import StatusKeeper, afs_fid
from afsfuse.fs.vnode import AfsFid, Status
from afsfuse.keyring.token import Token
from afsfuse.rx.driver import ClientConnection
from afsfuse.rx.interfaces.fs import AFS_SETMODE, AFS_SETMODTIME, FS, AFSFid, AFSStoreStatus


def encode_name(name: str | bytes) -> bytes:
    return name if isinstance(name, bytes) else name.encode("utf-8", "surrogateescape")


def entry_name(name: str | bytes) -> bytes:
    """A name a directory entry may have, as the bytes the fileserver takes."""
    raw = encode_name(name)
    if not raw or raw in (b".", b"..") or b"/" in raw or b"\0" in raw:
        raise FsError(errno.EINVAL, f"bad name {name!r}")
    if len(raw) > afsdir.NAME_MAX:
        raise FsError(errno.ENAMETOOLONG)
    return raw


class NameOps:
    """`notify(fid)` tells the kernel; `local_view(status, fid)` is this mount's view of a
    file with unsent data; `unlinked(fid, token)` drops a file's unsent data if its last
    name went."""

    def __init__(
        self,
        status: StatusKeeper,
        dirs: DirectoryCache,
        *,
        notify: Callable[[AfsFid | None], None],
        local_view: Callable[[Status, AfsFid], Status],
        unlinked: Callable[[AfsFid, Token | None], Awaitable[None]],
    ) -> None:
        self.status = status
        self.vnodes = status.vnodes
        self.dirs = dirs
        self.notify = notify
        self.local_view = local_view
        self.unlinked = unlinked

    async def _dir_call(
        self,
        dir_fid: AfsFid,
        token: Token | None,
        name: str,
        call: Callable[[ClientConnection], Any],
        edit: Callable[[Any], ListingEdit | None],
        status_field: str = "OutDirStatus",
    ) -> tuple[FsOperation, Any]:
        """A call that changes directory `dir_fid` and answers with its new status in
        `status_field`; `edit(reply)` says what the call did to the listing."""
        vnode = self.vnodes.get(dir_fid)
        op = self.status.operation(token, name, vnode)
        reply = await op.run(lambda conn, server: call(conn))
        self.dirs.edit_dir(op, vnode, getattr(reply, status_field), edit(reply))
        return op, reply

    def _commit_new(self, op: FsOperation, dir_fid: AfsFid, reply: Any) -> tuple[AfsFid, Status]:
        out = reply.OutFid
        fid = AfsFid(dir_fid.cell, out.Volume, out.Vnode, out.Unique)
        vnode = self.vnodes.get(fid)
        callback = getattr(reply, "CallBack", NO_CALLBACK)
        return fid, op.commit(vnode, reply.OutFidStatus, callback)

    async def _entry(self, dir_fid: AfsFid, name: bytes, token: Token | None) -> AfsFid | None:
        """The fid `name` stands for before a change, so its record can be dropped after
        (None if there is none or the listing cannot be read: the server decides anyway)."""
        try:
            entry = (await self.dirs.listing(dir_fid, token)).get(name)
        except FsError:
            return None
        if entry is None:
            return None
        return AfsFid(dir_fid.cell, dir_fid.volume, entry.vnode, entry.unique)

    def _changed(self, fid: AfsFid | None) -> None:
        """`fid`'s status changed on the server by our doing (link count, '..'): fetch it
        again when next asked."""
        if fid is None:
            return
        vnode = self.vnodes.peek(fid)
        if vnode is not None:
            vnode.invalidate()
        self.dirs.drop(fid)
        self.notify(fid)

    async def create(
        self, dir_fid: AfsFid, name: str | bytes, mode: int, token: Token | None
    ) -> tuple[AfsFid, Status]:
        """A new empty file; EEXIST if the name is taken."""
        return await self._new_entry(dir_fid, name, mode, token, "FS.CreateFile", FS.CreateFile)

    async def mkdir(
        self, dir_fid: AfsFid, name: str | bytes, mode: int, token: Token | None
    ) -> tuple[AfsFid, Status]:
        """A new directory; it inherits the parent's ACL on the server.  What it holds is
        known without asking ('.' and '..'), so a `mkdir -p` or `tar x` does not fetch every
        directory it has just made."""
        fid, status = await self._new_entry(dir_fid, name, mode, token, "FS.MakeDir", FS.MakeDir)
        if status.is_dir:
            here = afsdir.DirEntry(fid.vnode, fid.unique)
            parent = afsdir.DirEntry(dir_fid.vnode, dir_fid.unique)
            self.dirs.keep(fid, status.data_version, {b".": here, b"..": parent})
        return fid, status

    async def symlink(
        self, dir_fid: AfsFid, name: str | bytes, target: str | bytes, token: Token | None
    ) -> tuple[AfsFid, Status]:
        """A symlink; text like '#cell:volume.' makes a mount point (mode 0644, fs/mntpt.py)."""
        contents = encode_name(target)
        if not contents:
            raise FsError(errno.ENOENT, "empty symlink target")
        return await self._new_entry(
            dir_fid,
            name,
            link_mode(contents),
            token,
            "FS.Symlink",
            lambda conn, fid, raw, status: FS.Symlink(conn, fid, raw, contents, status),
        )

    async def _new_entry(
        self,
        dir_fid: AfsFid,
        name: str | bytes,
        mode: int,
        token: Token | None,
        what: str,
        rpc: Callable[[ClientConnection, AFSFid, bytes, Any], Awaitable[Any]],
    ) -> tuple[AfsFid, Status]:
        """One RPC that makes a new vnode and its name in `dir_fid` (CreateFile, MakeDir,
        Symlink), with the name added to our copy of the directory."""
        raw = entry_name(name)
        in_status = AFSStoreStatus(
            Mask=AFS_SETMODE | AFS_SETMODTIME,
            ClientModTime=int(time.time()),
            UnixModeBits=mode & 0o7777,
        )
        op, reply = await self._dir_call(
            dir_fid,
            token,
            what,
            lambda conn: rpc(conn, afs_fid(dir_fid), raw, in_status),
            lambda reply: adding(raw, reply.OutFid.Vnode, reply.OutFid.Unique),
        )
        return self._commit_new(op, dir_fid, reply)

    async def link(
        self, dir_fid: AfsFid, name: str | bytes, target: AfsFid, token: Token | None
    ) -> Status:
        """A hard link to `target`; AFS allows them only within one directory (the
        fileserver refuses others), never across volumes (EXDEV)."""
        raw = entry_name(name)
        if (target.cell, target.volume) != (dir_fid.cell, dir_fid.volume):
            raise FsError(errno.EXDEV)
        op, reply = await self._dir_call(
            dir_fid,
            token,
            "FS.Link",
            lambda conn: FS.Link(conn, afs_fid(dir_fid), raw, afs_fid(target)),
            lambda reply: adding(raw, target.vnode, target.unique),
        )
        status = op.commit(self.vnodes.get(target), reply.OutFidStatus)
        return self.local_view(status, target)

    async def unlink(self, dir_fid: AfsFid, name: str | bytes, token: Token | None) -> None:
        raw = entry_name(name)
        victim = await self._entry(dir_fid, raw, token)
        await self._dir_call(
            dir_fid,
            token,
            "FS.RemoveFile",
            lambda conn: FS.RemoveFile(conn, afs_fid(dir_fid), raw),
            lambda reply: removing(raw),
            "OutStatus",
        )
        self._changed(victim)
        if victim is not None:
            await self.unlinked(victim, token)

    async def rmdir(self, dir_fid: AfsFid, name: str | bytes, token: Token | None) -> None:
        """ENOTEMPTY unless the directory is empty."""
        raw = entry_name(name)
        victim = await self._entry(dir_fid, raw, token)
        try:
            await self._dir_call(
                dir_fid,
                token,
                "FS.RemoveDir",
                lambda conn: FS.RemoveDir(conn, afs_fid(dir_fid), raw),
                lambda reply: removing(raw),
            )
        except FsError as e:
            # The fileserver says EEXIST (POSIX allows both); Linux programs expect this.
            if e.errno == errno.EEXIST:
                raise FsError(errno.ENOTEMPTY, e.strerror) from None
            raise
        self._changed(victim)

    async def rename(
        self,
        src_dir: AfsFid,
        name: str | bytes,
        dst_dir: AfsFid,
        new_name: str | bytes,
        token: Token | None,
    ) -> None:
        """Rename within a volume (EXDEV across volumes), replacing an existing target as
        rename(2) does; the fileserver refuses what rename(2) would (ENOTEMPTY, EISDIR...)."""
        old, new = entry_name(name), entry_name(new_name)
        if (src_dir.cell, src_dir.volume) != (dst_dir.cell, dst_dir.volume):
            raise FsError(errno.EXDEV)
        moved = await self._entry(src_dir, old, token)
        replaced = await self._entry(dst_dir, new, token)
        src_vnode, dst_vnode = self.vnodes.get(src_dir), self.vnodes.get(dst_dir)
        op = self.status.operation(token, "FS.Rename", dst_vnode, src_vnode)
        reply = await op.run(
            lambda conn, server: FS.Rename(conn, afs_fid(src_dir), old, afs_fid(dst_dir), new)
        )
        new_status = reply.OutNewDirStatus
        if src_dir == dst_dir:
            self.dirs.edit_dir(op, dst_vnode, new_status, renaming(old, new))
        else:
            # What left the source listing is what the target gets, if we saw it leave.
            moving: list[afsdir.DirEntry] = []
            self.dirs.edit_dir(
                op,
                src_vnode,
                reply.OutOldDirStatus,
                lambda entries: moving.append(entries.pop(old)),
            )
            arrived = adding(new, *moving[0]) if moving else None
            self.dirs.edit_dir(op, dst_vnode, new_status, arrived)
            self._changed(moved)  # a directory's '..' changed with it
        if replaced != moved:
            self._changed(replaced)
            if replaced is not None:
                await self.unlinked(replaced, token)
