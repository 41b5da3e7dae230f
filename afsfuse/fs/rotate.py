"""The one way every fileserver RPC is made: pick a site, call, and decide from the outcome.

For a volume, the sites come from its VLDB entry (the RO sites for an RO volume id, the RW
site for an RW one).  Then, per afs-protocol-facts.md 3.4:

- VBUSY / VRESTARTING: pause `busy_wait` and ask the same server again (at most
  `max_busy_waits` times, then EWOULDBLOCK);
- VMOVED / VNOVOL / VOFFLINE / VSALVAGE: re-read the VLDB entry and try a site not yet tried;
  once every site said so, pause `missing_wait`, re-read the VLDB and ask them all again, at
  most `max_missing_rounds` times: a volume is briefly offline or not yet attached while
  `vos create`, `vos release` or a fileserver restart is under way (OpenAFS retries such a
  site several times before it counts as offline);
- the server did not answer (RX_CALL_DEAD), or a call cut off at the deadline had heard
  nothing from it for as long as a probe waits: mark it down and try the next site;
  RX_CALL_TIMEOUT / VNOSERVICE: skip that server for this request only;
- VICETOKENDEAD: drop the connection and retry once on a new one;
- anything else is the answer: the errno from fs/errors.py.

Servers marked down are skipped; when no site is left, each down site is probed once (a
short GetTime) before giving up.  Giving up is ETIMEDOUT when a server failed to answer,
ENODEV when every site refused the volume.  The whole rotation is bounded by `timeout`,
and inside a request by the request's deadline (fs/deadline.py), which each answer renews.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import trio

from afsfuse.fs import deadline
from afsfuse.fs.errors import (
    FsError,
    fs_error,
    is_busy,
    is_volume_location_error,
)
from afsfuse.fs.server import FileServer, ServerTable
from afsfuse.fs.stats import Stats
from afsfuse.fs.volume import VolumeCache
from afsfuse.keyring.token import Token
from afsfuse.rx.driver import ClientConnection
from afsfuse.rx.errors import RX_CALL_DEAD, RX_CALL_TIMEOUT, RxAbort, RxSecurityError
from afsfuse.rx.interfaces.fs import VICETOKENDEAD, VNOSERVICE
from afsfuse.vl.vlclient import VolumeLocation, VolumeSite

log = logging.getLogger(__name__)

T = TypeVar("T")
Operation = Callable[[ClientConnection, FileServer], Awaitable[T]]


@dataclass(frozen=True)
class RotationConfig:
    #: Bound on one whole rotation (every site, waits and VLDB refreshes included).
    timeout: float = 120.0
    busy_wait: float = 5.0
    max_busy_waits: int = 12
    missing_wait: float = 1.0
    max_missing_rounds: int = 3


class Rotator:
    def __init__(
        self, servers: ServerTable, volumes: VolumeCache, config: RotationConfig, stats: Stats
    ) -> None:
        self.servers = servers
        self.volumes = volumes
        self.config = config
        self.stats = stats

    async def call(
        self, cell: str, volume: int, token: Token | None, name: str, op: Operation[T]
    ) -> T:
        """Run `op(connection, server)` against a site of `volume` until one answers, or
        ETIMEDOUT at the request's deadline (`timeout` from now outside a request).

        `name` ("FS.FetchStatus") is for counters and messages.  Raises FsError only.
        """
        request = deadline.current()
        with trio.move_on_at(deadline.wait_until(self.config.timeout)):
            try:
                result = await self._rotate(cell, volume, token, name, op)
            except FsError as e:
                if request is not None and e.errno != errno.ETIMEDOUT:
                    request.answered()  # a refusal is an answer too
                raise
            if request is not None:
                request.answered()
            return result
        self.stats.rpc_errors[name] += 1
        raise FsError(errno.ETIMEDOUT, f"{name} on volume {volume}: no answer in time")

    async def _rotate(
        self, cell: str, volume: int, token: Token | None, name: str, op: Operation[T]
    ) -> T:
        location = await self._locate(cell, volume)
        refreshed = False
        tried: set[FileServer] = set()
        #: Sites that answered with a volume location error in this round.
        missing: set[FileServer] = set()
        missing_rounds = 0
        server_failed = False
        last_error = ""
        busy_waits = 0
        token_retried = False
        while True:
            server = await self._next_server(location.sites_for(volume), tried)
            if server is None and missing and missing_rounds < self.config.max_missing_rounds:
                missing_rounds += 1
                log.info("%s: volume %d missing on every site; asking again", name, volume)
                await trio.sleep(self.config.missing_wait)
                tried -= missing
                missing.clear()
                location = await self._locate(cell, volume, fresh=True)
                continue
            if server is None:
                server_failed = server_failed or any(not s.up for s in tried)
                break
            conn = self.servers.connection(server, token)
            self.stats.count_rpc(name)
            server.calls += 1
            started = trio.current_time()
            try:
                return await op(conn, server)
            except trio.Cancelled:
                self._check_silence(server, conn, started)
                raise
            except RxAbort as e:
                code = e.code
                self.stats.rpc_errors[name] += 1
                server.errors += 1
                server.last_error = f"{name}: {e}"
                last_error = f"{server.addr}: {e}"
                if is_busy(code):
                    busy_waits += 1
                    if busy_waits > self.config.max_busy_waits:
                        raise fs_error(code, f"{name} on volume {volume}") from None
                    self.stats.busy_waits += 1
                    log.info("%s: volume %d busy on %s; waiting", name, volume, server.addr)
                    await trio.sleep(self.config.busy_wait)
                    continue
                if is_volume_location_error(code):
                    log.info("%s: volume %d: %s", name, volume, last_error)
                    tried.add(server)
                    missing.add(server)
                    self.stats.failovers += 1
                    if not refreshed:
                        refreshed = True
                        location = await self._locate(cell, volume, fresh=True)
                    continue
                if code == RX_CALL_DEAD:
                    self.servers.mark_down(server, str(e))
                    tried.add(server)
                    server_failed = True
                    self.stats.failovers += 1
                    continue
                if code in (RX_CALL_TIMEOUT, VNOSERVICE):
                    self.servers.discard(server, conn)
                    tried.add(server)
                    server_failed = True
                    self.stats.failovers += 1
                    continue
                if code == VICETOKENDEAD or isinstance(e, RxSecurityError):
                    self.servers.discard(server, conn)
                    if code == VICETOKENDEAD and not token_retried:
                        token_retried = True
                        continue
                raise fs_error(code, f"{name} on volume {volume}") from None
        if server_failed:
            raise FsError(
                errno.ETIMEDOUT, f"{name} on volume {volume}: no fileserver answered ({last_error})"
            )
        raise FsError(errno.ENODEV, f"{name} on volume {volume}: no site has it ({last_error})")

    def _check_silence(self, server: FileServer, conn: ClientConnection, started: float) -> None:
        """A call cut off (at the deadline, mostly) after its server had said nothing for as
        long as a probe waits: that server is down.  With a dead time longer than the
        timeout, RX_CALL_DEAD never comes, and every later request would wait the whole
        timeout for the same silent server."""
        quiet = trio.current_time() - max(started, conn.last_heard)
        if quiet >= min(self.servers.config.probe_timeout, self.config.timeout / 2):
            self.servers.mark_silent(server, quiet)

    async def _locate(self, cell: str, volume: int, *, fresh: bool = False) -> VolumeLocation:
        if fresh:
            self.stats.vldb_refreshes += 1
        try:
            return await self.volumes.location(cell, volume, fresh=fresh)
        except RxAbort as e:
            raise fs_error(e.code, f"locating volume {volume} in {cell}") from None

    async def _next_server(
        self, sites: Sequence[VolumeSite], tried: set[FileServer]
    ) -> FileServer | None:
        """The best ranked site address not yet tried whose server is up; failing that, the
        first down one that answers a probe."""
        candidates = [self.servers.get(addr) for site in sites for addr in site.addresses]
        candidates = [s for s in dict.fromkeys(candidates) if s not in tried]
        candidates.sort(key=self.servers.rank)
        for server in candidates:
            if server.up:
                return server
        for server in candidates:
            if await self.servers.probe(server):
                return server
            tried.add(server)
        return None
