"""The attributes the kernel is given, and the rules for how long it may keep them.

The kernel answers cached lookups and stats without asking us, so what it may keep decides
per-user isolation: a name is cached (entry timeout above 0) only when anonymous users may
look names up in its directory, and an inode's attributes only when anonymous users may
fetch its status.  Everything else has timeouts of 0 and reaches the daemon with its
caller's uid.  This module also answers access(2) and statfs(2) from AFS status.
"""

from __future__ import annotations

import os
import stat
import time

import pyfuse3

from afsfuse.fs.vnode import AfsFid, Status
from afsfuse.fs.volume import VolumeStatus
from afsfuse.rx.interfaces.fs import PRSFS_INSERT, PRSFS_LOOKUP, PRSFS_READ, PRSFS_WRITE
from afsfuse.vfs.inodes import LinkNode, Node

#: Seconds the kernel may keep what every user may see anyway.
SHARED_TIMEOUT = 60.0

_START = int(time.time() * 1e9)
_DYNROOT_BLOCKS = 9_999_999


def anyone_may_stat(status: Status) -> bool:
    """Would an anonymous FetchStatus of this vnode succeed?  (Files need `r` on their
    directory; directories and symlinks `l` on their own ACL.)"""
    needed = PRSFS_READ if status.is_file else PRSFS_LOOKUP
    return status.anonymous_access & needed == needed


def anyone_may_look_up(dir_status: Status) -> bool:
    return dir_status.anonymous_access & PRSFS_LOOKUP == PRSFS_LOOKUP


def file_attrs(status: Status, shared_timeout: float) -> pyfuse3.EntryAttributes:
    """A vnode's attributes, kept by the kernel only when anyone may see them."""
    attrs = status_attrs(status)
    attrs.attr_timeout = shared_timeout if anyone_may_stat(status) else 0.0
    return attrs


def _times(attrs: pyfuse3.EntryAttributes, mtime_ns: int, ctime_ns: int) -> None:
    attrs.st_atime_ns = mtime_ns
    attrs.st_mtime_ns = mtime_ns
    attrs.st_ctime_ns = ctime_ns


def status_attrs(status: Status) -> pyfuse3.EntryAttributes:
    attrs = pyfuse3.EntryAttributes()
    kind = stat.S_IFDIR if status.is_dir else stat.S_IFLNK if status.is_symlink else stat.S_IFREG
    attrs.st_mode = kind | (status.mode & 0o7777)
    attrs.st_nlink = max(status.nlink, 1)
    attrs.st_uid = status.owner & 0xFFFFFFFF
    attrs.st_gid = status.group & 0xFFFFFFFF
    attrs.st_size = status.size
    attrs.st_blksize = 4096
    attrs.st_blocks = (status.size + 511) // 512
    _times(attrs, status.mtime * 10**9, status.server_mtime * 10**9)
    attrs.generation = 0
    return attrs


def mount_attrs(source: Status) -> pyfuse3.EntryAttributes:
    """A mount point as the directory it leads to, from its own vnode's status (fakestat)."""
    attrs = status_attrs(source)
    attrs.st_mode = stat.S_IFDIR | (source.mode & 0o7777) | 0o111
    attrs.st_nlink = 2
    attrs.st_size = 2048
    attrs.st_blocks = 4
    attrs.attr_timeout = 0.0
    return attrs


def synthetic_attrs(node: Node) -> pyfuse3.EntryAttributes:
    """A node of the dynamic root: a directory, or a symlink for a cell alias."""
    attrs = pyfuse3.EntryAttributes()
    if isinstance(node, LinkNode):
        attrs.st_mode = stat.S_IFLNK | 0o755
        attrs.st_size = len(node.target)
        attrs.st_nlink = 1
    else:
        attrs.st_mode = stat.S_IFDIR | 0o755
        attrs.st_size = 2048
        attrs.st_nlink = 2
    attrs.st_blksize = 4096
    attrs.st_blocks = (attrs.st_size + 511) // 512
    _times(attrs, _START, _START)
    attrs.attr_timeout = 0.0
    return attrs


def dot_attrs(inode: int) -> pyfuse3.EntryAttributes:
    """`.` or `..` in a listing: only the inode number and the type reach the program."""
    attrs = pyfuse3.EntryAttributes()
    attrs.st_ino = inode
    attrs.st_mode = stat.S_IFDIR | 0o755
    attrs.attr_timeout = 0.0
    return attrs


def placeholder(fid: AfsFid) -> pyfuse3.EntryAttributes:
    """Attributes for a name the caller may list but not stat: AFS gives directories odd
    vnode numbers, so the type is known; nothing else is shown."""
    attrs = pyfuse3.EntryAttributes()
    attrs.st_mode = stat.S_IFDIR if fid.vnode & 1 else stat.S_IFREG
    attrs.st_nlink = 1
    attrs.attr_timeout = 0.0
    return attrs


def allows(status: Status, mode: int) -> bool:
    """access(2) in AFS terms: the caller's rights, and for files the owner mode bits
    (which the fileserver also applies to everyone)."""
    rights = status.caller_access
    if status.is_dir:
        if mode & (os.R_OK | os.X_OK) and not rights & PRSFS_LOOKUP:
            return False
        return not (mode & os.W_OK and not rights & PRSFS_INSERT)
    if mode & os.R_OK and not (rights & PRSFS_READ and status.mode & 0o400):
        return False
    if mode & os.W_OK and not (rights & PRSFS_WRITE and status.mode & 0o200):
        return False
    return not (mode & os.X_OK and not (rights & PRSFS_READ and status.mode & 0o100))


def statvfs(volume: VolumeStatus | None) -> pyfuse3.StatvfsData:
    """statvfs in KiB blocks: the volume's quota (or its partition when it has none); the
    dynamic root's made-up figures for None."""
    out = pyfuse3.StatvfsData()
    out.f_bsize = out.f_frsize = 1024
    if volume is None:
        total = free = _DYNROOT_BLOCKS
    elif volume.max_quota:
        total = volume.max_quota
        free = min(max(total - volume.blocks_in_use, 0), volume.partition_blocks_available)
    else:
        total = volume.partition_max_blocks
        free = volume.partition_blocks_available
    out.f_blocks = total
    out.f_bfree = out.f_bavail = free
    out.f_files = out.f_ffree = out.f_favail = 1 << 24
    out.f_namemax = 255
    return out
