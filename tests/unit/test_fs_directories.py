"""Local directory edits (fs/directories.py `edit_dir`, fs/dir_edit.py): our own change is
applied to the listing held when the new data version is exactly one past it, and anything
else drops the listing.  First the rule alone, then the name operations of the cache
manager against the in-memory fileserver (memfs)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import trio
from memfs import ROOT, MemFileServer, mem_manager

from afsfuse.fs.callback import CallbackRegistry
from afsfuse.fs.dir import DirEntry
from afsfuse.fs.dir_edit import adding, removing, renaming
from afsfuse.fs.directories import DirectoryCache
from afsfuse.fs.manager import CacheManager
from afsfuse.fs.operation import FsOperation
from afsfuse.fs.stats import Stats
from afsfuse.fs.status import StatusKeeper
from afsfuse.fs.vnode import AfsFid, Status, VnodeTable
from afsfuse.keyring.store import Identity
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


# -- the name operations, made to the listing held --------------------------------------

ME = Identity(1000)


async def listed(m: CacheManager, directory: AfsFid) -> set[str]:
    return {name for name, _ in await m.readdir(directory, ME)} - {".", ".."}


def listing_fetches(server: MemFileServer, directory: AfsFid) -> int:
    return sum(1 for vnode, _, _ in server.fetches if vnode == directory.vnode)


async def test_own_creates_removals_and_renames_edit_the_listing_without_fetching_it(
    tmp_path: Path,
) -> None:
    async with mem_manager(tmp_path) as (m, server):
        assert await listed(m, ROOT) == set()
        await m.create(ROOT, "a", 0o644, ME)
        await m.create(ROOT, "b", 0o644, ME)
        sub, _ = await m.mkdir(ROOT, "d", 0o755, ME)
        assert await listed(m, ROOT) == server.names() == {"a", "b", "d"}
        await m.unlink(ROOT, "a", ME)
        await m.rename(ROOT, "b", ROOT, "c", ME)
        assert await listed(m, ROOT) == server.names() == {"c", "d"}
        await m.rename(ROOT, "c", sub, "e", ME)  # from one listing into the other
        assert await listed(m, ROOT) == server.names() == {"d"}
        assert await listed(m, sub) == server.names(sub) == {"e"}
        moved = await m.lookup(sub, "e", ME)
        assert server.vnodes[moved.vnode].unique == moved.unique
        # One fetch of the root, when first listed; the new directory never.
        assert (listing_fetches(server, ROOT), listing_fetches(server, sub)) == (1, 0)


async def test_a_change_by_another_client_between_ours_has_the_listing_fetched_again(
    tmp_path: Path,
) -> None:
    """Our create answers with a data version two past the listing held: someone else
    changed the directory too (their break has not come yet), so our edit alone would
    miss their name."""
    async with mem_manager(tmp_path) as (m, server):
        assert await listed(m, ROOT) == set()
        server.add_file("theirs", b"", break_callback=False)
        await m.create(ROOT, "ours", 0o644, ME)
        assert await listed(m, ROOT) == {"theirs", "ours"}
        assert listing_fetches(server, ROOT) == 2
