"""Invalidation: callback breaks, flushes, and giving callbacks back.

A callback break (fs/callback.py hears it from the callback service, fs/cmservice.py) ends
the promise on the vnodes it names, and each is pushed to the kernel (`on_break`); a reply
that comes back after a break that arrived while it was under way brings no promise
(fs/status.py).  `flush` forgets what is cached; `give_up_callbacks` tells the
fileservers at unmount.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from afsfuse.cache.aio import AsyncCacheStore, CleanWriter
from afsfuse.fs.callback import Break, CallbackRegistry, Fid
from afsfuse.fs.chunkmem import ChunkMemory
from afsfuse.fs.directories import DirectoryCache
from afsfuse.fs.server import FileServer, ServerTable
from afsfuse.fs.stats import Stats
from afsfuse.fs.vnode import AfsFid, VnodeTable
from afsfuse.fs.volume import VolumeCache
from afsfuse.rx.errors import RXGEN_OPCODE, RxAbort
from afsfuse.rx.interfaces.fs import AFSCBMAX, CALLBACK_VERSION, CB_DROPPED, FS, AFSCallBack, AFSFid

log = logging.getLogger(__name__)


class Invalidator:
    """`notify(fid)` tells the kernel (None: everything)."""

    def __init__(
        self,
        vnodes: VnodeTable,
        dirs: DirectoryCache,
        memory: ChunkMemory,
        clean_writer: CleanWriter,
        cache: AsyncCacheStore,
        volumes: VolumeCache,
        registry: CallbackRegistry,
        servers: ServerTable,
        stats: Stats,
        *,
        notify: Callable[[AfsFid | None], None],
        known_cells: Callable[[], list[str]],
        probe_timeout: float,
    ) -> None:
        self.vnodes = vnodes
        self.dirs = dirs
        self.memory = memory
        self.clean_writer = clean_writer
        self.cache = cache
        self.volumes = volumes
        self.registry = registry
        self.servers = servers
        self.stats = stats
        self.notify = notify
        self.known_cells = known_cells
        self.probe_timeout = probe_timeout

    def on_break(self, event: Break) -> None:
        """A callback break (or InitCallBackState) from a fileserver: the promises go, and
        the kernel is told."""
        self.stats.callbacks_received += 1
        if event.fid is None:
            hit = [v for v in self.vnodes.all() if v.cb_server == event.server]
            if hit:  # (every fileserver says so at first contact too, with nothing held)
                log.info(
                    "fileserver %s dropped every callback it gave us (it restarted, or asked "
                    "us to start afresh): %d cached files will be checked again",
                    event.server, len(hit),
                )  # fmt: skip
        elif event.fid.vnode == 0:
            # A volume callback (RO volumes, releases): every file of the volume.
            hit = list(self.vnodes.matching(event.fid.volume))
        else:
            fid = event.fid
            hit = list(self.vnodes.matching(fid.volume, fid.vnode, fid.unique))
        for vnode in hit:
            vnode.invalidate()
            self.notify(vnode.fid)

    async def flush_fid(self, fid: AfsFid) -> None:
        """Forget everything about one file (status, rights, cached data)."""
        vnode = self.vnodes.peek(fid)
        if vnode is not None:
            vnode.invalidate()
            vnode.status = None
        self.dirs.drop(fid)
        self.memory.drop(lambda f: f == fid)
        await self.clean_writer.discard(lambda f: f == fid)
        await self.cache.drop_fid(fid)
        self.notify(fid)

    async def flush(self, volume: int | None = None, cell: str | None = None) -> None:
        """Forget a volume's files (in `cell`, or any cell), or everything (volume None):
        status, rights, cached data and volume locations."""
        if volume is None:
            for vnode in self.vnodes.all():
                vnode.invalidate()
            self.vnodes.clear()
            self.dirs.clear()
            self.memory.clear()
            self.volumes.forget(cell)
            await self.clean_writer.discard(lambda f: True)
            await self.cache.clear()
            self.notify(None)
            return
        for vnode in list(self.vnodes.matching(volume)):
            if cell is None or vnode.fid.cell == cell:
                vnode.invalidate()
                self.vnodes.drop(vnode.fid)
                self.dirs.drop(vnode.fid)
                self.notify(vnode.fid)

        def in_volume(f: AfsFid) -> bool:
            return f.volume == volume and (cell is None or f.cell == cell)

        self.memory.drop(in_volume)
        await self.clean_writer.discard(in_volume)
        for name in [cell] if cell else self.known_cells():
            await self.cache.drop_volume(name, volume)

    async def give_up_callbacks(self) -> None:
        """Tell every fileserver we hold callbacks from that we no longer want them
        (at unmount).  Best effort, bounded in time; never raises."""
        held = self.registry.held()
        async with trio.open_nursery() as nursery:
            for addr, fids in held.items():
                nursery.start_soon(self._give_up, self.servers.get(addr), fids)
        for vnode in self.vnodes.all():
            vnode.invalidate()

    async def _give_up(self, server: FileServer, fids: list[Fid]) -> None:
        conn = self.servers.connection(server, None)
        with trio.move_on_after(self.probe_timeout * 2):
            try:
                self.stats.count_rpc("FS.GiveUpAllCallBacks")
                await FS.GiveUpAllCallBacks(conn)
                log.info("gave up callbacks at %s", server.addr)
                return
            except RxAbort as e:
                if e.code != RXGEN_OPCODE:
                    log.info("GiveUpAllCallBacks to %s: %s", server.addr, e)
                    return
            for start in range(0, len(fids), AFSCBMAX):
                batch = fids[start : start + AFSCBMAX]
                dropped = [AFSCallBack(CALLBACK_VERSION, 0, CB_DROPPED)]
                try:
                    self.stats.count_rpc("FS.GiveUpCallBacks")
                    await FS.GiveUpCallBacks(
                        conn, [AFSFid(f.volume, f.vnode, f.unique) for f in batch], dropped
                    )
                except RxAbort as e:
                    log.info("GiveUpCallBacks to %s: %s", server.addr, e)
                    return
            log.info("gave up callbacks at %s, %d fids", server.addr, len(fids))
