"""Paths inside the mount, resolved by the daemon for the control socket and rmtsys.

Built before the mount exists (the mountpoint's real path is taken then): the daemon's own
trio thread serves the FUSE session, so it never makes a syscall on the mount; paths are
walked through the same lookups FUSE requests use, as the requesting identity.

The control socket's client resolves a path itself, in the caller's process; rmtsys sends
paths exactly as a tool was given them (made absolute), so `canonical` does what the
kernel's path walk would: `..` and symbolic links, inside the mount read as the caller
through the daemon's own lookups, outside it with lstat and readlink (never on the mount).
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat

import pyfuse3
import trio

from afsfuse.fs.errors import FsError
from afsfuse.fs.vnode import AfsFid
from afsfuse.keyring.store import Identity
from afsfuse.vfs.inodes import FileNode, LinkNode, Node
from afsfuse.vfs.operations import AfsOperations

#: Symbolic links followed in one path before ELOOP, as Linux's path walk allows.
MAX_LINKS = 40


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
            # EINVAL, as OpenAFS answers a pioctl on a file in another file system.
            raise FsError(errno.EINVAL, f"{path} is not in the AFS mount at {self._root}")
        return [os.fsencode(name) for name in relative.split("/")]

    async def _walk(self, names: list[bytes], who: Identity) -> Node:
        """The FUSE face's walk, whose refusals are FUSE's: as FsError here."""
        try:
            return await self._operations.walk(names, who)
        except pyfuse3.FUSEError as e:
            raise FsError(e.errno, os.strerror(e.errno)) from None

    async def fid(self, path: str, who: Identity) -> AfsFid:
        node = await self._walk(self._names(path), who)
        return await self._operations.fid_of(node, who)

    async def parent(self, path: str, who: Identity) -> tuple[AfsFid, bytes]:
        names = self._names(path)
        if not names:
            raise FsError(errno.EINVAL, "the mount's root has no parent in AFS")
        node = await self._walk(names[:-1], who)
        return await self._operations.fid_of(node, who), names[-1]

    async def canonical(self, path: str, who: Identity, follow: bool = True) -> str:
        """`path` with `.`, `..` and symbolic links resolved, as realpath would give it
        (with follow False, a link at the end is left as it is, as lstat would)."""
        if not posixpath.isabs(path) or "\0" in path:
            raise FsError(errno.EINVAL, f"not an absolute path: {path!r}")
        pending = [name for name in path.split("/") if name not in ("", ".")]
        resolved: list[str] = []
        links = 0
        while pending:
            name = pending.pop(0)
            if name == "..":
                if resolved:
                    resolved.pop()
                continue
            candidate = [*resolved, name]
            if not pending and not follow:
                resolved = candidate
                break
            target = await self._link_target("/" + "/".join(candidate), who)
            if target is None:
                resolved = candidate
                continue
            links += 1
            if links > MAX_LINKS:
                raise FsError(errno.ELOOP, f"too many symbolic links in {path}")
            if target.startswith("/"):
                resolved = []
            pending[:0] = [part for part in target.split("/") if part not in ("", ".")]
        return "/" + "/".join(resolved)

    async def _link_target(self, path: str, who: Identity) -> str | None:
        """What the symbolic link at `path` says, or None when it is something else."""
        if self._inside(path):
            node = await self._walk(self._names(path), who)
            if isinstance(node, LinkNode):
                return os.fsdecode(node.target)
            if isinstance(node, FileNode):
                manager = self._operations.manager
                if (await manager.getattr(node.fid, who)).is_symlink:
                    return os.fsdecode(await manager.readlink(node.fid, who))
            return None
        try:
            info = await trio.to_thread.run_sync(os.lstat, path)
            if not stat.S_ISLNK(info.st_mode):
                return None
            return await trio.to_thread.run_sync(os.readlink, path)
        except OSError as e:
            raise FsError(e.errno or errno.EIO, f"{path}: {e.strerror}") from None

    def _inside(self, path: str) -> bool:
        return path == self._root or path.startswith(self._root.rstrip("/") + "/")
