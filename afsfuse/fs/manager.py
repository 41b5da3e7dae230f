"""The cache manager core: AFS files, directories and volumes for the FUSE face.

Every operation takes the identity asking (`who`); its token (or none: rxnull) is used for
every RPC made on its behalf, and what was fetched with one identity's rights reaches
another only once that identity's own rights are known (fs/vnode.py).  Status is trusted
while the callback promise holds; file data and directories are kept in the disk cache by
data version, so after a break, a restart or an expired promise one FetchStatus decides
whether the cached bytes are still the file's.

Every RPC is an FsOperation (fs/operation.py) through the Rotator (fs/rotate.py).  Every
public method raises FsError and nothing else: unexpected exceptions are logged and turned
into EIO at the boundary.

This is the façade: it builds the components and keeps the public API that vfs/ and ctl/
call.  About 850 lines, on purpose: it is that API (fs/api.py, some 50 methods), each a few
lines handing the request to the component that owns it; the work itself is elsewhere.
Where things are:

- status, bulk status, commit status: fs/status.py;
- directory listings and our own edits to them: fs/directories.py, fs/dir_edit.py;
- chunks, reads and the read-ahead decision: fs/reader.py; the next small files of a
  directory read file by file: fs/siblings.py;
- writes, truncation, stores and setting unsent data aside: fs/writer.py (stores retried in
  the background: fs/unsent.py);
- create, mkdir, symlink, link, unlink, rmdir, rename: fs/names.py;
- ACLs, quotas and volume status: fs/acl_ops.py;
- callback breaks, flushes, giving callbacks back: fs/invalidate.py;
- what `afsfuse-ctl` views and the metrics export show: fs/views.py.

Over 500 lines: one documented method per public operation (the contract vfs/ and ctl/
rely on), each a few lines of delegation; splitting them would split the API.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from afsfuse.cache.aio import AsyncCacheStore, CleanWriter
from afsfuse.cache.store import CacheStore
from afsfuse.fs import deadline, views
from afsfuse.fs import dir as afsdir
from afsfuse.fs.acl_ops import AclOps
from afsfuse.fs.callback import CallbackRegistry, Fid
from afsfuse.fs.cell import Cell, CellDB
from afsfuse.fs.chunkmem import ChunkMemory
from afsfuse.fs.cmdebug import CacheView
from afsfuse.fs.cmservice import CacheManagerService, local_ipv4_interfaces
from afsfuse.fs.dir_edit import Listing
from afsfuse.fs.directories import DirectoryCache
from afsfuse.fs.errors import FsError, fs_error
from afsfuse.fs.invalidate import Invalidator
from afsfuse.fs.names import NameOps, encode_name
from afsfuse.fs.ranker import Ranker
from afsfuse.fs.reader import ChunkReader, DataVersionChanged, FileData, Shown
from afsfuse.fs.rotate import RotationConfig, Rotator
from afsfuse.fs.server import ServerConfig, ServerTable
from afsfuse.fs.siblings import SiblingReadAhead
from afsfuse.fs.stats import Stats
from afsfuse.fs.status import BulkBatch, StatusKeeper
from afsfuse.fs.vnode import AfsFid, Status, VnodeTable
from afsfuse.fs.volume import VolumeCache, VolumeStatus
from afsfuse.fs.writer import Writer
from afsfuse.keyring.store import Identity, TokenStore
from afsfuse.keyring.token import Token
from afsfuse.malloc import Trimmer
from afsfuse.rx.connection import DEFAULT_DEAD_TIME
from afsfuse.rx.driver import ClientConnection, Endpoint
from afsfuse.rx.errors import RxAbort
from afsfuse.rx.interfaces.fs import (
    AFSCBMAX,
    PRSFS_READ,
)
from afsfuse.rx.interfaces.vl import VL
from afsfuse.vl.cellservdb import cell_key
from afsfuse.vl.rank import Address, Ranks
from afsfuse.vl.vlclient import VLClient, VolumeLocation

log = logging.getLogger(__name__)

T = TypeVar("T")
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
        #: Fileservers' and database servers' ranks, kept by the ranker from Rx's round trips.
        self.ranks = Ranks(local_ipv4_interfaces)
        self.servers = ServerTable(endpoint, config.server_config(), self.ranks)
        self.ranker = Ranker(
            self.ranks,
            endpoint.round_trip,
            self._probe_for_rank,
            lambda: self.servers.config.probe_interval,
            config.probe_timeout,
        )
        tokens.on_forget(self.servers.forget_token)
        self.volumes = VolumeCache(self._locate, config.volume_ttl)
        self.rotator = Rotator(self.servers, self.volumes, config.rotation_config(), stats)
        self.vnodes = VnodeTable(evicted=self._evicted)
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
        #: Gives back the space of small chunks chunk memory let go (afsfuse/malloc.py).
        self._trimmer = Trimmer(trimmed=self._count_trim)
        self._memory = ChunkMemory(config.chunk_memory, self._trimmer.freed)
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
            unlinked=lambda fid, token: self.writer.drop_dirty_if_gone(fid, token),
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
        self.siblings = SiblingReadAhead(
            self.vnodes, self.dirs, self.reader, nursery=lambda: self._nursery
        )
        self.writer = Writer(
            self.status,
            store,
            self.cache,
            self.reader,
            stats,
            token_for=self._token,
            notify=self._notify,
            store_call_bytes=config.store_call_bytes,
            store_retry=config.store_retry,
            dirty_memory_age=config.dirty_memory_age,
        )
        #: What cmdebug is shown; the FUSE face tells it how the kernel holds files.
        self.debug_view = CacheView(
            self.vnodes,
            cells,
            self.volumes,
            self.servers,
            store,
            self.writer,
            chunk_memory=config.chunk_memory,
            locks=[
                ("cache_writes", self._clean_writer.writing),
                ("cache_threads", self.cache.limiter),
            ],
        )
        self.cb_service = CacheManagerService(
            self.registry, local_cell=cells.this_cell, view=self.debug_view
        )
        self.cb_service.install(endpoint)

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
                nursery.start_soon(self.ranker.run)
                await nursery.start(self._clean_writer.run)
                await nursery.start(self._trimmer.run)
                await nursery.start(self.writer.unsent.run)
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def _count_trim(self) -> None:
        self.stats.memory_trims += 1

    def on_invalidate(self, callback: Listener) -> None:
        """`callback(fid)` after a callback break or a data-version change of `fid`;
        `callback(None)` when everything was dropped."""
        self._listeners.append(callback)

    def _replaced(self, fid: AfsFid) -> None:
        """A reply showed a data version of `fid` someone else made."""
        self.dirs.drop(fid)
        self._notify(fid)

    def _evicted(self, fid: AfsFid) -> None:
        """A vnode record made room for another: with its promise gone, a break would no
        longer reach the kernel, so the kernel stops trusting what it holds now, as after
        a break."""
        self.registry.forget(Fid(fid.volume, fid.vnode, fid.unique))
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

    def add_alias(self, alias: str, cell: str) -> None:
        """`fs newalias`: EEXIST when the name is taken."""
        try:
            self.cells.add_alias(alias, cell)
        except ValueError as e:
            raise FsError(errno.EEXIST, str(e)) from None

    def add_cell(
        self, name: str, vlservers: Sequence[tuple[str, int]], linked_cell: str | None = None
    ) -> Cell:
        """`fs newcell`: the cell's volumes are looked up at these servers from now on."""
        try:
            cell = self.cells.add_cell(name, tuple(vlservers), linked_cell)
        except ValueError as e:
            raise FsError(errno.EEXIST, str(e)) from None
        for known in [n for n in self._vl if cell_key(n) == cell_key(cell.name)]:
            del self._vl[known]  # the next lookup asks the new servers
        return cell

    def setuid_allowed(self, cell: str) -> bool:
        return self.cells.setuid_allowed(cell)

    def allow_setuid(self, cell: str, allowed: bool) -> None:
        self.cells.allow_setuid(cell, allowed)

    async def _vlclient(self, cell_name: str) -> VLClient:
        client = self._vl.get(cell_name)
        if client is None:
            cell = await self.cells.lookup(cell_name)
            if cell is None:
                raise FsError(errno.ENOENT, f"unknown cell {cell_name}")
            client = self._vl[cell_name] = VLClient(
                list(cell.vlservers), self._connect_vl, cell_name, self.ranks
            )
        return client

    def _connect_vl(self, addr: tuple[str, int]) -> ClientConnection:
        from afsfuse.rx.security import RXNULL

        return self.endpoint.connect(
            addr, VL.service_id, RXNULL, dead_time=self.config.dead_time, hard_timeout=60.0
        )

    async def _locate(self, cell: str, volume: str | int) -> VolumeLocation:
        client = await self._vlclient(cell)
        self.stats.count_rpc("VL.GetEntryByNameU")
        return await client.locate(volume)

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
        time in InlineBulkStatus (FetchStatus each where the server lacks it), several calls
        at once (`StatusKeeper.bulk_many`).

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
        batches = self._bulk_batches(fids, wanted, who)

        def got(number: int, statuses: list[Status | FsError]) -> None:
            for i, status in zip(batches[number][0], statuses, strict=True):
                results[i] = (
                    self._local_view(status, fids[i]) if isinstance(status, Status) else status
                )

        await self.status.bulk_many([batch for _, batch in batches], got)
        return [r for r in results if r is not None]

    def _bulk_batches(
        self, fids: Sequence[AfsFid], wanted: dict[tuple[str, int], list[int]], who: Identity
    ) -> list[tuple[list[int], BulkBatch]]:
        """The InlineBulkStatus calls for the `wanted` indexes of `fids`, by volume."""
        out = []
        for (cell, volume), indexes in wanted.items():
            token = self._token(cell, who)
            for start in range(0, len(indexes), AFSCBMAX):
                batch = indexes[start : start + AFSCBMAX]
                out.append((batch, BulkBatch(cell, volume, [fids[i] for i in batch], token)))
        return out

    @_boundary
    async def prefetch_status(self, fids: Sequence[AfsFid], who: Identity) -> dict[AfsFid, FsError]:
        """Fetch the status of those of `fids` whose status or whose rights for `who` are
        not known, as bulk_status does, so that bulk_status of them later costs nothing (a
        directory listing's next entries); the fids the server refused, with their error."""
        now = trio.current_time()
        wanted: dict[tuple[str, int], list[int]] = {}
        for i, fid in enumerate(fids):
            if self.vnodes.get(fid).rights(self._token(fid.cell, who), now) is None:
                wanted.setdefault((fid.cell, fid.volume), []).append(i)
        batches = self._bulk_batches(fids, wanted, who)
        refused: dict[AfsFid, FsError] = {}

        def got(number: int, statuses: list[Status | FsError]) -> None:
            for fid, status in zip(batches[number][1].fids, statuses, strict=True):
                if isinstance(status, FsError):
                    refused[fid] = status

        await self.status.bulk_many([batch for _, batch in batches], got)
        return refused

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
        self,
        fid: AfsFid,
        offset: int,
        size: int,
        who: Identity,
        shown: Shown | None,
        *,
        clean: bool = False,
    ) -> FileData:
        """Like `read`, for a reader that believes the file is at data version and length
        `shown`: that version is served while its chunks are in memory, so what the reader
        gets agrees with the length it was told.  Otherwise the version the fileserver has.
        `clean`: the fileserver's copy even where this mount has unstored changes."""
        if offset < 0 or size < 0:
            raise FsError(errno.EINVAL)
        token = self._token(fid.cell, who)
        for _ in range(3):
            try:
                return await self._read(fid, offset, size, token, shown, clean)
            except DataVersionChanged:
                shown = None
        raise FsError(errno.EIO, "file keeps changing while being read")

    async def _read(
        self,
        fid: AfsFid,
        offset: int,
        size: int,
        token: Token | None,
        shown: Shown | None,
        clean: bool = False,
    ) -> FileData:
        vnode, trusted = await self.status.status_for(fid, token, PRSFS_READ)
        status = vnode.status
        assert status is not None
        if status.is_dir:
            raise FsError(errno.EISDIR)
        # The owner-read bit is checked by the server for ordinary users; a cached copy is
        # only handed out when the server would surely agree.
        trusted = trusted and bool(status.mode & 0o400)
        dirty = None if clean else self.writer.shown_dirty(fid, status)
        if dirty is not None:
            data = await self.writer.read_dirty(fid, vnode, token, dirty, offset, size, trusted)
            return FileData(data, None, dirty.length)
        if offset == 0 and trusted:
            self.siblings.read(fid, vnode, token)
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

    # -- writing (fs/writer.py) ------------------------------------------------------------

    def _local_view(self, status: Status, fid: AfsFid) -> Status:
        return self.writer.local_view(status, fid)

    @_boundary
    async def open(self, fid: AfsFid, who: Identity, *, write: bool) -> Status:
        """Check that `who` may open `fid` (for writing: EACCES now, as a local filesystem
        would, rather than at close); the status as getattr gives it."""
        if write:
            await self.writer.writable(fid, self._token(fid.cell, who))
        return await self.getattr(fid, who)

    @_boundary
    async def write(self, fid: AfsFid, offset: int, data: bytes, who: Identity) -> int:
        """Write into the local copy; it reaches the fileserver at store_data/fsync.  Returns
        the bytes written."""
        return await self.writer.write(fid, offset, data, who)

    @_boundary
    async def truncate(self, fid: AfsFid, length: int, who: Identity) -> None:
        """Set the length of the local copy (growing leaves a hole); stored with the rest at
        store_data/fsync.  For truncate(2) without an open file, see setattr(size=)."""
        await self.writer.truncate(fid, length, who)

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
        await self.writer.store_now(fid, who, sync=False)
        return await self.getattr(fid, who)

    @_boundary
    async def fsync(self, fid: AfsFid, who: Identity) -> Status:
        """Like store_data, and the fileserver writes the file to its disk before it answers."""
        await self.writer.store_now(fid, who, sync=True)
        return await self.getattr(fid, who)

    async def keep_unsent(self) -> None:
        """Put every dirty file kept in memory on disk (at unmount): unsent data outlives the
        daemon."""
        await self.writer.keep_unsent()

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
        await self.writer.setattr(
            fid, who, mode=mode, mtime=mtime, owner=owner, group=group, size=size
        )
        return await self.getattr(fid, who)

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

    # -- volumes and access control lists (fs/acl_ops.py) -------------------------------

    @_boundary
    async def statfs(self, fid: AfsFid, who: Identity) -> VolumeStatus:
        return await self.acls.volume_status(fid, self._token(fid.cell, who))

    @_boundary
    async def get_volume_status(self, fid: AfsFid, who: Identity) -> VolumeStatus:
        """The volume's quota, usage and messages (`fs listquota`); the same as statfs."""
        return await self.acls.volume_status(fid, self._token(fid.cell, who))

    @_boundary
    async def set_quota(
        self, fid: AfsFid, max_quota_kb: int | None, who: Identity, *, offline_message: str = ""
    ) -> None:
        """Set the quota of `fid`'s volume in KiB (0: none; None: as it is), and its offline
        message when one is given; the cell's administrators only."""
        await self.acls.set_quota(fid, max_quota_kb, self._token(fid.cell, who), offline_message)

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

    # -- fileservers and volume locations (fs/server.py, fs/volume.py) ----------------------

    async def check_servers(self, probe: bool) -> list[str]:
        """Addresses of the fileservers that are down; with probe, asked first (and the
        round trips the probes measured go into the ranks at once)."""
        down = await self.servers.check(probe)
        if probe:
            self.ranker.refresh()
        return [server.addr for server in down]

    def probe_interval(self, seconds: float | None = None) -> float:
        """Seconds between probes of down servers; sets it first when seconds is given."""
        if seconds is not None:
            self.servers.set_probe_interval(seconds)
            self.ranker.interval_changed()
        return self.servers.config.probe_interval

    async def server_ranks(self, vlservers: bool = False) -> list[tuple[str, int]]:
        """(address, rank) of every fileserver met, or of every known cell's VL servers."""
        if not vlservers:
            return [(server.addr, self.servers.rank(server)) for server in self.servers.all()]
        found: dict[str, int] = {}
        for name in self.known_cells():
            cell = await self.cell(name)
            for host, port in cell.vlservers if cell is not None else ():
                found.setdefault(host, self.ranks.peek((host, port)))
        return list(found.items())

    def set_server_rank(self, addr: str, rank: int, vlservers: bool = False) -> None:
        """Prefer the fileserver at `addr` by `rank` (lowest first) among a volume's sites,
        or with vlservers the database server there among its cell's."""
        if vlservers:
            self.ranks.set_pref((addr, VL.port), rank)
        else:
            self.servers.set_rank(addr, rank)

    async def _probe_for_rank(self, addr: Address) -> None:
        """Measure the round trip to a met server nobody uses now (fs/ranker.py)."""
        server = self.servers.find(*addr)
        if server is not None:
            if server.up:  # a down one is the down-server prober's
                await self.servers.probe(server)
            return
        for client in list(self._vl.values()):
            if addr in client.states:
                await client.probe(addr)
                return

    def forget_volume_locations(self) -> None:
        """Look every volume up again at its next use (`fs checkvolumes`)."""
        self.volumes.forget()

    # -- for the FUSE face and the control socket (fs/api.py) ---------------------------

    def cached_volume(self, fid: AfsFid) -> VolumeLocation | None:
        """The VLDB entry of `fid`'s volume if it is cached (no VL call)."""
        return self.volumes.cached(fid.cell, fid.volume)

    async def volume_location(self, cell: str, volume: str | int) -> VolumeLocation:
        """The VLDB entry of a volume named or numbered `volume` in `cell`, through the
        volume location cache; FsError (ENOENT for no such volume) when the VL call fails."""
        try:
            return await self.volumes.location(cell, volume)
        except RxAbort as e:
            raise fs_error(e.code, f"volume {volume} in {cell}") from None

    # -- views for afsfuse-ctl and the metrics export (fs/views.py, fs/api.py) ------------

    def cell_views(self) -> list[views.CellView]:
        return views.cell_views(self.cells)

    def server_views(self) -> list[views.ServerView]:
        """Fileservers and database servers talked to, with the round trip Rx measured."""
        figures = self.endpoint.figures()
        return views.server_views(self.servers, self._vl, figures, trio.current_time())

    def volume_views(self) -> list[views.VolumeView]:
        """Volumes with a cached VLDB entry, and the callbacks held on their files."""
        return views.volume_views(
            self.volumes, self.servers, self.vnodes.all(), trio.current_time()
        )

    def call_views(self) -> list[views.CallView]:
        """Rx calls under way, both ways."""
        return views.call_views(self.endpoint.figures())

    def peer_views(self) -> list[views.PeerView]:
        return views.peer_views(self.endpoint.figures())

    def conn_views(self) -> list[views.ConnView]:
        return views.conn_views(self.endpoint.figures())

    async def cache_view(self) -> views.CacheView:
        """Disk cache use, dirty and unsent data, leftovers, hits (in a worker thread: the
        disk cache's size is a query)."""
        memory = (self._memory.used, self._memory.budget)
        return await trio.to_thread.run_sync(views.cache_view, self.store, self.stats, memory)
