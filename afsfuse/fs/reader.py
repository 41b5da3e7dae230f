"""The chunk reader: file data by data version, in 1 MiB chunks, with read-ahead.

A chunk is only ever served for the data version it was fetched at: it is kept in memory
(fs/chunkmem.py) and in the disk cache under (fid, version, index).  Readers of a chunk
being fetched wait for that fetch (the in-flight map).  Read-ahead decides here
(`read_ahead`): a reader that starts at offset 0 or continues where it stopped gets the
next chunks fetched, several per FetchData64, or loaded from the disk cache, in the
background.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from afsfuse.cache.aio import AsyncCacheStore, CleanWriter
from afsfuse.cache.store import CleanItem
from afsfuse.fs import deadline
from afsfuse.fs.chunkmem import ChunkKey, ChunkMemory
from afsfuse.fs.errors import FsError
from afsfuse.fs.server import FileServer
from afsfuse.fs.stats import Stats
from afsfuse.fs.status import StatusKeeper, afs_fid
from afsfuse.fs.vnode import AfsFid, Status, Vnode
from afsfuse.keyring.token import Token
from afsfuse.rx.driver import ClientConnection
from afsfuse.rx.errors import RxAbort
from afsfuse.rx.interfaces.fs import FS

log = logging.getLogger(__name__)

#: Files whose last read position is remembered for read-ahead, at most; the least recently
#: read is forgotten first (reading it again from where it stopped starts no read-ahead).
SEQUENTIAL_FILES = 4096

#: A data version and the file length at that version.
Shown = tuple[int, int]


@dataclass(frozen=True)
class FileData:
    """Bytes read from a file, and the data version and length they belong to (version None:
    this mount's own data, not stored yet)."""

    data: bytes
    version: int | None
    length: int


class DataVersionChanged(Exception):
    """The file changed while a read was assembling chunks: start the read again."""


class ChunkReader:
    """Clean file data.  `changed(fid)` pushes a change to the kernel again; `nursery()` is
    where read-ahead runs (None: not running, no read-ahead)."""

    def __init__(
        self,
        status: StatusKeeper,
        cache: AsyncCacheStore,
        clean_writer: CleanWriter,
        memory: ChunkMemory,
        stats: Stats,
        *,
        chunk_size: int,
        timeout: float,
        window: int,
        call_chunks: int,
        changed: Callable[[AfsFid], None],
        nursery: Callable[[], trio.Nursery | None],
    ) -> None:
        self.status = status
        self.cache = cache
        self.clean_writer = clean_writer
        self.memory = memory
        self.stats = stats
        self.chunk_size = chunk_size
        self.timeout = timeout
        self.window = window
        self.call_chunks = call_chunks
        self.changed = changed
        self._nursery = nursery
        #: Chunks being fetched or loaded: readers of the same chunk wait for the event.
        self.inflight: dict[ChunkKey, trio.Event] = {}
        #: Where each recently read file's last read ended, least recently read first.
        self.sequential: dict[AfsFid, int] = {}

    async def read(
        self,
        fid: AfsFid,
        vnode: Vnode,
        token: Token | None,
        status: Status,
        offset: int,
        size: int,
        shown: Shown | None,
        trusted: bool,
    ) -> FileData:
        """Up to `size` bytes at `offset` of the file at `status`, or of the version and
        length `shown` while all its chunks needed are in memory."""
        chunk = self.chunk_size
        current = status.data_version
        version, length = current, status.size
        if trusted and shown is not None and shown[0] != current:
            end = min(offset + size, shown[1])
            indexes = range(offset // chunk, (end - 1) // chunk + 1)
            if all((fid, shown[0], i) in self.memory for i in indexes):
                version, length = shown
        size = min(size, length - offset)
        if size <= 0:
            return FileData(b"", version, length)
        first, last = offset // chunk, (offset + size - 1) // chunk
        self.read_ahead(fid, vnode, token, offset, last, current)
        start = offset - first * chunk
        if first == last:
            data = await self.chunk(fid, vnode, token, version, first, trusted)
            out = data[start : start + size] if start or size < len(data) else data
        else:
            pieces = [
                await self.chunk(fid, vnode, token, version, index, trusted)
                for index in range(first, last + 1)
            ]
            out = b"".join(pieces)[start : start + size]
        assert vnode.status is not None
        if vnode.status.data_version != version:
            # Pages of a version the file is past may now be in the kernel's cache, put
            # there after the change was pushed to the kernel: push it again.
            self.changed(fid)
        self.stats.bytes_served += len(out)
        return FileData(out, version, length)

    async def chunk(
        self,
        fid: AfsFid,
        vnode: Vnode,
        token: Token | None,
        version: int,
        index: int,
        trusted: bool,
    ) -> bytes:
        key = (fid, version, index)
        if trusted:
            data = self.memory.get(key)
            if data is None and (waiting := self.inflight.get(key)) is not None:
                await deadline.wait_for(waiting, self.timeout, "read-ahead")
                data = self.memory.get(key)
            if data is None:
                data = await self.cache.get_chunk(fid, version, index)
                if data is not None:
                    self.memory.put(key, data)
            if data is not None:
                self.stats.data_hits += 1
                return data
        self.stats.data_misses += 1
        return await self._fetch_chunk(fid, vnode, token, version, index)

    async def _fetch_chunk(
        self, fid: AfsFid, vnode: Vnode, token: Token | None, version: int, index: int
    ) -> bytes:
        key = (fid, version, index)
        done = trio.Event()
        self.inflight.setdefault(key, done)
        try:
            chunks = await self._fetch_run(fid, vnode, token, version, index, 1)
            return chunks[0]
        finally:
            self._settle(key, done)

    def _settle(self, key: ChunkKey, event: trio.Event) -> None:
        if self.inflight.get(key) is event:
            del self.inflight[key]
        event.set()

    def settle(self, fid: AfsFid, version: int, claimed: dict[int, trio.Event]) -> None:
        """Chunks claimed for `prefetch` are done with (again: harmless)."""
        for i, event in claimed.items():
            self._settle((fid, version, i), event)

    async def _fetch_run(
        self, fid: AfsFid, vnode: Vnode, token: Token | None, version: int, first: int, count: int
    ) -> list[bytes]:
        """Chunks first..first+count-1 in one FetchData64, kept in memory and written to the
        disk cache behind the reader; DataVersionChanged if the file is no longer at
        `version` (the chunks are kept under the version they are)."""
        chunk = self.chunk_size

        async def call(conn: ClientConnection, server: FileServer) -> tuple[list[bytes], Any]:
            pieces: list[bytes] = []
            async with FS.FetchData64.stream(
                conn, afs_fid(fid), first * chunk, count * chunk
            ) as stream:
                while stream.remaining:
                    pieces.append(await stream.read(chunk))
            return pieces, stream.result

        op = self.status.operation(token, "FS.FetchData64", vnode)
        pieces, reply = await op.run(call)
        self.stats.bytes_fetched += sum(map(len, pieces))
        status = op.commit(vnode, reply.OutStatus, reply.CallBack)
        if not pieces:
            pieces.append(b"")  # at or past the end: an empty chunk
        for offset, data in enumerate(pieces):
            await self.keep_chunk(fid, status.data_version, first + offset, data)
        if status.data_version != version:
            raise DataVersionChanged
        return pieces

    async def keep_chunk(self, fid: AfsFid, version: int, index: int, data: bytes) -> None:
        """Into memory now, into the disk cache behind the reader."""
        self.memory.put((fid, version, index), data)
        await self.clean_writer.put(CleanItem(fid, version, index, data))

    def read_ahead(
        self, fid: AfsFid, vnode: Vnode, token: Token | None, offset: int, last: int, version: int
    ) -> None:
        """A reader that continues where it stopped gets the chunks after `last` fetched
        (or loaded from the disk cache) in the background.  The window is refilled a
        call's worth of chunks at a time, so each read-ahead call carries several; only the
        file's last chunks may go in a shorter call."""
        chunk = self.chunk_size
        sequential = self.sequential
        expected = sequential.pop(fid, None)
        sequential[fid] = (last + 1) * chunk
        if len(sequential) > SEQUENTIAL_FILES:
            del sequential[next(iter(sequential))]
        window = self.window
        nursery = self._nursery()
        if nursery is None or not window:
            return
        continues = expected is not None and expected - chunk <= offset <= expected
        if offset != 0 and not continues:
            return
        assert vnode.status is not None
        chunks = (vnode.status.size + chunk - 1) // chunk
        end = min(last + 1 + window, chunks)
        wanted = [
            i
            for i in range(last + 1, end)
            if (fid, version, i) not in self.inflight and (fid, version, i) not in self.memory
        ]
        # A reader one chunk on opens one chunk at the window's far end: wait until a
        # call's worth is open (or the window reaches the end of the file), but refill a
        # window no bigger than a call while a chunk of it is still ahead of the reader.
        batch = max(1, min(self.call_chunks, window - 1))
        if not wanted or (len(wanted) < batch and end < chunks):
            return
        claimed = {i: trio.Event() for i in wanted}
        for i, event in claimed.items():
            self.inflight[(fid, version, i)] = event
        nursery.start_soon(self.prefetch, fid, vnode, token, version, claimed)

    async def prefetch(
        self,
        fid: AfsFid,
        vnode: Vnode,
        token: Token | None,
        version: int,
        claimed: dict[int, trio.Event],
    ) -> None:
        """Chunks the disk cache holds are loaded into memory; runs of the others are
        fetched, several chunks per call.  Every claimed chunk (its event put in `inflight`
        by the caller) is settled at the end."""
        try:
            record = await self.cache.get_record(fid)
            cached = record.chunks if record is not None and record.data_version == version else ()
            missing = [i for i in claimed if i not in cached]
            runs: list[list[int]] = []
            for i in missing:
                if runs and runs[-1][-1] == i - 1 and len(runs[-1]) < self.call_chunks:
                    runs[-1].append(i)
                else:
                    runs.append([i])
            async with trio.open_nursery() as nursery:
                for i in claimed:
                    if i in cached:
                        nursery.start_soon(self._load_ahead, fid, version, i, claimed[i])
                for run in runs:
                    nursery.start_soon(self._fetch_ahead, fid, vnode, token, version, run, claimed)
        except Exception:
            log.exception("read-ahead of %s failed", tuple(fid))
        finally:
            for i, event in claimed.items():
                self._settle((fid, version, i), event)

    async def _load_ahead(self, fid: AfsFid, version: int, index: int, event: trio.Event) -> None:
        try:
            data = await self.cache.get_chunk(fid, version, index)
            if data is not None:
                self.memory.put((fid, version, index), data)
        finally:
            self._settle((fid, version, index), event)

    async def _fetch_ahead(
        self,
        fid: AfsFid,
        vnode: Vnode,
        token: Token | None,
        version: int,
        run: list[int],
        claimed: dict[int, trio.Event],
    ) -> None:
        try:
            await self._fetch_run(fid, vnode, token, version, run[0], len(run))
        except (FsError, RxAbort, DataVersionChanged) as e:
            log.debug("read-ahead of %s chunks %d-%d: %s", tuple(fid), run[0], run[-1], e)
        finally:
            for i in run:
                self._settle((fid, version, i), claimed[i])
