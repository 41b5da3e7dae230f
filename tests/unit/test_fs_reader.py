"""The chunk reader's read-ahead decisions (fs/reader.py), without a fileserver."""

from __future__ import annotations

from typing import Any

from afsfuse.fs.chunkmem import ChunkMemory
from afsfuse.fs.reader import SEQUENTIAL_FILES, ChunkReader
from afsfuse.fs.stats import Stats
from afsfuse.fs.vnode import AfsFid, Status, Vnode
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
    # A read that continues where the last one stopped moves the window on; chunks in
    # flight are not claimed twice.
    r.read_ahead(vnode.fid, vnode, None, CHUNK, 1, 3)
    r.read_ahead(vnode.fid, vnode, None, 2 * CHUNK, 2, 3)
    later = [i for run in claimed(nursery)[1:] for i in run]
    assert later == [5, 6]
    # Once those chunks are in memory, a re-read of the same chunk claims nothing.
    for i in range(1, 7):
        r.inflight.pop((vnode.fid, 3, i)).set()
        r.memory.put((vnode.fid, 3, i), b"x")
    r.read_ahead(vnode.fid, vnode, None, 2 * CHUNK + 10, 2, 3)
    assert len(nursery.started) == 3


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
