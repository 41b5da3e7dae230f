"""The writer: dirty data, truncation, stores, and unsent data set aside.

Writes land in the dirty store (cache/dirty.py) under a per-file lock, over the data
version they were written over; `store_now` (close, fsync) stores them with StoreData64
calls (fs/writeback.py plans them) only while the fileserver still has that version
(`written_over`), else they are set aside as a leftover (`_set_aside`).  A store that fails
leaves the data unsent: kept on disk and retried in the background with its writer's token
by fs/unsent.py, which calls `_store_unsent`, and by the next close.  Reads of a file with
dirty data go through the dirty view here (`read_dirty`): read-your-writes.

Over 500 lines: the dirty view, the write path and the store path share the per-file
lock, the modification times and the set-aside rule, and are read together.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import trio

from afsfuse.cache.aio import AsyncCacheStore
from afsfuse.cache.base import MAX_FILE_SIZE
from afsfuse.cache.dirty import DirtyFile
from afsfuse.cache.store import CacheStore
from afsfuse.fs.errors import FsError, fs_error
from afsfuse.fs.reader import ChunkReader, DataVersionChanged
from afsfuse.fs.server import FileServer
from afsfuse.fs.stats import Stats
from afsfuse.fs.status import StatusKeeper, afs_fid
from afsfuse.fs.unsent import UnsentData
from afsfuse.fs.vnode import AfsFid, Status, Vnode
from afsfuse.fs.writeback import StorePiece, store_plan
from afsfuse.keyring.store import Identity
from afsfuse.keyring.token import Token
from afsfuse.rx.driver import ClientConnection
from afsfuse.rx.errors import RxAbort
from afsfuse.rx.interfaces.fs import (
    AFS_FSYNC,
    AFS_SETGROUP,
    AFS_SETMODE,
    AFS_SETMODTIME,
    AFS_SETOWNER,
    FS,
    PRSFS_READ,
    PRSFS_WRITE,
    AFSStoreStatus,
)

log = logging.getLogger(__name__)


def written_over(dirty: DirtyFile, server: Status) -> bool:
    """May `dirty` be stored over the server's copy at `server`?  Only over the version it
    was written over, or over the version a store of its own left when the daemon stopped
    mid-store (known by the modification time that store sent)."""
    if server.data_version == dirty.base_version:
        return True
    return dirty.pending is not None and dirty.pending == (server.data_version, server.mtime)


def _fid_name(fid: AfsFid) -> str:
    return f"{fid.cell} fid {fid.volume}.{fid.vnode}.{fid.unique}"


def _stored_later_for(dirty: DirtyFile, who: Identity) -> bool:
    """Will `who`'s own close store `dirty`?  Not data a store failed to send (it goes in
    the background, and may outlive this daemon's memory), nor another caller's (their
    store, with their rights, would carry this caller's change)."""
    return not dirty.unsent and dirty.writer == (who.uid, who.pag)


class Writer:
    """Dirty data and stores.  `token_for(cell, who)` is a caller's token; `notify(fid)`
    tells the kernel."""

    def __init__(
        self,
        status: StatusKeeper,
        store: CacheStore,
        cache: AsyncCacheStore,
        reader: ChunkReader,
        stats: Stats,
        *,
        token_for: Callable[[str, Identity], Token | None],
        notify: Callable[[AfsFid | None], None],
        store_call_bytes: int,
        store_retry: float,
        dirty_memory_age: float,
    ) -> None:
        self.status = status
        self.vnodes = status.vnodes
        self.store = store
        self.cache = cache
        self.reader = reader
        self.stats = stats
        self.token_for = token_for
        self.notify = notify
        self.store_call_bytes = store_call_bytes
        self.store_retry = store_retry
        #: Per-file locks that put writers, truncations and stores of one file in a row.
        self._file_locks: dict[AfsFid, tuple[trio.Lock, int]] = {}
        #: Modification time of dirty files, sent with their store.
        self._mtimes: dict[AfsFid, int] = {}
        #: Stores unsent data again in the background (run it in a nursery).
        self.unsent = UnsentData(
            cache.dirty,
            self._store_unsent,
            interval=store_retry,
            memory_age=dirty_memory_age,
            max_interval=8 * store_retry,
        )
        self._unsent: UnsentData | None = self.unsent

    # -- the dirty view: what this machine sees before the fileserver does -------------

    def local_view(self, status: Status, fid: AfsFid) -> Status:
        """`status` as seen here: the length and time of data not yet stored count."""
        dirty = self.shown_dirty(fid, status)
        if dirty is None:
            return status
        mtime = self._mtimes.get(fid, status.mtime)
        return replace(status, size=dirty.length, mtime=mtime, unstored=True)

    def shown_dirty(self, fid: AfsFid, status: Status) -> DirtyFile | None:
        """The dirty state this mount shows for `fid` with the server at `status`: none for
        unsent data written over a version the server no longer has (it is set aside in the
        background, and the server's copy is what the file is)."""
        dirty = self.store.dirty.get(fid)
        if dirty is not None and dirty.unsent and not written_over(dirty, status):
            if self._unsent is not None:
                self._unsent.poke()
            return None
        return dirty

    async def read_dirty(
        self,
        fid: AfsFid,
        vnode: Vnode,
        token: Token | None,
        dirty: DirtyFile,
        offset: int,
        size: int,
        trusted: bool,
    ) -> bytes:
        """Read-your-writes: dirty chunks from the dirty store, zeros where a truncation cut
        the clean bytes off, the fileserver's bytes elsewhere (cache/dirty.py's rules)."""
        if not trusted:
            raise FsError(errno.EACCES)
        size = min(size, dirty.length - offset)
        if size <= 0:
            return b""
        chunk = dirty.chunk_size
        first, last = offset // chunk, (offset + size - 1) // chunk
        pieces = [
            await self._dirty_chunk(fid, vnode, token, dirty, index)
            for index in range(first, last + 1)
        ]
        start = offset - first * chunk
        out = b"".join(pieces)[start : start + size]
        self.stats.bytes_served += len(out)
        return out

    async def _dirty_chunk(
        self, fid: AfsFid, vnode: Vnode, token: Token | None, dirty: DirtyFile, index: int
    ) -> bytes:
        start = index * dirty.chunk_size
        want = min(dirty.chunk_size, dirty.length - start)
        if index in dirty.chunks:
            try:
                return await self.cache.dirty.read_chunk(fid, index)
            except KeyError:
                raise DataVersionChanged from None  # stored or cut meanwhile: read again
        keep = max(0, min(want, dirty.zero_from - start))
        clean = b""
        if keep:
            # The version the writes went over, even if another client has stored since:
            # from memory or the disk cache, else DataVersionChanged (the server has only
            # the newer one), never a mix of the two.
            version = dirty.base_version
            clean = await self.reader.chunk(fid, vnode, token, version, index, True)
        return clean[:keep].ljust(want, b"\0")

    # -- writing -----------------------------------------------------------------------

    def file_lock(self, fid: AfsFid) -> trio.Lock | None:
        """The lock of `fid` while a writer, truncation or store holds or awaits it."""
        found = self._file_locks.get(fid)
        return None if found is None else found[0]

    @asynccontextmanager
    async def _file_lock(self, fid: AfsFid) -> AsyncIterator[None]:
        """One writer, truncation or store of a file at a time; readers never wait."""
        lock, users = self._file_locks.get(fid, (None, 0))
        lock = lock or trio.Lock()
        self._file_locks[fid] = (lock, users + 1)
        try:
            try:
                # Nearly always free: taking it without the two checkpoints of acquire()
                # saves ~10 us on every write, and writes come 10 KiB at a time from tar.
                lock.acquire_nowait()
            except trio.WouldBlock:
                await lock.acquire()
            try:
                yield
            finally:
                lock.release()
        finally:
            lock, users = self._file_locks[fid]
            if users == 1:
                del self._file_locks[fid]
            else:
                self._file_locks[fid] = (lock, users - 1)

    async def writable(self, fid: AfsFid, token: Token | None) -> Vnode:
        """The vnode of a regular file, with a current status; EACCES when its rights for
        `token` are known and lack write (the fileserver judges the rest when storing)."""
        vnode, trusted = await self.status.status_for(fid, token, PRSFS_WRITE)
        assert vnode.status is not None
        if vnode.status.is_dir:
            raise FsError(errno.EISDIR)
        if not vnode.status.is_file:
            raise FsError(errno.EINVAL, "not a regular file")
        if not trusted and vnode.rights(token, trio.current_time()) is not None:
            raise FsError(errno.EACCES)
        return vnode

    async def _begin(self, fid: AfsFid, vnode: Vnode, who: Identity) -> DirtyFile:
        """The dirty state a write goes into.  Unsent data left by a failed store or an
        earlier run, written over a version the server no longer has, is set aside first:
        the new write starts from the server's copy."""
        assert vnode.status is not None
        status = vnode.status
        dirty = self.store.dirty.get(fid)
        if dirty is not None and dirty.unsent and not written_over(dirty, status):
            await self._set_aside(fid, dirty, status, "the file changed on the server")
            dirty = None
        if dirty is None:
            writer = (who.uid, who.pag)
            dirty = await self.cache.dirty.begin(fid, status.data_version, status.size, writer)
        return dirty

    async def write(self, fid: AfsFid, offset: int, data: bytes, who: Identity) -> int:
        """Write into the local copy; it reaches the fileserver at store_data/fsync.  Returns the
        bytes written."""
        if offset < 0:
            raise FsError(errno.EINVAL)
        if offset + len(data) > MAX_FILE_SIZE:
            raise FsError(errno.EFBIG)  # before the cache's own filesystem says so
        token = self.token_for(fid.cell, who)
        async with self._file_lock(fid):
            for _ in range(3):
                vnode = await self.writable(fid, token)
                dirty = await self._begin(fid, vnode, who)
                try:
                    bases = await self._bases(fid, vnode, token, dirty, offset, len(data))
                except DataVersionChanged:
                    continue
                await self.cache.dirty.write(fid, offset, data, bases)
                self._mtimes[fid] = int(time.time())
                return len(data)
        raise FsError(errno.EIO, "file keeps changing while being written")

    async def _bases(
        self,
        fid: AfsFid,
        vnode: Vnode,
        token: Token | None,
        dirty: DirtyFile,
        offset: int,
        size: int,
    ) -> dict[int, bytes]:
        """The clean content of the chunks a write makes dirty; none for a chunk the write
        covers whole, since none of its clean bytes survive."""
        chunk = dirty.chunk_size
        end = offset + size
        length = max(dirty.length, end)
        bases = {}
        for index in dirty.needs_base(offset, size):
            start = index * chunk
            if offset <= start and end >= min(start + chunk, length):
                bases[index] = b""
                continue
            assert vnode.status is not None
            trusted = vnode.allows(token, PRSFS_READ, trio.current_time())
            version = dirty.base_version  # as in _dirty_chunk: one version under the writes
            bases[index] = await self.reader.chunk(fid, vnode, token, version, index, trusted)
        return bases

    async def truncate(self, fid: AfsFid, length: int, who: Identity) -> None:
        """Set the length of the local copy (growing leaves a hole); stored with the rest at
        store_data/fsync.  For truncate(2) without an open file, see setattr(size=)."""
        async with self._file_lock(fid):
            await self._truncate(fid, length, who)

    async def _truncate(self, fid: AfsFid, length: int, who: Identity) -> DirtyFile:
        if length < 0:
            raise FsError(errno.EINVAL)
        if length > MAX_FILE_SIZE:
            raise FsError(errno.EFBIG)
        token = self.token_for(fid.cell, who)
        await self._begin(fid, await self.writable(fid, token), who)
        self._mtimes[fid] = int(time.time())
        return await self.cache.dirty.truncate(fid, length)

    def unstored(self, fid: AfsFid) -> bool:
        """Does `fid` have data the fileserver has not got yet?  (A close of a clean file
        then needs no RPC at all.)"""
        return self.store.dirty.get(fid) is not None

    async def store_now(self, fid: AfsFid, who: Identity, *, sync: bool) -> None:
        """Store `fid`'s unsent data now, if it has any (close, fsync)."""
        token = self.token_for(fid.cell, who)
        async with self._file_lock(fid):
            dirty = self.store.dirty.get(fid)
            if dirty is not None:
                await self._store(fid, token, dirty, sync=sync)

    async def _store(
        self, fid: AfsFid, token: Token | None, dirty: DirtyFile, *, sync: bool
    ) -> None:
        """Store `dirty`, then forget it.  A failure leaves it unsent: on disk, retried in the
        background (fs/unsent.py), and raised to the caller."""
        try:
            try:
                await self._store_over(fid, token, dirty, sync=sync)
            except RxAbort as e:
                raise fs_error(e.code, "store") from None
        except FsError as e:
            if e.errno in (errno.ENOENT, errno.ESTALE):
                vnode = self.vnodes.get(fid)
                await self._set_aside(fid, dirty, None, "the file is gone from the server")
                vnode.invalidate()
                raise
            if self.store.dirty.get(fid) is not None:
                await self.cache.dirty.update(fid, unsent=True)
                await self.cache.dirty.persist(fid)
                log.warning(
                    "store of %s (%d bytes) failed: %s; kept in the cache and tried again "
                    "every %.0f s or at the next close",
                    _fid_name(fid), dirty.length, e.strerror or e, self.store_retry,
                )  # fmt: skip
            raise

    async def _store_over(
        self, fid: AfsFid, token: Token | None, dirty: DirtyFile, *, sync: bool
    ) -> None:
        """StoreData64 calls per writeback.store_plan, made only while the fileserver still
        has the version the data was written over; then the dirty chunks become the clean
        copy at the new data version.  Data written over a version another client has since
        replaced is set aside (cache/leftovers.py), never stored over theirs."""
        vnode = self.vnodes.get(fid)
        if not vnode.callback_valid(trio.current_time()):
            await self.status.fetch(fid, token)
        status = vnode.status
        assert status is not None
        if not written_over(dirty, status):
            await self._set_aside(fid, dirty, status, "another client changed the file")
            if dirty.unsent:
                return  # not this caller's writes: its close has nothing to report
            raise FsError(
                errno.EIO, "the file changed on the server; this client's data was set aside"
            )
        expected = status.data_version
        mask = AFS_SETMODTIME | (AFS_FSYNC if sync else 0)
        # A store that failed or was cut short said which mtime it sent: send that one
        # again, so its version, if it landed after all, is still known as ours.
        mtime = self._mtimes.get(fid) or (dirty.pending[1] if dirty.pending else 0)
        mtime = mtime or int(time.time())
        in_status = AFSStoreStatus(Mask=mask, ClientModTime=mtime)
        for piece in store_plan(dirty, self.store_call_bytes):
            # Said before sending: after a crash, that version may be ours (fs/unsent.py).
            await self.cache.dirty.update(fid, pending=(expected + 1, mtime))
            status = await self._store_piece(fid, vnode, token, piece, in_status, expected + 1)
            if status.data_version != expected + 1:
                log.warning(
                    "%s: another client stored the file during this client's store "
                    "(data version %d, expected %d)",
                    _fid_name(fid), status.data_version, expected + 1,
                )  # fmt: skip
            expected = status.data_version
            await self.cache.dirty.update(fid, base_version=expected, pending=None)
        if status.size == dirty.length:
            for index in sorted(dirty.chunks):
                data = await self.cache.dirty.read_chunk(fid, index)
                await self.reader.keep_chunk(fid, status.data_version, index, data)
        await self.cache.dirty.discard(fid)
        self._mtimes.pop(fid, None)
        if dirty.unsent:
            log.info("unsent data of %s (%d bytes) is stored", _fid_name(fid), dirty.length)

    async def _set_aside(
        self, fid: AfsFid, dirty: DirtyFile, server: Status | None, why: str
    ) -> None:
        """Move unsent data out of the way of the server's copy, where its writer finds it."""
        leftover = await self.cache.set_aside(
            fid,
            reason=why,
            server_version=server.data_version if server else None,
            base_version=dirty.base_version,
        )
        self._mtimes.pop(fid, None)
        self.stats.leftovers += 1
        log.warning(
            "%s: %s since this client wrote it; its %d unsent bytes (written over data "
            "version %d, the server has %s) are kept as leftover %s: see "
            "'afsfuse-ctl leftovers'",
            _fid_name(fid), why, dirty.length, dirty.base_version,
            server.data_version if server else "none", leftover.id,
        )  # fmt: skip
        self.notify(fid)

    async def _store_unsent(self, fid: AfsFid) -> None:
        """Store unsent data with its writer's token (fs/unsent.py calls this); FsError if
        it still cannot be."""
        try:
            async with self._file_lock(fid):
                dirty = self.store.dirty.get(fid)
                if dirty is None or not dirty.unsent:
                    return
                who = Identity(*dirty.writer) if dirty.writer else Identity(0)
                await self._store(fid, self.token_for(fid.cell, who), dirty, sync=True)
        except RxAbort as e:
            raise fs_error(e.code, "store") from None

    async def keep_unsent(self) -> None:
        """Put every dirty file kept in memory on disk (at unmount): unsent data outlives the
        daemon."""
        for fid in self.store.dirty.held_in_memory_since(float("inf")):
            with contextlib.suppress(KeyError):
                await self.cache.dirty.persist(fid)

    async def _store_piece(
        self,
        fid: AfsFid,
        vnode: Vnode,
        token: Token | None,
        piece: StorePiece,
        in_status: Any,
        ours: int,
    ) -> Status:
        """One StoreData64.  `ours` is the data version it makes: that new version is our
        own doing, and the kernel's copy of what we wrote must not be thrown away for it."""

        async def call(conn: ClientConnection, server: FileServer) -> Any:
            async with FS.StoreData64.stream(
                conn, afs_fid(fid), in_status, piece.pos, piece.length, piece.file_length
            ) as stream:
                for index in piece.chunks:
                    data = await self.cache.dirty.read_chunk(fid, index)
                    await stream.send(data)
            return stream.result

        op = self.status.operation(token, "FS.StoreData64", vnode)
        reply = await op.run(call)
        self.stats.bytes_stored += piece.length
        return op.commit(vnode, reply.OutStatus, ours=ours)

    async def setattr(
        self,
        fid: AfsFid,
        who: Identity,
        *,
        mode: int | None = None,
        mtime: int | None = None,
        owner: int | None = None,
        group: int | None = None,
        size: int | None = None,
    ) -> None:
        """Change a file's status on the fileserver now (StoreStatus).  A new size is stored
        now too (truncate(2) has no close to wait for), with the file's other dirty data.

        A new modification time alone, set by the writer of data not stored yet (tar's
        futimens before close), goes with that data instead: the store sends it anyway,
        so a StoreStatus now would be a second RPC for the same field."""
        token = self.token_for(fid.cell, who)
        async with self._file_lock(fid):
            if mtime is not None and (mode, owner, group, size) == (None, None, None, None):
                dirty = self.store.dirty.get(fid)
                if dirty is not None and _stored_later_for(dirty, who):
                    self._mtimes[fid] = mtime
                    return
            if size is not None:
                dirty = await self._truncate(fid, size, who)
                if mtime is not None:
                    self._mtimes[fid] = mtime
                await self._store(fid, token, dirty, sync=False)
            mask = 0
            if mode is not None:
                mask |= AFS_SETMODE
            if mtime is not None:
                mask |= AFS_SETMODTIME
                if self.store.dirty.get(fid) is not None:
                    self._mtimes[fid] = mtime  # the store to come sends it again
            if owner is not None:
                mask |= AFS_SETOWNER
            if group is not None:
                mask |= AFS_SETGROUP
            if mask:
                in_status = AFSStoreStatus(
                    Mask=mask,
                    ClientModTime=mtime or 0,
                    Owner=owner or 0,
                    Group=group or 0,
                    UnixModeBits=(mode or 0) & 0o7777,
                )
                await self._store_status(fid, token, in_status)

    async def _store_status(self, fid: AfsFid, token: Token | None, in_status: Any) -> Status:
        vnode = self.vnodes.get(fid)
        op = self.status.operation(token, "FS.StoreStatus", vnode)
        reply = await op.run(lambda conn, server: FS.StoreStatus(conn, afs_fid(fid), in_status))
        return op.commit(vnode, reply.OutStatus)

    async def drop_dirty_if_gone(self, fid: AfsFid, token: Token | None) -> None:
        """Unstored data of a file whose last name went has nowhere to go, as on a local
        filesystem; a file with other links keeps it."""
        if self.store.dirty.get(fid) is None:
            return
        try:
            await self.status.fetch(fid, token)
        except FsError as e:
            if e.errno != errno.ENOENT:
                raise
            async with self._file_lock(fid):
                await self.cache.dirty.discard(fid)
                self._mtimes.pop(fid, None)
