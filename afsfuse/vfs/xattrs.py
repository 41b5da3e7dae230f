"""The `afs.*` extended attributes, as a table of {name: handler}.

afs.cell, afs.fid and afs.volume describe the vnode a file or mount point shows (a mount
point: its volume's root); afs.mountpoint is a mount point's own text; afs.acl is the
directory's ACL as FetchACL gives it and StoreACL takes it (what kAFS exposes), the only
one that can be set.  With xattrs off (`--no-xattrs`) every request answers ENOSYS, and
the kernel stops asking for the mount's lifetime.

A name outside `afs.*` (a security label, a POSIX ACL, `user.*`) answers EOPNOTSUPP, as on
kAFS, where the VFS finds no handler for it: AFS keeps none of them.  It also spares a
request per entry: `ls -l` asks each entry for `security.selinux` and
`system.posix_acl_access`, and coreutils stops asking a device for either once it answered
"not supported" (ENODATA, "none here", had it ask again for every entry).
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pyfuse3

from afsfuse.fs.api import CacheManagerApi
from afsfuse.fs.mntpt import VolumeType
from afsfuse.fs.vnode import AfsFid
from afsfuse.keyring.store import Identity
from afsfuse.vfs.inodes import FileNode, MountNode, Node
from afsfuse.vfs.mounts import mount_root
from afsfuse.vfs.request import fail

XATTR_CELL = b"afs.cell"
XATTR_FID = b"afs.fid"
XATTR_VOLUME = b"afs.volume"
XATTR_MOUNTPOINT = b"afs.mountpoint"
XATTR_ACL = b"afs.acl"
_PREFIX = b"afs."

_SUFFIXES: dict[int | None, str] = {VolumeType.RO: ".readonly", VolumeType.BK: ".backup"}

#: A handler: the value for a file or mount node the caller may see.
Getter = Callable[["Xattrs", FileNode | MountNode, Identity], Awaitable[bytes]]
Setter = Callable[["Xattrs", AfsFid, bytes, Identity], Awaitable[None]]


@dataclass(frozen=True)
class Xattr:
    get: Getter
    set: Setter | None = None
    #: Which nodes listxattr names it for.
    listed_for_files: bool = False
    listed_for_mounts: bool = False


class Xattrs:
    """listxattr, getxattr, setxattr and removexattr for the FUSE handlers."""

    def __init__(self, manager: CacheManagerApi, enabled: bool = True) -> None:
        self.manager = manager
        self.enabled = enabled
        self._files = [n for n, x in TABLE.items() if x.listed_for_files]
        self._mounts = [n for n, x in TABLE.items() if x.listed_for_mounts]

    def check(self) -> None:
        if not self.enabled:
            raise fail(errno.ENOSYS)  # the kernel stops asking, for the mount's lifetime

    def names(self, node: Node) -> list[bytes]:
        """What listxattr gives (after `check`)."""
        if isinstance(node, MountNode):
            return list(self._mounts)
        if isinstance(node, FileNode):
            return list(self._files)
        return []

    async def get(self, xattr: Xattr, node: Node, who: Identity) -> bytes:
        """The value of `xattr` (an entry of TABLE, which the caller looked up itself)
        for a node the caller may see."""
        if isinstance(node, MountNode):
            if node.source is not None:
                await self.manager.getattr(node.source, who)  # the caller may see it at all
        elif isinstance(node, FileNode):
            await self.manager.getattr(node.fid, who)
        else:
            raise fail(pyfuse3.ENOATTR)
        return await xattr.get(self, node, who)

    def setter(self, name: bytes) -> Setter:
        """How `name` is set: EOPNOTSUPP for a name not in the table, EPERM for a read-only
        one."""
        self.check()
        xattr = TABLE.get(name)
        if xattr is None or xattr.set is None:
            raise fail(errno.EOPNOTSUPP if xattr is None else errno.EPERM)
        return xattr.set

    def remove(self, name: bytes) -> None:
        self.check()
        raise fail(errno.EPERM if name in TABLE else absent(name))

    async def target(self, node: FileNode | MountNode) -> AfsFid:
        """The vnode a node shows: a mount point's is its volume's root."""
        return node.fid if isinstance(node, FileNode) else await mount_root(self.manager, node)

    def volume_name(self, fid: AfsFid) -> str:
        location = self.manager.cached_volume(fid)
        if location is None:
            return str(fid.volume)
        suffix = _SUFFIXES.get(location.type_of(fid.volume), "")
        return location.name + suffix


def absent(name: bytes) -> int:
    """The errno for a name not in TABLE: ENODATA inside `afs.*`, EOPNOTSUPP outside it
    (see the module's docstring)."""
    return pyfuse3.ENOATTR if name.startswith(_PREFIX) else errno.EOPNOTSUPP


async def _cell(xattrs: Xattrs, node: FileNode | MountNode, who: Identity) -> bytes:
    return (await xattrs.target(node)).cell.encode()


async def _fid(xattrs: Xattrs, node: FileNode | MountNode, who: Identity) -> bytes:
    fid = await xattrs.target(node)
    return f"{fid.volume}.{fid.vnode}.{fid.unique}".encode()


async def _volume(xattrs: Xattrs, node: FileNode | MountNode, who: Identity) -> bytes:
    return xattrs.volume_name(await xattrs.target(node)).encode()


async def _mountpoint(xattrs: Xattrs, node: FileNode | MountNode, who: Identity) -> bytes:
    if not isinstance(node, MountNode):
        raise fail(pyfuse3.ENOATTR)
    assert node.spec is not None
    return node.spec.text.encode()


async def _acl(xattrs: Xattrs, node: FileNode | MountNode, who: Identity) -> bytes:
    fid = await xattrs.target(node)
    return (await xattrs.manager.get_acl(fid, who)).encode("utf-8", "surrogateescape")


async def _set_acl(xattrs: Xattrs, fid: AfsFid, value: bytes, who: Identity) -> None:
    """The ACL of the directory (a file's: its directory's)."""
    await xattrs.manager.set_acl(fid, value.rstrip(b"\0"), who)


TABLE: dict[bytes, Xattr] = {
    XATTR_CELL: Xattr(_cell, listed_for_files=True, listed_for_mounts=True),
    XATTR_FID: Xattr(_fid, listed_for_files=True, listed_for_mounts=True),
    XATTR_VOLUME: Xattr(_volume, listed_for_files=True, listed_for_mounts=True),
    XATTR_MOUNTPOINT: Xattr(_mountpoint, listed_for_mounts=True),
    XATTR_ACL: Xattr(_acl, _set_acl),
}
