"""Trio faces of the cache: every call runs in a worker thread, because diskcache and file
I/O block.  A limiter bounds the threads (SQLite serialises writers anyway)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import TypeVar

import trio

from afsfuse.cache.base import FidKey
from afsfuse.cache.dirty import DirtyFile, DirtyStore
from afsfuse.cache.store import CacheStore, FileRecord

DEFAULT_THREADS = 4
T = TypeVar("T")


class _Offloaded:
    def __init__(self, limiter: trio.CapacityLimiter) -> None:
        self.limiter = limiter

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(partial(fn, *args), limiter=self.limiter)


class AsyncDirtyStore(_Offloaded):
    def __init__(self, store: DirtyStore, limiter: trio.CapacityLimiter) -> None:
        super().__init__(limiter)
        self.sync_store = store

    def get(self, fid: FidKey) -> DirtyFile | None:
        """In memory: no thread needed."""
        return self.sync_store.get(fid)

    def list(self) -> list[DirtyFile]:
        return self.sync_store.list()

    async def begin(self, fid: FidKey, base_version: int, length: int) -> DirtyFile:
        return await self._run(self.sync_store.begin, fid, base_version, length)

    async def write(
        self, fid: FidKey, offset: int, data: bytes, bases: Mapping[int, bytes] | None = None
    ) -> DirtyFile:
        return await self._run(self.sync_store.write, fid, offset, data, bases)

    async def read_chunk(self, fid: FidKey, index: int) -> bytes:
        return await self._run(self.sync_store.read_chunk, fid, index)

    async def truncate(self, fid: FidKey, length: int) -> DirtyFile:
        return await self._run(self.sync_store.truncate, fid, length)

    async def sync(self, fid: FidKey) -> None:
        await self._run(self.sync_store.sync, fid)

    async def discard(self, fid: FidKey) -> None:
        await self._run(self.sync_store.discard, fid)


class AsyncCacheStore(_Offloaded):
    """`CacheStore` for trio code; `sync_store` is the store itself, for threads."""

    def __init__(self, store: CacheStore, limiter: trio.CapacityLimiter | None = None) -> None:
        super().__init__(limiter or trio.CapacityLimiter(DEFAULT_THREADS))
        self.sync_store = store
        self.dirty = AsyncDirtyStore(store.dirty, self.limiter)

    async def get_record(self, fid: FidKey) -> FileRecord | None:
        return await self._run(self.sync_store.get_record, fid)

    async def put_status(self, fid: FidKey, data_version: int, status: object) -> FileRecord:
        return await self._run(self.sync_store.put_status, fid, data_version, status)

    async def put_statuses(self, statuses: list[tuple[FidKey, int, object]]) -> None:
        await self._run(self.sync_store.put_statuses, statuses)

    async def get_chunk(self, fid: FidKey, data_version: int, index: int) -> bytes | None:
        return await self._run(self.sync_store.get_chunk, fid, data_version, index)

    async def put_chunk(self, fid: FidKey, data_version: int, index: int, data: bytes) -> bool:
        return await self._run(self.sync_store.put_chunk, fid, data_version, index, data)

    async def get_dir(self, fid: FidKey, data_version: int) -> bytes | None:
        return await self._run(self.sync_store.get_dir, fid, data_version)

    async def put_dir(self, fid: FidKey, data_version: int, blob: bytes) -> bool:
        return await self._run(self.sync_store.put_dir, fid, data_version, blob)

    async def drop_fid(self, fid: FidKey) -> int:
        return await self._run(self.sync_store.drop_fid, fid)

    async def drop_volume(self, cell: str, volume: int) -> int:
        return await self._run(self.sync_store.drop_volume, cell, volume)

    async def clear(self) -> None:
        await self._run(self.sync_store.clear)
