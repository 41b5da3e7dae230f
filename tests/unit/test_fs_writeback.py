"""The StoreData64 calls that store a dirty file (fs/writeback.py)."""

from __future__ import annotations

from afsfuse.cache.base import FidKey
from afsfuse.cache.dirty import DirtyFile
from afsfuse.fs.writeback import StorePiece, store_plan

FID = FidKey("example.com", 1, 2, 3)
C = 100  # chunk size


def dirty(length: int, zero_from: int, chunks: set[int]) -> DirtyFile:
    return DirtyFile(FID, 7, length, zero_from, C, frozenset(chunks))


def test_runs_of_chunks_are_one_call_each_and_the_last_is_clipped() -> None:
    plan = store_plan(dirty(450, 450, {0, 1, 3, 4}), 1 << 20)
    assert plan == [StorePiece(0, 200, 450, (0, 1)), StorePiece(300, 150, 450, (3, 4))]


def test_a_truncation_is_cut_by_the_first_call_before_anything_is_written() -> None:
    # Cut to 150, then written at 500..550: the first call cuts, the hole reads as zeros.
    plan = store_plan(dirty(550, 150, {5}), 1 << 20)
    assert plan == [StorePiece(500, 50, 150, (5,))]


def test_length_change_without_data_is_one_empty_call() -> None:
    assert store_plan(dirty(1000, 40, set()), 1 << 20) == [StorePiece(1000, 0, 40, ())]
    assert store_plan(dirty(40, 40, set()), 1 << 20) == [StorePiece(40, 0, 40, ())]


def test_an_extension_past_the_last_dirty_chunk_ends_with_an_empty_call() -> None:
    plan = store_plan(dirty(5000, 120, {1}), 1 << 20)
    assert plan == [StorePiece(100, 100, 120, (1,)), StorePiece(5000, 0, 5000, ())]


def test_long_runs_are_split_at_the_call_size() -> None:
    plan = store_plan(dirty(500, 500, {0, 1, 2, 3, 4}), 2 * C)
    assert [(p.pos, p.length, p.chunks) for p in plan] == [
        (0, 200, (0, 1)),
        (200, 200, (2, 3)),
        (400, 100, (4,)),
    ]
    assert [p.file_length for p in plan] == [500, 500, 500]
