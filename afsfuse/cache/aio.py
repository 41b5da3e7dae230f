"""Trio faces of the cache: every call runs in a worker thread, because diskcache and file
I/O block.  A limiter bounds the threads (SQLite serialises writers anyway)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, TypeVar

import trio

from afsfuse.cache.base import FidKey
from afsfuse.cache.dirty import DirtyFile, DirtyStore, WouldBlock
from afsfuse.cache.leftovers import Leftover
from afsfuse.cache.store import CacheStore, CleanItem, FileRecord

DEFAULT_THREADS = 4
T = TypeVar("T")
log = logging.getLogger(__name__)


class _Offloaded:
    def __init__(self, limiter: trio.CapacityLimiter) -> None:
        self.limiter = limiter

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(partial(fn, *args), limiter=self.limiter)


class AsyncDirtyStore(_Offloaded):
    """Each call is tried inline first: a small file kept in memory needs no thread."""

    def __init__(self, store: DirtyStore, limiter: trio.CapacityLimiter) -> None:
        super().__init__(limiter)
        self.sync_store = store

    async def _inline_first(self, fn: Callable[..., T], *args: object) -> T:
        try:
            return fn(*args, blocking=False)
        except WouldBlock:
            return await self._run(partial(fn, blocking=True), *args)

    def get(self, fid: FidKey) -> DirtyFile | None:
        """In memory: no thread needed."""
        return self.sync_store.get(fid)

    def list(self) -> list[DirtyFile]:
        return self.sync_store.list()

    async def begin(
        self,
        fid: FidKey,
        base_version: int,
        length: int,
        writer: tuple[int, int | None] | None = None,
    ) -> DirtyFile:
        return await self._inline_first(self.sync_store.begin, fid, base_version, length, writer)

    async def write(
        self, fid: FidKey, offset: int, data: bytes, bases: Mapping[int, bytes] | None = None
    ) -> DirtyFile:
        return await self._inline_first(self.sync_store.write, fid, offset, data, bases)

    async def read_chunk(self, fid: FidKey, index: int) -> bytes:
        return await self._inline_first(self.sync_store.read_chunk, fid, index)

    async def truncate(self, fid: FidKey, length: int) -> DirtyFile:
        return await self._inline_first(self.sync_store.truncate, fid, length)

    async def sync(self, fid: FidKey) -> None:
        await self._run(self.sync_store.sync, fid)

    async def discard(self, fid: FidKey) -> None:
        await self._inline_first(self.sync_store.discard, fid)

    async def persist(self, fid: FidKey) -> None:
        await self._run(self.sync_store.persist, fid)

    async def update(self, fid: FidKey, **changes: Any) -> DirtyFile:
        return await self._inline_first(partial(self.sync_store.update, **changes), fid)


class AsyncCacheStore(_Offloaded):
    """`CacheStore` for trio code; `sync_store` is the store itself, for threads.  A read
    of a file with nothing cached answers None at once, without a thread."""

    def __init__(self, store: CacheStore, limiter: trio.CapacityLimiter | None = None) -> None:
        super().__init__(limiter or trio.CapacityLimiter(DEFAULT_THREADS))
        self.sync_store = store
        self.dirty = AsyncDirtyStore(store.dirty, self.limiter)

    async def get_record(self, fid: FidKey) -> FileRecord | None:
        if not self.sync_store.may_hold(fid):
            return None
        return await self._run(self.sync_store.get_record, fid)

    async def get_chunk(self, fid: FidKey, data_version: int, index: int) -> bytes | None:
        if not self.sync_store.may_hold(fid):
            return None
        return await self._run(self.sync_store.get_chunk, fid, data_version, index)

    async def get_dir(self, fid: FidKey, data_version: int) -> bytes | None:
        if not self.sync_store.may_hold(fid):
            return None
        return await self._run(self.sync_store.get_dir, fid, data_version)

    async def put_many(self, items: list[CleanItem]) -> None:
        await self._run(self.sync_store.put_many, items)

    async def drop_fid(self, fid: FidKey) -> int:
        return await self._run(self.sync_store.drop_fid, fid)

    async def drop_volume(self, cell: str, volume: int) -> int:
        return await self._run(self.sync_store.drop_volume, cell, volume)

    async def clear(self) -> None:
        await self._run(self.sync_store.clear)

    async def set_aside(
        self, fid: FidKey, *, reason: str, server_version: int | None, base_version: int
    ) -> Leftover:
        """Move `fid`'s dirty data to the leftovers, with what the clean cache still holds of
        `base_version` for the bytes it did not change."""
        store = self.sync_store

        def set_aside() -> Leftover:
            return store.leftovers.set_aside(
                store.dirty,
                fid,
                reason=reason,
                server_version=server_version,
                clean_chunk=lambda index: store.get_chunk(fid, base_version, index),
            )

        return await self._run(set_aside)


class CleanWriter:
    """Clean data on its way to the disk cache (the caller keeps it in memory meanwhile),
    written in batches by one task: a batch costs one worker thread call and one
    transaction, where an item each made a thousand small files cost a thousand of both.
    The task lingers a moment after the first item of a batch, for more to come.
    At most `limit` items wait; past that, `put` waits for the disk.  Until `run` is
    started, and after it ends, `put` writes at once."""

    def __init__(self, cache: AsyncCacheStore, limit: int, linger: float = 0.02) -> None:
        self._cache = cache
        self._limit = max(1, limit)
        self._linger = linger
        self._room = trio.Semaphore(self._limit)
        self._pending: list[CleanItem] = []
        self._more = trio.Event()
        self._running = False
        self._writing = trio.Lock()

    @property
    def writing(self) -> trio.Lock:
        """Held while a batch is written (the cache manager's debug listing shows it)."""
        return self._writing

    async def put(self, item: CleanItem) -> None:
        if not self._running:
            await self._write([item])
            return
        try:
            self._room.acquire_nowait()  # no checkpoints while there is room, as there is
        except trio.WouldBlock:
            await self._room.acquire()
        self._pending.append(item)
        self._more.set()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Write batches until cancelled; what is still waiting then is written first."""
        self._running = True
        task_status.started()
        try:
            while True:
                await self._more.wait()
                if len(self._pending) < self._limit // 2:
                    # Items come one per file from a tar x or a build: a moment's wait makes
                    # a batch of them, and memory holds them meanwhile.
                    await trio.sleep(self._linger)
                await self._flush()
        finally:
            self._running = False
            await self._flush()

    async def discard(self, matches: Callable[[FidKey], bool]) -> None:
        """Drop the waiting items of the files `matches` picks, and return once no batch is
        being written: their cache is about to be flushed, and nothing on its way must
        bring it back."""
        kept = [item for item in self._pending if not matches(item.fid)]
        for _ in range(len(self._pending) - len(kept)):
            self._room.release()
        self._pending = kept
        async with self._writing:
            pass

    async def _flush(self) -> None:
        self._more = trio.Event()
        batch, self._pending = self._pending, []
        try:
            # Shielded: a batch taken off the queue must not be lost to a cancellation
            # while it waits for a worker thread.
            with trio.CancelScope(shield=True):
                await self._write(batch)
        finally:
            for _ in batch:
                self._room.release()

    async def _write(self, batch: list[CleanItem]) -> None:
        if not batch:
            return
        try:
            async with self._writing:
                await self._cache.put_many(batch)
        except Exception:
            # The data is still served from memory or fetched again; only the disk copy
            # is lost, so a full or failing cache disk does not fail the reader.
            log.exception("writing %d items to the disk cache failed", len(batch))
