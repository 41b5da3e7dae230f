"""Fileserver records: where a server is, whether it answers, and our connections to it.

A connection carries one security context, so each (server, token, level) pair gets its
own; a user's calls never travel on a connection authenticated as someone else.  A server
that stopped answering is marked down and skipped by rotation until a probe (FS GetTime,
rxnull, short dead time) hears from it again.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace

import trio

from afsfuse.fs.cmservice import local_ipv4_interfaces
from afsfuse.keyring.token import Token
from afsfuse.rx.connection import DEFAULT_DEAD_TIME
from afsfuse.rx.driver import ClientConnection, Endpoint
from afsfuse.rx.errors import RxAbort
from afsfuse.rx.interfaces.fs import FS
from afsfuse.rx.rxkad import LEVELS_BY_NAME, RxkadClient
from afsfuse.rx.security import RXNULL, ClientSecurity
from afsfuse.vl.rank import Ranks

log = logging.getLogger(__name__)

FS_PORT = 7000


@dataclass(frozen=True)
class ServerConfig:
    #: rxkad level for authenticated calls: "clear", "auth" or "crypt".
    security: str = "crypt"
    #: Seconds of silence after which a call to a fileserver is declared dead.
    dead_time: float = DEFAULT_DEAD_TIME
    #: Dead time of a liveness probe.
    probe_timeout: float = 3.0
    #: How often down servers are probed in the background.
    probe_interval: float = 30.0
    #: A server is not probed on demand more often than this.
    probe_min_gap: float = 1.0


@dataclass(eq=False)
class FileServer:
    addr: str
    port: int = FS_PORT
    up: bool = True
    down_since: float | None = None
    last_error: str = ""
    last_probe: float = -math.inf
    probes: int = 0
    #: RPCs made to it through rotation, and those that ended in an error (`afsfuse-ctl
    #: servers`); last_error says the latest.
    calls: int = 0
    errors: int = 0
    #: The server answered InlineBulkStatus with RXGEN_OPCODE: use FetchStatus instead.
    no_inline_bulk: bool = False
    #: The server answered StoreACL (164) with RXGEN_OPCODE: use OldStoreACL (134) instead.
    no_store_acl: bool = False
    _probing: trio.Event | None = None
    _conns: dict[tuple[Token | None, int], ClientConnection] = field(default_factory=dict)

    @property
    def address(self) -> tuple[str, int]:
        return (self.addr, self.port)


class ServerTable:
    """Every fileserver this cache manager has talked to, by address."""

    def __init__(
        self, endpoint: Endpoint, config: ServerConfig, ranks: Ranks | None = None
    ) -> None:
        if config.security not in LEVELS_BY_NAME:
            raise ValueError(f"security must be one of {sorted(LEVELS_BY_NAME)}")
        self._endpoint = endpoint
        self.config = config
        self.level = LEVELS_BY_NAME[config.security]
        self._servers: dict[tuple[str, int], FileServer] = {}
        #: Shared with the VL clients and fs/ranker.py, which keeps it current.
        self.ranks = ranks if ranks is not None else Ranks(local_ipv4_interfaces)

    def get(self, addr: str, port: int = FS_PORT) -> FileServer:
        server = self._servers.get((addr, port))
        if server is None:
            server = self._servers[(addr, port)] = FileServer(addr, port)
        return server

    def find(self, addr: str, port: int = FS_PORT) -> FileServer | None:
        """The record of a server talked to before, without making one."""
        return self._servers.get((addr, port))

    def all(self) -> list[FileServer]:
        return list(self._servers.values())

    def rank(self, server: FileServer) -> int:
        """A server's preference among a volume's sites, lowest first (vl/rank.py)."""
        return self.ranks.rank(server.address)

    def set_rank(self, addr: str, rank: int) -> None:
        """Prefer a fileserver by `rank` from now on (`fs setserverprefs`)."""
        self.ranks.set_pref((addr, FS_PORT), rank)

    def connection(self, server: FileServer, token: Token | None) -> ClientConnection:
        """The connection for calls to `server` made with `token` (None: anonymous)."""
        key = (token, int(self.level) if token else -1)
        conn = server._conns.get(key)
        if conn is not None and conn.failed:
            conn.close()
            conn = None
        if conn is None:
            security: ClientSecurity
            if token is None:
                security = RXNULL
            else:
                security = RxkadClient(token.session_key, token.ticket, token.kvno, self.level)
            conn = self._endpoint.connect(
                server.address, FS.service_id, security, dead_time=self.config.dead_time
            )
            server._conns[key] = conn
        return conn

    def discard(self, server: FileServer, conn: ClientConnection) -> None:
        """Stop using a connection (its security context or its peer went bad)."""
        for key, held in list(server._conns.items()):
            if held is conn:
                del server._conns[key]
        conn.close()

    def forget_token(self, token: Token) -> None:
        """A token was replaced or removed: close the connections it authenticated."""
        for server in self._servers.values():
            for key, conn in list(server._conns.items()):
                if key[0] == token:
                    del server._conns[key]
                    conn.close()

    def mark_down(self, server: FileServer, reason: str) -> None:
        if server.up:
            log.warning("fileserver %s is down: %s", server.addr, reason)
            server.up = False
            server.down_since = trio.current_time()
        server.last_error = reason
        for conn in server._conns.values():
            conn.close()
        server._conns.clear()

    def mark_silent(self, server: FileServer, waited: float) -> None:
        """A call waited `waited` seconds and heard nothing: the server is down, as a failed
        probe would have found it, so requests in the next probe_min_gap fail at once
        instead of each waiting for it again."""
        self.mark_down(server, f"nothing heard from it in {waited:.1f} s")
        server.last_probe = trio.current_time()

    def mark_up(self, server: FileServer) -> None:
        if not server.up:
            log.warning("fileserver %s is back", server.addr)
        server.up = True
        server.down_since = None

    async def probe(self, server: FileServer) -> bool:
        """Ask `server` the time; mark it up or down by the outcome.  Concurrent callers
        share one probe, and a probe younger than probe_min_gap is not repeated."""
        if server._probing is not None:
            await server._probing.wait()
            return server.up
        if trio.current_time() - server.last_probe < self.config.probe_min_gap:
            return server.up
        server._probing = done = trio.Event()
        conn = self._endpoint.connect(
            server.address, FS.service_id, RXNULL, dead_time=self.config.probe_timeout
        )
        try:
            server.probes += 1
            with trio.move_on_after(self.config.probe_timeout * 2):
                await FS.GetTime(conn)
                self.mark_up(server)
                return True
            self.mark_down(server, "probe timed out")
            return False
        except RxAbort as e:
            self.mark_down(server, f"probe failed: {e}")
            return False
        finally:
            conn.close()
            server.last_probe = trio.current_time()
            server._probing = None
            done.set()

    async def check(self, probe: bool) -> list[FileServer]:
        """The servers that are down (`fs checkservers`); with probe, every server is asked
        first, at once."""
        if probe:
            async with trio.open_nursery() as nursery:
                for server in self._servers.values():
                    server.last_probe = -math.inf  # asked for now, however recent the last
                    nursery.start_soon(self.probe, server)
        return [server for server in self._servers.values() if not server.up]

    def set_probe_interval(self, seconds: float) -> None:
        """How often down servers are probed from now on (`fs checkservers -interval`)."""
        self.config = replace(self.config, probe_interval=seconds)

    async def run_prober(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Background task: probe the servers that are down, every probe_interval."""
        task_status.started()
        while True:
            await trio.sleep(self.config.probe_interval)
            down = [s for s in self._servers.values() if not s.up]
            async with trio.open_nursery() as nursery:
                for server in down:
                    nursery.start_soon(self.probe, server)
