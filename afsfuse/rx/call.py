"""One Rx call: both directions of its byte stream, windows, acks, retransmission, timers.

Sans-I/O: methods take `now`.  A call reaches its endpoint only through the Schedule its
connection hands it (datagrams to send, a transmit or an ACK wanted, a task to wake); it
never touches the endpoint's own state.

Over 500 lines on purpose: this is the per-packet path, one class whose send and receive
halves share the call's counters and timers.  Split into objects, every packet would pay
an extra attribute hop or call for each piece of state the halves share.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterable
from enum import IntEnum
from typing import Any

from . import packet as P
from .connection import Connection
from .errors import RX_CALL_DEAD, RX_CALL_TIMEOUT, RxAbort
from .peer import RTT_REFRESH
from .schedule import CallChanged, Schedule

MAX_WINDOW = 32  # rx_maxSendWindow / rx_maxReceiveWindow
INITIAL_WINDOW = 16
SOFT_ACK_RATE = 2  # ack every 2nd in-order packet at once
HARD_ACK_RATE = 2  # ack once 2 packets were consumed by the reader
#: In-order packets up to this many are hard-acked as they arrive and held for the reader,
#: so the sender refills its window while the reader catches up; beyond it, only reading
#: moves the hard-ack point (flow control against a stalled reader).
RX_BUFFER_PACKETS = 2 * MAX_WINDOW
ACK_DELAY = 0.1
#: A sent packet still unacknowledged when this many packets sent after it are acked is
#: lost (reordering rarely moves a packet further), and is resent at once.
DUP_THRESHOLD = 3
#: ACKs in a row showing a hole that make an OpenAFS sender resend it (rx_nackThreshold).
NACK_THRESHOLD = 3
#: The congestion window never drops below this on a loss the acks revealed: on a lossy
#: path the window, not the loss, would set the pace.
MIN_RECOVERY_WINDOW = 8
#: How many not-yet-acknowledged packets a writer may queue before it has to wait.
SEND_BACKLOG = 2 * MAX_WINDOW
#: A writer waiting on a full backlog is told of acks only once they bring the backlog down
#: to this: the window's worth still queued keeps the network busy while the writer refills
#: the rest in one go, where a wake-up per ACK would queue two packets each time.
SEND_LOW_WATER = MAX_WINDOW
#: Added to the retransmit timeout of a burst that asked for no ack: an OpenAFS receiver
#: acks it after 100 ms (rx_softAckDelay) if no reply has gone out by then.
DELAYED_ACK_ALLOWANCE = 0.2
MAX_PROBE = 10.0  # longest wait between pings to a receiver whose reader is stalled


class CallState(IntEnum):
    PRECALL = 1  # server: packets arrived, waiting for authentication before dispatch
    ACTIVE = 2
    HOLD = 3  # server: reply queued, waiting for the client to acknowledge it
    DALLY = 4  # finished cleanly; kept on its channel to answer late packets
    ERROR = 5


_LIVE_STATES = (CallState.PRECALL, CallState.ACTIVE, CallState.HOLD)
# Hot-path states bound once: looking a member up on an Enum class costs ~90 ns (3.11).
_ACTIVE = CallState.ACTIVE
_ERROR = CallState.ERROR
_PRECALL = CallState.PRECALL
_SENDING_STATES = (CallState.ACTIVE, CallState.HOLD)
_FINISHED_STATES = (CallState.DALLY, CallState.ERROR)
_ACK_PING_RESPONSE = P.ACK_PING_RESPONSE
_ACK_DELAY = P.ACK_DELAY
#: DATA flags that take a received packet off on_data's fast path.
_NOT_PLAIN = P.LAST_PACKET | P.REQUEST_ACK


# Offsets into a DATA packet's header (packet.HEADER) of what differs between packets: its
# seq and checksum, set once, and its serial, type and flags, set at each transmission.
_SEQ = struct.Struct(">I")
_SEQ_AT = 12
_SERIAL_TYPE_FLAGS = struct.Struct(">IBB")
_SERIAL_AT = 16
_CKSUM = struct.Struct(">H")
_CKSUM_AT = 24


class _TxPacket:
    """A DATA packet built once: `datagram` holds its header and sealed payload, and a
    transmission only writes its serial and flags there."""

    __slots__ = (
        "acked",
        "datagram",
        "flags",
        "in_flight",
        "resend",
        "sent_at",
        "seq",
        "serial",
    )

    def __init__(self, seq: int, flags: int, datagram: bytearray) -> None:
        self.seq = seq
        self.flags = flags
        self.datagram = datagram
        self.serial = 0
        self.sent_at: float | None = None
        self.acked = False  # soft-acked: the receiver holds it but may still drop it
        self.resend = False  # deemed lost: goes out again as soon as the window allows
        self.in_flight = False  # sent, and neither acked nor deemed lost since


class Call:
    """State of one call on one channel of a connection."""

    def __init__(
        self, conn: Connection[Call], channel: int, call_number: int, is_client: bool, now: float
    ) -> None:
        self.conn = conn
        self.schedule: Schedule[Call] = conn.schedule
        self.channel = channel
        self.call_number = call_number
        self.is_client = is_client
        self.state = CallState.ACTIVE if is_client else CallState.PRECALL
        self.error: int | None = None
        #: Free slot for the driver (its task-facing wrapper).
        self.app: Any = None
        self.event_pending = False
        self.started_at = now
        self.last_send = now
        self.last_receive = now
        self.last_data_at = now
        self.first_sent_at: float | None = None
        # Transmit side.
        #: The header every DATA packet of ours starts from (serial, flags, cksum zero).
        self.data_header = bytearray(
            P.HEADER.pack(
                conn.epoch,
                conn.cid | channel,
                call_number,
                0,
                0,
                P.DATA,
                0,
                0,
                conn.security_index,
                0,
                conn.service_id,
            )
        )
        self.tx: deque[_TxPacket] = deque()
        #: Leading packets of tx known to be soft-acked: a later ACK with no hole in its
        #: soft acks need not look at them again.
        self.tx_sacked = 0
        self.tx_partial = bytearray()
        #: Stream bytes written and read so far, and the first four written (a client's
        #: opcode), for `afsfuse-ctl calls` (rx/snapshot.py).
        self.bytes_written = 0
        self.bytes_read = 0
        self.head = b""
        self.tfirst = 1  # lowest seq not yet hard-acked
        self.tnext = 1  # seq of the next packet to build
        self.tnext_send = 1  # lowest seq never transmitted
        self.resend_pending = 0
        self.tx_closed = False
        self.tx_last_sent = False
        self.cwind = 1
        self.ssthresh = MAX_WINDOW
        self.twind = INITIAL_WINDOW
        self.ca_acked = 0
        self.pipe = 0  # packets in flight: what cwind limits
        self.recover_until = 0  # in recovery until every packet up to this one is acked
        self.resend_at: float | None = None
        #: The last burst asked for no ack: the peer acks it late unless its reply comes.
        self.ack_unrequested = False
        self.probe_interval = 0.0
        self.last_ack_first = 0
        self.last_ack_previous = 0
        self.ping_serial = 0
        self.ping_sent_at = 0.0
        # Client: when to ping a server whose reply stream went quiet.
        self.stall_probe_at: float | None = None
        self.stall_probe_wait = 0.0
        # Receive side.
        self.rx_ready: deque[bytes] = deque()
        self.rx_offset = 0
        self.rx_avail = 0
        self.rx_ooo: dict[int, tuple[bytes, int]] = {}
        self.rnext = 1  # next in-order seq expected from the wire
        self.rconsumed = 1  # lowest seq the reader has not finished: the hard-ack point
        self.rx_highest = 0
        self.rx_last_seq = 0  # seq of the peer's LAST_PACKET once seen
        self.rwind = INITIAL_WINDOW
        self.unacked = 0
        self.consumed_since_ack = 0
        self.ack_reason = 0
        self.ack_serial = 0
        self.ack_twice = False
        self.hole_acks = 0  # ACKs sent that show the current first hole
        self.ack_at: float | None = None

    # ----- what the application side sees -------------------------------------------------

    @property
    def live(self) -> bool:
        return self.state in _LIVE_STATES

    @property
    def rx_complete(self) -> bool:
        """The peer's whole stream (up to LAST_PACKET) has arrived."""
        return self.rx_last_seq != 0 and self.rnext > self.rx_last_seq

    @property
    def at_eof(self) -> bool:
        return self.rx_complete and self.rx_avail == 0

    @property
    def readable(self) -> bool:
        return self.rx_avail > 0 or self.at_eof or self.error is not None

    @property
    def tx_backlog(self) -> int:
        return len(self.tx)

    def check_error(self) -> None:
        if self.error is not None:
            raise RxAbort(self.error)

    def write(self, data: bytes | memoryview, now: float) -> None:
        """Queue stream bytes; full packets are built now, the tail waits for more or close."""
        self.check_error()
        if self.tx_closed:
            raise RuntimeError("write after close_send")
        view = memoryview(data).cast("B")
        conn = self.conn
        if not self.bytes_written:
            self.head = bytes(view[:4])
        self.bytes_written += len(view)
        conn.peer.bytes_sent += len(view)
        max_data = conn.max_user_data()
        pos = 0
        partial = self.tx_partial
        if partial:
            need = max_data - len(partial)
            if len(view) <= need:
                partial += view
                return
            partial += view[:need]
            self._queue((bytes(partial),), 0)
            partial.clear()
            pos = need
        # Keep the last (possibly full) chunk back so close_send can mark it LAST_PACKET.
        end = pos + (len(view) - pos - 1) // max_data * max_data
        if end > pos:
            self._queue((bytes(view[at : at + max_data]) for at in range(pos, end, max_data)), 0)
            pos = end
        partial += view[pos:]

    def close_send(self, now: float) -> None:
        """End our direction: the queued tail (possibly empty) goes out with LAST_PACKET."""
        self.check_error()
        if self.tx_closed:
            return
        self._queue((bytes(self.tx_partial),), P.LAST_PACKET)
        self.tx_partial.clear()
        self.tx_closed = True
        if not self.is_client and self.state == CallState.ACTIVE:
            self.state = CallState.HOLD

    def read(self, max_bytes: int, now: float) -> bytes:
        """Take up to max_bytes of in-order stream data (b"" if none is ready)."""
        buf = bytearray(min(max_bytes, self.rx_avail))
        n = self.read_into(memoryview(buf), now)
        return bytes(buf) if n == len(buf) else bytes(buf[:n])

    def read_into(self, buf: memoryview, now: float) -> int:
        """Copy up to len(buf) bytes of in-order stream data into buf; return how many.

        Each packet's payload is copied once, straight to where the reader wants it.
        """
        self.check_error()
        ready = self.rx_ready
        want = len(buf)
        got = 0
        consumed = 0
        offset = self.rx_offset
        while ready and got < want:
            head = ready[0]
            avail = len(head) - offset
            if avail <= want - got:
                buf[got : got + avail] = memoryview(head)[offset:] if offset else head
                got += avail
                ready.popleft()
                offset = 0
                consumed += 1
            else:
                take = want - got
                buf[got:want] = memoryview(head)[offset : offset + take]
                offset += take
                got = want
        # Zero-length packets (a zero-length reply, a trailing empty LAST) are consumed too.
        while ready and len(ready[0]) == offset:
            ready.popleft()
            offset = 0
            consumed += 1
        self.rx_offset = offset
        self.rx_avail -= got
        self.bytes_read += got
        self.conn.peer.bytes_received += got
        if consumed:
            self._consumed(consumed, now)
        return got

    def _release(self) -> bool:
        """Advance the hard-ack point over what the reader's buffer allowance covers."""
        point = self.rnext - max(0, len(self.rx_ready) - RX_BUFFER_PACKETS)
        if point <= self.rconsumed:
            return False
        self.rconsumed = point
        return True

    def _consumed(self, count: int, now: float) -> None:
        if self.rwind < MAX_WINDOW:
            self.rwind = MAX_WINDOW
        if not self._release():
            return
        self.consumed_since_ack += count
        if self.consumed_since_ack >= HARD_ACK_RATE:
            self._want_ack(P.ACK_DELAY, 0)
        elif self.ack_at is None:
            self.ack_at = now + ACK_DELAY

    def end(self, now: float) -> None:
        """Client: the application is done with a completed call; send the final ACK."""
        if self.state != CallState.ACTIVE:
            return
        while self.rx_ready:
            self.read(1 << 30, now)
        self._send_ack(P.ACK_DELAY, 0, now)
        self.state = CallState.DALLY
        self.tx.clear()
        self.resend_at = None
        self.schedule.finished(self)

    def superseded(self) -> None:
        """Server: the client's next call on the channel acknowledges our whole reply."""
        self.state = CallState.DALLY
        self.tx.clear()
        self.schedule.finished(self)

    def _changed(self) -> None:
        """Wake the task waiting on the call, once dispatched to one (one event is enough)."""
        if not self.event_pending and self.state is not _PRECALL:
            self.event_pending = True
            self.schedule.events.append(CallChanged(self))

    def abort(self, code: int, now: float) -> None:
        """Fail the call locally and tell the peer."""
        if self.state in (CallState.ERROR, CallState.DALLY):
            return
        self.fail(code, now, send_abort=True)

    def fail(self, code: int, now: float, *, send_abort: bool) -> None:
        dispatched = self.state != CallState.PRECALL
        self.state = CallState.ERROR
        self.error = code
        self.tx.clear()
        self.tx_partial.clear()
        self.rx_ready.clear()
        self.rx_ooo.clear()
        self.rx_avail = 0
        self.resend_at = None
        self.ack_at = None
        self.ack_reason = 0
        if send_abort:
            self.send_abort(now)
        self.schedule.finished(self)
        if dispatched:
            self._changed()

    def send_abort(self, now: float) -> None:
        assert self.error is not None
        conn = self.conn
        body = P.encode_abort(self.error)
        conn.send_packet(P.ABORT, conn.direction_flag, self.call_number, self.channel, 0, body, now)
        self.last_send = now

    # ----- received packets ---------------------------------------------------------------

    def on_data(self, seq: int, serial: int, flags: int, payload: bytes, now: float) -> None:
        self.last_receive = self.last_data_at = now
        if self.is_client:
            if self.tx_last_sent and self.tx:
                # Any reply data acknowledges the whole request.
                self._hard_ack_all()
            # Two round trips without data after this packet: the sender is waiting on us.
            self.stall_probe_wait = wait = self.conn.peer.stall_wait
            self.stall_probe_at = now + wait
        if (
            seq != self.rnext
            or self.rx_ooo
            or self.rx_last_seq
            or flags & _NOT_PLAIN
            or seq >= self.rconsumed + self.rwind
        ):
            self._take_data(seq, serial, flags, payload, now)
            return
        # The next packet of a stream with no hole, neither the last nor asking for an ack
        # (every DATA packet of a bulk transfer): what _take_data does, minus its cases.
        ready = self.rx_ready
        ready.append(payload)
        self.rx_avail += len(payload)
        self.rnext = seq + 1
        self.rx_highest = seq
        if len(ready) <= RX_BUFFER_PACKETS:
            self.rconsumed = seq + 1
        else:
            self._release()
        self.unacked += 1
        if not flags & P.MORE_PACKETS:
            # The sender's burst ends here: see _take_data.
            self._want_ack(P.ACK_IDLE, serial)
            self.ack_twice = True
        elif self.unacked >= SOFT_ACK_RATE:
            self._want_ack(P.ACK_IDLE, serial)
        elif self.ack_at is None:
            self.ack_at = now + ACK_DELAY
        if not self.event_pending:
            self._changed()

    def _take_data(self, seq: int, serial: int, flags: int, payload: bytes, now: float) -> None:
        if seq < self.rnext or seq in self.rx_ooo:
            self.schedule.stats.dup_read += 1
            self._want_ack(P.ACK_DUPLICATE, serial)
            return
        if seq >= self.rconsumed + self.rwind:
            self._want_ack(P.ACK_EXCEEDS_WINDOW, serial)
            return
        if flags & P.LAST_PACKET:
            self.rx_last_seq = seq
        elif self.rx_last_seq and seq > self.rx_last_seq:
            return  # beyond the end the peer already announced
        if seq > self.rx_highest:
            self.rx_highest = seq
        # The sender's burst ends here: it sends no more until our ACK opens its window,
        # so one lost ACK would stall it until a probe or its timer.  A second copy makes
        # that unlikely.  (The last packet of the stream gets its ACK when the call ends.)
        burst_end = not flags & (P.MORE_PACKETS | P.LAST_PACKET)
        if seq != self.rnext:
            self.rx_ooo[seq] = (payload, flags)
            # One ACK per packet past a hole, never coalesced: an OpenAFS sender resends
            # the hole once three ACKs in a row showed it (or one showed three packets
            # past it); short of that, it waits out a retransmit timeout.
            self._send_ack(P.ACK_OUT_OF_SEQUENCE, serial, now)
            if burst_end:
                self._top_up_hole_acks(serial, now)
            return
        self.rx_ready.append(payload)
        self.rx_avail += len(payload)
        self.rnext = seq + 1
        self.hole_acks = 0
        ooo = self.rx_ooo
        filled_hole = bool(ooo)
        while ooo:
            nxt = ooo.pop(self.rnext, None)
            if nxt is None:
                break
            self.rx_ready.append(nxt[0])
            self.rx_avail += len(nxt[0])
            self.rnext += 1
        self._release()
        self.unacked += 1
        if flags & P.REQUEST_ACK:
            self._want_ack(P.ACK_REQUESTED, serial)
        elif filled_hole:
            # The sender's window is stuck at the hole until it hears it was filled.
            self._want_ack(P.ACK_OUT_OF_SEQUENCE, serial)
        elif self.unacked >= SOFT_ACK_RATE or burst_end:
            self._want_ack(P.ACK_IDLE, serial)
        elif self.ack_at is None:
            self.ack_at = now + ACK_DELAY
        if burst_end:
            if ooo:
                self._top_up_hole_acks(serial, now)
            else:
                self.ack_twice = True
        self._changed()

    def _top_up_hole_acks(self, serial: int, now: float) -> None:
        """The sender's burst ended with a hole showing: send the ACKs it needs to resend.

        Three in a row make an OpenAFS sender resend at once; short of them it would wait
        for its retransmit timer (220 ms or more, its window back to one packet).  A
        reordered packet costs a needless resend at worst.
        """
        for _ in range(max(1, NACK_THRESHOLD - self.hole_acks)):
            self._send_ack(P.ACK_OUT_OF_SEQUENCE, serial, now)

    def on_ack(
        self,
        first: int,
        previous: int,
        serial: int,
        reason: int,
        acks: bytes,
        max_mtu: int | None,
        if_mtu: int | None,
        rwind: int | None,
        now: float,
    ) -> None:
        """An ACK's fields (packet.decode_ack_fields): what the peer holds of our stream."""
        self.last_receive = now
        peer = self.conn.peer
        if reason == _ACK_PING_RESPONSE and self.ping_serial and serial == self.ping_serial:
            # Taken even once the call is over: the answer to a ping sent with the request
            # may come just after the reply.
            peer.rtt_sample(now - self.ping_sent_at, now)
            self.ping_serial = 0
        if self.state in _FINISHED_STATES:
            return
        if rwind:
            self.twind = rwind if rwind < MAX_WINDOW else MAX_WINDOW
        if max_mtu and (max_mtu != peer.their_max_mtu or if_mtu != peer.their_if_mtu):
            peer.set_max_packet(max_mtu, if_mtu)
        if first < self.tfirst:
            return  # the window moved backwards: a stale ACK
        if (
            first == self.last_ack_first
            and previous < self.last_ack_previous
            and previous < self.tnext
        ):
            return  # reordered behind a newer ACK
        self.last_ack_first = first
        self.last_ack_previous = previous
        if first > self.tnext_send:
            first = self.tnext_send
        tx = self.tx
        backlog = len(tx)
        newly = 0
        rtt_packet = None
        popped = 0
        while tx and tx[0].seq < first:
            pkt = tx.popleft()
            popped += 1
            if not pkt.acked:  # a soft-acked packet was settled then
                newly += 1
                if pkt.serial == serial:
                    rtt_packet = pkt
                self._settle(pkt)
        if first > self.tfirst:
            self.tfirst = first
        count = min(len(acks), len(tx))
        if count:
            # Only what the ACK changes is looked at: with no hole in the soft acks, the
            # packets past those known soft-acked; otherwise each one it lists.
            hole = acks.find(0, 0, count)
            start = max(0, self.tx_sacked - popped) if hole < 0 else 0
            highest_acked = -1
            for i in range(start, count):
                pkt = tx[i]
                if acks[i]:
                    highest_acked = i
                    if not pkt.acked:
                        pkt.acked = True
                        newly += 1
                        if pkt.serial == serial:
                            rtt_packet = pkt
                        self._settle(pkt)
                elif pkt.acked:
                    pkt.acked = False  # the receiver dropped a packet it had soft-acked
            if hole < 0:
                self.tx_sacked = count
            else:
                self.tx_sacked = hole
                if highest_acked > hole:  # some packet the ACK misses was overtaken
                    self._detect_losses(highest_acked)
        elif popped:
            self.tx_sacked = max(0, self.tx_sacked - popped)
        if rtt_packet is not None and reason != _ACK_DELAY and rtt_packet.sent_at is not None:
            peer.rtt_sample(now - rtt_packet.sent_at, now)
        if newly:
            if self.recover_until and self._recovered():
                self.recover_until = 0
            if not self.recover_until or self.cwind < self.ssthresh:
                self._grow_window(newly)
            self.probe_interval = 0.0
            self.resend_at = now + self._resend_timeout() if self.tnext_send > self.tfirst else None
        if backlog > SEND_LOW_WATER >= len(tx) and not self.event_pending:
            self._changed()
        if not tx:
            self.resend_at = None
            self._tx_drained()
        self.schedule.transmits.add(self)

    def on_ackall(self, now: float) -> None:
        self.last_receive = now
        if self.live:
            self._hard_ack_all()
            self._changed()

    def on_abort(self, code: int, now: float) -> None:
        if self.state in (CallState.ERROR, CallState.DALLY):
            return
        self.fail(code, now, send_abort=False)

    def on_busy(self, now: float) -> None:
        self.last_receive = now

    def _hard_ack_all(self) -> None:
        self.tx.clear()
        self.tx_sacked = 0
        self.tfirst = self.tnext_send = self.tnext
        self.resend_pending = 0
        self.pipe = 0
        self.resend_at = None
        self._tx_drained()

    def _tx_drained(self) -> None:
        if self.tx_closed and not self.is_client and self.state == CallState.HOLD:
            self.state = CallState.DALLY
            self.schedule.finished(self)
            self._changed()

    def _outstanding(self) -> bool:
        """Some transmitted packet still lacks even a soft ack."""
        for pkt in self.tx:
            if pkt.seq >= self.tnext_send:
                return False
            if not pkt.acked:
                return True
        return False

    def _grow_window(self, newly: int) -> None:
        if self.cwind < self.ssthresh:
            self.cwind += newly
        else:
            self.ca_acked += newly
            if self.ca_acked >= self.cwind:
                self.ca_acked -= self.cwind
                self.cwind += 1
        if self.cwind > MAX_WINDOW:
            self.cwind = MAX_WINDOW

    def _settle(self, pkt: _TxPacket) -> None:
        """pkt was acknowledged: it no longer occupies the network, nor awaits a resend."""
        if pkt.in_flight:
            pkt.in_flight = False
            self.pipe -= 1
        if pkt.resend:
            pkt.resend = False
            self.resend_pending -= 1

    def _mark_lost(self, pkt: _TxPacket) -> None:
        if pkt.in_flight:
            pkt.in_flight = False
            self.pipe -= 1
        pkt.resend = True
        self.resend_pending += 1

    def _detect_losses(self, highest_acked: int) -> None:
        """Resend holes that DUP_THRESHOLD packets sent after them overtook.

        Serials order transmissions, so a resent packet that is lost again is found the
        same way as a first loss, without waiting for the retransmit timer.
        """
        tx = self.tx
        serials = sorted(
            (tx[i].serial for i in range(highest_acked + 1) if tx[i].acked), reverse=True
        )
        if len(serials) < DUP_THRESHOLD:
            return
        proof = serials[DUP_THRESHOLD - 1]
        lost = False
        for i in range(highest_acked):
            pkt = tx[i]
            if not pkt.acked and not pkt.resend and pkt.sent_at is not None and pkt.serial < proof:
                self._mark_lost(pkt)
                self.schedule.stats.pushed += 1
                lost = True
        if lost and not self.recover_until:
            # One reduction per loss episode: the episode ends once everything sent before
            # it is acknowledged.
            self.ssthresh = max(MIN_RECOVERY_WINDOW, min(self.cwind, self.twind) // 2)
            self.cwind = self.ssthresh
            self.ca_acked = 0
            self.recover_until = self.tnext_send - 1

    def _recovered(self) -> bool:
        for pkt in self.tx:
            if pkt.seq > self.recover_until:
                return True
            if not pkt.acked:
                return False
        return True

    # ----- timers -------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """The earliest of the call's timers (computed for every call at every wait)."""
        deadline = self.resend_at
        ack_at = self.ack_at
        if ack_at is not None and (deadline is None or ack_at < deadline):
            deadline = ack_at
        if not self._watched():
            return deadline
        conn = self.conn
        # Keepalive and dead-peer times come first: always set, they replace a None.
        dead_time = conn.dead_time
        keepalive = self.last_send + dead_time / 6
        if deadline is None or keepalive < deadline:
            deadline = keepalive
        dead = self.last_receive + dead_time + conn.peer.fudge()
        if dead < deadline:
            deadline = dead
        if self.is_client:
            for when in (self._idle_deadline(), self._hard_deadline(), self.stall_probe_at):
                if when is not None and when < deadline:
                    deadline = when
        return deadline

    def _watched(self) -> bool:
        """Keepalive and dead-peer detection apply: we are waiting on the peer."""
        if self.first_sent_at is None and not self.rx_highest:
            return False
        if self.is_client:
            return self.state is _ACTIVE and not self.rx_complete
        return self.live

    def _idle_deadline(self) -> float | None:
        idle = self.conn.idle_timeout
        if idle is None or not self.is_client or not self.tx_last_sent:
            return None
        return self.last_data_at + idle

    def _hard_deadline(self) -> float | None:
        hard = self.conn.hard_timeout
        if hard is None or not self.is_client:
            return None
        return self.started_at + hard

    def on_timer(self, now: float) -> None:
        if self.ack_at is not None and now >= self.ack_at:
            self._send_ack(P.ACK_DELAY, 0, now)
        if self.resend_at is not None and now >= self.resend_at:
            self._retransmit_timeout(now)
        if not self._watched():
            return
        conn = self.conn
        hard = self._hard_deadline()
        idle = self._idle_deadline()
        if (hard is not None and now >= hard) or (idle is not None and now >= idle):
            self.fail(RX_CALL_TIMEOUT, now, send_abort=True)
            return
        if now >= self.last_receive + conn.dead_time + conn.peer.fudge():
            self.fail(RX_CALL_DEAD, now, send_abort=False)
            return
        if self.stall_probe_at is not None and now >= self.stall_probe_at:
            # The reply stopped mid-stream.  The ACK that opened the sender's window may be
            # lost, and an OpenAFS sender waits at least 220 ms before it resends (then with
            # its window back to one packet): a ping makes it read our window again.  With a
            # hole, it resends at once after three ACKs in a row show the hole, which a
            # window too small for three packets to follow the lost one never yields: an
            # extra ACK and the ping make up the count.  Back off while nothing comes.
            self.stall_probe_wait = min(2 * self.stall_probe_wait, conn.dead_time / 6)
            self.stall_probe_at = now + self.stall_probe_wait
            if self.rx_ooo:
                self._send_ack(P.ACK_OUT_OF_SEQUENCE, 0, now)
            self.send_ping(now)
        elif now >= self.last_send + conn.dead_time / 6:
            self.send_ping(now)

    def _retransmit_timeout(self, now: float) -> None:
        if not self._outstanding():
            # Everything sent is soft-acked: the hard ack we wait for may be lost.  Probe
            # with a ping (its response carries the receiver's state), backing off while
            # the reader makes no progress.
            self.probe_interval = min(max(self.probe_interval * 2, self.conn.peer.rto), MAX_PROBE)
            self.send_ping(now)
            self.resend_at = now + self.probe_interval
            return
        self.conn.peer.back_off()
        self.ssthresh = max(MIN_RECOVERY_WINDOW, min(self.cwind, self.twind) // 2)
        self.cwind = 1
        self.ca_acked = 0
        self.recover_until = self.tnext_send - 1
        for pkt in self.tx:
            if pkt.seq >= self.tnext_send:
                break
            if not pkt.acked and not pkt.resend:
                self._mark_lost(pkt)
        self.resend_at = None
        self.schedule.transmits.add(self)

    # ----- sending ------------------------------------------------------------------------

    def _queue(self, chunks: Iterable[bytes], flags: int) -> None:
        """Seal each chunk into the next DATA packet, built whole now; flags go on each."""
        seal = self.conn.security.seal
        header = self.data_header
        call_number = self.call_number
        channel = self.channel
        append = self.tx.append
        pack_seq = _SEQ.pack_into
        seq = self.tnext
        for data in chunks:
            cksum, wire = seal(call_number, channel, seq, data)
            datagram = header + wire
            pack_seq(datagram, _SEQ_AT, seq)
            if cksum:
                _CKSUM.pack_into(datagram, _CKSUM_AT, cksum)
            append(_TxPacket(seq, flags, datagram))
            seq += 1
        self.tnext = seq
        self.schedule.transmits.add(self)

    def transmit(self, now: float) -> None:
        """Send what the windows allow: pending retransmissions first, then new packets.

        The congestion window limits packets in flight; the peer's window limits how far
        past its hard-ack point we may go.
        """
        if self.state not in _SENDING_STATES or not self.tx:
            return
        budget = self.cwind - self.pipe
        tfirst = self.tfirst
        tnext_send = self.tnext_send
        window_end = tfirst + self.twind
        tx = self.tx
        resends: list[_TxPacket] = []
        if self.resend_pending:
            # A lost packet holds back the peer's window: one goes out per call even when
            # the packets still counted in flight fill the congestion window.
            resend_budget = max(budget, 1)
            for pkt in tx:
                if pkt.seq >= tnext_send or pkt.seq >= window_end or len(resends) >= resend_budget:
                    break
                if pkt.resend:
                    resends.append(pkt)
        # New packets: tx[start:stop], never sent before.
        start = stop = tnext_send - tfirst
        if len(resends) < budget and tnext_send < window_end:
            stop = min(len(tx), window_end - tfirst, start + budget - len(resends))
        if stop <= start and not resends:
            if self.resend_at is None and tnext_send > tfirst:
                self.resend_at = now + self._resend_timeout()
            return
        conn = self.conn
        last = tx[stop - 1] if stop > start else resends[-1]
        # An immediate ack of every burst keeps the retransmit timer free of any allowance
        # for delayed acks.  A client's request ends in a burst the reply acknowledges:
        # asking for an ack there only makes the server send an ACK packet we must process
        # (OpenAFS asks for none either), so the timer allows for the peer's delayed ack
        # instead.  Resends and a peer whose round trip is not yet measured still ask.
        self.ack_unrequested = unrequested = (
            self.is_client
            and last.flags & P.LAST_PACKET != 0
            and conn.peer.srtt > 0.0
            and not resends
        )
        more = conn.direction_flag | P.MORE_PACKETS
        last_flags = conn.direction_flag | (0 if unrequested else P.REQUEST_ACK)
        serial = conn.serial
        out = self.schedule.outgoing
        peer = conn.peer
        addr = peer.addr
        pack_header = _SERIAL_TYPE_FLAGS.pack_into
        # The peer counts DATA sent, for rxdebug: per burst, never per packet.
        if resends:
            peer.resends += len(resends)
        for pkt in resends:
            serial = (serial + 1) & 0xFFFFFFFF or 1
            # The datagram handed out before may still wait in the driver: write a copy.
            pkt.datagram = datagram = bytearray(pkt.datagram)
            flags = pkt.flags | (last_flags if pkt is last else more)
            pack_header(datagram, _SERIAL_AT, serial, P.DATA, flags)
            out.append((datagram, addr))
            pkt.serial = serial
            pkt.sent_at = now
            pkt.resend = False
            self.resend_pending -= 1
            if not pkt.in_flight:
                pkt.in_flight = True
                self.pipe += 1
        if stop > start:
            for i in range(start, stop):
                pkt = tx[i]
                serial = (serial + 1) & 0xFFFFFFFF or 1
                flags = pkt.flags | (last_flags if pkt is last else more)
                pack_header(pkt.datagram, _SERIAL_AT, serial, P.DATA, flags)
                out.append((pkt.datagram, addr))
                pkt.serial = serial
                pkt.sent_at = now
                pkt.in_flight = True
            sent = stop - start
            self.pipe += sent
            peer.data_sent += sent
            self.tnext_send = last.seq + 1
            if last.flags & P.LAST_PACKET:
                self.tx_last_sent = True
        conn.serial = serial
        conn.last_activity = self.last_send = now
        if self.first_sent_at is None:
            self.first_sent_at = now
            self.last_receive = now
        if self.resend_at is None:
            self.resend_at = now + self._resend_timeout()
        if (
            self.is_client
            and self.tx_last_sent
            and stop > start
            and now - peer.sampled_at >= RTT_REFRESH
        ):
            # A server that answers at once lets its reply ack the request, even one that
            # asked for an ack: no round trip is measured.  A ping it answers at once.
            self.send_ping(now)

    def _resend_timeout(self) -> float:
        """How long sent packets may go unacknowledged before they count as lost."""
        if self.ack_unrequested:
            return self.conn.peer.rto + DELAYED_ACK_ALLOWANCE
        return self.conn.peer.rto

    def _want_ack(self, reason: int, serial: int) -> None:
        current = self.ack_reason
        if not current:
            self.schedule.acks.add(self)  # a call with an ack_reason is already there
        if reason == P.ACK_REQUESTED or current != P.ACK_REQUESTED:
            self.ack_reason = reason
            self.ack_serial = serial

    def flush_ack(self, now: float) -> None:
        if self.ack_reason and self.state is not _ERROR:
            twice = self.ack_twice
            reason, serial = self.ack_reason, self.ack_serial
            self._send_ack(reason, serial, now)
            if twice:
                self._send_ack(reason, serial, now)

    def ack_body(self, reason: int, serial: int) -> bytes:
        """The ACK's fields and its trailer: our path's packet size (as both maxMTU and
        ifMTU), our receive window, and 1 as the jumbogram size."""
        peer = self.conn.peer
        n_held = self.rnext - self.rconsumed
        top = max(self.rx_highest, self.rnext - 1)
        count = min(top - self.rconsumed + 1, P.MAX_ACKS)
        if count <= n_held:
            acks = b"\x01" * max(count, 0)
        else:
            tail = bytearray(count - n_held)
            ooo = self.rx_ooo
            for i in range(len(tail)):
                if self.rnext + i in ooo:
                    tail[i] = 1
            acks = b"\x01" * n_held + bytes(tail)
        return P.encode_ack(
            self.rconsumed,
            # The highest seq, not the latest: an OpenAFS sender ignores an ACK whose
            # previousPacket went backwards, as one for a resent hole would.
            self.rx_highest,
            serial,
            reason,
            acks,
            peer.if_mtu,
            peer.if_mtu,
            self.rwind,
            # No jumbograms, though we take them: told we do, an OpenAFS sender packs
            # 1412-byte packets six to a datagram instead of sending packets as big as
            # the path allows, and each costs us as much as a whole one.
            1,
        )

    def _send_ack(self, reason: int, serial: int, now: float, flags: int = 0) -> int:
        self.unacked = 0
        self.consumed_since_ack = 0
        self.ack_reason = 0
        self.ack_twice = False
        self.ack_at = None
        if self.rx_ooo:
            self.hole_acks += 1
        conn = self.conn
        self.last_send = now
        return conn.send_packet(
            P.ACK,
            conn.direction_flag | P.SLOW_START_OK | flags,
            self.call_number,
            self.channel,
            0,
            self.ack_body(reason, serial),
            now,
        )

    def send_ping(self, now: float) -> None:
        self.schedule.stats.pings_sent += 1
        self.ping_serial = self._send_ack(P.ACK_PING, 0, now, P.REQUEST_ACK)
        self.ping_sent_at = now

    def answer_ping(self, serial: int, now: float) -> None:
        if self.state == CallState.ERROR:
            self.send_abort(now)
        else:
            self._send_ack(P.ACK_PING_RESPONSE, serial, now)
