"""Recently used file chunks, kept in memory under a byte budget.

The kernel reads a file through FUSE 128 KiB at a time, so each 1 MiB chunk is asked for
eight times in a row; taking it from the disk cache every time costs a worker thread and a
1 MiB read per request.  Chunks just fetched are also served from here while they are still
being written to the disk cache.  Keys carry the data version, so a changed file can never
be answered with older bytes.

Every chunk let go is reported to `on_free` (the daemon's malloc Trimmer): small chunks
come and go by the thousand under `tar x`, and the space they leave is given back only when
asked for.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from afsfuse.fs.vnode import AfsFid

ChunkKey = tuple[AfsFid, int, int]  # fid, data version, chunk index


class ChunkMemory:
    """Least-recently-used chunks; `get` and `put` never block."""

    def __init__(self, budget: int, on_free: Callable[[int], None] | None = None) -> None:
        self.budget = budget
        self.used = 0
        self._on_free = on_free
        self._chunks: OrderedDict[ChunkKey, bytes] = OrderedDict()

    def __contains__(self, key: ChunkKey) -> bool:
        return key in self._chunks

    def __len__(self) -> int:
        return len(self._chunks)

    def get(self, key: ChunkKey) -> bytes | None:
        data = self._chunks.get(key)
        if data is not None:
            self._chunks.move_to_end(key)
        return data

    def put(self, key: ChunkKey, data: bytes) -> None:
        if len(data) > self.budget:
            return
        old = self._chunks.pop(key, None)
        if old is not None:
            self._let_go(old)
        self._chunks[key] = data
        self.used += len(data)
        while self.used > self.budget:
            self._let_go(self._chunks.popitem(last=False)[1])

    def drop(self, match: Callable[[AfsFid], bool]) -> None:
        """Forget the chunks of every file `match` accepts (flushes: rare, so a scan)."""
        for key in [k for k in self._chunks if match(k[0])]:
            self._let_go(self._chunks.pop(key))

    def clear(self) -> None:
        while self._chunks:
            self._let_go(self._chunks.popitem()[1])

    def _let_go(self, data: bytes) -> None:
        self.used -= len(data)
        if self._on_free is not None:
            self._on_free(len(data))
