"""Vnode status: commit status from replies, fetch status, bulk status.

`commit` is the one place a fileserver's word about a vnode is taken (kAFS's "commit
status"): the status, the callback promise that came with it (kept only if no break came
while the call was under way), the caller's rights, and a data version someone else made,
which drops what was cached for the old one.  A reply overtaken by a newer one (sent before
the held status came, showing an older version) does not take the file back.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import trio

from afsfuse.fs.callback import CallbackRegistry, Fid
from afsfuse.fs.errors import FsError, fs_error
from afsfuse.fs.operation import NO_CALLBACK, FsOperation, ReplyOrigin
from afsfuse.fs.rotate import Rotator
from afsfuse.fs.server import FileServer
from afsfuse.fs.stats import Stats
from afsfuse.fs.vnode import AfsFid, Status, Vnode, VnodeTable
from afsfuse.keyring.token import Token
from afsfuse.rx.driver import ClientConnection
from afsfuse.rx.errors import RXGEN_OPCODE, RxAbort
from afsfuse.rx.interfaces.fs import CB_DROPPED, FS, AFSFid

if TYPE_CHECKING:
    from afsfuse.rx.interfaces.fs import AFSFetchStatus

log = logging.getLogger(__name__)

#: Status fetched for a directory listing, at most this many at a time without InlineBulkStatus.
STATUS_FANOUT = 8
#: InlineBulkStatus calls `bulk_many` makes at once.  A fileserver starts each reply at one
#: packet a round trip (50 statuses: three round trips), so on a distant server a listing's
#: batches one after another cost three round trips per 50 entries; an Rx connection
#: carries four calls at a time.
BULK_CALLS = 4


class BulkBatch(NamedTuple):
    """One InlineBulkStatus: up to AFSCBMAX fids of one volume, asked with `token`."""

    cell: str
    volume: int
    fids: list[AfsFid]
    token: Token | None


def afs_fid(fid: AfsFid) -> AFSFid:
    return AFSFid(fid.volume, fid.vnode, fid.unique)


class StatusKeeper:
    """Vnode status and callback promises.  `replaced(fid)` is told when a reply shows a
    data version this client did not make (the listing and the kernel's pages go)."""

    def __init__(
        self,
        vnodes: VnodeTable,
        registry: CallbackRegistry,
        rotator: Rotator,
        stats: Stats,
        *,
        callback_margin: float,
        replaced: Callable[[AfsFid], None],
    ) -> None:
        self.vnodes = vnodes
        self.registry = registry
        self.rotator = rotator
        self.stats = stats
        self.callback_margin = callback_margin
        self.replaced = replaced

    def operation(self, token: Token | None, name: str, *vnodes: Vnode) -> FsOperation:
        """An RPC on `vnodes` (fs/operation.py), committing here."""
        return FsOperation(self.rotator, self, token, name, *vnodes)

    # -- commit status -----------------------------------------------------------------

    def commit(
        self,
        vnode: Vnode,
        afs_status: AFSFetchStatus,
        callback: Any,
        origin: ReplyOrigin,
        ours: int | None = None,
    ) -> Status:
        """Take a status (and the callback that came with it) from a reply, made and
        answered as `origin` says.  A new data version tells `replaced`, unless it is
        `ours`: the version our own change made, which the caller has already applied."""
        token, server, sent, breaks = origin
        status = Status.from_afs(afs_status)
        previous = vnode.status
        now = trio.current_time()
        if (
            previous is not None
            and status.data_version < previous.data_version
            and sent < vnode.status_taken
        ):
            # Overtaken: asked for before the held status came, answered before the change
            # it shows.  What it returned is its own version's (its data is labelled with
            # it), but the file is past that version.
            return status
        vnode.status = status
        vnode.status_taken = now
        if vnode.breaks != breaks:
            # A break arrived while we waited: the promise may already be gone.
            vnode.cb_expires = 0.0
            vnode.access.clear()
        elif callback.CallBackType != CB_DROPPED and callback.ExpirationTime > 0:
            expires = sent + callback.ExpirationTime - self.callback_margin
            if expires > now:
                if vnode.cb_server != server.addr or vnode.cb_expires <= now:
                    vnode.access.clear()
                vnode.cb_server = server.addr
                vnode.cb_expires = expires
                vnode.access[token] = status.caller_access
                fid = vnode.fid
                self.registry.promise(server.addr, Fid(fid.volume, fid.vnode, fid.unique), expires)
        if (
            previous is not None
            and previous.data_version != status.data_version
            and status.data_version != ours
        ):
            self.replaced(vnode.fid)
        return status

    def commit_fetched(
        self, vnode: Vnode, afs_status: AFSFetchStatus, callback: Any, origin: ReplyOrigin
    ) -> Status:
        """`commit` for a status the server was asked for (FetchStatus, InlineBulkStatus),
        answering with the file's status: a reply `commit` found overtaken (our own store,
        typically, whose reply came first) gives the held status, with the caller's rights
        from the reply.  Giving the kernel the reply's length would be the length from
        before our writes, and O_APPEND would write there."""
        status = self.commit(vnode, afs_status, callback, origin)
        held = vnode.status
        if held is not None and held.data_version > status.data_version:
            return held.with_access(status.caller_access)
        return status

    # -- fetch status --------------------------------------------------------------------

    async def fetch(self, fid: AfsFid, token: Token | None) -> Status:
        """FetchStatus: the server's status of `fid` for `token`."""
        vnode = self.vnodes.get(fid)
        self.stats.status_misses += 1
        op = self.operation(token, "FS.FetchStatus", vnode)
        reply = await op.run(lambda conn, server: FS.FetchStatus(conn, afs_fid(fid)))
        return op.commit_fetched(vnode, reply.OutStatus, reply.CallBack)

    async def status_for(self, fid: AfsFid, token: Token | None, wanted: int) -> tuple[Vnode, bool]:
        """The vnode with a current status, and whether `token` surely has `wanted` rights
        on it (False: let the fileserver decide, by asking it with that token)."""
        vnode = self.vnodes.get(fid)
        if not vnode.allows(token, wanted, trio.current_time()):
            await self.fetch(fid, token)
        return vnode, vnode.allows(token, wanted, trio.current_time())

    # -- bulk status ---------------------------------------------------------------------

    async def bulk(
        self, cell: str, volume: int, fids: list[AfsFid], token: Token | None
    ) -> list[Status | FsError]:
        """InlineBulkStatus of up to AFSCBMAX fids of one volume (FetchStatus each where the
        server lacks it); an entry the server refused is an FsError in its place."""
        vnodes = [self.vnodes.get(fid) for fid in fids]
        self.stats.status_misses += len(fids)
        op = FsOperation(
            self.rotator, self, token, "FS.InlineBulkStatus", *vnodes, cell=cell, volume=volume
        )

        async def call(conn: ClientConnection, server: FileServer) -> Any:
            if server.no_inline_bulk:
                return None
            try:
                return await FS.InlineBulkStatus(conn, [afs_fid(f) for f in fids])
            except RxAbort as e:
                if e.code != RXGEN_OPCODE:
                    raise
                server.no_inline_bulk = True
                return None

        reply = await op.run(call)
        if reply is None:
            return await self._one_by_one(fids, token)
        if len(reply.StatArray) != len(fids):
            log.error("InlineBulkStatus: %d statuses for %d fids", len(reply.StatArray), len(fids))
            raise FsError(errno.EIO, "InlineBulkStatus reply does not match the request")
        callbacks = list(reply.CBArray) + [None] * (len(fids) - len(reply.CBArray))
        out: list[Status | FsError] = []
        for vnode, afs_status, callback in zip(vnodes, reply.StatArray, callbacks, strict=True):
            if afs_status.errorCode:
                out.append(fs_error(afs_status.errorCode, f"status of {tuple(vnode.fid)}"))
                continue
            out.append(op.commit_fetched(vnode, afs_status, callback or NO_CALLBACK))
        return out

    async def bulk_many(
        self, batches: list[BulkBatch], got: Callable[[int, list[Status | FsError]], None]
    ) -> None:
        """`bulk` of every batch, up to BULK_CALLS at once; `got(i, statuses)` as batch `i`
        is answered.  The first FsError is raised once the calls under way have ended
        (no new one starts after it)."""
        if len(batches) <= 1:
            if batches:
                got(0, await self.bulk(*batches[0]))
            return
        limit = trio.Semaphore(BULK_CALLS)
        failed: list[FsError] = []

        async def one(i: int) -> None:
            async with limit:
                if failed:
                    return
                try:
                    statuses = await self.bulk(*batches[i])
                except FsError as e:
                    failed.append(e)
                    return
                got(i, statuses)

        async with trio.open_nursery() as nursery:
            for i in range(len(batches)):
                nursery.start_soon(one, i)
        if failed:
            raise failed[0]

    async def _one_by_one(self, fids: list[AfsFid], token: Token | None) -> list[Status | FsError]:
        out: list[Status | FsError | None] = [None] * len(fids)
        limit = trio.Semaphore(STATUS_FANOUT)

        async def one(i: int) -> None:
            async with limit:
                try:
                    out[i] = await self.fetch(fids[i], token)
                except FsError as e:
                    out[i] = e

        async with trio.open_nursery() as nursery:
            for i in range(len(fids)):
                nursery.start_soon(one, i)
        return [r for r in out if r is not None]
