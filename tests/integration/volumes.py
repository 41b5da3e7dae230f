"""Volume roots for tests, reached as the mount reaches them (vfs/mounts.resolve)."""

from __future__ import annotations

from afsfuse.fs.manager import CacheManager
from afsfuse.fs.mntpt import VolumeType, parse_mount_point
from afsfuse.fs.vnode import AfsFid
from afsfuse.vfs.inodes import MountSpec
from afsfuse.vfs.mounts import resolve


async def volume_root(manager: CacheManager, cell: str, volume: str, kind: str = "rw") -> AfsFid:
    """The root fid of `volume`: "rw" as a `%` mount point reaches it, "auto" as a `#` one
    in a read-only volume does (its RO volume when it has one).  ENOENT when there is no
    such cell or volume."""
    text = f"{'%' if kind == 'rw' else '#'}{cell}:{volume}."
    spec = MountSpec(parse_mount_point(text.encode()), cell, VolumeType.RO, True, text[:-1])
    return await resolve(manager, spec)
