"""Paths inside the mount, resolved by the daemon for the control socket.

Built before the mount exists (the mountpoint's real path is taken then): the daemon's own
trio thread serves the FUSE session, so it never makes a syscall on the mount; paths are
walked through the same lookups FUSE requests use, as the requesting identity.
"""

from __future__ import annotations

import errno
import os
import posixpath

from afsfuse.fs.errors import FsError
from afsfuse.fs.vnode import AfsFid
from afsfuse.keyring.store import Identity
from afsfuse.vfs.operations import AfsOperations


class MountPaths:
    def __init__(self, operations: AfsOperations, mountpoint: str | os.PathLike[str]) -> None:
        self._operations = operations
        self._root = os.path.realpath(mountpoint)

    def _names(self, path: str) -> list[bytes]:
        if not posixpath.isabs(path):
            raise FsError(errno.EINVAL, f"not an absolute path: {path!r}")
        relative = posixpath.relpath(posixpath.normpath(path), self._root)
        if relative == ".":
            return []
        if relative == ".." or relative.startswith("../"):
            raise FsError(errno.EXDEV, f"{path} is not in the AFS mount at {self._root}")
        return [os.fsencode(name) for name in relative.split("/")]

    async def fid(self, path: str, who: Identity) -> AfsFid:
        node = await self._operations.walk(self._names(path), who)
        return await self._operations.fid_of(node, who)

    async def parent(self, path: str, who: Identity) -> tuple[AfsFid, bytes]:
        names = self._names(path)
        if not names:
            raise FsError(errno.EINVAL, "the mount's root has no parent in AFS")
        node = await self._operations.walk(names[:-1], who)
        return await self._operations.fid_of(node, who), names[-1]
