"""The cache manager core: AFS files, directories and volumes for the FUSE face.

Every operation takes the identity asking (`who`); its token (or none: rxnull) is used for
every RPC made on its behalf, and what was fetched with one identity's rights reaches
another only once that identity's own rights are known (fs/vnode.py).  Status is trusted
while the callback promise holds; file data and directories are kept in the disk cache by
data version, so after a break, a restart or an expired promise one FetchStatus decides
whether the cached bytes are still the file's.

Every RPC goes through the Rotator (fs/rotate.py).  Every public method raises FsError and
nothing else: unexpected exceptions are logged and turned into EIO at the boundary.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar

import trio

from afsfuse.cache.aio import AsyncCacheStore, CleanWriter
from afsfuse.cache.base import MAX_FILE_SIZE
from afsfuse.cache.dirty import DirtyFile
from afsfuse.cache.store import CacheStore
from afsfuse.fs import deadline
from afsfuse.fs import dir as afsdir
from afsfuse.fs.acl_ops import AclOps
from afsfuse.fs.callback import CallbackRegistry
from afsfuse.fs.cell import Cell, CellDB
from afsfuse.fs.chunkmem import ChunkMemory
from afsfuse.fs.cmservice import CacheManagerService
from afsfuse.fs.dir_edit import Listing
from afsfuse.fs.directories import DirectoryCache
from afsfuse.fs.errors import FsError, fs_error
from afsfuse.fs.invalidate import Invalidator
from afsfuse.fs.names import NameOps, encode_name
from afsfuse.fs.reader import ChunkReader, DataVersionChanged, FileData, Shown
from afsfuse.fs.rotate import RotationConfig, Rotator
from afsfuse.fs.server import FileServer, ServerConfig, ServerTable
from afsfuse.fs.stats import Stats
from afsfuse.fs.status import StatusKeeper, afs_fid
from afsfuse.fs.unsent import UnsentData
from afsfuse.fs.vnode import AfsFid, Status, Vnode, VnodeTable
from afsfuse.fs.volume import VolumeCache, VolumeStatus
from afsfuse.fs.writeback import StorePiece, store_plan
from afsfuse.keyring.store import Identity, TokenStore
from afsfuse.keyring.token import Token
from afsfuse.rx.connection import DEFAULT_DEAD_TIME
from afsfuse.rx.driver import ClientConnection, Endpoint
from afsfuse.rx.errors import RxAbort
from afsfuse.rx.interfaces.fs import (
    AFS_FSYNC,
    AFS_SETGROUP,
    AFS_SETMODE,
    AFS_SETMODTIME,
    AFS_SETOWNER,
    AFSCBMAX,
    FS,
    PRSFS_READ,
    PRSFS_WRITE,
    AFSStoreStatus,
)
from afsfuse.rx.interfaces.vl import BACKVOL, ROVOL, RWVOL
from afsfuse.vl.vlclient import VLClient, VolumeLocation

log = logging.getLogger(__name__)

T = TypeVar("T")
VolumeKind = Literal["rw", "ro", "bk", "auto"]
Listener = Callable[[AfsFid | None], None]


@dataclass(frozen=True)
class ManagerConfig:
    #: rxkad level for authenticated calls: "clear", "auth" or "crypt".
    security: str = "crypt"
    #: Seconds of silence after which a fileserver call is given up (and the server marked
    #: down); VL calls use the same.
    dead_time: float = DEFAULT_DEAD_TIME
    probe_timeout: float = 3.0
    probe_interval: float = 30.0
    #: How long a request waits for fileservers, from its start or their last answer to it
    #: (fs/deadline.py); a rotation outside a request gets as long.  Past it, ETIMEDOUT.
    rotation_timeout: float = 120.0
    busy_wait: float = 5.0
    max_busy_waits: int = 12
    #: How long a VLDB entry is used before it is looked up again.
    volume_ttl: float = 600.0
    #: Chunks kept fetched (or loaded from the disk cache) ahead of a sequential reader.
    readahead_chunks: int = 16
    #: Most chunks one read-ahead FetchData64 carries; the window is refilled this many
    #: chunks at a time, so up to readahead_chunks / readahead_call_chunks calls run at once.
    readahead_call_chunks: int = 4
    #: Bytes of recently used chunks kept in memory (fs/chunkmem.py).
    chunk_memory: int = 64 << 20
    #: Chunks and directories fetched or stored but not yet in the disk cache, at most.
    write_behind_chunks: int = 32
    #: Directories kept parsed in memory.
    directory_memory: int = 1024
    #: Seconds taken off every callback promise, for clock skew and request time.
    callback_margin: float = 5.0
    #: Most bytes one StoreData64 carries (each call must finish within rotation_timeout).
    store_call_bytes: int = 64 << 20
    #: Seconds between tries to store data whose store failed (doubling while it fails).
    store_retry: float = 30.0
    #: Seconds a small dirty file stays in memory only, before it goes to the cache disk.
    dirty_memory_age: float = 2.0

    def server_config(self) -> ServerConfig:
        return ServerConfig(
            security=self.security,
            dead_time=self.dead_time,
            probe_timeout=self.probe_timeout,
            probe_interval=self.probe_interval,
        )

    def rotation_config(self) -> RotationConfig:
        return RotationConfig(
            timeout=self.rotation_timeout,
            busy_wait=self.busy_wait,
            max_busy_waits=self.max_busy_waits,
        )


def _boundary(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Public API methods raise FsError only; anything else is a bug, logged, and EIO.
    Each call is a request: its waits on fileservers share one deadline (fs/deadline.py)."""

    @functools.wraps(method)
    async def guarded(self: CacheManager, *args: Any, **kwargs: Any) -> T:
        try:
            with deadline.Request(self.config.rotation_timeout):
                return await method(self, *args, **kwargs)
        except FsError:
            raise
        except RxAbort as e:
            raise fs_error(e.code, method.__name__) from None
        except afsdir.DirectoryError as e:
            log.error("%s: malformed directory: %s", method.__name__, e)
            raise FsError(errno.EIO, f"malformed directory: {e}") from None
        except Exception as e:
            log.exception("%s failed unexpectedly", method.__name__)
            raise FsError(errno.EIO, f"{method.__name__}: internal error: {e}") from None

    return guarded


def _written_over(dirty: DirtyFile, server: Status) -> bool:
    """May `dirty` be stored over the server's copy at `server`?  Only over the version it
    was written over, or over the version a store of its own left when the daemon stopped
    mid-store (known by the modification time that store sent)."""
    if server.data_version == dirty.base_version:
        return True
    return dirty.pending is not None and dirty.pending == (server.data_version, server.mtime)


def _fid_name(fid: AfsFid) -> str:
    return f"{fid.cell} fid {fid.volume}.{fid.vnode}.{fid.unique}"


class CacheManager:
    def __init__(
        self,
        config: ManagerConfig,
        endpoint: Endpoint,
        cells: CellDB,
        store: CacheStore,
        tokens: TokenStore,
        stats: Stats,
        *,
        registry: CallbackRegistry | None = None,
    ) -> None:
        self.config = config
        self.endpoint = endpoint
        self.cells = cells
        self.store = store
        #: The same store, each call run in a bounded worker thread (diskcache and file I/O block).
        self.cache = AsyncCacheStore(store)
        self.tokens = tokens
        self.stats = stats
        self.registry = registry or CallbackRegistry()
        self.cb_service = CacheManagerService(self.registry, local_cell=cells.this_cell)
        self.cb_service.install(endpoint)
        self.servers = ServerTable(endpoint, config.server_config())
        tokens.on_forget(self.servers.forget_token)
        self.volumes = VolumeCache(self._locate, config.volume_ttl)
        self.rotator = Rotator(self.servers, self.volumes, config.rotation_config(), stats)
        self.vnodes = VnodeTable()
        self.status = StatusKeeper(
            self.vnodes,
            self.registry,
            self.rotator,
            stats,
            callback_margin=config.callback_margin,
            replaced=self._replaced,
        )
        self._vl: dict[str, VLClient] = {}
        self._listeners: list[Listener] = []
        self._memory = ChunkMemory(config.chunk_memory)
        #: Fetched and stored data on its way to the disk cache, in batches.
        self._clean_writer = CleanWriter(self.cache, config.write_behind_chunks)
        self._nursery: trio.Nursery | None = None
        self.dirs = DirectoryCache(
            self.status,
            self.cache,
            self._clean_writer,
            stats,
            limit=config.directory_memory,
        )
        self.acls = AclOps(self.status, self._notify)
        self.names = NameOps(
            self.status,
            self.dirs,
            notify=self._notify,
            local_view=self._local_view,
            unlinked=self._drop_dirty_if_gone,
        )
        self.invalidator = Invalidator(
            self.vnodes,
            self.dirs,
            self._memory,
            self._clean_writer,
            self.cache,
            self.volumes,
            self.registry,
            self.servers,
            stats,
            notify=self._notify,
            known_cells=self.known_cells,
            probe_timeout=config.probe_timeout,
        )
        self.registry.add_listener(self.invalidator.on_break)
        self.reader = ChunkReader(
            self.status,
            self.cache,
            self._clean_writer,
            self._memory,
            stats,
            chunk_size=store.chunk_size,
            timeout=config.rotation_timeout,
            window=config.readahead_chunks,
            call_chunks=config.readahead_call_chunks,
            changed=self._notify,
            nursery=lambda: self._nursery,
        )
        #: Per-file locks that put writers, truncations and stores of one file in a row.
        self._file_locks: dict[AfsFid, tuple[trio.Lock, int]] = {}
        #: Modification time of dirty files, sent with their store.
        self._mtimes: dict[AfsFid, int] = {}
        self._unsent = UnsentData(
            self.cache.dirty,
            self._store_unsent,
            interval=config.store_retry,
            memory_age=config.dirty_memory_age,
            max_interval=8 * config.store_retry,
        )

    @property
    def this_cell(self) -> str:
        return self.cells.this_cell

    # -- life cycle ------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Background work (probing down servers, read-ahead, write-behind) until
        cancelled; start it with `await nursery.start(manager.run)`.  Chunks waiting to be
        written to the disk cache are written before it returns."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                nursery.start_soon(self.servers.run_prober)
                await nursery.start(self._clean_writer.run)
                await nursery.start(self._unsent.run)
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def on_invalidate(self, callback: Listener) -> None:
        """`callback(fid)` after a callback break or a data-version change of `fid`;
        `callback(None)` when everything was dropped."""
        self._listeners.append(callback)

    def _replaced(self, fid: AfsFid) -> None:
        """A reply showed a data version of `fid` someone else made."""
        self.dirs.drop(fid)
        self._notify(fid)

    def _notify(self, fid: AfsFid | None) -> None:
        for listener in list(self._listeners):
            try:
                listener(fid)
            except Exception:
                log.exception("invalidation listener failed")

    # -- cells and volumes -------------------------------------------------------------

    async def cell(self, name: str) -> Cell | None:
        try:
            return await self.cells.lookup(name)
        except Exception:
            log.exception("cell lookup of %r failed", name)
            return None

    def known_cells(self) -> list[str]:
        return self.cells.known_cells()

    def aliases(self) -> dict[str, str]:
        return self.cells.aliases()

    async def _vlclient(self, cell_name: str) -> VLClient:
        client = self._vl.get(cell_name)
        if client is None:
            cell = await self.cells.lookup(cell_name)
            if cell is None:
                raise FsError(errno.ENOENT, f"unknown cell {cell_name}")
            client = self._vl[cell_name] = VLClient(list(cell.vlservers), self._connect_vl)
        return client

    def _connect_vl(self, addr: tuple[str, int]) -> ClientConnection:
        from afsfuse.rx.interfaces.vl import VL
        from afsfuse.rx.security import RXNULL

        return self.endpoint.connect(
            addr, VL.service_id, RXNULL, dead_time=self.config.dead_time, hard_timeout=60.0
        )

    async def _locate(self, cell: str, volume: str | int) -> VolumeLocation:
        client = await self._vlclient(cell)
        self.stats.count_rpc("VL.GetEntryByNameU")
        return await client.locate(volume)

    @_boundary
    async def volume_root(self, cell: str, volume: str, kind: VolumeKind, who: Identity) -> AfsFid:
        """The root fid of a volume named or numbered `volume`.  A .readonly/.backup suffix
        or a numeric id decides the type by itself; otherwise `kind` does ("auto": RO when
        the volume has RO sites, else RW).  ENOENT when there is no such volume."""
        found = await self.cell(cell)
        if found is None:
            raise FsError(errno.ENOENT, f"unknown cell {cell}")
        try:
            location = await self.volumes.location(found.name, volume)
        except RxAbort as e:
            raise fs_error(e.code, f"volume {volume} in {found.name}") from None
        if volume.isdigit():
            volume_id = int(volume)
            if location.type_of(volume_id) is None:
                raise FsError(errno.ENOENT, f"volume {volume} in {found.name}")
        else:
            voltype = RWVOL
            if volume.endswith(".readonly"):
                voltype = ROVOL
            elif volume.endswith(".backup"):
                voltype = BACKVOL
            elif kind == "ro" or (kind == "auto" and location.ro_id and location.sites[ROVOL]):
                voltype = ROVOL
            elif kind == "bk":
                voltype = BACKVOL
            volume_id = location.volume_ids[voltype]
            if not volume_id or not location.sites[voltype]:
                raise FsError(errno.ENOENT, f"volume {volume} has no {('RW', 'RO', 'BK')[voltype]}")
        return AfsFid(found.name, volume_id, 1, 1)

    # -- status ------------------------------------------------------------------------

    def _token(self, cell: str, who: Identity) -> Token | None:
        return self.tokens.get(who, cell)

    @_boundary
    async def getattr(self, fid: AfsFid, who: Identity) -> Status:
        """The status of `fid` with `who`'s rights; no RPC while the callback holds and
        `who`'s rights are known."""
        token = self._token(fid.cell, who)
        vnode = self.vnodes.get(fid)
        rights = vnode.rights(token, trio.current_time())
        if rights is not None:
            assert vnode.status is not None
            self.stats.status_hits += 1
            return self._local_view(vnode.status.with_access(rights), fid)
        return self._local_view(await self.status.fetch(fid, token), fid)

    @_boundary
    async def bulk_status(self, fids: Sequence[AfsFid], who: Identity) -> list[Status | FsError]:
        """Status of many fids, in order; an entry the server refused is an FsError in its
        place.  Fids with a valid callback and known rights cost nothing; the rest go 50 at a
        time in InlineBulkStatus (FetchStatus each where the server lacks it).

        Each status is this mount's view (`_local_view`) at the moment it was taken: a held
        status together with the dirty state of that same moment, a fetched one with the
        dirty state its reply finds (or the held one, if our store overtook the reply: see
        `StatusKeeper.commit_fetched`).  Joining a held status to the dirty state of later, after
        waiting for the fetches, would pair the server's length from before a store with no
        dirty data once that store ended meanwhile: the length from before the writes,
        given to the kernel after them, and O_APPEND writes there."""
        now = trio.current_time()
        results: list[Status | FsError | None] = [None] * len(fids)
        wanted: dict[tuple[str, int], list[int]] = {}
        for i, fid in enumerate(fids):
            token = self._token(fid.cell, who)
            vnode = self.vnodes.get(fid)
            rights = vnode.rights(token, now)
            if rights is not None:
                assert vnode.status is not None
                self.stats.status_hits += 1
                results[i] = self._local_view(vnode.status.with_access(rights), fid)
            else:
                wanted.setdefault((fid.cell, fid.volume), []).append(i)
        for (cell, volume), indexes in wanted.items():
            token = self._token(cell, who)
            for start in range(0, len(indexes), AFSCBMAX):
                batch = indexes[start : start + AFSCBMAX]
                statuses = await self.status.bulk(cell, volume, [fids[i] for i in batch], token)
                for i, status in zip(batch, statuses, strict=True):
                    results[i] = (
                        self._local_view(status, fids[i]) if isinstance(status, Status) else status
                    )
        return [r for r in results if r is not None]

    # -- directories -------------------------------------------------------------------

    async def _directory(self, fid: AfsFid, who: Identity) -> Listing:
        return await self.dirs.listing(fid, self._token(fid.cell, who))

    @_boundary
    async def lookup(self, dir_fid: AfsFid, name: str | bytes, who: Identity) -> AfsFid:
        entries = await self._directory(dir_fid, who)
        entry = entries.get(encode_name(name))
        if entry is None:
            raise FsError(errno.ENOENT, f"{name!r} not found")
        return AfsFid(dir_fid.cell, dir_fid.volume, entry.vnode, entry.unique)

    @_boundary
    async def readdir(self, dir_fid: AfsFid, who: Identity) -> list[tuple[str, AfsFid]]:
        """Every entry, '.' and '..' included; names decoded with surrogateescape
        (os.fsencode gives the bytes back)."""
        entries = await self._directory(dir_fid, who)
        return [
            (
                name.decode("utf-8", "surrogateescape"),
                AfsFid(dir_fid.cell, dir_fid.volume, e.vnode, e.unique),
            )
            for name, e in entries.items()
        ]

    # -- file data ---------------------------------------------------------------------

    @_boundary
    async def read(self, fid: AfsFid, offset: int, size: int, who: Identity) -> bytes:
        """Up to `size` bytes at `offset`, through the disk cache (chunks by data version)."""
        return (await self.read_shown(fid, offset, size, who, None)).data

    @_boundary
    async def read_shown(
        self, fid: AfsFid, offset: int, size: int, who: Identity, shown: Shown | None
    ) -> FileData:
        """Like `read`, for a reader that believes the file is at data version and length
        `shown`: that version is served while its chunks are in memory, so what the reader
        gets agrees with the length it was told.  Otherwise the version the fileserver has."""
        if offset < 0 or size < 0:
            raise FsError(errno.EINVAL)
        token = self._token(fid.cell, who)
        for _ in range(3):
            try:
                return await self._read(fid, offset, size, token, shown)
            except DataVersionChanged:
                shown = None
        raise FsError(errno.EIO, "file keeps changing while being read")

    async def _read(
        self, fid: AfsFid, offset: int, size: int, token: Token | None, shown: Shown | None
    ) -> FileData:
        vnode, trusted = await self.status.status_for(fid, token, PRSFS_READ)
        status = vnode.status
        assert status is not None
        if status.is_dir:
            raise FsError(errno.EISDIR)
        # The owner-read bit is checked by the server for ordinary users; a cached copy is
        # only handed out when the server would surely agree.
        trusted = trusted and bool(status.mode & 0o400)
        dirty = self._shown_dirty(fid, status)
        if dirty is not None:
            data = await self._read_dirty(fid, vnode, token, dirty, offset, size, trusted)
            return FileData(data, None, dirty.length)
        return await self.reader.read(fid, vnode, token, status, offset, size, shown, trusted)

    @_boundary
    async def readlink(self, fid: AfsFid, who: Identity) -> bytes:
        """The contents of a symlink or mount point (a mount point's ends in '.')."""
        token = self._token(fid.cell, who)
        for _ in range(3):
            try:
                vnode, _ = await self.status.status_for(fid, token, PRSFS_READ)
                assert vnode.status is not None
                if not vnode.status.is_symlink:
                    raise FsError(errno.EINVAL, "not a symlink")
                return (await self._read(fid, 0, vnode.status.size, token, None)).data
            except DataVersionChanged:
                continue
        raise FsError(errno.EIO, "link keeps changing while being read")

    # -- dirty files: what this machine sees before the fileserver does -----------------

    def _local_view(self, status: Status, fid: AfsFid) -> Status:
        """`status` as seen here: the length and time of data not yet stored count."""
        dirty = self._shown_dirty(fid, status)
        if dirty is None:
            return status
        return replace(status, size=dirty.length, mtime=self._mtimes.get(fid, status.mtime))

    def _shown_dirty(self, fid: AfsFid, status: Status) -> DirtyFile | None:
        """The dirty state this mount shows for `fid` with the server at `status`: none for
        unsent data written over a version the server no longer has (it is set aside in the
        background, and the server's copy is what the file is)."""
        dirty = self.store.dirty.get(fid)
        if dirty is not None and dirty.unsent and not _written_over(dirty, status):
            if self._unsent is not None:
                self._unsent.poke()
            return None
        return dirty

    async def _read_dirty(
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

    async def _writable(self, fid: AfsFid, token: Token | None) -> Vnode:
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
        if dirty is not None and dirty.unsent and not _written_over(dirty, status):
            await self._set_aside(fid, dirty, status, "the file changed on the server")
            dirty = None
        if dirty is None:
            writer = (who.uid, who.pag)
            dirty = await self.cache.dirty.begin(fid, status.data_version, status.size, writer)
        return dirty

    @_boundary
    async def open(self, fid: AfsFid, who: Identity, *, write: bool) -> Status:
        """Check that `who` may open `fid` (for writing: EACCES now, as a local filesystem
        would, rather than at close); the status as getattr gives it."""
        if write:
            await self._writable(fid, self._token(fid.cell, who))
        return await self.getattr(fid, who)

    @_boundary
    async def write(self, fid: AfsFid, offset: int, data: bytes, who: Identity) -> int:
        """Write into the local copy; it reaches the fileserver at store_data/fsync.  Returns the
        bytes written."""
        if offset < 0:
            raise FsError(errno.EINVAL)
        if offset + len(data) > MAX_FILE_SIZE:
            raise FsError(errno.EFBIG)  # before the cache's own filesystem says so
        token = self._token(fid.cell, who)
        async with self._file_lock(fid):
            for _ in range(3):
                vnode = await self._writable(fid, token)
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

    @_boundary
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
        token = self._token(fid.cell, who)
        await self._begin(fid, await self._writable(fid, token), who)
        self._mtimes[fid] = int(time.time())
        return await self.cache.dirty.truncate(fid, length)

    def unstored(self, fid: AfsFid) -> bool:
        """Does `fid` have data the fileserver has not got yet?  (A close of a clean file
        then needs no RPC at all.)"""
        return self.store.dirty.get(fid) is not None

    @_boundary
    async def store_data(self, fid: AfsFid, who: Identity) -> Status:
        """Store `fid`'s dirty data on the fileserver now (FUSE flush and release); nothing
        to do for a clean file.  Success means the data is on the server.  On failure the
        errno a local filesystem would give (EDQUOT, ENOSPC, EACCES, ETIMEDOUT...) and the
        data stays dirty: a later store retries it."""
        return await self._store_and_stat(fid, who, sync=False)

    @_boundary
    async def fsync(self, fid: AfsFid, who: Identity) -> Status:
        """Like store_data, and the fileserver writes the file to its disk before it answers."""
        return await self._store_and_stat(fid, who, sync=True)

    async def _store_and_stat(self, fid: AfsFid, who: Identity, *, sync: bool) -> Status:
        token = self._token(fid.cell, who)
        async with self._file_lock(fid):
            dirty = self.store.dirty.get(fid)
            if dirty is not None:
                await self._store(fid, token, dirty, sync=sync)
        return await self.getattr(fid, who)

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
                    _fid_name(fid), dirty.length, e.strerror or e, self.config.store_retry,
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
        if not _written_over(dirty, status):
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
        for piece in store_plan(dirty, self.config.store_call_bytes):
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
        self._notify(fid)

    async def _store_unsent(self, fid: AfsFid) -> None:
        """Store unsent data with its writer's token (fs/unsent.py calls this); FsError if
        it still cannot be."""
        try:
            async with self._file_lock(fid):
                dirty = self.store.dirty.get(fid)
                if dirty is None or not dirty.unsent:
                    return
                who = Identity(*dirty.writer) if dirty.writer else Identity(0)
                await self._store(fid, self._token(fid.cell, who), dirty, sync=True)
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

    @_boundary
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
    ) -> Status:
        """Change a file's status on the fileserver now (StoreStatus).  A new size is stored
        now too (truncate(2) has no close to wait for), with the file's other dirty data."""
        token = self._token(fid.cell, who)
        async with self._file_lock(fid):
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
        return await self.getattr(fid, who)

    async def _store_status(self, fid: AfsFid, token: Token | None, in_status: Any) -> Status:
        vnode = self.vnodes.get(fid)
        op = self.status.operation(token, "FS.StoreStatus", vnode)
        reply = await op.run(lambda conn, server: FS.StoreStatus(conn, afs_fid(fid), in_status))
        return op.commit(vnode, reply.OutStatus)

    # -- names (fs/names.py) ---------------------------------------------------------------

    @_boundary
    async def create(
        self, dir_fid: AfsFid, name: str | bytes, mode: int, who: Identity
    ) -> tuple[AfsFid, Status]:
        """A new empty file; EEXIST if the name is taken."""
        return await self.names.create(dir_fid, name, mode, self._token(dir_fid.cell, who))

    @_boundary
    async def mkdir(
        self, dir_fid: AfsFid, name: str | bytes, mode: int, who: Identity
    ) -> tuple[AfsFid, Status]:
        """A new directory; it inherits the parent's ACL on the server."""
        return await self.names.mkdir(dir_fid, name, mode, self._token(dir_fid.cell, who))

    @_boundary
    async def symlink(
        self, dir_fid: AfsFid, name: str | bytes, target: str | bytes, who: Identity
    ) -> tuple[AfsFid, Status]:
        """A symlink; text like '#cell:volume.' makes a mount point (mode 0644, fs/mntpt.py)."""
        return await self.names.symlink(dir_fid, name, target, self._token(dir_fid.cell, who))

    @_boundary
    async def link(
        self, dir_fid: AfsFid, name: str | bytes, target: AfsFid, who: Identity
    ) -> Status:
        """A hard link to `target`, within one directory's volume (EXDEV across volumes)."""
        return await self.names.link(dir_fid, name, target, self._token(dir_fid.cell, who))

    @_boundary
    async def unlink(self, dir_fid: AfsFid, name: str | bytes, who: Identity) -> None:
        await self.names.unlink(dir_fid, name, self._token(dir_fid.cell, who))

    @_boundary
    async def rmdir(self, dir_fid: AfsFid, name: str | bytes, who: Identity) -> None:
        """ENOTEMPTY unless the directory is empty."""
        await self.names.rmdir(dir_fid, name, self._token(dir_fid.cell, who))

    @_boundary
    async def rename(
        self,
        src_dir: AfsFid,
        name: str | bytes,
        dst_dir: AfsFid,
        new_name: str | bytes,
        who: Identity,
    ) -> None:
        """Rename within a volume (EXDEV across volumes), replacing an existing target as
        rename(2) does."""
        await self.names.rename(src_dir, name, dst_dir, new_name, self._token(src_dir.cell, who))

    async def _drop_dirty_if_gone(self, fid: AfsFid, token: Token | None) -> None:
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

    # -- volumes and access control lists (fs/acl_ops.py) -------------------------------

    @_boundary
    async def statfs(self, fid: AfsFid, who: Identity) -> VolumeStatus:
        return await self.acls.volume_status(fid, self._token(fid.cell, who))

    @_boundary
    async def get_volume_status(self, fid: AfsFid, who: Identity) -> VolumeStatus:
        """The volume's quota, usage and messages (`fs listquota`); the same as statfs."""
        return await self.acls.volume_status(fid, self._token(fid.cell, who))

    @_boundary
    async def set_quota(self, fid: AfsFid, max_quota_kb: int, who: Identity) -> None:
        """Set the quota of `fid`'s volume in KiB (0: none); the cell's administrators only."""
        await self.acls.set_quota(fid, max_quota_kb, self._token(fid.cell, who))

    @_boundary
    async def get_acl(self, fid: AfsFid, who: Identity) -> str:
        """The ACL text of a directory (a file answers with its directory's); fs/acl.py
        parses it."""
        return await self.acls.get_acl(fid, self._token(fid.cell, who))

    @_boundary
    async def set_acl(self, fid: AfsFid, text: str | bytes, who: Identity) -> None:
        """Replace a directory's ACL (EINVAL for text fs/acl.py cannot parse)."""
        await self.acls.set_acl(fid, text, self._token(fid.cell, who))

    # -- invalidation (fs/invalidate.py) ---------------------------------------------------

    @_boundary
    async def flush_fid(self, fid: AfsFid) -> None:
        """Forget everything about one file (status, rights, cached data)."""
        await self.invalidator.flush_fid(fid)

    @_boundary
    async def flush(self, volume: int | None = None, cell: str | None = None) -> None:
        """Forget a volume's files (in `cell`, or any cell), or everything (volume None):
        status, rights, cached data and volume locations."""
        await self.invalidator.flush(volume, cell)

    async def give_up_callbacks(self) -> None:
        """Tell every fileserver we hold callbacks from that we no longer want them
        (at unmount).  Best effort, bounded in time; never raises."""
        await self.invalidator.give_up_callbacks()
