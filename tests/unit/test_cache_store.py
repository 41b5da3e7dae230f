"""The on-disk cache: clean chunks, directories and records (diskcache), dirty data (files)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from afsfuse.cache import (
    AsyncCacheStore,
    BaseNeeded,
    CacheStore,
    CleanItem,
    CleanWriter,
    FidKey,
    FileRecord,
    parse_size,
)
from afsfuse.cache.dirty import DEFAULT_MEMORY_BUDGET, INLINE_WRITE, WouldBlock

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
FID = FidKey("example.org", 536870912, 2, 77)
OTHER = FidKey("example.org", 536870912, 4, 78)
ELSEWHERE = FidKey("example.org", 536870915, 2, 77)


def chunk(tag: int, size: int) -> bytes:
    return bytes([tag % 256]) * size


def put_chunk(store: CacheStore, fid: FidKey, data_version: int, index: int, data: bytes):
    store.put_many([CleanItem(fid, data_version, index, data)])


def put_dir(store: CacheStore, fid: FidKey, data_version: int, blob: bytes):
    store.put_many([CleanItem(fid, data_version, None, blob)])


@pytest.fixture(params=[DEFAULT_MEMORY_BUDGET, 0], ids=["dirty-in-memory", "dirty-on-disk"])
def store(tmp_path: Path, request: pytest.FixtureRequest):
    with CacheStore(
        tmp_path / "cache", 64 * MiB, chunk_size=64 * KiB, dirty_memory=request.param
    ) as s:
        yield s


# Sizes and the directory


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("2G", 2 << 30),
        ("500M", 500 << 20),
        ("500m", 500 << 20),
        ("64KiB", 64 << 10),
        ("1.5G", 3 << 29),
        ("1T", 1 << 40),
        ("123456", 123456),
        ("10 MB", 10 << 20),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "2X", "-1G", "0", "1.2.3M", "2GG"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_cache_dir_is_private_even_if_it_existed(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    path.mkdir(mode=0o755)
    os.chmod(path, 0o755)
    with CacheStore(path, 10 * MiB, dirty_memory=0) as s:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(path / "dirty").st_mode) == 0o700
        s.dirty.begin(FID, 1, 0)
        assert stat.S_IMODE(os.stat(next((path / "dirty").iterdir())).st_mode) == 0o700


def test_one_process_per_directory(tmp_path: Path) -> None:
    with CacheStore(tmp_path, 10 * MiB), pytest.raises(BlockingIOError):
        CacheStore(tmp_path, 10 * MiB)
    CacheStore(tmp_path, 10 * MiB).close()  # released on close


def test_chunk_size_must_be_power_of_two(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        CacheStore(tmp_path, 10 * MiB, chunk_size=1000 * KiB)


# Chunks


def test_chunks_round_trip_including_a_short_last_chunk(store: CacheStore) -> None:
    assert store.get_record(FID) is None
    put_chunk(store, FID, 5, 0, chunk(1, 64 * KiB))
    put_chunk(store, FID, 5, 1, chunk(2, 100))
    assert store.get_chunk(FID, 5, 0) == chunk(1, 64 * KiB)
    assert store.get_chunk(FID, 5, 1) == chunk(2, 100)
    assert store.get_chunk(FID, 5, 2) is None
    assert store.get_chunk(OTHER, 5, 0) is None
    assert store.get_record(FID) == FileRecord(5, frozenset({0, 1}))


def test_small_chunks_live_in_sqlite_and_work_too(tmp_path: Path) -> None:
    with CacheStore(tmp_path, 10 * MiB, chunk_size=4 * KiB) as s:
        put_chunk(s, FID, 1, 3, chunk(9, 4 * KiB))
        assert s.get_chunk(FID, 1, 3) == chunk(9, 4 * KiB)


def test_oversized_chunk_is_refused_and_its_batch_with_it(store: CacheStore) -> None:
    with pytest.raises(ValueError):
        store.put_many(
            [CleanItem(OTHER, 1, 0, chunk(1, 10)), CleanItem(FID, 1, 0, chunk(1, 64 * KiB + 1))]
        )
    assert store.get_record(OTHER) is None and len(store._clean) == 0


def test_new_data_version_never_serves_old_bytes_and_purges_them(store: CacheStore) -> None:
    put_chunk(store, FID, 5, 0, chunk(1, 64 * KiB))
    put_chunk(store, FID, 5, 1, chunk(1, 64 * KiB))
    put_dir(store, FID, 5, b"old directory")
    before = store.clean_bytes()
    put_chunk(store, FID, 6, 0, chunk(2, 10))
    assert store.get_record(FID) == FileRecord(6, frozenset({0}))
    assert store.get_chunk(FID, 6, 0) == chunk(2, 10)
    assert store.get_chunk(FID, 5, 0) is None
    assert store.get_chunk(FID, 5, 1) is None
    assert store.get_dir(FID, 5) is None
    assert len(store._clean) == 2  # the record and the new chunk
    assert store.clean_bytes() <= before - 128 * KiB


def test_same_data_version_adds_to_the_record(store: CacheStore) -> None:
    put_chunk(store, FID, 5, 0, chunk(1, 10))
    put_dir(store, FID, 5, b"dir")
    put_chunk(store, FID, 5, 0, chunk(1, 10))
    assert store.get_record(FID) == FileRecord(5, frozenset({0}))
    assert store.get_chunk(FID, 5, 0) == chunk(1, 10)
    assert store.get_dir(FID, 5) == b"dir"


def test_a_batch_is_one_transaction_and_later_versions_win(store: CacheStore) -> None:
    put_chunk(store, FID, 5, 0, chunk(1, 64 * KiB))
    store.put_many(
        [
            CleanItem(FID, 6, 1, chunk(2, 10)),
            CleanItem(OTHER, 2, None, b"other dir"),
            CleanItem(OTHER, 2, 0, chunk(3, 10)),
        ]
    )
    assert store.get_chunk(FID, 5, 0) is None  # the new version purged the old bytes
    assert store.get_record(FID) == FileRecord(6, frozenset({1}))
    assert store.get_record(OTHER) == FileRecord(2, frozenset({0}))
    assert store.get_dir(OTHER, 2) == b"other dir"


def test_unmarked_chunk_is_never_served(store: CacheStore) -> None:
    """Death between writing a chunk and marking it leaves a chunk with no mark."""
    put_dir(store, FID, 5, b"dir")  # a record of version 5 without chunk 0
    store._clean.set("example.org/536870912/2.77/c5.0", chunk(1, 64 * KiB))
    assert store.get_chunk(FID, 5, 0) is None


def test_killed_mid_write_leaves_a_usable_cache(tmp_path: Path) -> None:
    """SIGKILL a writer at a random moment: the index opens and every chunk served is whole."""
    writer = textwrap.dedent(
        """
        import sys
        from afsfuse.cache import CacheStore, CleanItem, FidKey
        s = CacheStore(sys.argv[1], 1 << 30, chunk_size=1 << 20, dirty_memory=0)
        n = 0
        while True:
            fid = FidKey("example.org", 1, n, 1)
            s.put_many([CleanItem(fid, 1, 0, bytes([n % 256]) * (1 << 20))])
            s.dirty.begin(fid, 1, 0)
            s.dirty.write(fid, 0, bytes([n % 256]) * 200000)
            n += 1
            if n == 3:
                print("going", flush=True)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", writer, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline() == "going\n"
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
    with CacheStore(tmp_path, GiB, chunk_size=MiB) as s:
        served = 0
        for n in range(5000):
            fid = FidKey("example.org", 1, n, 1)
            data = s.get_chunk(fid, 1, 0)
            if data is not None:
                assert data == bytes([n % 256]) * MiB
                served += 1
        assert served >= 3
        for dirty in s.dirty.list():
            assert dirty.length <= 200000
            if dirty.chunks:  # marked after the data: all of it is there
                assert s.dirty.read_chunk(dirty.fid, 0) == bytes([dirty.fid.vnode % 256]) * 200000
        put_chunk(s, FID, 1, 0, b"x")  # still writable
        assert s.get_chunk(FID, 1, 0) == b"x"


# Directories


def test_directory_blobs_by_data_version(store: CacheStore) -> None:
    blob = os.urandom(100 * KiB)
    put_dir(store, FID, 3, blob)
    assert store.get_dir(FID, 3) == blob
    assert store.get_dir(FID, 4) is None
    put_dir(store, FID, 4, b"newer")
    assert store.get_dir(FID, 3) is None


# Restart


def test_restart_serves_cached_data_after_revalidation(tmp_path: Path) -> None:
    with CacheStore(tmp_path, 64 * MiB, chunk_size=64 * KiB) as s:
        put_chunk(s, FID, 9, 0, chunk(1, 64 * KiB))
        put_chunk(s, FID, 9, 2, chunk(3, 5))
        put_dir(s, FID, 9, b"dir")
    with CacheStore(tmp_path, 64 * MiB, chunk_size=64 * KiB) as s:
        record = s.get_record(FID)
        assert record == FileRecord(9, frozenset({0, 2}))
        # The cache manager's one FetchStatus says the data version is unchanged:
        assert s.get_chunk(FID, 9, 0) == chunk(1, 64 * KiB)
        assert s.get_chunk(FID, 9, 2) == chunk(3, 5)
        assert s.get_dir(FID, 9) == b"dir"


def test_restart_with_another_chunk_size_starts_clean(tmp_path: Path) -> None:
    with CacheStore(tmp_path, 64 * MiB, chunk_size=64 * KiB) as s:
        put_chunk(s, FID, 9, 0, chunk(1, 64 * KiB))
        s.dirty.begin(FID, 9, 10 * MiB)  # too big for memory: on disk
    with CacheStore(tmp_path, 64 * MiB, chunk_size=128 * KiB) as s:
        assert s.get_record(FID) is None
        assert s.get_chunk(FID, 9, 0) is None
        assert s.dirty.get(FID).chunk_size == 64 * KiB  # dirty data describes itself


# Invalidation


def test_drop_fid_removes_every_version(store: CacheStore) -> None:
    put_chunk(store, FID, 1, 0, chunk(1, 10))
    store._clean.set(
        "example.org/536870912/2.77/c0.0", b"orphan", tag="example.org/536870912/2.77/"
    )
    put_chunk(store, OTHER, 1, 0, chunk(2, 10))
    assert store.drop_fid(FID) == 3
    assert store.get_record(FID) is None
    assert store.get_chunk(OTHER, 1, 0) == chunk(2, 10)
    assert len(store._clean) == 2


def test_drop_volume_removes_only_that_volume(store: CacheStore) -> None:
    for fid in (FID, OTHER, ELSEWHERE):
        put_chunk(store, fid, 1, 0, chunk(1, 10))
        put_dir(store, fid, 1, b"d")
    assert store.drop_volume("example.org", 536870912) == 6
    assert store.get_record(FID) is None and store.get_record(OTHER) is None
    assert store.get_chunk(ELSEWHERE, 1, 0) == chunk(1, 10)
    assert store.get_dir(ELSEWHERE, 1) == b"d"


def test_bad_cell_names_are_refused(store: CacheStore) -> None:
    for cell in ("", "../etc", "a/b", ".hidden"):
        with pytest.raises(ValueError):
            put_dir(store, FidKey(cell, 1, 1, 1), 1, b"d")


# Size bound and eviction


def test_size_bound_holds_and_dirty_data_is_never_evicted(tmp_path: Path) -> None:
    limit = 4 * MiB
    with CacheStore(tmp_path, limit, chunk_size=64 * KiB) as s:
        s.dirty.begin(FID, 1, 0)
        s.dirty.write(FID, 0, chunk(7, 300 * KiB))
        written = 0
        n = 0
        while written < 3 * limit:
            fid = FidKey("example.org", 2, n, 1)
            for index in range(4):
                put_chunk(s, fid, 1, index, chunk(n, 64 * KiB))
            written += 4 * 64 * KiB
            n += 1
        # Culled after every batch (here every chunk): the SQLite index may lag a page or so.
        assert s.clean_bytes() <= limit + 64 * KiB
        assert s.get_chunk(FidKey("example.org", 2, n - 1, 1), 1, 3) == chunk(n - 1, 64 * KiB)
        assert s.get_chunk(FidKey("example.org", 2, 0, 1), 1, 0) is None
        assert s.dirty.read_chunk(FID, 0) == chunk(7, 64 * KiB)
        assert s.dirty.get(FID).length == 300 * KiB


# Dirty data


def test_dirty_write_read_and_base_version(store: CacheStore) -> None:
    dirty = store.dirty.begin(FID, 12, 100 * KiB)
    assert (dirty.base_version, dirty.length, dirty.chunks) == (12, 100 * KiB, frozenset())
    assert dirty.needs_base(10, 5) == [0]
    assert dirty.needs_base(60 * KiB, 10 * KiB) == [0, 1]
    assert dirty.needs_base(200 * KiB, 10) == []  # past the end: nothing to preserve
    with pytest.raises(BaseNeeded) as excinfo:
        store.dirty.write(FID, 60 * KiB, b"x" * 10 * KiB, {0: chunk(1, 64 * KiB)})
    assert excinfo.value.indexes == [1]
    assert store.dirty.get(FID).chunks == frozenset()
    base0, base1 = chunk(1, 64 * KiB), chunk(2, 36 * KiB)
    dirty = store.dirty.write(FID, 60 * KiB, b"x" * 10 * KiB, {0: base0, 1: base1})
    assert dirty.chunks == frozenset({0, 1}) and dirty.length == 100 * KiB
    assert store.dirty.read_chunk(FID, 0) == base0[: 60 * KiB] + b"x" * 4 * KiB
    assert store.dirty.read_chunk(FID, 1) == b"x" * 6 * KiB + base1[6 * KiB :]
    # A dirty chunk takes further writes without a base.
    store.dirty.write(FID, 5, b"abc")
    assert store.dirty.read_chunk(FID, 0)[:10] == base0[:5] + b"abc" + base0[8:10]
    assert store.dirty.begin(FID, 99, 0).base_version == 12  # already dirty: unchanged


def test_dirty_append_and_hole(store: CacheStore) -> None:
    store.dirty.begin(FID, 1, 0)
    store.dirty.write(FID, 0, b"hello")
    dirty = store.dirty.write(FID, 130 * KiB, b"tail")
    assert dirty.length == 130 * KiB + 4
    assert dirty.chunks == frozenset({0, 2})
    assert store.dirty.read_chunk(FID, 0) == b"hello" + bytes(64 * KiB - 5)
    assert store.dirty.read_chunk(FID, 2) == bytes(2 * KiB) + b"tail"
    with pytest.raises(KeyError):
        store.dirty.read_chunk(FID, 1)  # a hole past the base: zeros, read by the caller


def test_dirty_truncate_hides_base_bytes_when_growing_again(store: CacheStore) -> None:
    store.dirty.begin(FID, 3, 200 * KiB)
    store.dirty.write(FID, 0, b"a" * 10, {0: chunk(1, 64 * KiB)})
    dirty = store.dirty.truncate(FID, 5)
    assert (dirty.length, dirty.zero_from, dirty.chunks) == (5, 5, frozenset({0}))
    dirty = store.dirty.truncate(FID, 150 * KiB)
    assert (dirty.length, dirty.zero_from) == (150 * KiB, 5)
    assert store.dirty.read_chunk(FID, 0) == b"a" * 5 + bytes(64 * KiB - 5)
    assert dirty.needs_base(100 * KiB, 10) == []  # chunk 1 is all zeros now
    store.dirty.truncate(FID, 0)
    assert store.dirty.get(FID).chunks == frozenset()


def test_dirty_on_disk_survives_restart_and_is_listed(tmp_path: Path) -> None:
    with CacheStore(tmp_path, 64 * MiB, chunk_size=64 * KiB, dirty_memory=0) as s:
        s.dirty.begin(FID, 7, 0)
        s.dirty.write(FID, 0, b"unsaved work")
        s.dirty.begin(ELSEWHERE, 2, 0)
        s.dirty.write(ELSEWHERE, 64 * KiB, b"more")
        s.dirty.sync(FID)
    with CacheStore(tmp_path, 64 * MiB, chunk_size=64 * KiB) as s:
        listed = {d.fid: d for d in s.dirty.list()}
        assert set(listed) == {FID, ELSEWHERE}
        assert listed[FID].base_version == 7 and listed[FID].length == 12
        assert s.dirty.read_chunk(FID, 0) == b"unsaved work"
        s.dirty.write(FID, 20, b"!")
        assert s.dirty.read_chunk(FID, 0) == b"unsaved work" + bytes(8) + b"!"
        s.dirty.discard(FID)
        s.dirty.discard(FID)  # idempotent
        assert s.dirty.get(FID) is None
    with CacheStore(tmp_path, 64 * MiB, chunk_size=64 * KiB) as s:
        assert [d.fid for d in s.dirty.list()] == [ELSEWHERE]


def test_dirty_state_after_crashes_part_way(tmp_path: Path) -> None:
    with CacheStore(tmp_path, 64 * MiB, chunk_size=64 * KiB) as s:
        s.dirty.begin(FID, 7, 100 * KiB)
        s.dirty.write(FID, 70 * KiB, b"y" * 10, {1: chunk(1, 36 * KiB)})
    data = tmp_path / "dirty" / "example.org" / "536870912.2.77" / "data"
    # Died inside a truncation to 10 KiB: data cut, state not yet rewritten.
    os.truncate(data, 10 * KiB)
    with CacheStore(tmp_path, 64 * MiB, chunk_size=64 * KiB) as s:
        dirty = s.dirty.get(FID)
        assert (dirty.length, dirty.zero_from, dirty.chunks) == (10 * KiB, 10 * KiB, frozenset())
        # Died after writing a new chunk's data but before marking it: it never happened.
        with open(data, "r+b") as f:
            f.seek(0)
            f.write(b"z" * 20)
    with CacheStore(tmp_path, 64 * MiB, chunk_size=64 * KiB) as s:
        dirty = s.dirty.get(FID)
        assert dirty.chunks == frozenset() and dirty.needs_base(0, 1) == [0]


def test_dirty_data_is_untouched_by_invalidation(store: CacheStore) -> None:
    put_chunk(store, FID, 1, 0, b"clean")
    store.dirty.begin(FID, 1, 0)
    store.dirty.write(FID, 0, b"keep")
    store.drop_fid(FID)
    store.drop_volume(FID.cell, FID.volume)
    store.clear()
    assert store.dirty.read_chunk(FID, 0) == b"keep"


# Under trio


async def test_concurrent_trio_readers(tmp_path: Path) -> None:
    with CacheStore(tmp_path, 64 * MiB, chunk_size=MiB) as s:
        cache = AsyncCacheStore(s)
        await cache.put_many([CleanItem(FID, 4, index, chunk(index, MiB)) for index in range(8)])
        results: dict[tuple[int, int], bytes | None] = {}

        async def reader(task: int) -> None:
            for index in range(8):
                results[task, index] = await cache.get_chunk(FID, 4, (index + task) % 8)

        async with trio.open_nursery() as nursery:
            for task in range(12):
                nursery.start_soon(reader, task)
        assert len(results) == 96
        for (task, index), data in results.items():
            assert data == chunk((index + task) % 8, MiB)


async def test_async_wrapper_covers_the_store(tmp_path: Path) -> None:
    with CacheStore(tmp_path, 64 * MiB, chunk_size=64 * KiB) as s:
        cache = AsyncCacheStore(s, trio.CapacityLimiter(2))
        assert await cache.get_record(FID) is None
        await cache.put_many([CleanItem(FID, 1, None, b"dir")])
        assert await cache.get_dir(FID, 1) == b"dir"
        await cache.dirty.begin(FID, 1, 0)
        await cache.dirty.write(FID, 0, b"data")
        await cache.dirty.truncate(FID, 2)
        await cache.dirty.sync(FID)
        assert await cache.dirty.read_chunk(FID, 0) == b"da"
        assert [d.fid for d in cache.dirty.list()] == [FID]
        await cache.dirty.discard(FID)
        assert cache.dirty.get(FID) is None
        assert await cache.drop_fid(FID) == 2
        assert await cache.drop_volume(FID.cell, FID.volume) == 0


# Small dirty files in memory


def test_small_dirty_file_stays_in_memory_until_it_outgrows_a_chunk(tmp_path: Path) -> None:
    with CacheStore(tmp_path, 64 * MiB, chunk_size=64 * KiB) as s:
        s.dirty.begin(FID, 3, 0)
        s.dirty.write(FID, 0, b"small", blocking=False)
        assert s.dirty.in_memory(FID) and not any((tmp_path / "dirty").iterdir())
        assert s.dirty.read_chunk(FID, 0, blocking=False) == b"small"
        s.dirty.truncate(FID, 3, blocking=False)
        with pytest.raises(WouldBlock):  # past one chunk: needs the disk
            s.dirty.write(FID, 64 * KiB, b"more", blocking=False)
        assert s.dirty.get(FID).length == 3  # refused before anything changed
        s.dirty.write(FID, 64 * KiB, b"more")
        assert not s.dirty.in_memory(FID)
        assert s.dirty.read_chunk(FID, 0) == b"sma" + bytes(64 * KiB - 3)
        assert s.dirty.read_chunk(FID, 1) == b"more"
        with pytest.raises(WouldBlock):
            s.dirty.discard(FID, blocking=False)
        s.dirty.discard(FID)
        assert s.dirty.get(FID) is None
        assert not any((tmp_path / "dirty" / "example.org").iterdir())


def test_a_small_write_into_a_chunk_dirty_on_disk_needs_no_thread(tmp_path: Path) -> None:
    with CacheStore(tmp_path, 64 * MiB, chunk_size=64 * KiB) as s:
        s.dirty.begin(FID, 3, 0)
        s.dirty.write(FID, 0, chunk(1, 100 * KiB))  # two chunks: on disk
        assert not s.dirty.in_memory(FID)
        s.dirty.write(FID, 10 * KiB, b"tar record", blocking=False)
        with pytest.raises(WouldBlock):  # a new chunk: its state is saved
            s.dirty.write(FID, 130 * KiB, b"x", blocking=False)
        with pytest.raises(WouldBlock):  # big: may meet the kernel's dirty-page throttling
            s.dirty.write(FID, 0, chunk(2, INLINE_WRITE + 1), blocking=False)
        assert s.dirty.get(FID).length == 100 * KiB  # refused before anything changed
        assert s.dirty.read_chunk(FID, 0)[10 * KiB - 1 : 10 * KiB + 11] == (
            chunk(1, 100 * KiB)[10 * KiB - 1 : 10 * KiB]
            + b"tar record"
            + chunk(1, 100 * KiB)[10 * KiB + 10 : 10 * KiB + 11]
        )


def test_memory_budget_sends_further_files_to_disk(tmp_path: Path) -> None:
    with CacheStore(tmp_path, 64 * MiB, chunk_size=64 * KiB, dirty_memory=100 * KiB) as s:
        s.dirty.begin(FID, 1, 0)
        s.dirty.write(FID, 0, chunk(1, 60 * KiB))
        s.dirty.begin(OTHER, 1, 0)
        s.dirty.write(OTHER, 0, chunk(2, 30 * KiB))
        assert s.dirty.in_memory(FID) and s.dirty.in_memory(OTHER)
        s.dirty.write(OTHER, 30 * KiB, chunk(3, 20 * KiB))  # 110 KiB in all: OTHER spills
        assert s.dirty.in_memory(FID) and not s.dirty.in_memory(OTHER)
        assert s.dirty.read_chunk(OTHER, 0) == chunk(2, 30 * KiB) + chunk(3, 20 * KiB)
        with pytest.raises(WouldBlock):
            s.dirty.begin(ELSEWHERE, 1, 50 * KiB, blocking=False)
        s.dirty.discard(FID)
        s.dirty.begin(ELSEWHERE, 1, 50 * KiB, blocking=False)  # room again
        assert s.dirty.in_memory(ELSEWHERE)
        s.dirty.sync(ELSEWHERE)  # durable means on disk
        assert not s.dirty.in_memory(ELSEWHERE)


async def test_async_dirty_store_needs_no_thread_for_a_small_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with CacheStore(tmp_path, 64 * MiB, chunk_size=64 * KiB) as s:
        cache = AsyncCacheStore(s)
        threads = []
        real = trio.to_thread.run_sync

        async def counted(fn, *args, **kwargs):
            threads.append(fn)
            return await real(fn, *args, **kwargs)

        monkeypatch.setattr(trio.to_thread, "run_sync", counted)
        await cache.dirty.begin(FID, 1, 0)
        await cache.dirty.write(FID, 0, b"tiny")
        assert await cache.dirty.read_chunk(FID, 0) == b"tiny"
        await cache.dirty.discard(FID)
        assert threads == []
        await cache.dirty.begin(FID, 1, 0)
        await cache.dirty.write(FID, 0, chunk(1, 65 * KiB))  # spills, in a thread
        assert len(threads) == 1 and not s.dirty.in_memory(FID)


# Write-behind


async def test_clean_writer_batches_and_writes_what_waits_when_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with CacheStore(tmp_path, 64 * MiB, chunk_size=64 * KiB) as s:
        cache = AsyncCacheStore(s)
        writer = CleanWriter(cache, limit=4)
        batches: list[int] = []
        real = cache.put_many

        async def counted(items):
            batches.append(len(items))
            await real(items)

        monkeypatch.setattr(cache, "put_many", counted)
        await writer.put(CleanItem(FID, 1, 0, b"before run"))  # not running: written now
        assert batches == [1] and s.get_chunk(FID, 1, 0) == b"before run"
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            for vnode in range(10):
                await writer.put(CleanItem(FidKey("example.org", 1, vnode, 1), 1, 0, b"x"))
            nursery.cancel_scope.cancel()
        assert sum(batches) == 11 and len(batches) < 11  # at most `limit` wait at once
        for vnode in range(10):
            assert s.get_chunk(FidKey("example.org", 1, vnode, 1), 1, 0) == b"x"


async def test_clean_writer_loses_nothing_cancelled_while_waiting_for_a_thread(
    tmp_path: Path,
) -> None:
    with CacheStore(tmp_path, 64 * MiB, chunk_size=64 * KiB) as s:
        cache = AsyncCacheStore(s, trio.CapacityLimiter(1))
        writer = CleanWriter(cache, limit=4)
        holder = object()
        await cache.limiter.acquire_on_behalf_of(holder)  # every worker thread busy

        async def free_the_thread_later() -> None:
            await trio.testing.wait_all_tasks_blocked()
            cache.limiter.release_on_behalf_of(holder)

        async with trio.open_nursery() as outer, trio.open_nursery() as inner:
            await inner.start(writer.run)
            await writer.put(CleanItem(FID, 1, 0, b"taken off the queue"))
            await trio.testing.wait_all_tasks_blocked()  # the batch waits for a thread
            inner.cancel_scope.cancel()
            outer.start_soon(free_the_thread_later)
        assert s.get_chunk(FID, 1, 0) == b"taken off the queue"


async def test_clean_writer_forgets_what_waits_for_a_flushed_file(tmp_path: Path) -> None:
    with CacheStore(tmp_path, 64 * MiB, chunk_size=64 * KiB) as s:
        writer = CleanWriter(AsyncCacheStore(s), limit=4)
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await writer.put(CleanItem(FID, 1, 0, b"flushed"))
            await writer.put(CleanItem(OTHER, 1, 0, b"kept"))
            await writer.discard(lambda fid: fid == FID)  # before the writer task runs again
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        assert s.get_record(FID) is None
        assert s.get_chunk(OTHER, 1, 0) == b"kept"


def test_files_with_nothing_cached_are_known_without_the_disk(tmp_path: Path) -> None:
    with CacheStore(tmp_path, 64 * MiB, chunk_size=64 * KiB) as s:
        assert not s.may_hold(FID)
        put_chunk(s, FID, 1, 0, b"x")
        put_dir(s, ELSEWHERE, 1, b"d")
        put_dir(s, OTHER, 1, b"d")
        assert s.may_hold(FID) and s.may_hold(ELSEWHERE) and s.may_hold(OTHER)
        s.drop_fid(OTHER)
        assert not s.may_hold(OTHER)
    with CacheStore(tmp_path, 64 * MiB, chunk_size=64 * KiB) as s:  # found again at start
        assert s.may_hold(FID) and s.may_hold(ELSEWHERE) and not s.may_hold(OTHER)
        s.drop_volume(FID.cell, FID.volume)
        assert not s.may_hold(FID) and s.may_hold(ELSEWHERE)
        s.clear()
        assert not s.may_hold(ELSEWHERE)


def test_names_of_files_the_size_bound_evicted_do_not_pile_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A daemon that meets millions of files keeps names only for about twice the files
    its cache holds, however many went through it."""
    monkeypatch.setattr(CacheStore, "RESCAN_MIN", 16)
    limit = 2 * MiB
    with CacheStore(tmp_path, limit, chunk_size=64 * KiB) as s:
        files = 400  # 25 MiB through a 2 MiB cache: at most 32 files fit at once
        for n in range(files):
            put_chunk(s, FidKey("example.org", 2, n, 1), 1, 0, chunk(n, 64 * KiB))
        held = sum(s.get_record(FidKey("example.org", 2, n, 1)) is not None for n in range(files))
        assert held <= 32
        names = sum(s.may_hold(FidKey("example.org", 2, n, 1)) for n in range(files))
        assert names <= 2 * max(held, CacheStore.RESCAN_MIN) + 1
        newest = FidKey("example.org", 2, files - 1, 1)
        assert s.may_hold(newest) and s.get_chunk(newest, 1, 0) == chunk(files - 1, 64 * KiB)
