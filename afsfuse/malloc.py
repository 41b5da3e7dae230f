"""glibc's malloc set for a daemon that moves 1 MiB buffers between threads, and given back
what bursts of small chunks leave behind.

Chunks are 1 MiB bytes objects made on the trio thread and in worker threads (disk cache,
dirty data).  By default glibc gives each thread that allocates an arena of its own (up to
eight per core), and raises its mmap threshold to the size of every mmap'd block freed, so
after the first chunks are freed the next ones come from the arenas, whose freed space is
rarely given back.  Measured on the bench (256 MiB file, 4 parallel `tar x`): peak RSS
250 MiB by default, 191 MiB with two arenas and a fixed threshold of 256 KiB.  Environment
settings an administrator made (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`) are left as
they are.

The threshold sits above a chunk (2 MiB), so chunks come from the two arenas too.  With it
at 256 KiB, every chunk was an mmap of its own: the kernel zeroed and mapped each of its 256
pages, then unmapped them at free, and a read of 256 MiB from the disk cache spent more time
in the kernel than in Python (its system time there fell by about two thirds).  In the
arenas a chunk freed is the next one's space.  On the bench (256 MiB) the daemon's CPU for
cold, disk-cache and remount reads and `cp` fell by 0-30 % from pair to pair of runs, about
15 % overall; peak RSS went from 132 to 160 MiB there, and was 153 MiB with 4 parallel
`tar x` of the whole standard library.

Space freed in the arenas stays there, scattered between live blocks where glibc's own
trimming (the top of the heap only) never reaches: `tar x` fills chunk memory with small
chunks, then bigger ones push them out, and RSS holds both at once.  `Trimmer` calls
malloc_trim(3), which also gives back free pages inside the heaps, once enough was freed and
the arenas hold more than `KEEP_FREE` unused.  Not below: a trim gives back the pages a
stream of chunks is about to use again, and the kernel must zero and map them anew.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable, Mapping
from typing import Any

import trio

#: mallopt(3) parameters (malloc.h).
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

#: What the daemon asks for, unless the environment says otherwise.
SETTINGS = {
    "MALLOC_ARENA_MAX": (M_ARENA_MAX, 2),
    "MALLOC_MMAP_THRESHOLD_": (M_MMAP_THRESHOLD, 2 << 20),
}

#: Bytes of arena blocks freed before a trim: a trim walks every free block of the arenas
#: (a few ms to tens of ms), so it is worth it only for a sizeable amount.
TRIM_AFTER = 16 << 20

#: Unused bytes the arenas may keep: a stream of chunks reuses its own, and below this a trim
#: would only make the kernel map the same pages again.
KEEP_FREE = 32 << 20


class _MallInfo2(ctypes.Structure):
    """struct mallinfo2 (malloc.h, glibc 2.33 and later)."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


@functools.cache
def _libc() -> Any:
    """The C library, or None where it has no glibc malloc functions."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):
        return None
    if hasattr(libc, "mallinfo2"):
        libc.mallinfo2.restype = _MallInfo2
    return libc


def tune(environ: Mapping[str, str] = os.environ) -> dict[str, int]:
    """Apply SETTINGS not set in the environment; what was applied.  Call before any
    thread starts.  Without glibc (no mallopt) nothing is done."""
    libc = _libc()
    if libc is None:
        return {}
    applied = {}
    for name, (parameter, value) in SETTINGS.items():
        if name not in environ and libc.mallopt(parameter, value) == 1:
            applied[name] = value
    return applied


def trim() -> bool:
    """Give the free pages of every arena back to the kernel; whether any were.  Blocks
    the arenas while it runs: call it from a worker thread."""
    libc = _libc()
    return libc is not None and libc.malloc_trim(0) == 1


def free_in_arenas() -> int | None:
    """Bytes the arenas hold unused (mallinfo2's fordblks), or None without mallinfo2.
    Walks the free lists under the arenas' locks: call it from a worker thread."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    return int(libc.mallinfo2().fordblks)


def in_arena(size: int) -> bool:
    """Is a block of `size` bytes taken from an arena (not mmap'd) under SETTINGS?"""
    return size < SETTINGS["MALLOC_MMAP_THRESHOLD_"][1]


class Trimmer:
    """Trims (in a worker thread) once `after` bytes of arena blocks were reported freed and
    the arenas hold more than `keep` unused; owners of many such blocks report them with
    `freed`."""

    def __init__(
        self,
        after: int = TRIM_AFTER,
        trim: Callable[[], bool] = trim,
        trimmed: Callable[[], None] = lambda: None,
        keep: int = KEEP_FREE,
        unused: Callable[[], int | None] = free_in_arenas,
    ) -> None:
        self.after = after
        self.keep = keep
        self._trim = trim
        self._unused = unused
        #: Told of every trim done (the daemon counts them in its statistics).
        self._trimmed = trimmed
        self._freed = 0
        self._wanted = trio.Event()

    def freed(self, size: int) -> None:
        """A block of `size` bytes was let go (never blocks: the trim happens in `run`)."""
        if in_arena(size):
            self._freed += size
            if self._freed >= self.after:
                self._wanted.set()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Trim whenever enough was freed, until cancelled."""
        task_status.started()
        while True:
            await self._wanted.wait()
            self._wanted = trio.Event()
            self._freed = 0
            if await trio.to_thread.run_sync(self._trim_if_worth_it):
                self._trimmed()

    def _trim_if_worth_it(self) -> bool:
        unused = self._unused()
        if unused is not None and unused < self.keep:
            return False
        self._trim()
        return True
