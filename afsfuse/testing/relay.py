"""A lossy UDP relay between one client and one server, for tests and benchmarks.

The kernel here has no sch_netem, so this relay is how traffic gets impaired: it drops,
duplicates, reorders and delays datagrams, each decision drawn from one seeded RNG so a run
can be repeated.  The client talks to `relay.addr` (127.0.0.1) as if it were the server;
the relay forwards from a socket of its own, so anything the server sends to that socket
(replies, and a fileserver's callback calls) comes back to the client from `relay.addr`.

    async with open_relay(server_addr, loss=0.1, dup=0.05, reorder=0.05, delay=(0, 0.005),
                          seed=1) as relay:
        conn = endpoint.connect(relay.addr, ...)
        ...
        print(relay.stats)

The knobs are plain attributes and may change while the relay runs (`relay.loss = 1.0`
cuts the link both ways, as a server that vanished).
"""

from __future__ import annotations

import random
import socket
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

Address = tuple[str, int]

MAX_DATAGRAM = 65536
SOCKET_BUFFER = 4 * 1024 * 1024
#: A held-back packet goes out after this many later ones (drawn per packet) ...
REORDER_SPAN = (1, 3)
#: ... or after this long if the flow goes quiet, so reordering never becomes loss.
REORDER_MAX_HOLD = 0.02


@dataclass
class DirectionStats:
    forwarded: int = 0  # datagrams sent on, duplicates included
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0


@dataclass
class RelayStats:
    to_server: DirectionStats = field(default_factory=DirectionStats)
    to_client: DirectionStats = field(default_factory=DirectionStats)


class _Direction:
    """One way through the relay: fate of each datagram, then a FIFO of timed sends."""

    def __init__(self, relay: Relay, out_sock: socket.socket, stats: DirectionStats) -> None:
        self._relay = relay
        self._out_sock = out_sock
        self.stats = stats
        self.dest: Address | None = None
        # (due time, datagram); due times never decrease, so delay alone keeps order.
        self._queue: deque[tuple[float, bytes]] = deque()
        self._last_due = 0.0
        self._held: bytes | None = None
        self._held_countdown = 0
        self._held_until = 0.0
        self._wakeup = trio.Event()

    def take(self, data: bytes, now: float) -> None:
        relay = self._relay
        rng = relay.rng
        if rng.random() < relay.loss:
            self.stats.dropped += 1
            return
        copies = 1
        if rng.random() < relay.dup:
            self.stats.duplicated += 1
            copies = 2
        if self._held is None and rng.random() < relay.reorder:
            self.stats.reordered += 1
            self._held = data
            self._held_countdown = rng.randint(*REORDER_SPAN)
            self._held_until = now + REORDER_MAX_HOLD
            copies -= 1
        for _ in range(copies):
            self._schedule(data, now)
        self._wakeup.set()

    def _schedule(self, data: bytes, now: float) -> None:
        lo, hi = self._relay.delay
        due = max(now + (self._relay.rng.uniform(lo, hi) if hi > 0 else 0.0), self._last_due)
        self._last_due = due
        self._queue.append((due, data))
        if self._held is not None and data is not self._held:
            self._held_countdown -= 1
            if self._held_countdown <= 0:
                self._release_held(now)

    def _release_held(self, now: float) -> None:
        held, self._held = self._held, None
        if held is not None:
            self._schedule(held, now)

    async def run_sender(self) -> None:
        while True:
            now = trio.current_time()
            if self._held is not None and now >= self._held_until:
                self._release_held(now)
            while self._queue and self._queue[0][0] <= now:
                _, data = self._queue.popleft()
                await self._send(data)
            deadline = self._queue[0][0] if self._queue else trio.current_time() + 3600
            if self._held is not None:
                deadline = min(deadline, self._held_until)
            self._wakeup = trio.Event()
            with trio.move_on_at(deadline):
                await self._wakeup.wait()

    async def _send(self, data: bytes) -> None:
        if self.dest is None:
            return
        while True:
            try:
                self._out_sock.sendto(data, self.dest)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self._out_sock)
                continue
            except OSError:
                return  # e.g. an ICMP error queued on the socket: the datagram is lost
            self.stats.forwarded += 1
            return


class Relay:
    """A running relay; create it with `open_relay`."""

    def __init__(
        self,
        server_addr: Address,
        *,
        loss: float,
        dup: float,
        reorder: float,
        delay: tuple[float, float],
        seed: int | None,
    ) -> None:
        self.server_addr = server_addr
        self.loss = loss
        self.dup = dup
        self.reorder = reorder
        self.delay = delay
        self.rng = random.Random(seed)
        self.stats = RelayStats()
        self._client_sock = _udp_socket("127.0.0.1")
        self._server_sock = _udp_socket("0.0.0.0")
        self.addr: Address = self._client_sock.getsockname()
        self._to_server = _Direction(self, self._server_sock, self.stats.to_server)
        self._to_server.dest = server_addr
        self._to_client = _Direction(self, self._client_sock, self.stats.to_client)

    async def _pump(self, sock: socket.socket, direction: _Direction, from_client: bool) -> None:
        buf = bytearray(MAX_DATAGRAM)
        while True:
            await trio.lowlevel.wait_readable(sock)
            now = trio.current_time()
            while True:
                try:
                    nbytes, addr = sock.recvfrom_into(buf)
                except BlockingIOError:
                    break
                except OSError:
                    continue  # a queued ICMP error
                if from_client:
                    self._to_client.dest = addr
                elif addr != self.server_addr:
                    continue  # only the server's datagrams are relayed back
                direction.take(bytes(buf[:nbytes]), now)
            await trio.lowlevel.checkpoint()

    async def _run(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._pump, self._client_sock, self._to_server, True)
        nursery.start_soon(self._pump, self._server_sock, self._to_client, False)
        nursery.start_soon(self._to_server.run_sender)
        nursery.start_soon(self._to_client.run_sender)

    def close(self) -> None:
        self._client_sock.close()
        self._server_sock.close()


def _udp_socket(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        sock.setblocking(False)
        sock.bind((host, 0))
    except BaseException:
        sock.close()
        raise
    return sock


@asynccontextmanager
async def open_relay(
    server_addr: Address,
    *,
    loss: float = 0.0,
    dup: float = 0.0,
    reorder: float = 0.0,
    delay: tuple[float, float] = (0.0, 0.0),
    seed: int | None = None,
) -> AsyncIterator[Relay]:
    """Run a relay to server_addr for the duration of the block."""
    relay = Relay(server_addr, loss=loss, dup=dup, reorder=reorder, delay=delay, seed=seed)
    try:
        async with trio.open_nursery() as nursery:
            await relay._run(nursery)
            try:
                yield relay
            finally:
                nursery.cancel_scope.cancel()
    finally:
        relay.close()
