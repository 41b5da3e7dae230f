from afsfuse.fs.chunkmem import ChunkMemory
from afsfuse.fs.vnode import AfsFid

A = AfsFid("cell", 1, 2, 3)
B = AfsFid("cell", 4, 2, 3)


def test_least_recently_used_chunks_go_first_under_the_budget() -> None:
    memory = ChunkMemory(budget=10)
    memory.put((A, 1, 0), b"aaaa")
    memory.put((A, 1, 1), b"bbbb")
    assert memory.get((A, 1, 0)) == b"aaaa"  # now the most recent
    memory.put((A, 1, 2), b"cccc")
    assert (A, 1, 1) not in memory
    assert memory.get((A, 1, 0)) == b"aaaa" and memory.get((A, 1, 2)) == b"cccc"
    assert memory.used == 8


def test_versions_are_apart_and_replacing_keeps_the_count() -> None:
    memory = ChunkMemory(budget=100)
    memory.put((A, 1, 0), b"old")
    memory.put((A, 2, 0), b"new!")
    memory.put((A, 2, 0), b"newer")
    assert memory.get((A, 1, 0)) == b"old" and memory.get((A, 2, 0)) == b"newer"
    assert memory.used == 8 and len(memory) == 2


def test_a_chunk_over_the_budget_is_not_kept() -> None:
    memory = ChunkMemory(budget=4)
    memory.put((A, 1, 0), b"12345")
    assert memory.get((A, 1, 0)) is None and memory.used == 0


def test_drop_and_clear() -> None:
    memory = ChunkMemory(budget=100)
    for fid in (A, B):
        memory.put((fid, 1, 0), b"xx")
        memory.put((fid, 1, 1), b"yy")
    memory.drop(lambda fid: fid.volume == 1)
    assert len(memory) == 2 and memory.used == 4 and (B, 1, 1) in memory
    memory.clear()
    assert len(memory) == 0 and memory.used == 0


def test_every_chunk_let_go_is_reported_with_its_size() -> None:
    freed: list[int] = []
    memory = ChunkMemory(budget=10, on_free=freed.append)
    memory.put((A, 1, 0), b"aaaa")
    memory.put((A, 1, 0), b"bbb")  # replaced
    memory.put((A, 1, 1), b"cccc")
    memory.put((B, 1, 0), b"dddddd")  # pushes (A, 1, 0) out
    assert freed == [4, 3]
    memory.drop(lambda fid: fid == A)
    assert freed == [4, 3, 4]
    memory.clear()
    assert freed == [4, 3, 4, 6] and memory.used == 0
