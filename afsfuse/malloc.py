"""glibc's malloc set for a daemon that moves 1 MiB buffers between threads, and given back
what bursts of small chunks leave behind.

Chunks are 1 MiB bytes objects made on the trio thread and in worker threads (disk cache,
dirty data).  By default glibc gives each thread that allocates an arena of its own (up to
eight per core), and raises its mmap threshold to the size of every mmap'd block freed, so
after the first chunks are freed the next ones come from the arenas, whose freed space is
rarely given back.  Measured on the bench (256 MiB file, 4 parallel `tar x`): peak RSS
250 MiB by default, 191 MiB with two arenas and a fixed threshold of 256 KiB, at no measured
CPU cost.  Environment settings an administrator made (`MALLOC_ARENA_MAX`,
`MALLOC_MMAP_THRESHOLD_`) are left as they are.

Chunks under the threshold (small files, the ends of files) still come from the arenas.
`tar x` fills chunk memory with them, then bigger files' chunks (mmap'd) push them out: the
arenas keep the freed space, scattered between live blocks where glibc's own trimming (the
top of the heap only) never reaches, and RSS holds both at once.  `Trimmer` calls
malloc_trim(3), which also gives back free pages inside the heaps, once enough such chunks
were freed.
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
    "MALLOC_MMAP_THRESHOLD_": (M_MMAP_THRESHOLD, 256 * 1024),
}

#: Bytes of arena blocks freed before a trim: a trim walks every free block of the arenas
#: (a few ms to tens of ms), so it is worth it only for a sizeable amount.
TRIM_AFTER = 16 << 20


@functools.cache
def _libc() -> Any:
    """The C library, or None where it has no glibc malloc functions."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


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


def in_arena(size: int) -> bool:
    """Is a block of `size` bytes taken from an arena (not mmap'd) under SETTINGS?"""
    return size < SETTINGS["MALLOC_MMAP_THRESHOLD_"][1]


class Trimmer:
    """Trims (in a worker thread) once `after` bytes of arena blocks were reported freed;
    owners of many such blocks report them with `freed`."""

    def __init__(
        self,
        after: int = TRIM_AFTER,
        trim: Callable[[], bool] = trim,
        trimmed: Callable[[], None] = lambda: None,
    ) -> None:
        self.after = after
        self._trim = trim
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
            await trio.to_thread.run_sync(self._trim)
            self._trimmed()
