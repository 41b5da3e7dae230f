"""Stores as the cache manager makes them (fs/writer.py, fs/unsent.py), against the
in-memory fileserver (memfs): a failed store keeps the data unsent and the retry stores it
over the version it was written over; data written over a version another client has since
replaced is set aside, never stored over theirs; a store that partly went through is still
known as this client's when it is tried again."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import trio
from memfs import CHUNK, FS_ADDR, MemFileServer, mem_manager

from afsfuse.fs.errors import FsError
from afsfuse.fs.manager import CacheManager
from afsfuse.fs.vnode import AfsFid
from afsfuse.keyring.store import Identity
from afsfuse.rx.errors import RX_CALL_DEAD
from afsfuse.rx.interfaces.fs import VDISKFULL, VOVERQUOTA

ME = Identity(1000)
OLD = b"o" * (2 * CHUNK + 100)
OURS = b"n" * (3 * CHUNK + 7)
THEIRS = b"t" * 5000
#: Another client's modification time: never one this client sends.
THEIR_MTIME = 1_000_000_000


async def store_errno(m: CacheManager, fid: AfsFid) -> int:
    """The errno a close (FUSE flush) gets from storing `fid`."""
    with pytest.raises(FsError) as caught:
        await m.store_data(fid, ME)
    return caught.value.errno


async def retry(m: CacheManager, after: float = 0.0) -> None:
    """The background task's next turn, `after` seconds from now (past any back-off)."""
    await m.writer.unsent.pass_once(trio.current_time() + after)


def unsent(m: CacheManager, fid: AfsFid) -> bool:
    dirty = m.store.dirty.get(fid)
    return dirty is not None and dirty.unsent


def leftover_data(m: CacheManager) -> list[bytes]:
    out = []
    for leftover in m.store.leftovers.list():
        with os.fdopen(m.store.leftovers.open(leftover.id), "rb") as f:
            out.append(f.read())
    return out


@pytest.mark.parametrize(
    ("code", "expected"), [(VOVERQUOTA, errno.EDQUOT), (VDISKFULL, errno.ENOSPC)]
)
async def test_a_store_the_server_refuses_is_kept_and_retried_over_the_same_version(
    tmp_path: Path, code: int, expected: int
) -> None:
    async with mem_manager(tmp_path) as (m, server):
        fid = server.add_file("f", OLD)
        await m.write(fid, 0, OURS, ME)
        server.fail("StoreData64", code)
        assert await store_errno(m, fid) == expected
        assert unsent(m, fid) and server.content(fid) == OLD and server.stores == []
        assert await m.read(fid, 0, len(OURS), ME) == OURS  # the writer still sees its data

        await retry(m)
        assert server.content(fid) == OURS
        assert [(s.over, s.made) for s in server.stores] == [(1, 2)]
        assert m.store.dirty.get(fid) is None and m.store.leftovers.list() == []


async def test_a_store_to_a_lost_server_waits_until_the_server_is_back(tmp_path: Path) -> None:
    async with mem_manager(tmp_path) as (m, server):
        fid = server.add_file("f", OLD)
        await m.write(fid, 0, OURS, ME)
        server.down = True
        assert await store_errno(m, fid) == errno.ETIMEDOUT
        assert unsent(m, fid) and not m.servers.get(FS_ADDR).up
        await retry(m)
        assert unsent(m, fid) and server.content(fid) == OLD

        server.down = False
        await retry(m, after=m.config.store_retry)  # past the back-off of the failed retry
        assert server.content(fid) == OURS and [s.over for s in server.stores] == [1]
        assert m.store.dirty.get(fid) is None and m.store.leftovers.list() == []


async def test_a_close_over_another_clients_newer_version_sets_the_data_aside_with_eio(
    tmp_path: Path,
) -> None:
    async with mem_manager(tmp_path) as (m, server):
        fid = server.add_file("f", OLD)
        await m.write(fid, 0, OURS, ME)
        server.store_as_another_client(fid, THEIRS, THEIR_MTIME)
        assert await store_errno(m, fid) == errno.EIO
        assert server.content(fid) == THEIRS and server.stores == []
        [leftover] = m.store.leftovers.list()
        assert (leftover.written_over, leftover.server_version) == (1, 2)
        assert leftover_data(m) == [OURS]
        assert m.store.dirty.get(fid) is None
        assert await m.read(fid, 0, len(OLD), ME) == THEIRS


async def test_a_retry_over_another_clients_newer_version_sets_the_data_aside(
    tmp_path: Path,
) -> None:
    """The failed store had said which version it would make (2, with its mtime); another
    client's version 2 has another mtime, so it is not taken for this client's."""
    async with mem_manager(tmp_path) as (m, server):
        fid = server.add_file("f", OLD)
        await m.write(fid, 0, OURS, ME)
        server.fail("StoreData64", VDISKFULL)
        assert await store_errno(m, fid) == errno.ENOSPC
        dirty = m.store.dirty.get(fid)
        assert dirty is not None and dirty.pending is not None and dirty.pending[0] == 2
        server.store_as_another_client(fid, THEIRS, THEIR_MTIME)

        await retry(m)
        assert server.content(fid) == THEIRS and server.stores == []
        assert leftover_data(m) == [OURS]
        assert m.store.dirty.get(fid) is None
        assert await m.read(fid, 0, len(OLD), ME) == THEIRS


async def test_a_store_whose_reply_was_lost_is_known_as_ours_after_a_callback_break(
    tmp_path: Path,
) -> None:
    """The store went through but its reply never came; the fileserver then reset our
    callbacks (as after its restart), so the retry fetches the status and finds version 2
    with the mtime this client sent: its own, stored over, not set aside."""
    async with mem_manager(tmp_path) as (m, server):
        fid = server.add_file("f", OLD)
        await m.write(fid, 0, OURS, ME)
        server.fail("StoreData64", RX_CALL_DEAD, applied=True)
        assert await store_errno(m, fid) == errno.ETIMEDOUT
        assert unsent(m, fid) and server.content(fid) == OURS
        m.registry.break_server(FS_ADDR)

        await retry(m)
        assert [(s.over, s.made) for s in server.stores] == [(1, 2), (2, 3)]
        assert server.stores[0].mtime == server.stores[1].mtime  # the same mtime sent again
        assert m.store.dirty.get(fid) is None and m.store.leftovers.list() == []
        assert await m.read(fid, 0, len(OURS) + 1, ME) == OURS


async def test_a_daemon_restarted_after_a_store_whose_reply_was_lost_stores_again(
    tmp_path: Path,
) -> None:
    """As above, across a restart: what the store said before sending is on disk."""
    server = MemFileServer()
    async with mem_manager(tmp_path, server) as (m, _):
        fid = server.add_file("f", OLD)
        await m.write(fid, 0, OURS, ME)
        server.fail("StoreData64", RX_CALL_DEAD, applied=True)
        assert await store_errno(m, fid) == errno.ETIMEDOUT
    async with mem_manager(tmp_path, server) as (again, _):
        assert unsent(again, fid)
        await retry(again)
        assert [(s.over, s.made) for s in server.stores] == [(1, 2), (2, 3)]
        assert again.store.dirty.get(fid) is None and again.store.leftovers.list() == []
        assert server.content(fid) == OURS


async def test_a_store_cut_short_after_its_first_call_goes_on_over_the_version_it_made(
    tmp_path: Path,
) -> None:
    """A store in several calls (store_call_bytes): the first one landed, the second was
    refused.  The retry stores over the version the first one made, not over the one the
    data was written over, and no other client's change is suspected."""
    async with mem_manager(tmp_path, store_call_bytes=2 * CHUNK) as (m, server):
        fid = server.add_file("f", OLD)
        ours = os.urandom(5 * CHUNK)
        await m.write(fid, 0, ours, ME)
        server.fail("StoreData64", VOVERQUOTA, skip=1)
        assert await store_errno(m, fid) == errno.EDQUOT
        assert server.content(fid)[: 2 * CHUNK] == ours[: 2 * CHUNK]
        dirty = m.store.dirty.get(fid)
        assert dirty is not None and dirty.unsent and dirty.base_version == 2

        await retry(m)
        assert [s.over for s in server.stores] == [1, 2, 3, 4]
        assert server.content(fid) == ours
        assert m.store.dirty.get(fid) is None and m.store.leftovers.list() == []


async def test_a_lost_reply_with_the_callback_still_held_is_stored_again_and_never_set_aside(
    tmp_path: Path,
) -> None:
    """No break came, so the retry goes by the status held (version 1): the store lands
    on version 2 (its own earlier one), and the data is on the server, not set aside."""
    async with mem_manager(tmp_path) as (m, server):
        fid = server.add_file("f", OLD)
        await m.write(fid, 0, OURS, ME)
        server.fail("StoreData64", RX_CALL_DEAD, applied=True)
        assert await store_errno(m, fid) == errno.ETIMEDOUT

        await retry(m)
        assert [(s.over, s.made) for s in server.stores] == [(1, 2), (2, 3)]
        assert m.store.dirty.get(fid) is None and m.store.leftovers.list() == []
        assert await m.read(fid, 0, len(OURS) + 1, ME) == OURS


async def test_new_writes_after_a_failed_store_go_with_the_unsent_data(tmp_path: Path) -> None:
    """The program writes on after its close failed: the next close stores both, over the
    version the first writes went over."""
    async with mem_manager(tmp_path) as (m, server):
        fid = server.add_file("f", OLD)
        await m.write(fid, 0, b"first", ME)
        server.fail("StoreData64", VOVERQUOTA)
        assert await store_errno(m, fid) == errno.EDQUOT
        await m.write(fid, len(OLD), b"-appended", ME)
        status = await m.store_data(fid, ME)
        assert server.content(fid) == b"first" + OLD[5:] + b"-appended"
        assert status.size == len(OLD) + 9
        # Two runs of dirty chunks, two calls: the first over the version written over.
        assert [(s.over, s.made) for s in server.stores] == [(1, 2), (2, 3)]
        assert m.store.dirty.get(fid) is None


async def test_a_new_mtime_from_the_writer_goes_with_its_store(tmp_path: Path) -> None:
    """tar sets each file's time through its descriptor just before close: the store at
    close carries it, with no StoreStatus of its own."""
    async with mem_manager(tmp_path) as (m, server):
        fid = server.add_file("f", OLD)
        await m.write(fid, 0, OURS, ME)
        status = await m.setattr(fid, ME, mtime=THEIR_MTIME - 7)
        assert status.mtime == THEIR_MTIME - 7  # shown at once
        await m.store_data(fid, ME)
        assert [s.mtime for s in server.stores] == [THEIR_MTIME - 7]
        assert (await m.getattr(fid, ME)).mtime == THEIR_MTIME - 7
        assert m.stats.rpcs["FS.StoreStatus"] == 0


async def test_a_new_mtime_is_stored_at_once_without_the_writers_close_to_carry_it(
    tmp_path: Path,
) -> None:
    """Another caller's change needs their own rights, and data a store failed to send goes
    in the background: either way the time is stored now, and again with the data."""
    async with mem_manager(tmp_path) as (m, server):
        fid = server.add_file("f", OLD)
        await m.write(fid, 0, OURS, ME)
        await m.setattr(fid, Identity(1001), mtime=THEIR_MTIME - 7)
        assert m.stats.rpcs["FS.StoreStatus"] == 1 and server.stores == []

        server.fail("StoreData64", VOVERQUOTA)
        assert await store_errno(m, fid) == errno.EDQUOT
        await m.setattr(fid, ME, mtime=THEIR_MTIME - 9)
        assert m.stats.rpcs["FS.StoreStatus"] == 2
        await m.store_data(fid, ME)
        assert [s.mtime for s in server.stores] == [THEIR_MTIME - 9]
