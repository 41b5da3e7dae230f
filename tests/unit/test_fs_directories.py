"""Local directory edits (fs/directories.py `edit_dir`, fs/dir_edit.py), without a
fileserver: our own change is applied to the listing held when the new data version is
exactly one past it, and anything else drops the listing."""

from __future__ import annotations

from types import SimpleNamespace

import trio

from afsfuse.fs.callback import CallbackRegistry
from afsfuse.fs.dir import DirEntry
from afsfuse.fs.dir_edit import adding, removing, renaming
from afsfuse.fs.directories import DirectoryCache
from afsfuse.fs.operation import FsOperation
from afsfuse.fs.stats import Stats
from afsfuse.fs.status import StatusKeeper
from afsfuse.fs.vnode import AfsFid, Status, VnodeTable
from afsfuse.rx.interfaces import fs as fsint

DIR = AfsFid("c", 1, 1, 1)


def dir_status(version: int) -> fsint.AFSFetchStatus:
    fields = dict.fromkeys(fsint.AFSFetchStatus._fields, 0)
    fields.update(
        InterfaceVersion=1, FileType=fsint.FILE_DIRECTORY, UnixModeBits=0o755, DataVersion=version
    )
    return fsint.AFSFetchStatus(**fields)


def setup() -> tuple[StatusKeeper, DirectoryCache, list[AfsFid]]:
    replaced: list[AfsFid] = []

    def replace(fid: AfsFid) -> None:
        # As the manager wires it: a version someone else made drops the listing.
        dirs.drop(fid)
        replaced.append(fid)

    keeper = StatusKeeper(
        VnodeTable(),
        CallbackRegistry(),
        None,  # type: ignore[arg-type]
        Stats(),
        callback_margin=5.0,
        replaced=replace,
    )
    dirs = DirectoryCache(keeper, None, None, Stats(), limit=8)  # type: ignore[arg-type]
    keeper.vnodes.get(DIR).status = Status.from_afs(dir_status(4))
    dirs.keep(DIR, 4, {b".": DirEntry(1, 1), b"a": DirEntry(2, 2)})
    return keeper, dirs, replaced


def answered(keeper: StatusKeeper) -> FsOperation:
    """An operation on the directory whose call has been answered."""
    op = keeper.operation(None, "FS.CreateFile", keeper.vnodes.get(DIR))
    op.server = SimpleNamespace(addr="10.9.0.1")  # type: ignore[assignment]
    op.sent = trio.current_time()
    return op


async def test_our_change_one_version_on_is_made_to_the_listing_held() -> None:
    keeper, dirs, replaced = setup()
    vnode = keeper.vnodes.get(DIR)
    dirs.edit_dir(answered(keeper), vnode, dir_status(5), adding(b"b", 3, 3))
    dirs.edit_dir(answered(keeper), vnode, dir_status(6), renaming(b"a", b"c"))
    dirs.edit_dir(answered(keeper), vnode, dir_status(7), removing(b"b"))
    assert dirs.held[DIR] == (7, {b".": DirEntry(1, 1), b"c": DirEntry(2, 2)})
    assert vnode.status is not None and vnode.status.data_version == 7
    assert replaced == []  # our own versions: nothing for the kernel to drop


async def test_a_version_further_on_drops_the_listing() -> None:
    keeper, dirs, replaced = setup()
    vnode = keeper.vnodes.get(DIR)
    # Someone else changed the directory too: the listing is fetched again when needed.
    dirs.edit_dir(answered(keeper), vnode, dir_status(6), adding(b"b", 3, 3))
    assert DIR not in dirs.held and replaced == [DIR]


async def test_an_edit_the_listing_cannot_take_drops_it() -> None:
    keeper, dirs, replaced = setup()
    vnode = keeper.vnodes.get(DIR)
    dirs.edit_dir(answered(keeper), vnode, dir_status(5), removing(b"not-there"))
    assert DIR not in dirs.held and replaced == [DIR]


async def test_a_change_without_an_edit_drops_the_listing() -> None:
    keeper, dirs, replaced = setup()
    dirs.edit_dir(answered(keeper), keeper.vnodes.get(DIR), dir_status(5), None)
    assert DIR not in dirs.held and replaced == [DIR]
