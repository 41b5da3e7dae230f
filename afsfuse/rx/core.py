"""The sans-I/O Rx engine: connections, dispatch of received datagrams, timers, rxdebug.

No sockets, no clock: every entry point takes `now` (seconds, any monotonic origin).  The
driver feeds datagrams in with receive_datagram(), sends what datagrams_to_send() returns,
calls handle_timer() at next_deadline(), and acts on pop_events().
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from . import packet as P
from .call import MAX_PACKET, MIN_PACKET, STALL_PROBE_MAX, STALL_PROBE_MIN, Call, CallState
from .errors import RX_CALL_DEAD, RX_CALL_TIMEOUT, RX_INVALID_OPERATION, RxAbort, RxSecurityError
from .security import (
    ClientConnectionSecurity,
    ClientSecurity,
    ConnectionSecurity,
    ServerConnectionSecurity,
    ServerSecurity,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# Hot-path names bound once.
_unpack_header = P.HEADER.unpack_from
_decode_ack_fields = P.decode_ack_fields
HEADER_SIZE = P.HEADER_SIZE
DATA = P.DATA
JUMBO_PACKET = P.JUMBO_PACKET
CLIENT_INITIATED = P.CLIENT_INITIATED
CID_MASK = P.CID_MASK
_ERROR = CallState.ERROR
_PRECALL = CallState.PRECALL

Address = tuple[str, int]
#: A datagram to send: a DATA packet's is the buffer it was built in, never changed after.
Datagram = bytes | bytearray

INITIAL_RTO = 2.0
#: Our sender asks for an immediate ack of each burst, so no delayed-ack allowance is added.
MIN_RTO = 0.02
MAX_RTO = 60.0
CHALLENGE_INTERVAL = 2.0
MAX_CHALLENGES = 50
IDLE_CONNECTION_TIME = 700.0
HOUSEKEEPING_INTERVAL = 60.0
DEFAULT_DEAD_TIME = 12.0
VERSION_STRING = " afsfuse Rx (Python)"
#: rxdebug requests answered per second, and at once: rxdebug sends one per entry it lists.
DEBUG_RATE = 100.0
DEBUG_BURST = 600
#: Entries a listing shows at most, so that one request costs little however many there are.
DEBUG_MAX_ENTRIES = 256
#: Our call states as rxdebug names them: state, mode.
_DEBUG_CALL_STATES = {
    CallState.PRECALL: (P.RX_STATE_PRECALL, 0),
    CallState.HOLD: (P.RX_STATE_HOLD, P.RX_MODE_SENDING),
    CallState.DALLY: (P.RX_STATE_DALLY, P.RX_MODE_EOF),
    CallState.ERROR: (P.RX_STATE_DALLY, P.RX_MODE_ERROR),
}


@dataclass(slots=True, frozen=True)
class IncomingCall:
    """A server call passed its security checks and wants a handler."""

    call: Call


@dataclass(slots=True, frozen=True)
class CallChanged:
    """Something a waiting task may care about: data, send space, completion or error."""

    call: Call


Event = IncomingCall | CallChanged


class Peer:
    """What we know about one remote host:port: round-trip time and packet size."""

    __slots__ = ("addr", "heard", "max_packet", "rto", "rttvar", "srtt", "stall_wait")

    def __init__(self, addr: Address) -> None:
        self.addr = addr
        #: When a packet from this address last arrived on one of our connections.
        self.heard = float("-inf")
        self.srtt = 0.0  # 0 until the first sample
        self.rttvar = 0.0
        self.rto = INITIAL_RTO
        self.max_packet = MAX_PACKET
        #: How long a reply stream may go quiet before we probe the sender: two round
        #: trips, bounded.  Kept here because every received DATA packet re-arms it.
        self.stall_wait = STALL_PROBE_MIN

    def rtt_sample(self, sample: float) -> None:
        """Van Jacobson: smoothed RTT and mean deviation; a fresh sample undoes back-off."""
        if sample < 0:
            return
        # Every ACK of a bulk send brings a sample: comparisons, not min() and max() calls.
        srtt = self.srtt
        if srtt == 0.0:
            srtt = sample
            rttvar = sample / 2
        else:
            err = sample - srtt
            srtt += err / 8
            rttvar = self.rttvar
            rttvar += ((err if err >= 0 else -err) - rttvar) / 4
        self.srtt = srtt
        self.rttvar = rttvar
        rto = srtt + 4 * rttvar
        self.rto = MIN_RTO if rto < MIN_RTO else MAX_RTO if rto > MAX_RTO else rto
        stall = 2 * srtt
        self.stall_wait = (
            STALL_PROBE_MIN
            if stall < STALL_PROBE_MIN
            else STALL_PROBE_MAX
            if stall > STALL_PROBE_MAX
            else stall
        )

    def back_off(self) -> None:
        self.rto = min(self.rto * 2, MAX_RTO)

    def fudge(self) -> float:
        """Dead-time allowance for a slow path."""
        return self.srtt + 8 * self.rttvar

    def set_max_packet(self, advertised: int) -> None:
        self.max_packet = max(MIN_PACKET, min(MAX_PACKET, advertised))


class Connection:
    """One Rx connection (epoch, cid) in one direction, with its four channels."""

    def __init__(
        self,
        core: RxCore,
        peer: Peer,
        epoch: int,
        cid: int,
        service_id: int,
        security: ConnectionSecurity,
        is_client: bool,
        *,
        dead_time: float = DEFAULT_DEAD_TIME,
        hard_timeout: float | None = None,
        idle_timeout: float | None = None,
    ) -> None:
        self.core = core
        self.peer = peer
        self.epoch = epoch
        self.cid = cid
        self.service_id = service_id
        self.security = security
        self.security_index = security.index
        self.is_client = is_client
        self.direction_flag = P.CLIENT_INITIATED if is_client else 0
        self.dead_time = dead_time
        self.hard_timeout = hard_timeout
        self.idle_timeout = idle_timeout
        self.serial = 0
        self.calls: list[Call | None] = [None] * 4
        self.call_numbers = [0] * 4
        self.error: int | None = None
        self.last_activity = 0.0
        #: Server side: calls held until the peer answers our CHALLENGE.
        self.held: list[Call] = []
        self.challenge_at: float | None = None
        self.challenges_sent = 0
        self.app: object = None

    @property
    def addr(self) -> Address:
        return self.peer.addr

    def max_user_data(self) -> int:
        return self.security.max_user_data(self.peer.max_packet - P.HEADER_SIZE)

    def send_packet(
        self,
        ptype: int,
        flags: int,
        call_number: int,
        channel: int,
        seq: int,
        body: bytes,
        now: float,
        cksum: int = 0,
    ) -> int:
        """Queue one datagram on this connection; return the serial it got."""
        self.serial = serial = (self.serial + 1) & 0xFFFFFFFF or 1
        header = P.HEADER.pack(
            self.epoch,
            self.cid | channel,
            call_number,
            seq,
            serial,
            ptype,
            flags,
            0,
            self.security_index,
            cksum,
            self.service_id,
        )
        self.core._out.append((header + body, self.peer.addr))
        call = self.calls[channel] if call_number else None
        if call is not None and call.call_number == call_number:
            call.last_send = now
        self.last_activity = now
        return serial

    def free_channel(self) -> int | None:
        for channel, call in enumerate(self.calls):
            if call is None or call.state in (CallState.DALLY, CallState.ERROR):
                return channel
        return None

    def fail(self, code: int, now: float) -> None:
        """The whole connection is in error (a connection ABORT either way)."""
        self.error = code
        self.held.clear()
        self.challenge_at = None
        for call in self.calls:
            if call is not None and call.live:
                call.fail(code, now, send_abort=False)

    def send_connection_abort(self, now: float) -> None:
        assert self.error is not None
        self.send_packet(P.ABORT, self.direction_flag, 0, 0, 0, P.encode_abort(self.error), now)


class RxCore:
    """All Rx state of one UDP endpoint: client connections, served services, timers."""

    def __init__(
        self,
        *,
        rng: random.Random | None = None,
        version_string: str = VERSION_STRING,
        epoch: int | None = None,
    ) -> None:
        rng = rng or random.SystemRandom()
        self.epoch = (
            epoch if epoch is not None else (rng.getrandbits(32) | 0x80000000) & ~0x40000000
        )
        self._next_cid = rng.getrandbits(30) << 2
        self.version_string = version_string
        self._client_conns: dict[int, Connection] = {}
        self._server_conns: dict[tuple[int, int, Address | None], Connection] = {}
        self._services: dict[int, dict[int, ServerSecurity]] = {}
        self._peers: dict[Address, Peer] = {}
        self._out: list[tuple[Datagram, Address]] = []
        self._events: list[Event] = []
        self._live: set[Call] = set()
        self._tx_calls: set[Call] = set()
        self._ack_calls: set[Call] = set()
        self._challenging: set[Connection] = set()
        self._next_housekeeping: float | None = None
        self.calls_executed = 0
        self.packets_received = 0
        self.packets_sent = 0
        self.packets_dropped = 0
        self._debug_allowance = float(DEBUG_BURST)
        self._debug_at = float("-inf")

    # ----- set-up -------------------------------------------------------------------------

    def peer(self, addr: Address) -> Peer:
        peer = self._peers.get(addr)
        if peer is None:
            peer = self._peers[addr] = Peer(addr)
        return peer

    def connect(
        self,
        addr: Address,
        service_id: int,
        security: ClientSecurity,
        *,
        dead_time: float = DEFAULT_DEAD_TIME,
        hard_timeout: float | None = None,
        idle_timeout: float | None = None,
    ) -> Connection:
        """A new client connection: a fresh cid, calls made on it later."""
        cid = self._next_cid
        self._next_cid = (cid + 4) & P.CID_MASK
        conn = Connection(
            self,
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

    def close_connection(self, conn: Connection, now: float) -> None:
        """Forget a client connection; its live calls are aborted."""
        for call in conn.calls:
            if call is not None and call.live:
                call.abort(RX_CALL_TIMEOUT, now)
        self._client_conns.pop(conn.cid, None)

    def add_service(self, service_id: int, securities: Sequence[ServerSecurity]) -> None:
        self._services[service_id] = {sec.index: sec for sec in securities}

    def services(self) -> Mapping[int, Mapping[int, ServerSecurity]]:
        return self._services

    def new_call(self, conn: Connection, now: float) -> Call | None:
        """A client call on a free channel of conn, or None if all four are busy."""
        if conn.error is not None:
            raise RxAbort(conn.error)
        channel = conn.free_channel()
        if channel is None:
            return None
        conn.call_numbers[channel] += 1
        call = Call(conn, channel, conn.call_numbers[channel], True, now)
        conn.calls[channel] = call
        self._live.add(call)
        return call

    # ----- driver interface ---------------------------------------------------------------

    def pop_events(self) -> list[Event]:
        events = self._events
        self._events = []
        for event in events:
            event.call.event_pending = False
        return events

    def datagrams_to_send(self, now: float) -> list[tuple[Datagram, Address]]:
        if self._ack_calls:
            calls = self._ack_calls
            self._ack_calls = set()
            for call in calls:
                call.flush_ack(now)
        if self._tx_calls:
            calls = self._tx_calls
            self._tx_calls = set()
            for call in calls:
                call.transmit(now)
        out = self._out
        self._out = []
        self.packets_sent += len(out)
        return out

    def next_deadline(self) -> float | None:
        deadline = self._next_housekeeping
        for call in self._live:
            when = call.next_deadline()
            if when is not None and (deadline is None or when < deadline):
                deadline = when
        for conn in self._challenging:
            when = conn.challenge_at
            if when is not None and (deadline is None or when < deadline):
                deadline = when
        return deadline

    def handle_timer(self, now: float) -> None:
        for call in list(self._live):
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
        self.packets_received += 1
        try:
            self._receive(data, addr, now)
        except P.PacketDecodeError as exc:
            self.packets_dropped += 1
            log.debug("dropped bad datagram from %s: %s", addr, exc)

    # ----- bookkeeping used by calls ------------------------------------------------------

    def _notify(self, call: Call) -> None:
        if not call.event_pending and call.state is not _PRECALL:
            call.event_pending = True
            self._events.append(CallChanged(call))

    def _call_finished(self, call: Call) -> None:
        self._live.discard(call)
        self._tx_calls.discard(call)

    # ----- receiving ----------------------------------------------------------------------

    def _receive(self, data: bytes | memoryview, addr: Address, now: float) -> None:
        if len(data) < HEADER_SIZE:
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
            if flags & CLIENT_INITIATED:
                self._answer_debug(data, addr, now)
            return
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
                    self.packets_dropped += 1
                    log.debug("DATA from %s failed its security check: %s", addr, exc)
                    return
            call.on_data(seq, serial, flags, payload, now)
        elif ptype == P.ACK:
            first, previous, ack_serial, reason, acks, max_mtu, rwind = _decode_ack_fields(body)
            if flags & P.REQUEST_ACK:
                call.last_receive = now
                call.answer_ping(serial, now)
                if reason == P.ACK_PING:
                    return
            call.on_ack(first, previous, ack_serial, reason, acks, max_mtu, rwind, now)
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
        data: bytes,
        addr: Address,
        now: float,
    ) -> Connection | None:
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
            self._out.append((header + P.encode_abort(RX_INVALID_OPERATION), addr))
            return None
        conn = Connection(
            self,
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
        self, conn: Connection, channel: int, call_number: int, ptype: int, seq: int, now: float
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
            old.state = CallState.DALLY
            old.tx.clear()
            self._call_finished(old)
        conn.call_numbers[channel] = call_number
        call = Call(conn, channel, call_number, False, now)
        conn.calls[channel] = call
        self._live.add(call)
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
        self._events.append(IncomingCall(call))

    def _send_challenge(self, conn: Connection, now: float) -> None:
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

    def _connection_packet(self, conn: Connection, ptype: int, data: bytes, now: float) -> None:
        body = data[P.HEADER_SIZE :]
        if ptype == P.ABORT:
            conn.fail(P.decode_abort(body), now)
        elif conn.error is not None:
            if not conn.is_client:
                conn.send_connection_abort(now)
        elif ptype == P.CHALLENGE and conn.is_client:
            self._answer_challenge(conn, body, now)
        elif ptype == P.RESPONSE and not conn.is_client and conn.challenge_at is not None:
            self._check_response(conn, body, now)

    def _answer_challenge(self, conn: Connection, body: bytes, now: float) -> None:
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

    def _check_response(self, conn: Connection, body: bytes, now: float) -> None:
        security = conn.security
        assert isinstance(security, ServerConnectionSecurity)
        try:
            security.check_response(body)
        except RxSecurityError as exc:
            conn.fail(exc.code, now)
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

    def _answer_debug(self, data: bytes | memoryview, addr: Address, now: float) -> None:
        """rxdebug's requests, each answered as OpenAFS does (listings page by index and end
        with the entry rxdebug stops at), at most DEBUG_RATE a second: they cost the same
        whoever sends them, and anyone may."""
        self._debug_allowance = min(
            DEBUG_BURST, self._debug_allowance + max(0.0, now - self._debug_at) * DEBUG_RATE
        )
        self._debug_at = now
        if self._debug_allowance < 1:
            self.packets_dropped += 1
            return
        self._debug_allowance -= 1
        header = P.decode_header(data)
        if header.type == P.VERSION:
            reply = P.encode_version_body(self.version_string)
        else:
            debug_type, index = P.decode_debug_request(data[P.HEADER_SIZE :])
            if debug_type == P.DEBUG_GETSTATS:
                reply = P.encode_debug_stats(self.calls_executed, self.packets_received)
            elif debug_type in (P.DEBUG_GETCONN, P.DEBUG_GETALLCONN):
                conn = _nth(self._debug_conns(debug_type == P.DEBUG_GETALLCONN), index)
                reply = P.DEBUG_CONN_END if conn is None else _debug_conn(conn).encode()
            elif debug_type == P.DEBUG_GETPEER:
                peer = _nth(itertools.islice(self._peers.values(), DEBUG_MAX_ENTRIES), index)
                reply = P.DEBUG_PEER_END if peer is None else _debug_peer(peer).encode()
            elif debug_type == P.DEBUG_RXSTATS:
                reply = P.encode_rx_stats(
                    bogus_reads=self.packets_dropped,
                    server_conns=len(self._server_conns),
                    client_conns=len(self._client_conns),
                    peers=len(self._peers),
                    calls=len(self._live),
                )
            else:
                reply = P.encode_debug_bad_type()
        reply_header = header._replace(flags=header.flags & ~P.CLIENT_INITIATED)
        self._out.append((reply_header.encode() + reply, addr))

    def _debug_conns(self, every: bool) -> Iterator[Connection]:
        """The first DEBUG_MAX_ENTRIES connections, in a stable order; without `every`, only
        those of them with a call under way (OpenAFS's "interesting" ones)."""
        conns = itertools.islice(
            itertools.chain(self._client_conns.values(), self._server_conns.values()),
            DEBUG_MAX_ENTRIES,
        )
        if every:
            return conns
        return (c for c in conns if any(call is not None and call.live for call in c.calls))

    def _reap(self, now: float) -> None:
        for key, conn in list(self._server_conns.items()):
            busy = any(call is not None and call.live for call in conn.calls)
            if not busy and now - conn.last_activity > IDLE_CONNECTION_TIME:
                del self._server_conns[key]


def _nth(entries: Iterator[T], index: int) -> T | None:
    """Entry `index` of a listing, or None past its end (a negative index counts as 0, as
    in OpenAFS)."""
    return next(itertools.islice(entries, max(index, 0), None), None)


def _debug_conn(conn: Connection) -> P.DebugConn:
    states = bytearray(4)
    modes = bytearray(4)
    for channel, call in enumerate(conn.calls):
        if call is None:
            continue
        if call.state == CallState.ACTIVE:
            sending = conn.is_client and not call.tx_closed
            states[channel] = P.RX_STATE_ACTIVE
            modes[channel] = P.RX_MODE_SENDING if sending else P.RX_MODE_RECEIVING
        else:
            states[channel], modes[channel] = _DEBUG_CALL_STATES[call.state]
    return P.DebugConn(
        conn.peer.addr,
        conn.epoch,
        conn.cid,
        conn.serial,
        tuple(conn.call_numbers),
        conn.error or 0,
        not conn.is_client,
        conn.security_index,
        bytes(states),
        bytes(modes),
        conn.peer.max_packet,
    )


def _debug_peer(peer: Peer) -> P.DebugPeer:
    return P.DebugPeer(peer.addr, peer.srtt * 1000, peer.rttvar * 1000, peer.max_packet)
