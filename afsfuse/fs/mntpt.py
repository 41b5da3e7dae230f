"""AFS mount points: recognising them, parsing their text and choosing the volume they reach.

On the server a mount point is a symlink without execute bits whose text is `#` (regular) or
`%` (read-write), an optional `cell:`, a volume name or number, and a trailing `.`, e.g.
`#example.com:root.cell.`.  Which volume a regular mount reaches depends on where it is
mounted from, following OpenAFS's EvalMountData:

- a `.readonly` or `.backup` suffix names that volume; `%` names the read-write volume;
- `#` from a backup volume, with backup preference on and within the cell: the backup volume;
- `#` across a cell boundary, or from a read-only or backup volume: the read-only volume if
  there is one;
- otherwise the read-write volume;
- never from a backup volume into a backup volume.

An all-digit volume is a volume ID; `volid:vnode:unique` names a vnode other than the root
(dynroot's `.:mount` uses it).  Every failure is ENODEV, as in OpenAFS.
"""

from __future__ import annotations

import errno
import stat
from dataclasses import dataclass
from enum import IntEnum

_SUFFIXES = {".readonly": 1, ".backup": 2}
_UINT32_MAX = 0xFFFFFFFF


class VolumeType(IntEnum):
    """Also the index into a VLDB entry's volumeId[]."""

    RW = 0
    RO = 1
    BK = 2


class MountPointError(OSError):
    """The mount point cannot be followed; errno is ENODEV."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENODEV, message)


@dataclass(frozen=True)
class MountTarget:
    """What a mount point's text says, before any VLDB lookup."""

    #: None: the cell of the volume that holds the mount point.
    cell: str | None
    #: The name to look up in the VLDB: the volume name without its suffix, or the volume ID.
    volume: str
    #: `%`: the named volume itself, no read-only preference.
    forced_rw: bool
    #: The type a `.readonly` / `.backup` suffix asks for; None without a suffix.
    suffix: VolumeType | None = None
    #: Set when the volume was given by number.
    volume_id: int | None = None
    vnode: int = 1
    unique: int = 1


@dataclass(frozen=True)
class VolumeIds:
    """The volume IDs of one VLDB entry; 0 where that type does not exist."""

    rw: int = 0
    ro: int = 0
    bk: int = 0

    def __getitem__(self, kind: VolumeType) -> int:
        return (self.rw, self.ro, self.bk)[kind]

    def type_of(self, volume_id: int) -> VolumeType | None:
        for kind in VolumeType:
            if volume_id and self[kind] == volume_id:
                return kind
        return None


def is_mount_point(mode: int, contents: bytes) -> bool:
    """Whether a symlink (FileType 3) with this mode and text is a mount point."""
    return not mode & 0o111 and len(contents) >= 2 and contents[:1] in (b"#", b"%")


def link_mode(contents: bytes) -> int:
    """The mode to create a symlink with: how `fs mkmount` and the CM mark a mount point."""
    is_mount = contents[:1] in (b"#", b"%") and contents.endswith(b".") and len(contents) >= 3
    return stat.S_IFLNK | (0o644 if is_mount else 0o755)


def _number(text: str) -> int | None:
    if not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value <= _UINT32_MAX else None


def parse_mount_point(contents: bytes) -> MountTarget:
    """Parse the text of a mount point as FetchData returns it (trailing '.' included)."""
    try:
        text = contents.decode()
    except UnicodeDecodeError:
        raise MountPointError(f"mount point {contents!r} is not text") from None
    if len(text) < 2 or text[0] not in "#%":
        raise MountPointError(f"{text!r} is not a mount point")
    forced_rw = text[0] == "%"
    body = text[1:-1] if text.endswith(".") else text[1:]
    cell: str | None = None
    if ":" in body:
        cell, body = body.split(":", 1)
        if not cell:
            raise MountPointError(f"mount point {text!r} has an empty cell name")
    if not body:
        raise MountPointError(f"mount point {text!r} names no volume")
    volume, _, fid = body.partition(":")
    volume_id = _number(volume)
    vnode = unique = 1
    if fid:
        vnode_text, _, unique_text = fid.partition(":")
        given_vnode, given_unique = _number(vnode_text), _number(unique_text)
        if volume_id is None or given_vnode is None or given_unique is None:
            raise MountPointError(f"mount point {text!r}: expected volid:vnode:unique")
        vnode, unique = given_vnode, given_unique
    elif ":" in body:
        raise MountPointError(f"mount point {text!r}: expected volid:vnode:unique")
    suffix = None
    if volume_id is None:
        for ending, kind in _SUFFIXES.items():
            if len(volume) > len(ending) and volume.endswith(ending):
                volume, suffix = volume[: -len(ending)], VolumeType(kind)
    return MountTarget(cell, volume, forced_rw, suffix, volume_id, vnode or 1, unique or 1)


def choose_volume(
    target: MountTarget,
    ids: VolumeIds,
    parent: VolumeType,
    *,
    same_cell: bool,
    prefer_backup: bool = False,
) -> tuple[VolumeType, int]:
    """The (type, ID) a mount point reaches, given the VLDB entry of its volume.

    `parent` is the type of the volume holding the mount point; `same_cell` says whether the
    target is in that volume's cell (or its linked cell).
    """
    regular = not target.forced_rw and target.suffix is None
    if regular and prefer_backup and same_cell and parent is VolumeType.BK:
        want = VolumeType.BK
    elif regular and (not same_cell or parent is not VolumeType.RW):
        want = VolumeType.RO
    else:
        want = None

    if target.volume_id is not None:
        found = ids.type_of(target.volume_id)
        if found is None:
            raise MountPointError(f"volume {target.volume_id} is not in its VLDB entry")
        if target.forced_rw:
            want = None
    else:
        found = target.suffix or VolumeType.RW
        if not ids[found]:
            if found is VolumeType.RW and want is not None and ids.ro:
                found = VolumeType.RO
            else:
                raise MountPointError(f"volume {target.volume} has no {found.name} volume")

    if parent is VolumeType.BK and found is VolumeType.BK:
        raise MountPointError("a backup volume cannot mount another backup volume")
    if want is VolumeType.BK and ids.bk:
        return VolumeType.BK, ids.bk
    if want is not None and ids.ro:
        return VolumeType.RO, ids.ro
    return found, ids[found]
