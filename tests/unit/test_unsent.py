"""Unsent data: what the dirty state remembers across a restart, leftovers, the rule for
storing over the server's copy, and the background task that persists and retries."""

from __future__ import annotations

import errno
import os
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from afsfuse.cache import AsyncCacheStore, CacheStore, CleanItem, FidKey
from afsfuse.cache.dirty import DirtyStore
from afsfuse.fs.errors import FsError
from afsfuse.fs.unsent import UnsentData
from afsfuse.fs.vnode import Status
from afsfuse.fs.writer import written_over as _written_over

KiB = 1 << 10
CHUNK = 64 * KiB
FID = FidKey("example.org", 536870912, 2, 77)
OTHER = FidKey("example.org", 536870912, 4, 78)
ALICE = (1000, None)


def open_store(path: Path, memory: int = 1 << 20) -> CacheStore:
    return CacheStore(path, 64 << 20, chunk_size=CHUNK, dirty_memory=memory)


def test_a_restart_finds_the_writer_and_the_pending_store_and_calls_it_unsent(
    tmp_path: Path,
) -> None:
    with open_store(tmp_path) as store:
        store.dirty.begin(FID, 7, 0, ALICE)
        store.dirty.write(FID, 0, b"x" * (3 * CHUNK))  # past one chunk: on disk
        store.dirty.update(FID, pending=(8, 1_700_000_000))
        assert not store.dirty.get(FID).unsent
    with open_store(tmp_path) as store:
        dirty = store.dirty.get(FID)
        assert (dirty.writer, dirty.pending, dirty.unsent) == (ALICE, (8, 1_700_000_000), True)
        assert store.dirty.read_chunk(FID, 2) == b"x" * CHUNK


def test_update_rebases_and_clears_the_pending_store(tmp_path: Path) -> None:
    with open_store(tmp_path, memory=0) as store:
        store.dirty.begin(FID, 7, 0, ALICE)
        store.dirty.write(FID, 0, b"abc")
        store.dirty.update(FID, pending=(8, 5))
        store.dirty.update(FID, base_version=8, pending=None)
    with open_store(tmp_path) as store:
        dirty = store.dirty.get(FID)
        assert (dirty.base_version, dirty.pending) == (8, None)


def test_persist_moves_a_small_file_to_disk_and_it_survives_a_crash(tmp_path: Path) -> None:
    store = DirtyStore(tmp_path, CHUNK)
    store.begin(FID, 3, 0, ALICE)
    store.write(FID, 0, b"small")
    assert store.in_memory(FID)
    assert store.held_in_memory_since(float("inf")) == [FID]
    store.persist(FID)
    assert not store.in_memory(FID) and store.held_in_memory_since(float("inf")) == []
    again = DirtyStore(tmp_path, CHUNK)  # no close: as after SIGKILL
    assert again.read_chunk(FID, 0) == b"small" and again.get(FID).writer == ALICE


def test_a_small_file_is_in_memory_since_it_became_dirty(tmp_path: Path) -> None:
    store = DirtyStore(tmp_path, CHUNK)
    store.begin(FID, 3, 0)
    since = store.get(FID).since
    assert since is not None
    assert store.held_in_memory_since(since) == []
    assert store.held_in_memory_since(since + 1) == [FID]


@pytest.mark.parametrize("memory", [1 << 20, 0], ids=["from-memory", "from-disk"])
def test_a_leftover_keeps_what_was_written_and_what_the_cache_still_knew(
    tmp_path: Path, memory: int
) -> None:
    with open_store(tmp_path, memory) as store:
        store.put_many([CleanItem(FID, 7, 0, b"o" * CHUNK)])  # chunk 1 of v7 is not cached
        store.dirty.begin(FID, 7, 3 * CHUNK, ALICE)
        store.dirty.write(FID, 2 * CHUNK, b"new", {2: b"b" * CHUNK})
        leftover = store.leftovers.set_aside(
            store.dirty,
            FID,
            reason="another client changed the file",
            server_version=9,
            clean_chunk=lambda index: store.get_chunk(FID, 7, index),
        )
        assert store.dirty.get(FID) is None
        assert (leftover.size, leftover.uid, leftover.written_over) == (3 * CHUNK, 1000, 7)
        assert leftover.missing == ((CHUNK, 2 * CHUNK),)
        assert [item.id for item in store.leftovers.list()] == [leftover.id]
        fd = store.leftovers.open(leftover.id)
        with os.fdopen(fd, "rb") as data:
            content = data.read()
        assert content == b"o" * CHUNK + bytes(CHUNK) + b"new" + b"b" * (CHUNK - 3)
        store.leftovers.discard(leftover.id)
        assert store.leftovers.list() == []


@pytest.mark.parametrize("ident", ["../dirty", "", "1.2.3", "x" * 64, "1.2.3-4/../.."])
def test_a_leftover_id_never_names_another_path(tmp_path: Path, ident: str) -> None:
    with open_store(tmp_path) as store, pytest.raises(KeyError):
        store.leftovers.open(ident)


def _status(version: int, mtime: int = 100) -> Status:
    return Status(
        file_type=1, mode=0o644, nlink=1, size=3, data_version=version, author=0, owner=0,
        group=0, mtime=mtime, server_mtime=mtime, caller_access=0, anonymous_access=0,
        parent_vnode=1, parent_unique=1,
    )  # fmt: skip


def test_unsent_data_goes_only_over_the_version_it_was_written_over(tmp_path: Path) -> None:
    store = DirtyStore(tmp_path, CHUNK)
    dirty = store.begin(FID, 7, 0, ALICE)
    assert _written_over(dirty, _status(7))
    assert not _written_over(dirty, _status(8))  # another client stored
    # A store of ours was under way when the daemon died: its version, with its mtime.
    storing = replace(dirty, pending=(8, 1234))
    assert _written_over(storing, _status(8, mtime=1234))
    assert not _written_over(storing, _status(8, mtime=99))
    assert not _written_over(storing, _status(9, mtime=1234))


async def test_the_background_task_persists_old_small_files_and_retries_with_back_off(
    tmp_path: Path,
) -> None:
    with open_store(tmp_path) as sync_store:
        cache = AsyncCacheStore(sync_store)
        await cache.dirty.begin(FID, 1, 0, ALICE)
        await cache.dirty.write(FID, 0, b"unsent")
        await cache.dirty.update(FID, unsent=True)
        await cache.dirty.begin(OTHER, 1, 0, ALICE)  # a live file: not retried
        tries: list[FidKey] = []
        failing = True

        async def store(fid: FidKey) -> None:
            tries.append(fid)
            if failing:
                raise FsError(errno.EDQUOT)
            await cache.dirty.discard(fid)

        task = UnsentData(cache.dirty, store, interval=1.0, memory_age=0.2, max_interval=4.0)
        now = trio.current_time()
        await task.pass_once(now)
        assert tries == [FID] and sync_store.dirty.in_memory(FID)
        await task.pass_once(now + 0.5)  # backing off
        assert tries == [FID]
        await trio.sleep(0.3)
        await task.pass_once(now + 3)  # older than memory_age: on disk now
        assert tries == [FID, FID]
        assert not sync_store.dirty.in_memory(FID) and not sync_store.dirty.in_memory(OTHER)
        await task.pass_once(now + 4.5)  # back-off doubled to 2 s
        assert tries == [FID, FID]
        failing = False
        await task.pass_once(now + 8)
        assert tries == [FID, FID, FID] and sync_store.dirty.get(FID) is None
        await task.pass_once(now + 20)
        assert tries == [FID, FID, FID]  # OTHER is not unsent: its program stores it
