"""Mount point text and the volume a mount point reaches."""

from __future__ import annotations

import errno
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from afsfuse.fs.mntpt import (
    MountPointError,
    MountTarget,
    VolumeIds,
    VolumeType,
    choose_volume,
    is_mount_point,
    link_mode,
    parse_mount_point,
)

RW, RO, BK = VolumeType.RW, VolumeType.RO, VolumeType.BK
ALL = VolumeIds(rw=100, ro=101, bk=102)
RW_ONLY = VolumeIds(rw=100)


@pytest.mark.parametrize(
    ("text", "target"),
    [
        (b"#root.cell.", MountTarget(None, "root.cell", False)),
        (b"%root.cell.", MountTarget(None, "root.cell", True)),
        (b"#example.com:root.cell.", MountTarget("example.com", "root.cell", False)),
        (b"#user.alice.readonly.", MountTarget(None, "user.alice", False, RO)),
        (b"%c:user.alice.backup.", MountTarget("c", "user.alice", True, BK)),
        (b"#.readonly.", MountTarget(None, ".readonly", False)),  # no stem: just a name
        (b"#536870915.", MountTarget(None, "536870915", False, volume_id=536870915)),
        (b"%c:536870915:5:7.", MountTarget("c", "536870915", True, None, 536870915, 5, 7)),
        (b"#root.cell", MountTarget(None, "root.cell", False)),  # trailing '.' is optional
        (b"#c:5.", MountTarget("c", "5", False, volume_id=5)),  # the first ':' ends the cell
        (b"#99999999999.", MountTarget(None, "99999999999", False)),  # too big for an ID
    ],
)
def test_parse(text: bytes, target: MountTarget) -> None:
    assert parse_mount_point(text) == target


@pytest.mark.parametrize(
    "text",
    [b"", b"#", b"#.", b"root.cell.", b"@sys.", b"#:vol.", b"#cell:.", b"#c:1:2.", b"#c:1:x:3.",
     b"#c:1:2:.", b"#c:1:2:3:4.", b"#c:1::3.", b"#\xff\xfe.", b"#c:name:1:1."],
)  # fmt: skip
def test_malformed_text_is_enodev(text: bytes) -> None:
    with pytest.raises(MountPointError) as caught:
        parse_mount_point(text)
    assert caught.value.errno == errno.ENODEV


@given(st.binary(max_size=60))
def test_any_bytes_parse_or_fail_cleanly(text: bytes) -> None:
    try:
        target = parse_mount_point(text)
    except MountPointError:
        return
    assert target.volume
    assert target.cell is None or target.cell


def test_mount_point_or_symlink() -> None:
    assert is_mount_point(0o644, b"#root.cell.")
    assert is_mount_point(0o600, b"%c:v.")
    assert not is_mount_point(0o755, b"#root.cell.")  # an ordinary symlink to '#root.cell.'
    assert not is_mount_point(0o644, b"/etc/passwd")
    assert not is_mount_point(0o644, b"#")


def test_link_mode_marks_mount_points_the_way_fs_mkmount_does() -> None:
    assert link_mode(b"#root.cell.") == stat.S_IFLNK | 0o644
    assert link_mode(b"%c:v.") == stat.S_IFLNK | 0o644
    assert link_mode(b"#root.cell") == stat.S_IFLNK | 0o755
    assert link_mode(b"../x.") == stat.S_IFLNK | 0o755


def choose(text: bytes, ids: VolumeIds, parent: VolumeType, **kw) -> tuple[VolumeType, int]:
    return choose_volume(parse_mount_point(text), ids, parent, **{"same_cell": True, **kw})


def test_regular_mount_from_rw_stays_rw() -> None:
    assert choose(b"#v.", ALL, RW) == (RW, 100)


def test_regular_mount_from_ro_prefers_ro() -> None:
    assert choose(b"#v.", ALL, RO) == (RO, 101)
    assert choose(b"#v.", RW_ONLY, RO) == (RW, 100)


def test_regular_mount_across_cells_prefers_ro() -> None:
    assert choose(b"#c:v.", ALL, RW, same_cell=False) == (RO, 101)
    assert choose(b"#c:v.", RW_ONLY, RW, same_cell=False) == (RW, 100)


def test_ro_only_volume_is_reached_when_ro_is_wanted() -> None:
    assert choose(b"#v.", VolumeIds(ro=101), RO) == (RO, 101)
    with pytest.raises(MountPointError):
        choose(b"#v.", VolumeIds(ro=101), RW)


def test_rw_mount_is_always_rw() -> None:
    assert choose(b"%v.", ALL, RO) == (RW, 100)
    assert choose(b"%c:v.", ALL, RW, same_cell=False) == (RW, 100)


def test_suffix_forces_the_type() -> None:
    assert choose(b"#v.readonly.", ALL, RW) == (RO, 101)
    assert choose(b"#v.backup.", ALL, RO) == (BK, 102)
    assert choose(b"%v.readonly.", ALL, RW) == (RO, 101)
    with pytest.raises(MountPointError):
        choose(b"#v.readonly.", RW_ONLY, RW)


def test_from_a_backup_volume() -> None:
    # A backup volume counts as read-only, so '#' prefers RO...
    assert choose(b"#v.", ALL, BK) == (RO, 101)
    # ...or BK with backup preference, in the same cell only; RO when there is no BK.
    assert choose(b"#v.", ALL, BK, prefer_backup=True) == (BK, 102)
    assert choose(b"#v.", VolumeIds(rw=100, ro=101), BK, prefer_backup=True) == (RO, 101)
    assert choose(b"#c:v.", ALL, BK, same_cell=False, prefer_backup=True) == (RO, 101)
    assert choose(b"#v.", ALL, RW, prefer_backup=True) == (RW, 100)
    # Never from a backup into a backup.
    with pytest.raises(MountPointError):
        choose(b"#v.backup.", ALL, BK)


def test_volume_by_number() -> None:
    assert choose(b"%101.", ALL, RW) == (RO, 101)  # '%' with an ID: exactly that volume
    assert choose(b"%100.", ALL, RO) == (RW, 100)
    assert choose(b"#100.", ALL, RO) == (RO, 101)  # '#' with an ID still prefers RO
    assert choose(b"#100.", ALL, RW) == (RW, 100)
    with pytest.raises(MountPointError):
        choose(b"#555.", ALL, RW)
    with pytest.raises(MountPointError):
        choose(b"%102.", ALL, BK)
