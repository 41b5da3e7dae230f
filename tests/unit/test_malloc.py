"""The daemon's malloc settings and trimming (afsfuse/malloc.py)."""

from __future__ import annotations

import subprocess
import sys

import trio

from afsfuse.malloc import SETTINGS, Trimmer, in_arena, tune


def test_the_settings_are_applied_unless_the_environment_has_its_own() -> None:
    script = "from afsfuse.malloc import tune; print(sorted(tune().items()))"
    run = subprocess.run(
        [sys.executable, "-c", script], env={}, capture_output=True, text=True, check=True
    )
    assert run.stdout.strip() == str(sorted((n, v) for n, (_, v) in SETTINGS.items()))
    assert tune({"MALLOC_ARENA_MAX": "4", "MALLOC_MMAP_THRESHOLD_": "1"}) == {}


async def _wait_for(trims: list[int], count: int) -> None:
    with trio.fail_after(5):
        while len(trims) < count:
            await trio.sleep(0.01)


async def test_a_trim_follows_enough_small_blocks_freed_and_big_ones_do_not_count() -> None:
    calls: list[int] = []

    def count() -> bool:
        calls.append(1)
        return True

    trims: list[int] = []
    trimmer = Trimmer(
        after=100_000, trim=count, trimmed=lambda: trims.append(1), unused=lambda: None
    )
    big = SETTINGS["MALLOC_MMAP_THRESHOLD_"][1]
    assert in_arena(60_000) and not in_arena(big)
    async with trio.open_nursery() as nursery:
        await nursery.start(trimmer.run)
        trimmer.freed(60_000)
        trimmer.freed(big)  # mmap'd: given back by free() itself
        await trio.sleep(0.05)
        assert calls == []
        trimmer.freed(60_000)
        await _wait_for(trims, 1)
        trimmer.freed(99_999)  # the count starts again after a trim
        await trio.sleep(0.05)
        assert calls == [1]
        trimmer.freed(1)
        await _wait_for(trims, 2)
        nursery.cancel_scope.cancel()
    assert calls == [1, 1]


async def test_no_trim_while_the_arenas_keep_little_unused() -> None:
    """A stream of chunks reuses the space it frees: trimming it would only have the kernel
    map the same pages again."""
    calls: list[int] = []
    trims: list[int] = []
    unused = [10]

    def count() -> bool:
        calls.append(1)
        return True

    trimmer = Trimmer(
        after=100, trim=count, trimmed=lambda: trims.append(1), keep=50, unused=lambda: unused[0]
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(trimmer.run)
        trimmer.freed(100)
        await trio.sleep(0.1)
        assert calls == [] and trims == []
        unused[0] = 50
        trimmer.freed(100)
        await _wait_for(trims, 1)
        nursery.cancel_scope.cancel()
    assert calls == [1]


def test_the_arenas_unused_space_is_read_from_glibc() -> None:
    script = (
        "from afsfuse.malloc import free_in_arenas, tune\n"
        "tune()\n"
        "before = free_in_arenas()\n"
        "blocks = [bytes(1 << 20) for _ in range(40)]\n"
        "del blocks[::2]\n"
        "print(before, free_in_arenas())\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], env={}, capture_output=True, text=True, check=True
    )
    before, after = (int(n) for n in run.stdout.split())
    assert after - before >= 19 << 20  # the 20 chunks freed stay in the arenas, unused


# Frees every other 128 KiB block of 64 MiB (arena blocks under the daemon's settings), so
# the free space lies between live blocks where free() leaves it, then trims.
_SCATTERED = """
import sys
from afsfuse.malloc import trim, tune

def rss():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))

tune()
blocks = [bytes([i % 256]) * (128 << 10) for i in range(512)]
del blocks[::2]
before = rss()
assert trim()
print(before - rss())
"""


def test_a_real_trim_gives_back_free_space_left_between_live_blocks() -> None:
    run = subprocess.run(
        [sys.executable, "-c", _SCATTERED], env={}, capture_output=True, text=True, check=True
    )
    given_back_kib = int(run.stdout)
    assert given_back_kib > 24 << 10  # of the 32 MiB freed
