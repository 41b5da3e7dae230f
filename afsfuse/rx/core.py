"""The sans-I/O Rx endpoint: connections, dispatch of received datagrams, timers, rxdebug.

No sockets, no clock: every entry point takes `now` (seconds, any monotonic origin).  The
driver feeds datagrams in with receive_datagram(), sends what datagrams_to_send() returns,
calls handle_timer() at next_deadline(), and acts on pop_events().  Calls reach the
endpoint only through its Schedule.

Just over 500 lines: the endpoint's dispatch and timers share its tables; the rest
already lives in peer, schedule, connection, call and debug.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable, Iterator, Mapping, Sequence

from . import packet as P
from .call import Call, CallState
from .connection import DEFAULT_DEAD_TIME, Connection
from .debug import (
    DebugAllowance,
    conn_entry,
    first_entries,
    nth,
    packets_held,
    peer_entry,
)
from .errors import RX_CALL_DEAD, RX_CALL_TIMEOUT, RX_INVALID_OPERATION, RxAbort, RxSecurityError
from .peer import ETHERNET_MTU, Address, Peer
from .schedule import Datagram, Event, IncomingCall, Schedule
from .security import (
    ClientConnectionSecurity,
    ClientSecurity,
    ServerConnectionSecurity,
    ServerSecurity,
)
from .stats import encode_rx_stats

log = logging.getLogger(__name__)

# Hot-path names bound once.
_unpack_header = P.HEADER.unpack_from
_decode_ack_fields = P.decode_ack_fields
HEADER_SIZE = P.HEADER_SIZE
DATA = P.DATA
JUMBO_PACKET = P.JUMBO_PACKET
CLIENT_INITIATED = P.CLIENT_INITIATED
CID_MASK = P.CID_MASK
_ERROR = CallState.ERROR

CHALLENGE_INTERVAL = 2.0
MAX_CHALLENGES = 50
IDLE_CONNECTION_TIME = 700.0
HOUSEKEEPING_INTERVAL = 60.0
VERSION_STRING = " afsfuse Rx (Python)"


class RxCore:
    """All Rx state of one UDP endpoint: client connections, served services, timers."""

    def __init__(
        self,
        *,
        rng: random.Random | None = None,
        version_string: str = VERSION_STRING,
        epoch: int | None = None,
        path_mtu: Callable[[Address], int] = lambda _addr: ETHERNET_MTU,
    ) -> None:
        """path_mtu tells the MTU of our route to an address, asked once per new peer (the
        driver asks the kernel; the default suits a plain Ethernet path)."""
        rng = rng or random.SystemRandom()
        self._path_mtu = path_mtu
        self.epoch = (
            epoch if epoch is not None else (rng.getrandbits(32) | 0x80000000) & ~0x40000000
        )
        self._next_cid = rng.getrandbits(30) << 2
        self.version_string = version_string
        self._client_conns: dict[int, Connection[Call]] = {}
        self._server_conns: dict[tuple[int, int, Address | None], Connection[Call]] = {}
        self._services: dict[int, dict[int, ServerSecurity]] = {}
        self._peers: dict[Address, Peer] = {}
        #: What the calls asked of the endpoint; drained by datagrams_to_send and pop_events.
        self.schedule: Schedule[Call] = Schedule()
        self._challenging: set[Connection[Call]] = set()
        self._next_housekeeping: float | None = None
        self.calls_executed = 0
        self.packets_sent = 0
        #: What rxdebug -rxstats shows (rx/stats.py); counted by packet type as they come.
        self.stats = self.schedule.stats
        self._packets_read = self.stats.read
        self._debug_allowance = DebugAllowance()

    @property
    def packets_received(self) -> int:
        """Datagrams received: the Rx packets read, by type (each part of a jumbogram
        counts), and those too short to be one."""
        return sum(self._packets_read) + self.stats.short

    # ----- set-up -------------------------------------------------------------------------

    def peer(self, addr: Address) -> Peer:
        peer = self._peers.get(addr)
        if peer is None:
            peer = self._peers[addr] = Peer(addr, self._path_mtu(addr))
        return peer

    def known_peer(self, addr: Address) -> Peer | None:
        """The peer of an address talked with, without making one."""
        return self._peers.get(addr)

    def connect(
        self,
        addr: Address,
        service_id: int,
        security: ClientSecurity,
        *,
        dead_time: float = DEFAULT_DEAD_TIME,
        hard_timeout: float | None = None,
        idle_timeout: float | None = None,
    ) -> Connection[Call]:
        """A new client connection: a fresh cid, calls made on it later."""
        cid = self._next_cid
        self._next_cid = (cid + 4) & P.CID_MASK
        conn: Connection[Call] = Connection(
            self.schedule,
            self.peer(addr),
            self.epoch,
            cid,
            service_id,
            security.new_connection(self.epoch, cid),
            True,
            dead_time=dead_time,
            hard_timeout=hard_timeout,
            idle_timeout=idle_timeout,
        )
        self._client_conns[cid] = conn
        return conn

    def close_connection(self, conn: Connection[Call], now: float) -> None:
        """Forget a client connection; its live calls are aborted."""
        for call in conn.calls:
            if call is not None and call.live:
                call.abort(RX_CALL_TIMEOUT, now)
        self._client_conns.pop(conn.cid, None)

    def add_service(self, service_id: int, securities: Sequence[ServerSecurity]) -> None:
        self._services[service_id] = {sec.index: sec for sec in securities}

    def services(self) -> Mapping[int, Mapping[int, ServerSecurity]]:
        return self._services

    def new_call(self, conn: Connection[Call], now: float) -> Call | None:
        """A client call on a free channel of conn, or None if all four are busy."""
        if conn.error is not None:
            raise RxAbort(conn.error)
        channel = _free_channel(conn)
        if channel is None:
            return None
        conn.call_numbers[channel] += 1
        call = Call(conn, channel, conn.call_numbers[channel], True, now)
        conn.calls[channel] = call
        self.schedule.live.add(call)
        return call

    # ----- driver interface ---------------------------------------------------------------

    def pop_events(self) -> list[Event[Call]]:
        """The events since the last call: handlers to start, tasks to wake."""
        schedule = self.schedule
        events = schedule.events
        schedule.events = []
        for event in events:
            event.call.event_pending = False
        return events

    def datagrams_to_send(self, now: float) -> list[tuple[Datagram, Address]]:
        """Run the calls' owed ACKs, then their transmissions; every datagram queued."""
        schedule = self.schedule
        if schedule.acks:
            calls = schedule.acks
            schedule.acks = set()
            for call in calls:
                call.flush_ack(now)
        if schedule.transmits:
            calls = schedule.transmits
            schedule.transmits = set()
            for call in calls:
                call.transmit(now)
        out = schedule.outgoing
        schedule.outgoing = []
        self.packets_sent += len(out)
        return out

    def next_deadline(self) -> float | None:
        deadline = self._next_housekeeping
        for call in self.schedule.live:
            when = call.next_deadline()
            if when is not None and (deadline is None or when < deadline):
                deadline = when
        for conn in self._challenging:
            when = conn.challenge_at
            if when is not None and (deadline is None or when < deadline):
                deadline = when
        return deadline

    def handle_timer(self, now: float) -> None:
        for call in list(self.schedule.live):
            call.on_timer(now)
        for conn in list(self._challenging):
            if conn.challenge_at is not None and now >= conn.challenge_at:
                self._send_challenge(conn, now)
        if self._next_housekeeping is None:
            self._next_housekeeping = now + HOUSEKEEPING_INTERVAL
        elif now >= self._next_housekeeping:
            self._next_housekeeping = now + HOUSEKEEPING_INTERVAL
            self._reap(now)

    def receive_datagram(self, data: bytes | memoryview, addr: Address, now: float) -> None:
        """Process one UDP datagram; hostile or malformed input is dropped, never raised.

        data may be a view of the driver's receive buffer: the core copies what it keeps.
        """
        try:
            self._receive(data, addr, now)
        except P.PacketDecodeError as exc:
            self.stats.dropped(addr[0])
            log.debug("dropped bad datagram from %s: %s", addr, exc)

    # ----- receiving ----------------------------------------------------------------------

    def _receive(self, data: bytes | memoryview, addr: Address, now: float) -> None:
        if len(data) < HEADER_SIZE:
            self.stats.short += 1
            raise P.PacketDecodeError("datagram shorter than an Rx header")
        (epoch, cid, call_number, seq, serial, ptype, flags, _status, sec_index, cksum, service) = (
            _unpack_header(data)
        )
        if ptype == DATA:
            if flags & JUMBO_PACKET:
                header = P.Header(
                    epoch, cid, call_number, seq, serial, ptype, flags, 0, sec_index, cksum, service
                )
                for sub, payload in P.split_jumbogram(header, data[HEADER_SIZE:]):
                    single = sub._replace(flags=sub.flags & ~P.JUMBO_PACKET)
                    self._receive(single.encode() + payload, addr, now)
                return
        elif ptype in (P.VERSION, P.DEBUG):
            self._packets_read[ptype] += 1
            if flags & CLIENT_INITIATED:
                self._answer_debug(data, addr, now)
            return
        # Counted here: each part of a jumbogram (above) comes back as a DATA packet.
        self._packets_read[ptype] += 1
        if flags & CLIENT_INITIATED:
            conn = self._server_connection(
                epoch, cid, call_number, ptype, sec_index, service, data, addr, now
            )
        else:
            conn = self._client_conns.get(cid & CID_MASK) if epoch == self.epoch else None
            # A server answers from the port we call (a multi-homed one may pick another
            # address): anything else that names our connection is forged or stray.
            if conn is not None and (
                sec_index != conn.security_index or addr[1] != conn.peer.addr[1]
            ):
                conn = None
        if conn is None:
            self.stats.spurious_read += 1
            return
        conn.last_activity = conn.peer.heard = now
        if call_number == 0:
            self._connection_packet(conn, ptype, bytes(data), now)
            return
        if conn.error is not None:
            if ptype != P.ABORT and not conn.is_client:
                conn.send_connection_abort(now)
            return
        channel = cid & 3
        call = conn.calls[channel]
        if call is None or call.call_number != call_number:
            if conn.is_client:
                self.stats.spurious_read += 1
                return  # not (or no longer) ours
            call = self._new_server_call(conn, channel, call_number, ptype, seq, now)
            if call is None:
                return
        body = data[HEADER_SIZE:]
        if ptype == DATA:
            if call.state is _ERROR:
                call.send_abort(now)
                return
            payload = bytes(body)
            if sec_index:  # rxnull (index 0) leaves the payload as it is
                try:
                    payload = conn.security.unseal(call_number, channel, seq, cksum, payload)
                except RxSecurityError as exc:
                    self.stats.dropped(addr[0])
                    log.debug("DATA from %s failed its security check: %s", addr, exc)
                    return
            call.on_data(seq, serial, flags, payload, now)
        elif ptype == P.ACK:
            first, previous, ack_serial, reason, acks, max_mtu, if_mtu, rwind = _decode_ack_fields(
                body
            )
            if flags & P.REQUEST_ACK:
                call.last_receive = now
                call.answer_ping(serial, now)
                if reason == P.ACK_PING:
                    return
            call.on_ack(first, previous, ack_serial, reason, acks, max_mtu, if_mtu, rwind, now)
        elif ptype == P.ABORT:
            call.on_abort(P.decode_abort(body), now)
        elif ptype == P.BUSY:
            call.on_busy(now)
        elif ptype == P.ACKALL:
            call.on_ackall(now)

    def _server_connection(
        self,
        epoch: int,
        cid: int,
        call_number: int,
        ptype: int,
        sec_index: int,
        service: int,
        data: bytes | memoryview,
        addr: Address,
        now: float,
    ) -> Connection[Call] | None:
        # A random epoch (high bit) lets the client move between addresses (NAT rebinding).
        key = (epoch, cid & P.CID_MASK, None if epoch & 0x80000000 else addr)
        conn = self._server_conns.get(key)
        if conn is not None:
            if sec_index != conn.security_index:
                return None
            if conn.peer.addr != addr:
                conn.peer = self.peer(addr)
            return conn
        if ptype != P.DATA or call_number == 0:
            return None
        securities = self._services.get(service)
        security = securities.get(sec_index) if securities else None
        if security is None:
            # Unknown service or security class: a raw abort, not tied to any connection.
            header = P.HEADER.pack(
                epoch, cid, call_number, 0, 1, P.ABORT, 0, 0, sec_index, 0, service
            )
            self.schedule.outgoing.append((header + P.encode_abort(RX_INVALID_OPERATION), addr))
            self.stats.sent[P.ABORT] += 1
            return None
        conn = Connection(
            self.schedule,
            self.peer(addr),
            epoch,
            cid & P.CID_MASK,
            service,
            security.new_connection(epoch, cid & P.CID_MASK),
            False,
        )
        self._server_conns[key] = conn
        return conn

    def _new_server_call(
        self,
        conn: Connection[Call],
        channel: int,
        call_number: int,
        ptype: int,
        seq: int,
        now: float,
    ) -> Call | None:
        if call_number < conn.call_numbers[channel] or ptype != P.DATA or seq > 32:
            return None
        old = conn.calls[channel]
        if old is not None and old.state in (CallState.PRECALL, CallState.ACTIVE):
            # The client moved on while we still work on the old call: it is gone.
            old.fail(RX_CALL_DEAD, now, send_abort=False)
            conn.send_packet(P.BUSY, 0, call_number, channel, 0, b"", now)
            return None
        if old is not None and old.live:  # HOLD: the new call acknowledges the old reply
            old.superseded()
        conn.call_numbers[channel] = call_number
        call = Call(conn, channel, call_number, False, now)
        conn.calls[channel] = call
        self.schedule.live.add(call)
        security = conn.security
        assert isinstance(security, ServerConnectionSecurity)
        if security.authenticated:
            self._dispatch(call)
        else:
            conn.held.append(call)
            if conn.challenge_at is None:
                conn.challenges_sent = 0
                self._send_challenge(conn, now)
        return call

    def _dispatch(self, call: Call) -> None:
        call.state = CallState.ACTIVE
        self.calls_executed += 1
        call.event_pending = True  # the handler starts after this: no CallChanged needed
        self.schedule.events.append(IncomingCall(call))

    def _send_challenge(self, conn: Connection[Call], now: float) -> None:
        security = conn.security
        assert isinstance(security, ServerConnectionSecurity)
        if conn.challenges_sent >= MAX_CHALLENGES:
            conn.challenge_at = None
            self._challenging.discard(conn)
            for call in conn.held:
                call.fail(RX_CALL_TIMEOUT, now, send_abort=True)
            conn.held.clear()
            return
        body = security.challenge()
        if body is not None:
            conn.send_packet(P.CHALLENGE, 0, 0, 0, 0, body, now)
        conn.challenges_sent += 1
        conn.challenge_at = now + CHALLENGE_INTERVAL
        self._challenging.add(conn)

    def _connection_packet(
        self, conn: Connection[Call], ptype: int, data: bytes, now: float
    ) -> None:
        body = data[P.HEADER_SIZE :]
        if ptype == P.ABORT:
            self._fail_connection(conn, P.decode_abort(body), now)
        elif conn.error is not None:
            if not conn.is_client:
                conn.send_connection_abort(now)
        elif ptype == P.CHALLENGE and conn.is_client:
            self._answer_challenge(conn, body, now)
        elif ptype == P.RESPONSE and not conn.is_client and conn.challenge_at is not None:
            self._check_response(conn, body, now)

    def _answer_challenge(self, conn: Connection[Call], body: bytes, now: float) -> None:
        if not any(call is not None and call.live for call in conn.calls):
            return  # never answer on an idle connection
        numbers = []
        for channel, call in enumerate(conn.calls):
            number = conn.call_numbers[channel]
            if call is not None and not call.live:
                number += 1
            numbers.append(number)
        security = conn.security
        assert isinstance(security, ClientConnectionSecurity)
        try:
            response = security.respond(body, numbers)
        except RxSecurityError as exc:
            for call in conn.calls:
                if call is not None and call.live:
                    call.abort(exc.code, now)
            return
        conn.send_packet(P.RESPONSE, P.CLIENT_INITIATED, 0, 0, 0, response, now)

    def _check_response(self, conn: Connection[Call], body: bytes, now: float) -> None:
        security = conn.security
        assert isinstance(security, ServerConnectionSecurity)
        try:
            security.check_response(body)
        except RxSecurityError as exc:
            self._fail_connection(conn, exc.code, now)
            self._challenging.discard(conn)
            conn.send_connection_abort(now)
            return
        if not security.authenticated:
            return
        conn.challenge_at = None
        self._challenging.discard(conn)
        held, conn.held = conn.held, []
        for call in held:
            if call.state == CallState.PRECALL:
                self._dispatch(call)

    def _fail_connection(self, conn: Connection[Call], code: int, now: float) -> None:
        """The whole connection is in error (a connection ABORT either way)."""
        conn.error = code
        conn.held.clear()
        conn.challenge_at = None
        for call in conn.calls:
            if call is not None and call.live:
                call.fail(code, now, send_abort=False)

    def _answer_debug(self, data: bytes | memoryview, addr: Address, now: float) -> None:
        """rxdebug's requests, answered as OpenAFS does, at most DEBUG_RATE a second."""
        if not self._debug_allowance.take(now):
            self.stats.dropped(addr[0])
            return
        header = P.decode_header(data)
        if header.type == P.VERSION:
            reply = P.encode_version_body(self.version_string)
        else:
            debug_type, index = P.decode_debug_request(data[P.HEADER_SIZE :])
            if debug_type == P.DEBUG_GETSTATS:
                reply = P.encode_debug_stats(self.calls_executed, packets_held(self.schedule.live))
            elif debug_type in (P.DEBUG_GETCONN, P.DEBUG_GETALLCONN):
                conn = nth(self._debug_conns(debug_type == P.DEBUG_GETALLCONN), index)
                reply = P.DEBUG_CONN_END if conn is None else conn_entry(conn).encode()
            elif debug_type == P.DEBUG_GETPEER:
                peer = nth(first_entries(iter(self._peers.values())), index)
                reply = P.DEBUG_PEER_END if peer is None else peer_entry(peer).encode()
            elif debug_type == P.DEBUG_RXSTATS:
                reply = encode_rx_stats(
                    self.stats,
                    self._peers.values(),
                    server_conns=len(self._server_conns),
                    client_conns=len(self._client_conns),
                    calls=len(self.schedule.live),
                )
            else:
                reply = P.encode_debug_bad_type()
        reply_header = header._replace(flags=header.flags & ~P.CLIENT_INITIATED)
        self.schedule.outgoing.append((reply_header.encode() + reply, addr))
        self.stats.sent[header.type] += 1

    def _debug_conns(self, every: bool) -> Iterator[Connection[Call]]:
        """The first connections a listing shows, in a stable order; without `every`, only
        those of them with a call under way (OpenAFS's "interesting" ones)."""
        conns = first_entries(
            itertools.chain(self._client_conns.values(), self._server_conns.values())
        )
        if every:
            return conns
        return (c for c in conns if any(call is not None and call.live for call in c.calls))

    def _reap(self, now: float) -> None:
        """Let go of idle server connections, and of the peers no connection uses that
        were not heard from for as long: every source address and port that sent a call
        makes a peer, and they must not pile up for ever."""
        for key, conn in list(self._server_conns.items()):
            busy = any(call is not None and call.live for call in conn.calls)
            if not busy and now - conn.last_activity > IDLE_CONNECTION_TIME:
                del self._server_conns[key]
        used = {
            conn.peer.addr
            for conn in itertools.chain(self._client_conns.values(), self._server_conns.values())
        }
        for addr, peer in list(self._peers.items()):
            if addr not in used and now - peer.heard > IDLE_CONNECTION_TIME:
                del self._peers[addr]


def _free_channel(conn: Connection[Call]) -> int | None:
    for channel, call in enumerate(conn.calls):
        if call is None or call.state in (CallState.DALLY, CallState.ERROR):
            return channel
    return None
