"""The chunk reader's read-ahead decisions (fs/reader.py): first the decision alone, with
read-ahead recorded instead of run, then a sequential reader of the cache manager against
the in-memory fileserver (memfs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import memfs
from memfs import mem_manager

from afsfuse.fs.chunkmem import ChunkMemory
from afsfuse.fs.manager import CacheManager
from afsfuse.fs.reader import SEQUENTIAL_FILES, ChunkReader
from afsfuse.fs.stats import Stats
from afsfuse.fs.vnode import AfsFid, Status, Vnode
from afsfuse.keyring.store import Identity
from afsfuse.rx.interfaces import fs as fsint

CHUNK = 1 << 20


class Nursery:
    """Records what read-ahead starts instead of running it."""

    def __init__(self) -> None:
        self.started: list[tuple[Any, ...]] = []

    def start_soon(self, fn: Any, *args: Any) -> None:
        self.started.append(args)


def reader(nursery: Nursery | None, window: int = 16, call_chunks: int = 4) -> ChunkReader:
    return ChunkReader(
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        ChunkMemory(64 * CHUNK),
        Stats(),
        chunk_size=CHUNK,
        timeout=120.0,
        window=window,
        call_chunks=call_chunks,
        changed=lambda fid: None,
        nursery=lambda: nursery,  # type: ignore[arg-type,return-value]
    )


def file(n: int, size: int) -> Vnode:
    vnode = Vnode(AfsFid("c", 1, n, n))
    fields = dict.fromkeys(fsint.AFSFetchStatus._fields, 0)
    fields.update(InterfaceVersion=1, FileType=1, UnixModeBits=0o644, Length=size, DataVersion=3)
    vnode.status = Status.from_afs(fsint.AFSFetchStatus(**fields))
    return vnode


def claimed(nursery: Nursery) -> list[list[int]]:
    return [sorted(args[-1]) for args in nursery.started]


def test_read_ahead_starts_at_offset_zero_and_follows_a_sequential_reader() -> None:
    nursery = Nursery()
    r = reader(nursery, window=4, call_chunks=2)
    vnode = file(1, 20 * CHUNK)
    r.read_ahead(vnode.fid, vnode, None, 0, 0, 3)
    assert claimed(nursery) == [[1, 2, 3, 4]]
    # A read that continues where the last one stopped moves the window on, a call's
    # worth at a time; chunks in flight are not claimed twice.
    r.read_ahead(vnode.fid, vnode, None, CHUNK, 1, 3)
    assert len(nursery.started) == 1
    r.read_ahead(vnode.fid, vnode, None, 2 * CHUNK, 2, 3)
    assert claimed(nursery)[1:] == [[5, 6]]
    # Once those chunks are in memory, a re-read of the same chunk claims nothing.
    for i in range(1, 7):
        r.inflight.pop((vnode.fid, 3, i)).set()
        r.memory.put((vnode.fid, 3, i), b"x")
    r.read_ahead(vnode.fid, vnode, None, 2 * CHUNK + 10, 2, 3)
    assert len(nursery.started) == 2


def test_read_ahead_leaves_random_reads_alone() -> None:
    nursery = Nursery()
    r = reader(nursery)
    vnode = file(1, 20 * CHUNK)
    r.read_ahead(vnode.fid, vnode, None, 7 * CHUNK, 7, 3)  # not at 0, nothing before it
    r.read_ahead(vnode.fid, vnode, None, 2 * CHUNK, 2, 3)  # backwards
    assert nursery.started == []


def test_read_ahead_stops_at_the_end_of_the_file_and_claims_a_short_tail() -> None:
    nursery = Nursery()
    r = reader(nursery, window=16, call_chunks=4)
    vnode = file(1, 2 * CHUNK + 5)
    r.read_ahead(vnode.fid, vnode, None, 0, 0, 3)
    assert claimed(nursery) == [[1, 2]]  # fewer than a call's worth, but the file ends there
    assert (vnode.fid, 3, 1) in r.inflight and (vnode.fid, 3, 3) not in r.inflight


def test_no_read_ahead_without_a_nursery_or_a_window() -> None:
    vnode = file(1, 20 * CHUNK)
    for r in (reader(None), reader(Nursery(), window=0)):
        r.read_ahead(vnode.fid, vnode, None, 0, 0, 3)
        assert not r.inflight


def test_read_positions_are_remembered_for_a_bounded_number_of_files() -> None:
    """Every file ever read kept an entry for read-ahead, never pruned: a daemon that read
    a million files held a million entries."""
    r = reader(None)
    first = file(0, CHUNK)
    r.read_ahead(first.fid, first, None, 0, 0, 3)
    for n in range(1, 10_000):
        vnode = file(n, CHUNK)
        r.read_ahead(vnode.fid, vnode, None, 0, 0, 3)
        if n % 1000 == 0:
            r.read_ahead(first.fid, first, None, 0, 0, 3)  # read now and then: kept
    assert len(r.sequential) == SEQUENTIAL_FILES
    assert first.fid in r.sequential and vnode.fid in r.sequential


def settle_claims(r: ChunkReader, fid: AfsFid, version: int) -> None:
    """Read-ahead recorded by Nursery finishes: its chunks are in memory."""
    for (held, at, index), event in list(r.inflight.items()):
        if (held, at) == (fid, version):
            del r.inflight[(held, at, index)]
            event.set()
            r.memory.put((held, at, index), b"x")


def test_in_steady_state_the_window_is_refilled_a_calls_worth_at_a_time() -> None:
    """A reader moving one chunk on must not start a read-ahead call for the one chunk
    that opened up at the far end of the window: calls carry call_chunks chunks, and only
    the file's last chunks may go in a shorter one."""
    nursery = Nursery()
    r = reader(nursery, window=8, call_chunks=4)
    vnode = file(1, 20 * CHUNK)
    r.read_ahead(vnode.fid, vnode, None, 0, 0, 3)
    assert claimed(nursery) == [[1, 2, 3, 4, 5, 6, 7, 8]]
    settle_claims(r, vnode.fid, 3)
    for index in range(1, 20):
        r.read_ahead(vnode.fid, vnode, None, index * CHUNK, index, 3)
        settle_claims(r, vnode.fid, 3)
    assert claimed(nursery)[1:] == [[9, 10, 11, 12], [13, 14, 15, 16], [17, 18, 19]]


def test_a_window_no_bigger_than_a_call_is_refilled_before_it_runs_dry() -> None:
    """Waiting for a call's worth to open would leave the reader nothing ahead."""
    nursery = Nursery()
    r = reader(nursery, window=2, call_chunks=4)
    vnode = file(1, 20 * CHUNK)
    for index in range(4):
        r.read_ahead(vnode.fid, vnode, None, index * CHUNK, index, 3)
        settle_claims(r, vnode.fid, 3)
    assert claimed(nursery) == [[1, 2], [3], [4], [5]]


ME = Identity(1000)


async def read_ahead_done(m: CacheManager) -> None:
    while m.reader.inflight:
        await next(iter(m.reader.inflight.values())).wait()


async def test_a_sequential_reader_finds_the_window_ahead_filled_in_calls_of_several_chunks(
    tmp_path: Path,
) -> None:
    window, call_chunks, chunks = 8, 4, 40
    chunk = memfs.CHUNK
    async with mem_manager(
        tmp_path, readahead_chunks=window, readahead_call_chunks=call_chunks
    ) as (m, server):
        content = bytes(i % 251 for i in range(chunks * chunk))
        fid = server.add_file("big", content)
        version = server.vnodes[fid.vnode].version
        for index in range(chunks):
            got = await m.read(fid, index * chunk, chunk, ME)
            assert got == content[index * chunk : (index + 1) * chunk]
            await read_ahead_done(m)
            # At least a window less one call's worth is always ahead of the reader.
            ahead = range(index + 1, min(index + window - call_chunks + 2, chunks))
            assert all((fid, version, i) in m.reader.memory for i in ahead), index
        assert m.stats.data_misses == 1  # the reader itself waited for its first chunk only
        # (first chunk, chunks) of each FetchData64, in file order (read-ahead runs calls
        # side by side): the reader's own of chunk 0, then read-ahead's.
        first, *calls = sorted(
            (p // chunk, n // chunk) for v, p, n in server.fetches if v == fid.vnode
        )
        assert first == (0, 1)
        assert [i for start, n in calls for i in range(start, start + n)] == list(range(1, chunks))
        assert {n for _, n in calls[:-1]} == {call_chunks} and calls[-1][1] <= call_chunks
