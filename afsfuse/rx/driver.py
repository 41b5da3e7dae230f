"""The trio driver: one task owns the UDP socket and runs the sans-I/O RxCore.

The socket task waits for readability (or the core's next deadline, or a poke from a call
that queued work), drains the socket without blocking, feeds the core, gives woken tasks a
turn so their reads and writes may join the same flush, then sends what the core built.

Just over 500 lines: the socket task and the call and connection handles it serves
share its wake-up and send paths.
"""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from types import TracebackType

import trio

from . import snapshot
from .call import SEND_BACKLOG, Call, CallState
from .connection import DEFAULT_DEAD_TIME, Connection
from .core import RxCore
from .errors import RX_CALL_DEAD, RX_CALL_TIMEOUT, RX_EOF, RX_USER_ABORT, RxAbort, RxTimeout
from .pathmtu import path_mtu
from .peer import Address
from .schedule import CallChanged, Datagram, IncomingCall
from .security import RXNULL, ClientSecurity, ServerConnectionSecurity, ServerSecurity

log = logging.getLogger(__name__)

SOCKET_BUFFER = 4 * 1024 * 1024
MAX_DATAGRAM = 65536
#: Datagrams taken from the socket before the loop lets other tasks run.
RECEIVE_BATCH = 256
_FINISHED_STATES = (CallState.ERROR, CallState.DALLY)


def _error(code: int) -> RxAbort:
    if code in (RX_CALL_DEAD, RX_CALL_TIMEOUT):
        return RxTimeout(code)
    return RxAbort(code)


class CallHandle:
    """Task-facing side of one call: flow-controlled send, and reads of the peer's stream."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        self._lot = trio.lowlevel.ParkingLot()
        self._core: Call | None = None

    def _bind(self, core_call: Call) -> None:
        self._core = core_call
        core_call.app = self

    @property
    def _call(self) -> Call:
        if self._core is None:
            raise RuntimeError("the call is not open yet")
        return self._core

    def _check(self) -> Call:
        call = self._call
        if call.error is not None:
            raise _error(call.error)
        return call

    def _reading(self) -> Call:
        return self._check()

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        endpoint = self._endpoint
        pos = 0
        while True:
            call = self._check()
            room = SEND_BACKLOG - call.tx_backlog
            if room <= 0:
                await self._lot.park()
                continue
            take = room * call.conn.max_user_data()
            queued = call.tnext
            call.write(view[pos : pos + take], trio.current_time())
            pos += take
            if call.tnext != queued:  # bytes short of a packet wait for more or close_send
                endpoint._poke(call)
            if pos >= len(view):
                break
        # The bytes are queued and on their way: yielding here would only wake the socket
        # task before the rest of the request is written.  Waiting for the reply yields.
        await trio.lowlevel.checkpoint_if_cancelled()

    async def close_send(self) -> None:
        call = self._check()
        call.close_send(trio.current_time())
        self._endpoint._poke(call)
        await trio.lowlevel.checkpoint_if_cancelled()

    async def recv_into(self, buf: memoryview) -> int:
        buf = memoryview(buf).cast("B")
        parked = False
        while True:
            call = self._reading()
            n = call.read_into(buf, trio.current_time())
            if n:
                self._endpoint._poke(call)
                break
            if call.at_eof or not buf:
                break
            await self._lot.park()
            parked = True
        await self._after_read(parked)
        return n

    async def recv_exactly(self, n: int) -> bytes:
        """n bytes, read straight into one buffer however many packets they span."""
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        parked = False
        while got < n:
            call = self._reading()
            taken = call.read_into(view[got:], trio.current_time())
            if taken:
                got += taken
                self._endpoint._poke(call)
                continue
            if call.at_eof:
                raise RxAbort(RX_EOF)
            await self._lot.park()
            parked = True
        await self._after_read(parked)
        return bytes(buf)

    async def recv_rest(self) -> bytes:
        chunks = []
        parked = False
        while True:
            call = self._reading()
            data = call.read(1 << 62, trio.current_time())
            if data:
                chunks.append(data)
                self._endpoint._poke(call)
            if call.at_eof:
                break
            await self._lot.park()
            parked = True
        data = b"".join(chunks)
        await self._after_read(parked)
        return data

    @staticmethod
    async def _after_read(parked: bool) -> None:
        """A read that waited has yielded; one served from what was already here stays a
        cancel point without a schedule point, like send(): the next packets can only come
        from the socket task, so a reader that keeps finding data soon waits anyway, and
        the pieces of a split reply (length, data, OUT args) cost no trip through trio."""
        if not parked:
            await trio.lowlevel.checkpoint_if_cancelled()


class ClientCall(CallHandle):
    """A call we make; use it as `async with connection.new_call() as call`."""

    def __init__(self, connection: ClientConnection) -> None:
        super().__init__(connection._endpoint)
        self._connection = connection

    def _reading(self) -> Call:
        # Rx is half-duplex for the client: reading the reply ends the request.
        call = self._check()
        if not call.tx_closed:
            call.close_send(trio.current_time())
            self._endpoint._poke(call)
        return call

    async def __aenter__(self) -> ClientCall:
        conn = self._connection
        while True:
            try:
                core_call = self._endpoint._core.new_call(conn._core, trio.current_time())
            except RxAbort as exc:
                raise _error(exc.code) from None
            if core_call is not None:
                break
            await conn._lot.park()
        self._bind(core_call)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        call = self._call
        try:
            if exc_type is None:
                await self._finish(call)
            elif call.live:
                call.abort(RX_USER_ABORT, trio.current_time())
        finally:
            self._endpoint._poke(call)
            self._connection._lot.unpark_all()

    async def _finish(self, call: Call) -> None:
        if not call.tx_closed:
            await self.close_send()
        while True:
            self._check()
            if call.read(1 << 62, trio.current_time()):  # unread reply bytes are discarded
                self._endpoint._poke(call)
            if call.at_eof:
                break
            await self._lot.park()
        call.end(trio.current_time())


class ServerCall(CallHandle):
    """An incoming call, handed to the service's handler."""

    def __init__(self, endpoint: Endpoint, core_call: Call) -> None:
        super().__init__(endpoint)
        self._bind(core_call)
        self.peer: Address = core_call.conn.addr
        security = core_call.conn.security
        assert isinstance(security, ServerConnectionSecurity)
        self.security: ServerConnectionSecurity = security

    async def abort(self, code: int) -> None:
        self._call.abort(code, trio.current_time())
        self._endpoint._poke(self._call)
        await trio.lowlevel.checkpoint()


class ClientConnection:
    """A client connection to one service on one server: up to four calls at a time."""

    def __init__(self, endpoint: Endpoint, core_conn: Connection[Call]) -> None:
        self._endpoint = endpoint
        self._core = core_conn
        self._lot = trio.lowlevel.ParkingLot()
        core_conn.app = self

    @property
    def peer(self) -> Address:
        return self._core.addr

    @property
    def service_id(self) -> int:
        return self._core.service_id

    @property
    def last_heard(self) -> float:
        """When the peer last sent us anything, on this connection or another."""
        return self._core.peer.heard

    @property
    def failed(self) -> bool:
        """The whole connection ended in error: new calls on it fail at once."""
        return self._core.error is not None

    def close(self) -> None:
        """Forget the connection (its live calls are aborted); the peer sees it go idle."""
        self._endpoint._core.close_connection(self._core, trio.current_time())
        self._endpoint._poke()
        self._lot.unpark_all()

    def new_call(self) -> ClientCall:
        """An async context manager; entering it waits for a free channel."""
        return ClientCall(self)

    async def rpc(self, request: bytes) -> bytes:
        async with self.new_call() as call:
            await call.send(request)
            await call.close_send()
            return await call.recv_rest()


Handler = Callable[[ServerCall], Awaitable[None]]


class Endpoint:
    """One UDP socket speaking Rx: client connections and served services share it."""

    def __init__(self, sock: socket.socket, nursery: trio.Nursery) -> None:
        self._sock = sock
        self._nursery = nursery
        self._core = RxCore(path_mtu=path_mtu)
        self._handlers: dict[int, Handler] = {}
        self._wait_scope: trio.CancelScope | None = None
        self._poked = False
        #: Datagrams a poke could not send without blocking; the socket task sends them.
        self._unsent: list[tuple[Datagram, Address]] = []
        self.port: int = sock.getsockname()[1]

    @property
    def packets_received(self) -> int:
        return self._core.packets_received

    @property
    def packets_sent(self) -> int:
        return self._core.packets_sent

    def round_trip(self, addr: Address) -> tuple[float, float] | None:
        """(smoothed round trip, when last heard from) of an address, once a round trip to
        it was measured; for ranking servers (fs/ranker.py) without a whole snapshot."""
        peer = self._core.known_peer(addr)
        if peer is None or peer.srtt == 0.0:
            return None
        return peer.srtt, peer.heard

    def figures(self) -> snapshot.RxFigures:
        """Peers, connections and live calls as they are now, read on demand."""
        return snapshot.take(self._core, trio.current_time())

    def connect(
        self,
        addr: tuple[str, int],
        service_id: int,
        security: ClientSecurity = RXNULL,
        *,
        dead_time: float = DEFAULT_DEAD_TIME,
        hard_timeout: float | None = None,
        idle_timeout: float | None = None,
    ) -> ClientConnection:
        core_conn = self._core.connect(
            addr,
            service_id,
            security,
            dead_time=dead_time,
            hard_timeout=hard_timeout,
            idle_timeout=idle_timeout,
        )
        return ClientConnection(self, core_conn)

    def serve(
        self,
        service_id: int,
        handler: Handler,
        securities: Sequence[ServerSecurity] = (RXNULL,),
    ) -> None:
        self._handlers[service_id] = handler
        self._core.add_service(service_id, securities)

    def _poke(self, call: Call | None = None) -> None:
        """A call (or a connection being closed) queued work for the socket task.

        While that task waits for the socket, the datagrams go out from here at once and
        only its deadline moves: waking it costs far more (its wait is cancelled, the
        socket registered with epoll again) than the send itself.  Only the poking call's
        timers can have moved earlier: the task computed its deadline over every call
        before it waited, and every change to a call since came with a poke of its own.
        """
        scope = self._wait_scope
        if scope is None:
            self._poked = True
            return
        core = self._core
        self._unsent = self._send_now(core.datagrams_to_send(trio.current_time()))
        if self._unsent:
            self._poked = True
            scope.cancel()
            return
        self._dispatch_events()
        if call is not None and call.live:
            deadline = call.next_deadline()
            if deadline is not None and deadline < scope.deadline:
                scope.deadline = deadline

    def _send_now(
        self, datagrams: list[tuple[Datagram, Address]]
    ) -> list[tuple[Datagram, Address]]:
        """Send what the socket takes without blocking; return what it would not take."""
        sock = self._sock
        for i, (data, addr) in enumerate(datagrams):
            try:
                sock.sendto(data, addr)
            except BlockingIOError:
                return datagrams[i:]
            except OSError as exc:
                self._core.stats.send_failures += 1
                log.debug("sendto %s: %s", addr, exc)
        return []

    async def _run(self) -> None:
        sock = self._sock
        core = self._core
        buf = bytearray(MAX_DATAGRAM)
        view = memoryview(buf)
        recvfrom_into = sock.recvfrom_into
        while True:
            now = trio.current_time()
            received = 0
            while received < RECEIVE_BATCH:
                try:
                    nbytes, addr = recvfrom_into(buf)
                except BlockingIOError:
                    break
                except OSError as exc:  # e.g. a queued ICMP error
                    log.debug("recvfrom: %s", exc)
                    received += 1
                    continue
                received += 1
                try:
                    core.receive_datagram(view[:nbytes], addr, now)
                except Exception:
                    log.exception("Rx core failed on a datagram from %s", addr)
            deadline = core.next_deadline()
            if deadline is not None and deadline <= now:
                core.handle_timer(now)
            if self._dispatch_events():
                # Let the tasks just woken read and write, so their acks and data share one
                # flush.  With none woken (most ACKs of a bulk send wake nobody) the trip
                # through trio's scheduler would only delay the flush.  Trio runs the tasks
                # of one batch in either order, so they go first about half the time (a
                # second checkpoint, to make sure, sent no fewer ACKs in a bulk read).
                await trio.lowlevel.checkpoint()
            self._poked = False
            datagrams = core.datagrams_to_send(trio.current_time())
            if self._unsent:
                datagrams[:0] = self._unsent
                self._unsent = []
            await self._send(datagrams)
            self._dispatch_events()
            if self._poked or received >= RECEIVE_BATCH:
                await trio.lowlevel.checkpoint()  # a busy socket must not starve the others
                continue
            deadline = core.next_deadline()
            with trio.CancelScope(deadline=math.inf if deadline is None else deadline) as scope:
                self._wait_scope = scope
                await trio.lowlevel.wait_readable(sock)
            self._wait_scope = None

    async def _send(self, datagrams: list[tuple[Datagram, Address]]) -> None:
        """Send them all, waiting whenever the socket's buffer is full."""
        while datagrams := self._send_now(datagrams):
            await trio.lowlevel.wait_writable(self._sock)

    def _dispatch_events(self) -> bool:
        """Wake the tasks the core's events concern; True if any task was woken or started."""
        woken = False
        for event in self._core.pop_events():
            core_call = event.call
            if isinstance(event, IncomingCall):
                handler = self._handlers.get(core_call.conn.service_id)
                if handler is None:
                    core_call.abort(RX_USER_ABORT, trio.current_time())
                    continue
                self._nursery.start_soon(self._handle, handler, ServerCall(self, core_call))
                woken = True
            elif isinstance(event, CallChanged):
                app = core_call.app
                if app is not None and app._lot.unpark_all():
                    woken = True
                if core_call.is_client and core_call.state in _FINISHED_STATES:
                    conn_app = core_call.conn.app
                    if isinstance(conn_app, ClientConnection) and conn_app._lot.unpark_all():
                        woken = True
        return woken

    async def _handle(self, handler: Handler, call: ServerCall) -> None:
        core_call = call._call
        try:
            await handler(call)
        except RxAbort as exc:
            if core_call.live:
                core_call.abort(exc.code, trio.current_time())
        except Exception:
            log.exception("handler for service %d failed", core_call.conn.service_id)
            if core_call.live:
                core_call.abort(RX_USER_ABORT, trio.current_time())
        else:
            if core_call.state == CallState.ACTIVE and not core_call.tx_closed:
                core_call.close_send(trio.current_time())
        finally:
            self._poke(core_call)


def _open_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for force, plain in (
            (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF),
            (getattr(socket, "SO_SNDBUFFORCE", None), socket.SO_SNDBUF),
        ):
            try:
                if force is None:
                    raise OSError
                sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
        sock.setblocking(False)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


@asynccontextmanager
async def open_endpoint(host: str = "0.0.0.0", port: int = 0) -> AsyncIterator[Endpoint]:
    """Bind a UDP socket (port 0: any free one) and run Rx on it for the duration."""
    sock = _open_socket(host, port)
    try:
        async with trio.open_nursery() as nursery:
            endpoint = Endpoint(sock, nursery)
            nursery.start_soon(endpoint._run)
            try:
                yield endpoint
            finally:
                nursery.cancel_scope.cancel()
    finally:
        sock.close()
