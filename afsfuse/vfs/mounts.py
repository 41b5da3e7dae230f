"""Mount points as the FUSE face shows them (afs-protocol-facts.md section 6).

A mount point is shown as a directory whose attributes come from the mount point's own vnode
(fakestat: stat and `ls -l` never touch the target volume) and whose contents are the target
volume's root.  Parsing and the choice of volume type are fs/mntpt.py's; this module turns
mount points found in AFS, in /afs and under `.:mount` into MountSpecs and resolves them
through the volume location cache when they are first traversed.
"""

from __future__ import annotations

import errno

from afsfuse.fs.api import CacheManagerApi
from afsfuse.fs.errors import FsError
from afsfuse.fs.mntpt import (
    MountPointError,
    VolumeIds,
    VolumeType,
    choose_volume,
    is_mount_point,
    parse_mount_point,
)
from afsfuse.fs.vnode import AfsFid
from afsfuse.vfs.inodes import MountNode, MountSpec

ROOT_VOLUME = "root.cell"


def _spec(text: str, home_cell: str, parent: VolumeType) -> MountSpec | None:
    """`text` is a mount point's contents with the trailing '.'."""
    try:
        target = parse_mount_point(text.encode())
    except (MountPointError, UnicodeEncodeError):
        return None
    cell = target.cell or home_cell
    return MountSpec(target, cell, parent, cell.lower() == home_cell.lower(), text[:-1])


def afs_mount(
    contents: bytes, mode: int, holder: AfsFid, holder_type: int | None
) -> MountSpec | None:
    """The mount point a symlink's text and mode make, or None for an ordinary symlink."""
    if not is_mount_point(mode, contents) or not contents.endswith(b"."):
        return None
    try:
        text = contents.decode()
    except UnicodeDecodeError:
        return None
    parent = VolumeType(holder_type) if holder_type is not None else VolumeType.RW
    return _spec(text, holder.cell, parent)


def cell_mount(cell: str, rw: bool) -> MountSpec:
    """/afs/<cell> (`#`, read-only when the volume has one) or /afs/.<cell> (`%`)."""
    spec = _spec(f"{'%' if rw else '#'}{cell}:{ROOT_VOLUME}.", "", VolumeType.RO)
    assert spec is not None
    return spec


def volume_mount(name: str) -> MountSpec | None:
    """`.:mount/<cell>:<volume>[.readonly|.backup]`, a volume id, or `<cell>:<id>:<vnode>:
    <unique>`: the named volume itself, as a `%` mount point would reach it."""
    if ":" not in name or "/" in name:
        return None
    return _spec(f"%{name}.", "", VolumeType.RO)


async def resolve(manager: CacheManagerApi, spec: MountSpec) -> AfsFid:
    """The fid a mount point leads to, through the cache manager's VLDB cache.  ENODEV
    (as OpenAFS) when the volume has no suitable type, ENOENT when there is no volume."""
    cell = await manager.cell(spec.cell)
    if cell is None:
        raise FsError(errno.ENOENT, f"unknown cell {spec.cell}")
    cell_name = cell.name
    target = spec.target
    key: str | int = target.volume_id if target.volume_id is not None else target.volume
    location = await manager.volume_location(cell_name, key)
    ids = VolumeIds(*location.volume_ids)
    try:
        _, volume_id = choose_volume(target, ids, spec.parent, same_cell=spec.same_cell)
    except MountPointError as e:
        raise FsError(errno.ENODEV, str(e)) from None
    return AfsFid(cell_name, volume_id, target.vnode, target.unique)


async def mount_root(manager: CacheManagerApi, node: MountNode) -> AfsFid:
    """The root of the volume a mount node leads to, resolved at its first traversal."""
    if node.root is None:
        assert node.spec is not None
        node.root = await resolve(manager, node.spec)
    return node.root
