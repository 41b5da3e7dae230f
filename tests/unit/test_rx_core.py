"""The sans-I/O Rx core, driven by a fake clock, scripted packets and an in-memory network."""

from __future__ import annotations

import ipaddress
import itertools
import random
import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afsfuse.rx import packet as P
from afsfuse.rx.call import (
    DELAYED_ACK_ALLOWANCE,
    MAX_WINDOW,
    MIN_RECOVERY_WINDOW,
    RX_BUFFER_PACKETS,
    SEND_BACKLOG,
    SEND_LOW_WATER,
    Call,
    CallState,
)
from afsfuse.rx.core import HOUSEKEEPING_INTERVAL, IDLE_CONNECTION_TIME, RxCore
from afsfuse.rx.debug import DEBUG_BURST, DEBUG_RATE
from afsfuse.rx.errors import RX_CALL_DEAD, RX_INVALID_OPERATION, RxAbort, RxSecurityError
from afsfuse.rx.peer import (
    OLD_MAX_PACKET,
    RTT_STALE,
    STALL_PROBE_MAX,
    STALL_PROBE_MIN,
    Peer,
)
from afsfuse.rx.schedule import IncomingCall
from afsfuse.rx.security import (
    RXNULL,
    ClientConnectionSecurity,
    ClientSecurity,
    ServerConnectionSecurity,
    ServerSecurity,
)
from afsfuse.rx.stats import encode_rx_stats

CLIENT = ("10.0.0.2", 7001)
SERVER = ("10.0.0.1", 7000)
SERVICE = 52
MORE = P.MORE_PACKETS  # the sender's burst goes on: no ACK needed for this packet alone


def decode(datagram: bytes) -> tuple[P.Header, bytes]:
    return P.decode_header(datagram), datagram[P.HEADER_SIZE :]


def sent(core: RxCore, now: float) -> list[tuple[P.Header, bytes]]:
    return [decode(d) for d, _ in core.datagrams_to_send(now)]


def acks_in(packets: list[tuple[P.Header, bytes]]) -> list[P.AckBody]:
    return [P.decode_ack(body) for h, body in packets if h.type == P.ACK]


def data_in(packets: list[tuple[P.Header, bytes]]) -> list[P.Header]:
    return [h for h, _ in packets if h.type == P.DATA]


def client_packet(
    ptype: int,
    seq: int,
    serial: int,
    body: bytes,
    *,
    flags: int = 0,
    call: int = 1,
    cid: int = 0x100,
) -> bytes:
    header = P.Header(
        0x80001234, cid, call, seq, serial, ptype, flags | P.CLIENT_INITIATED, 0, 0, 0, SERVICE
    )
    return header.encode() + body


def server_packet(
    call: Call, ptype: int, seq: int, serial: int, body: bytes, flags: int = 0
) -> bytes:
    conn = call.conn
    header = P.Header(
        conn.epoch,
        conn.cid | call.channel,
        call.call_number,
        seq,
        serial,
        ptype,
        flags,
        0,
        0,
        0,
        SERVICE,
    )
    return header.encode() + body


def ack_body(
    first: int, acks: bytes = b"", serial: int = 0, reason: int = P.ACK_IDLE, rwind: int = 32
) -> bytes:
    return P.AckBody(first, first, serial, reason, acks, 1444, 1444, rwind, 1).encode()


def serving_core() -> RxCore:
    core = RxCore(rng=random.Random(2))
    core.add_service(SERVICE, [RXNULL])
    return core


def client_call(now: float = 0.0, **kwargs) -> tuple[RxCore, Call]:
    core = RxCore(rng=random.Random(1))
    conn = core.connect(SERVER, SERVICE, RXNULL, **kwargs)
    call = core.new_call(conn, now)
    assert call is not None
    return core, call


# ----- identities ---------------------------------------------------------------------------


def test_epoch_has_random_bit_set_and_next_bit_clear_and_cids_step_by_four() -> None:
    for seed in range(20):
        core = RxCore(rng=random.Random(seed))
        assert core.epoch & 0x80000000 and not core.epoch & 0x40000000
        a = core.connect(SERVER, SERVICE, RXNULL)
        b = core.connect(SERVER, SERVICE, RXNULL)
        assert a.cid & 3 == 0 and b.cid == (a.cid + 4) & 0xFFFFFFFC


def test_four_channels_then_none_and_call_numbers_grow_per_channel() -> None:
    core = RxCore(rng=random.Random(1))
    conn = core.connect(SERVER, SERVICE, RXNULL)
    calls = [core.new_call(conn, 0.0) for _ in range(4)]
    assert [c.channel for c in calls if c] == [0, 1, 2, 3]
    assert core.new_call(conn, 0.0) is None
    calls[2].abort(-6, 0.0)
    ((abort, body),) = sent(core, 0.0)
    assert abort.type == P.ABORT and abort.flags & P.CLIENT_INITIATED and P.decode_abort(body) == -6
    again = core.new_call(conn, 0.0)
    assert again is not None and again.channel == 2 and again.call_number == 2


# ----- acknowledgements (receiver) ------------------------------------------------------------


def test_single_packet_gets_a_delayed_ack_and_the_second_an_immediate_one() -> None:
    core = serving_core()
    core.receive_datagram(client_packet(P.DATA, 1, 1, b"x" * 100, flags=MORE), CLIENT, 0.0)
    assert acks_in(sent(core, 0.0)) == []
    assert core.next_deadline() == pytest.approx(0.1)
    core.handle_timer(0.1)
    (ack,) = acks_in(sent(core, 0.1))
    # In-order packets are hard-acked on arrival (held for the reader, within its buffer).
    assert ack.reason == P.ACK_DELAY and ack.first_packet == 2 and ack.acks == b""
    assert ack.max_dgram_packets == 1 and ack.rwind == 16
    core.receive_datagram(client_packet(P.DATA, 2, 2, b"y", flags=MORE), CLIENT, 0.2)
    assert acks_in(sent(core, 0.2)) == []
    core.receive_datagram(client_packet(P.DATA, 3, 3, b"z", flags=MORE), CLIENT, 0.21)
    (ack,) = acks_in(sent(core, 0.21))
    assert ack.reason == P.ACK_IDLE and ack.serial == 3 and ack.first_packet == 4


def test_request_ack_duplicate_and_out_of_sequence_are_acked_at_once() -> None:
    core = serving_core()
    core.receive_datagram(
        client_packet(P.DATA, 1, 1, b"a", flags=P.REQUEST_ACK | MORE), CLIENT, 0.0
    )
    (ack,) = acks_in(sent(core, 0.0))
    assert ack.reason == P.ACK_REQUESTED and ack.serial == 1
    core.receive_datagram(client_packet(P.DATA, 1, 2, b"a", flags=MORE), CLIENT, 0.01)
    (ack,) = acks_in(sent(core, 0.01))
    assert ack.reason == P.ACK_DUPLICATE and ack.serial == 2
    core.receive_datagram(client_packet(P.DATA, 4, 3, b"d", flags=MORE), CLIENT, 0.02)
    (ack,) = acks_in(sent(core, 0.02))
    assert ack.reason == P.ACK_OUT_OF_SEQUENCE
    assert ack.first_packet == 2 and ack.acks == b"\x00\x00\x01"


def test_every_packet_past_a_hole_gets_its_own_ack() -> None:
    # OpenAFS senders count ACKs showing a hole, not the packets behind it: three packets
    # arriving together past a lost one must yield three ACKs, or the fileserver waits a
    # retransmit timeout instead of resending the hole at once.
    core = serving_core()
    core.receive_datagram(client_packet(P.DATA, 1, 1, b"a", flags=MORE), CLIENT, 0.0)
    for seq in (3, 4, 5):
        core.receive_datagram(client_packet(P.DATA, seq, seq, b"x", flags=MORE), CLIENT, 0.01)
    acks = acks_in(sent(core, 0.01))
    assert [a.reason for a in acks] == [P.ACK_OUT_OF_SEQUENCE] * 3
    assert [a.serial for a in acks] == [3, 4, 5]
    assert [a.acks for a in acks] == [b"\x00\x01", b"\x00\x01\x01", b"\x00\x01\x01\x01"]


def test_receive_window_opens_from_16_to_32_once_the_reader_consumed() -> None:
    core = serving_core()
    core.receive_datagram(client_packet(P.DATA, 33, 1, b"late", flags=MORE), CLIENT, 0.0)
    assert core.pop_events() == []  # beyond any window: no call is created
    core.receive_datagram(client_packet(P.DATA, 1, 2, b"first", flags=MORE), CLIENT, 0.0)
    (event,) = core.pop_events()
    assert isinstance(event, IncomingCall)
    call = event.call
    # Packet 1 is hard-acked on arrival, so the window of 16 runs from 2 to 17.
    core.receive_datagram(client_packet(P.DATA, 18, 3, b"x", flags=MORE), CLIENT, 0.0)
    (ack,) = acks_in(sent(core, 0.0))
    assert ack.reason == P.ACK_EXCEEDS_WINDOW and ack.rwind == 16
    assert call.read(100, 0.0) == b"first"
    core.receive_datagram(client_packet(P.DATA, 18, 4, b"x", flags=MORE), CLIENT, 0.0)
    (ack,) = acks_in(sent(core, 0.0))
    assert ack.reason == P.ACK_OUT_OF_SEQUENCE and ack.rwind == MAX_WINDOW
    assert ack.first_packet == 2 and len(ack.acks) == 17 and ack.acks[-1] == 1


def test_hard_acks_run_ahead_of_the_reader_only_as_far_as_its_buffer() -> None:
    core = serving_core()
    core.receive_datagram(client_packet(P.DATA, 1, 1, b"p"), CLIENT, 0.0)
    (event,) = core.pop_events()
    call = event.call
    assert call.read(1, 0.0) == b"p"  # the window opens to 32
    seq = 2
    while seq <= RX_BUFFER_PACKETS + 1 + 10:  # the buffer fills, then 10 more arrive
        core.receive_datagram(client_packet(P.DATA, seq, seq, b"d"), CLIENT, 0.0)
        seq += 1
    ack = acks_in(sent(core, 0.0))[-1]
    # The reader holds RX_BUFFER_PACKETS unread; only the 10 above them wait in the window.
    assert ack.first_packet == seq - 10 and ack.acks == b"\x01" * 10
    assert call.read(4, 0.0) == b"dddd"  # four packets read: the hard-ack point moves on
    (ack,) = acks_in(sent(core, 0.0))
    assert ack.reason == P.ACK_DELAY and ack.first_packet == seq - 6


def test_the_ack_that_ends_a_senders_burst_goes_out_twice() -> None:
    # The sender waits for it to send more: one lost copy would stall the stream.
    core = serving_core()
    core.receive_datagram(client_packet(P.DATA, 1, 1, b"a", flags=MORE), CLIENT, 0.0)
    core.receive_datagram(client_packet(P.DATA, 2, 2, b"b"), CLIENT, 0.0)
    acks = acks_in(sent(core, 0.0))
    assert len(acks) == 2 and acks[0] == acks[1] and acks[0].first_packet == 3
    # A stream's last packet is acked once, when the reader is done with it.
    core.receive_datagram(client_packet(P.DATA, 3, 3, b"c", flags=P.LAST_PACKET), CLIENT, 0.01)
    assert acks_in(sent(core, 0.01)) == []


def test_a_burst_ending_past_a_hole_gets_three_acks_showing_it() -> None:
    # Three ACKs in a row showing a hole make an OpenAFS sender resend it at once.
    for later in ([3], [3, 4], [3, 4, 5, 6]):
        core = serving_core()
        core.receive_datagram(client_packet(P.DATA, 1, 1, b"a", flags=MORE), CLIENT, 0.0)
        sent(core, 0.0)
        for seq in later:
            flags = MORE if seq != later[-1] else 0
            core.receive_datagram(client_packet(P.DATA, seq, seq, b"x", flags=flags), CLIENT, 0.0)
        acks = acks_in(sent(core, 0.0))
        assert len(acks) == max(3, len(later) + 1)
        assert all(a.first_packet == 2 and a.acks[0] == 0 for a in acks)


def test_previous_packet_is_the_highest_seq_received() -> None:
    # An OpenAFS sender drops an ACK whose previousPacket went backwards: the ACK for a
    # late packet must not.
    core = serving_core()
    for seq in (1, 4, 3):
        core.receive_datagram(client_packet(P.DATA, seq, seq, b"x", flags=MORE), CLIENT, 0.0)
    acks = acks_in(sent(core, 0.0))
    assert [a.previous_packet for a in acks] == [4, 4]


def test_a_packet_that_fills_a_hole_is_acked_at_once() -> None:
    core = serving_core()
    for seq in (1, 3):
        core.receive_datagram(client_packet(P.DATA, seq, seq, b"x", flags=MORE), CLIENT, 0.0)
    sent(core, 0.0)
    core.receive_datagram(client_packet(P.DATA, 2, 9, b"x", flags=MORE), CLIENT, 0.01)
    (ack,) = acks_in(sent(core, 0.01))
    assert ack.first_packet == 4 and ack.acks == b"" and ack.serial == 9


def test_a_quiet_reply_with_a_hole_is_nudged_with_an_ack_and_a_ping() -> None:
    core, call = client_call(dead_time=12.0)
    call.close_send(0.0)
    sent(core, 0.0)
    call.conn.peer.rtt_sample(0.01, 0.0)
    for seq in (1, 3):
        packet = server_packet(call, P.DATA, seq, seq, b"x", P.MORE_PACKETS)
        core.receive_datagram(packet, SERVER, 0.1)
    sent(core, 0.1)
    # Two round trips of quiet: an ACK and a ping, both showing the hole, so that with
    # the ACK already sent the sender has seen it three times.
    now = core.next_deadline()
    assert now == pytest.approx(0.12)
    core.handle_timer(now)
    acks = acks_in(sent(core, now))
    assert [a.reason for a in acks] == [P.ACK_OUT_OF_SEQUENCE, P.ACK_PING]
    assert all(a.first_packet == 2 and a.acks == b"\x00\x01" for a in acks)


def test_the_first_stall_probe_waits_two_round_trips_within_bounds() -> None:
    for srtt, wait in ((0.0, STALL_PROBE_MIN), (0.01, 0.02), (1.0, STALL_PROBE_MAX)):
        core, call = client_call(dead_time=12.0)
        call.close_send(0.0)
        sent(core, 0.0)
        call.conn.peer.rtt_sample(srtt, 0.0)
        core.receive_datagram(server_packet(call, P.DATA, 1, 1, b"x", P.MORE_PACKETS), SERVER, 1)
        assert call.stall_probe_at == pytest.approx(1 + wait)


def test_ping_is_answered_at_once_with_ping_response() -> None:
    core, call = client_call()
    call.write(b"req", 0.0)
    call.close_send(0.0)
    sent(core, 0.0)
    ping = P.AckBody(1, 0, 0, P.ACK_PING, b"", 1444, 1444, 32, 1).encode()
    core.receive_datagram(server_packet(call, P.ACK, 0, 77, ping, P.REQUEST_ACK), SERVER, 0.5)
    packets = sent(core, 0.5)
    (ack,) = acks_in(packets)
    assert ack.reason == P.ACK_PING_RESPONSE and ack.serial == 77
    assert packets[0][0].flags & P.CLIENT_INITIATED
    assert not packets[0][0].flags & P.REQUEST_ACK


def test_a_peer_is_heard_from_by_any_packet_on_our_connections_and_only_those() -> None:
    core, call = client_call()
    call.write(b"req", 0.0)
    call.close_send(0.0)
    sent(core, 0.0)
    peer = call.conn.peer
    assert peer.heard == float("-inf")
    core.receive_datagram(server_packet(call, P.ACK, 0, 5, ack_body(1)), SERVER, 0.5)
    assert peer.heard == 0.5
    # A packet naming no connection of ours (or from elsewhere) says nothing of the peer.
    stray = server_packet(call, P.ACK, 0, 6, ack_body(1))
    core.receive_datagram(stray[:4] + b"\0\0\0\0" + stray[8:], SERVER, 0.9)
    core.receive_datagram(server_packet(call, P.ACK, 0, 7, ack_body(1)), ("10.0.0.1", 7999), 0.9)
    assert peer.heard == 0.5


# ----- sending: windows, slow start, recovery, retransmission --------------------------------


def test_slow_start_grows_the_window_with_each_ack() -> None:
    core, call = client_call()
    call.write(b"x" * 1412 * 60, 0.0)
    first = data_in(sent(core, 0.0))
    assert [h.seq for h in first] == [1]
    assert first[0].flags & P.REQUEST_ACK  # cwind 1: every batch asks for an ack
    core.receive_datagram(
        server_packet(call, P.ACK, 0, 1, ack_body(2, serial=first[0].serial)), SERVER, 0.01
    )
    assert [h.seq for h in data_in(sent(core, 0.01))] == [2, 3]
    core.receive_datagram(server_packet(call, P.ACK, 0, 2, ack_body(4)), SERVER, 0.02)
    assert [h.seq for h in data_in(sent(core, 0.02))] == [4, 5, 6, 7]
    assert call.cwind == 4
    assert call.conn.peer.srtt == pytest.approx(0.01)  # sampled from the matching serial


def test_send_window_is_capped_by_the_peers_receive_window() -> None:
    core, call = client_call()
    call.write(b"x" * 1412 * 100, 0.0)
    sent(core, 0.0)
    call.cwind = call.ssthresh = 30
    core.receive_datagram(server_packet(call, P.ACK, 0, 1, ack_body(2, rwind=8)), SERVER, 0.01)
    assert [h.seq for h in data_in(sent(core, 0.01))] == list(range(2, 10))


def ack_of(core: RxCore, call: Call, serial: int, soft: str, now: float) -> None:
    """Feed call an ACK from the server: firstPacket 1, soft acks given as "01101..."."""
    body = ack_body(1, bytes(int(c) for c in soft), serial=serial)
    core.receive_datagram(server_packet(call, P.ACK, 0, serial, body), SERVER, now)


def test_a_burst_asks_for_an_ack_on_its_last_packet_and_flags_the_others() -> None:
    core, call = client_call()
    call.write(b"x" * 1412 * 10, 0.0)
    call.cwind = 4
    out = data_in(sent(core, 0.0))
    assert [h.flags & (P.MORE_PACKETS | P.REQUEST_ACK) for h in out] == [P.MORE_PACKETS] * 3 + [
        P.REQUEST_ACK
    ]


def test_a_loss_never_shrinks_the_window_below_its_floor() -> None:
    core, call = client_call()
    call.write(b"x" * 1412 * 100, 0.0)
    call.cwind = call.ssthresh = MIN_RECOVERY_WINDOW + 2
    sent(core, 0.0)
    ack_of(core, call, 11, "0111", 0.001)
    assert call.cwind == call.ssthresh == MIN_RECOVERY_WINDOW


def test_a_hole_three_later_packets_overtook_is_resent_at_once_and_halves_the_window() -> None:
    core, call = client_call()
    call.write(b"x" * 1412 * 100, 0.0)
    call.cwind = call.ssthresh = 16
    assert [h.seq for h in data_in(sent(core, 0.0))] == list(range(1, 17))
    # Packets 2 and 3 arrived, 1 did not: reordering, maybe; nothing is resent yet.
    ack_of(core, call, 10, "011", 0.001)
    assert 1 not in [h.seq for h in data_in(sent(core, 0.001))]
    # A third packet sent after 1 arrived: 1 is lost, and goes out at once with REQUEST_ACK.
    ack_of(core, call, 11, "0111", 0.002)
    out = data_in(sent(core, 0.002))
    assert [h.seq for h in out][:1] == [1] and out[-1].flags & P.REQUEST_ACK
    assert call.cwind == call.ssthresh == 8
    # More ACKs of the same episode neither resend 1 again nor shrink the window again.
    ack_of(core, call, 12, "01111", 0.003)
    assert 1 not in [h.seq for h in data_in(sent(core, 0.003))]
    assert call.cwind == 8


def test_a_resend_leaves_the_datagram_handed_out_before_as_it_was() -> None:
    core, call = client_call()
    call.write(b"abc" * 1000, 0.0)
    (first, _addr) = core.datagrams_to_send(0.0)[0]
    before = bytes(first)
    deadline = call.resend_at
    core.handle_timer(deadline)
    again = [decode(d) for d, _ in core.datagrams_to_send(deadline)]
    assert bytes(first) == before
    header, body = decode(before)
    resent, resent_body = next((h, b) for h, b in again if h.type == P.DATA)
    first_payload = (b"abc" * 1000)[: call.conn.max_user_data()]
    assert (resent.seq, resent_body) == (header.seq, body) == (1, first_payload)
    assert resent.serial > header.serial and resent.flags & P.REQUEST_ACK


def test_a_lost_retransmission_is_found_by_later_acks_without_the_timer() -> None:
    core, call = client_call()
    call.write(b"x" * 1412 * 100, 0.0)
    call.cwind = call.ssthresh = 16
    sent(core, 0.0)
    ack_of(core, call, 11, "0111", 0.001)
    (resent,) = data_in(sent(core, 0.001))
    assert resent.seq == 1
    # The resent copy is lost too.  Acks of packets sent before it prove nothing ...
    ack_of(core, call, 12, "0" + "1" * 15, 0.002)
    assert [h.seq for h in data_in(sent(core, 0.002))][:1] == [17]
    # ... nor do two packets sent after it ...
    ack_of(core, call, 13, "0" + "1" * 17, 0.003)
    assert 1 not in [h.seq for h in data_in(sent(core, 0.003))]
    # ... but the third does: 1 goes out again long before any retransmit timeout.
    ack_of(core, call, 14, "0" + "1" * 18, 0.004)
    (again,) = [h for h in data_in(sent(core, 0.004)) if h.seq == 1]
    assert again.serial > resent.serial and call.resend_at is not None


def test_in_recovery_the_window_counts_packets_in_flight_not_holes() -> None:
    core, call = client_call()
    call.write(b"x" * 1412 * 100, 0.0)
    call.cwind = call.ssthresh = 16
    sent(core, 0.0)
    # 1 and 2 are lost, 3..16 arrived: both are resent; 14 packets left the network, so
    # new packets go out too, up to the peer's window of 32 from its hard-ack point.
    ack_of(core, call, 30, "00" + "1" * 14, 0.001)
    seqs = [h.seq for h in data_in(sent(core, 0.001))]
    assert seqs[:2] == [1, 2]
    assert call.pipe <= call.cwind == 8 and seqs[2:] == list(range(17, 17 + call.cwind - 2))


def test_retransmit_timer_backs_off() -> None:
    core, call = client_call()
    call.write(b"hello", 0.0)
    call.close_send(0.0)
    (first,) = data_in(sent(core, 0.0))
    assert first.flags & P.REQUEST_ACK  # the last packet of every burst asks for an ack
    rto = call.conn.peer.rto
    deadline = call.resend_at
    assert deadline == pytest.approx(rto)  # no allowance for a delayed ack
    core.handle_timer(deadline)
    (again,) = data_in(sent(core, deadline))
    assert again.seq == 1 and again.serial > first.serial and again.flags & P.REQUEST_ACK
    assert call.conn.peer.rto == pytest.approx(2 * rto)
    assert call.resend_at - deadline == pytest.approx(2 * rto)


def test_a_request_once_the_round_trip_is_known_asks_for_no_ack_and_its_timer_allows_one() -> None:
    core, call = client_call()
    call.conn.peer.rtt_sample(0.001, 0.0)
    rto = call.conn.peer.rto
    call.write(b"request", 0.0)
    call.close_send(0.0)
    (first,) = data_in(sent(core, 0.0))
    assert first.flags & P.LAST_PACKET and not first.flags & P.REQUEST_ACK  # the reply acks it
    deadline = call.resend_at
    assert deadline == pytest.approx(rto + DELAYED_ACK_ALLOWANCE)
    core.handle_timer(deadline)
    (again,) = data_in(sent(core, deadline))
    assert again.seq == 1 and again.flags & P.REQUEST_ACK  # a resend asks
    assert call.resend_at == pytest.approx(deadline + 2 * rto)


def test_a_request_is_followed_by_a_ping_when_the_last_round_trip_sample_is_old() -> None:
    """A server that answers at once lets the reply ack the request, so no ack measures
    the round trip; a ping it answers at once does, for at most a ping a second, and its
    answer counts even when it comes after the reply."""
    core = RxCore(rng=random.Random(1))
    conn = core.connect(SERVER, SERVICE, RXNULL)
    conn.peer.rtt_sample(0.001, 0.0)
    pings = []
    for now in (0.5, 1.5):
        call = core.new_call(conn, now)
        assert call is not None
        call.write(b"request", now)
        call.close_send(now)
        out = sent(core, now)
        pings.append([a.reason for a in acks_in(out)])
        (request,) = data_in(out)
        assert request.flags & P.LAST_PACKET and not request.flags & P.REQUEST_ACK
        reply = server_packet(call, P.DATA, 1, 1, b"reply", P.LAST_PACKET)
        core.receive_datagram(reply, SERVER, now + 0.02)
        assert call.read(100, now + 0.02) == b"reply"
    assert pings == [[], [P.ACK_PING]]
    answer = P.AckBody(0, 0, call.ping_serial, P.ACK_PING_RESPONSE, b"", 1444, 1444, 32, 1)
    core.receive_datagram(server_packet(call, P.ACK, 0, 2, answer.encode()), SERVER, 1.54)
    assert conn.peer.sampled_at == 1.54
    assert conn.peer.srtt == pytest.approx(0.001 + (0.04 - 0.001) / 8)


def test_a_round_trip_sample_after_a_silence_starts_the_estimate_afresh() -> None:
    peer = Peer(SERVER)
    peer.rtt_sample(0.040, 0.0)
    peer.rtt_sample(0.004, 1.0)
    assert peer.srtt == pytest.approx(0.0355)  # smoothed: an eighth of the way
    peer.rtt_sample(0.004, 1.0 + RTT_STALE)
    assert (peer.srtt, peer.rttvar) == (0.004, 0.002)


def test_the_last_burst_of_a_longer_request_asks_for_no_ack_but_the_earlier_ones_do() -> None:
    core, call = client_call()
    call.conn.peer.rtt_sample(0.001, 0.0)
    call.write(b"x" * 1412 * 4, 0.0)
    call.close_send(0.0)
    call.cwind = 2
    out = data_in(sent(core, 0.0))
    assert [h.flags & (P.MORE_PACKETS | P.REQUEST_ACK) for h in out] == [
        P.MORE_PACKETS,
        P.REQUEST_ACK,
    ]
    core.receive_datagram(server_packet(call, P.ACK, 0, 1, ack_body(3)), SERVER, 0.001)
    out = data_in(sent(core, 0.001))
    assert [h.flags & (P.MORE_PACKETS | P.REQUEST_ACK | P.LAST_PACKET) for h in out] == [
        P.MORE_PACKETS,
        P.LAST_PACKET,
    ]


def test_after_a_timeout_the_window_restarts_at_one_and_grows_while_holes_are_resent() -> None:
    core, call = client_call()
    call.write(b"x" * 1412 * 100, 0.0)
    call.cwind = call.ssthresh = 16
    sent(core, 0.0)
    deadline = call.resend_at
    core.handle_timer(deadline)
    assert [h.seq for h in data_in(sent(core, deadline))] == [1]
    assert call.cwind == 1 and call.ssthresh == 8
    # 1 arrives: slow start goes on although 2..16 still wait for their resend.
    core.receive_datagram(server_packet(call, P.ACK, 0, 1, ack_body(2)), SERVER, deadline + 0.01)
    assert [h.seq for h in data_in(sent(core, deadline + 0.01))] == [2, 3]
    assert call.cwind == 2


def test_rto_follows_the_measured_round_trip_with_a_20ms_floor() -> None:
    core, call = client_call()
    call.write(b"x" * 1412 * 10, 0.0)
    (first,) = data_in(sent(core, 0.0))
    core.receive_datagram(
        server_packet(call, P.ACK, 0, 1, ack_body(2, serial=first.serial)), SERVER, 0.001
    )
    assert call.conn.peer.rto == pytest.approx(0.02)
    out = data_in(sent(core, 0.001))
    assert call.resend_at == pytest.approx(0.001 + 0.02)
    core.receive_datagram(
        server_packet(call, P.ACK, 0, 2, ack_body(4, serial=out[-1].serial)), SERVER, 0.051
    )
    assert 0.05 < call.conn.peer.rto < 0.2


def test_a_writer_with_a_full_backlog_is_woken_once_acks_bring_it_to_the_low_water_mark() -> None:
    core, call = client_call()
    call.write(b"x" * call.conn.max_user_data() * (SEND_BACKLOG + 1), 0.0)
    assert call.tx_backlog == SEND_BACKLOG
    call.cwind = MAX_WINDOW
    sent(core, 0.0)
    woken_at = []
    for first in range(3, SEND_BACKLOG + 2, 2):
        now = first / 1000
        core.receive_datagram(server_packet(call, P.ACK, 0, first, ack_body(first)), SERVER, now)
        sent(core, now)
        if core.pop_events():
            woken_at.append(call.tx_backlog)
    assert woken_at == [SEND_LOW_WATER]


def test_reply_data_implicitly_acks_the_request() -> None:
    core, call = client_call()
    call.write(b"r" * 1000, 0.0)
    call.close_send(0.0)
    sent(core, 0.0)
    core.handle_timer(core.next_deadline())
    sent(core, 10.0)
    core.receive_datagram(server_packet(call, P.DATA, 1, 1, b"reply", P.LAST_PACKET), SERVER, 3.0)
    assert call.tx_backlog == 0 and call.resend_at is None
    assert call.read(100, 3.0) == b"reply" and call.at_eof


# ----- liveness, aborts, busy --------------------------------------------------------------


def test_keepalive_pings_then_dead_peer() -> None:
    core, call = client_call(dead_time=6.0)
    call.close_send(0.0)
    sent(core, 0.0)
    pings = 0
    now = 0.0
    while call.error is None and now < 30:
        now = core.next_deadline()
        core.handle_timer(now)
        pings += sum(1 for a in acks_in(sent(core, now)) if a.reason == P.ACK_PING)
    assert call.error == RX_CALL_DEAD
    assert 6.0 <= now <= 7.0
    assert pings >= 4
    with pytest.raises(RxAbort):
        call.read(10, now)


def test_a_reply_stream_that_stops_is_probed_soon_with_backoff() -> None:
    # A lost ACK can leave an OpenAFS sender waiting on a backed-off timer for seconds;
    # the client pings it once the reply goes quiet, well before the keepalive would.
    core, call = client_call(dead_time=12.0)
    call.close_send(0.0)
    sent(core, 0.0)
    core.receive_datagram(server_packet(call, P.DATA, 1, 1, b"part"), SERVER, 0.1)
    sent(core, 0.1)
    pings = []
    now = 0.1
    while now < 2.0:
        now = core.next_deadline()
        core.handle_timer(now)
        pings += [now for a in acks_in(sent(core, now)) if a.reason == P.ACK_PING]
    assert pings[0] == pytest.approx(0.1 + STALL_PROBE_MIN)
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert gaps == sorted(gaps) and gaps[0] == pytest.approx(2 * STALL_PROBE_MIN)
    # New data resets the probe to its shortest wait.
    core.receive_datagram(server_packet(call, P.DATA, 2, 2, b"more"), SERVER, now)
    sent(core, now)
    assert core.next_deadline() == pytest.approx(now + STALL_PROBE_MIN)


def test_peer_abort_fails_the_call_and_is_not_answered() -> None:
    core, call = client_call()
    call.close_send(0.0)
    sent(core, 0.0)
    core.receive_datagram(server_packet(call, P.ABORT, 0, 5, P.encode_abort(-455)), SERVER, 0.1)
    assert call.error == -455 and call.state == CallState.ERROR
    assert sent(core, 0.1) == []
    assert [type(e).__name__ for e in core.pop_events()] == ["CallChanged"]


def test_packets_for_our_call_from_another_port_are_ignored() -> None:
    core, call = client_call()
    call.write(b"req", 0.0)
    call.close_send(0.0)
    sent(core, 0.0)
    forged = server_packet(call, P.ABORT, 0, 9, P.encode_abort(1))
    core.receive_datagram(forged, (SERVER[0], SERVER[1] + 1), 0.01)
    core.receive_datagram(server_packet(call, P.DATA, 1, 1, b"ok", P.LAST_PACKET), SERVER, 0.02)
    assert call.error is None
    assert call.read(10, 0.02) == b"ok"
    # A multi-homed server may answer from another of its addresses, on the same port.
    core.receive_datagram(forged, ("10.9.9.9", SERVER[1]), 0.03)
    assert call.error == 1


def test_connection_abort_fails_every_call() -> None:
    core, call = client_call()
    other = core.new_call(call.conn, 0.0)
    conn_abort = P.Header(core.epoch, call.conn.cid, 0, 0, 1, P.ABORT, 0, 0, 0, 0, SERVICE)
    core.receive_datagram(conn_abort.encode() + P.encode_abort(-1000), SERVER, 0.1)
    assert call.error == other.error == -1000
    with pytest.raises(RxAbort):
        core.new_call(call.conn, 0.2)


def test_data_for_an_aborted_server_call_gets_the_abort_again() -> None:
    core = serving_core()
    core.receive_datagram(client_packet(P.DATA, 1, 1, b"a"), CLIENT, 0.0)
    (event,) = core.pop_events()
    event.call.abort(-6, 0.0)
    assert [h.type for h, _ in sent(core, 0.0)] == [P.ABORT]
    core.receive_datagram(client_packet(P.DATA, 2, 2, b"b"), CLIENT, 0.1)
    ((header, body),) = sent(core, 0.1)
    assert header.type == P.ABORT and P.decode_abort(body) == -6
    core.receive_datagram(client_packet(P.ABORT, 0, 3, P.encode_abort(-6)), CLIENT, 0.2)
    assert sent(core, 0.2) == []


def test_new_call_on_a_busy_channel_gets_busy() -> None:
    core = serving_core()
    core.receive_datagram(client_packet(P.DATA, 1, 1, b"a"), CLIENT, 0.0)
    (event,) = core.pop_events()
    core.receive_datagram(client_packet(P.DATA, 1, 2, b"b", call=2), CLIENT, 0.1)
    packets = sent(core, 0.1)
    assert [(h.type, h.call_number) for h, _ in packets if h.type == P.BUSY] == [(P.BUSY, 2)]
    assert event.call.error == RX_CALL_DEAD


def test_unknown_service_gets_a_raw_abort_but_an_abort_gets_nothing() -> None:
    core = RxCore(rng=random.Random(3))
    core.receive_datagram(client_packet(P.DATA, 1, 1, b"a"), CLIENT, 0.0)
    ((header, body),) = sent(core, 0.0)
    assert header.type == P.ABORT and P.decode_abort(body) == RX_INVALID_OPERATION
    assert not header.flags & P.CLIENT_INITIATED
    core.receive_datagram(client_packet(P.ABORT, 0, 1, P.encode_abort(-1)), CLIENT, 0.0)
    assert sent(core, 0.0) == []


def test_unknown_security_index_gets_a_raw_abort() -> None:
    core = serving_core()
    header = P.Header(0x80001234, 0x100, 1, 1, 1, P.DATA, P.CLIENT_INITIATED, 0, 2, 0, SERVICE)
    core.receive_datagram(header.encode() + b"x", CLIENT, 0.0)
    ((reply, body),) = sent(core, 0.0)
    assert reply.type == P.ABORT and P.decode_abort(body) == RX_INVALID_OPERATION


# ----- rxdebug ------------------------------------------------------------------------------


def test_version_and_debug_requests_are_answered() -> None:
    core = RxCore(rng=random.Random(4), version_string=" afsfuse test")
    request = P.Header(999, 0, 101, 0, 0, P.VERSION, P.CLIENT_INITIATED | P.LAST_PACKET, 0, 0, 0, 0)
    core.receive_datagram(request.encode() + b"\0", CLIENT, 0.0)
    ((header, body),) = sent(core, 0.0)
    assert header.type == P.VERSION and header.call_number == 101
    assert header.flags == P.LAST_PACKET and len(body) == 65 and body.startswith(b" afsfuse test\0")
    stats = request._replace(type=P.DEBUG)
    core.receive_datagram(stats.encode() + struct.pack(">ii", 1, 0), CLIENT, 0.0)
    ((header, body),) = sent(core, 0.0)
    assert header.type == P.DEBUG and len(body) == 56 and body[14] == ord("S")
    core.receive_datagram(stats.encode() + struct.pack(">ii", 77, 0), CLIENT, 0.0)
    ((header, body),) = sent(core, 0.0)
    assert struct.unpack(">ii", body) == (-8, -8)
    # Without CLIENT_INITIATED (a NAT ping) nothing is answered.
    core.receive_datagram(request._replace(flags=P.LAST_PACKET).encode() + b"\0", CLIENT, 0.0)
    assert sent(core, 0.0) == []


DEBUG_REQUEST = P.Header(999, 0, 101, 0, 0, P.DEBUG, P.CLIENT_INITIATED | P.LAST_PACKET, 0, 0, 0, 0)


def debug(core: RxCore, kind: int, index: int = 0, now: float = 0.0) -> bytes:
    """The body of the core's reply to one rxdebug request."""
    core.receive_datagram(DEBUG_REQUEST.encode() + struct.pack(">ii", kind, index), CLIENT, now)
    ((header, body),) = sent(core, now)
    assert header.type == P.DEBUG and header.call_number == 101
    return body


def listing(core: RxCore, kind: int) -> list[bytes]:
    """Entries by index, as rxdebug asks for them, up to the end marker."""
    end = P.DEBUG_PEER_END if kind == P.DEBUG_GETPEER else P.DEBUG_CONN_END
    entries = []
    for index in range(10):
        body = debug(core, kind, index)
        if body == end:
            return entries
        entries.append(body)
    raise AssertionError(f"no end of the list after {entries}")


def test_rxdebug_lists_connections_and_peers_and_ends_each_list() -> None:
    core, call = client_call()
    idle = core.connect(("10.0.0.3", 7000), SERVICE, RXNULL)
    # A connection with a call under way is "interesting"; the idle one is not.
    (busy,) = listing(core, P.DEBUG_GETCONN)
    assert struct.unpack_from(">I", busy, 4) == (call.conn.cid,)
    assert busy[40] == P.RX_STATE_ACTIVE and busy[44] == P.RX_MODE_SENDING
    every = listing(core, P.DEBUG_GETALLCONN)
    assert [struct.unpack_from(">I", e, 4)[0] for e in every] == [call.conn.cid, idle.cid]
    assert every[1][:4] == bytes([10, 0, 0, 3]) and every[1][40:44] == bytes(4)
    peers = listing(core, P.DEBUG_GETPEER)
    assert [p[:6] for p in peers] == [
        bytes([10, 0, 0, 1]) + (7000).to_bytes(2, "big"),
        bytes([10, 0, 0, 3]) + (7000).to_bytes(2, "big"),
    ]
    # An index far past the end, or before the start, as OpenAFS answers them.
    assert debug(core, P.DEBUG_GETALLCONN, 1 << 30) == P.DEBUG_CONN_END
    assert debug(core, P.DEBUG_GETALLCONN, -5) == every[0]
    stats = struct.unpack(">71i", debug(core, P.DEBUG_RXSTATS))
    assert stats[56:60] == (0, 2, 2, 1)  # server and client connections, peers, live calls


def test_rxdebug_counts_packets_by_type_and_shows_packets_held_not_received() -> None:
    core, call = client_call()
    call.write(b"x" * 5000, 0.0)
    call.close_send(0.0)  # four packets, kept until acknowledged
    data_sent = len(core.datagrams_to_send(0.0))
    core.receive_datagram(b"short", CLIENT, 0.0)
    free, _, _, _, _, _, held = struct.unpack_from(">iii4xiiii", debug(core, P.DEBUG_GETSTATS))
    assert (free, held) == (0, 4)
    words = struct.unpack(">71i", debug(core, P.DEBUG_RXSTATS))
    packets_read, packets_sent = words[11:24], words[28:41]
    assert packets_read[P.DEBUG - 1] == 2 and sum(packets_read) == 2  # the short one is bogus
    assert packets_sent[P.DATA - 1] == data_sent and packets_sent[P.DEBUG - 1] == 1
    assert words[5:7] == (1, int(ipaddress.IPv4Address(CLIENT[0])))  # bogus reads, last host
    assert core.packets_received == 3


def test_a_flood_of_rxdebug_requests_gets_a_bounded_number_of_answers() -> None:
    core, _ = client_call()
    request = DEBUG_REQUEST.encode() + struct.pack(">ii", P.DEBUG_GETALLCONN, 0)
    for _ in range(3 * DEBUG_BURST):
        core.receive_datagram(request, CLIENT, 5.0)
    assert len(sent(core, 5.0)) == DEBUG_BURST
    # The allowance comes back with time, DEBUG_RATE a second.
    for _ in range(3 * DEBUG_BURST):
        core.receive_datagram(request, CLIENT, 6.0)
    assert len(sent(core, 6.0)) == DEBUG_RATE


@settings(max_examples=300)
@given(st.binary(min_size=0, max_size=200), st.integers(0, 255), st.integers(0, 255))
def test_hostile_datagrams_never_raise(junk: bytes, ptype: int, flags: int) -> None:
    core = serving_core()
    conn = core.connect(SERVER, SERVICE, RXNULL)
    core.new_call(conn, 0.0)
    for epoch, cid in ((0x80001234, 0x100), (core.epoch, conn.cid)):
        header = P.Header(epoch, cid, 1, 1, 1, ptype, flags, 0, 0, 0, SERVICE)
        core.receive_datagram(header.encode() + junk, CLIENT, 0.0)
        core.receive_datagram(junk, CLIENT, 0.0)
    core.datagrams_to_send(0.0)
    core.handle_timer(1.0)


# ----- two cores over an in-memory network ----------------------------------------------------


class Net:
    """Client and server cores joined by a pipe that may drop, duplicate, delay and reorder."""

    def __init__(
        self, *, loss: float = 0.0, dup: float = 0.0, jitter: float = 0.0, seed: int = 7
    ) -> None:
        self.rng = random.Random(seed)
        self.client = RxCore(rng=random.Random(seed + 1))
        self.server = RxCore(rng=random.Random(seed + 2))
        self.loss, self.dup, self.jitter = loss, dup, jitter
        self.now = 0.0
        self.wire: list[tuple[float, int, RxCore, bytes, tuple[str, int]]] = []
        self.counter = 0
        self.datagrams = 0

    def _flush(self) -> None:
        for core, src, dst in (
            (self.client, CLIENT, self.server),
            (self.server, SERVER, self.client),
        ):
            for data, _addr in core.datagrams_to_send(self.now):
                self.datagrams += 1
                copies = 0 if self.rng.random() < self.loss else 1
                if copies and self.rng.random() < self.dup:
                    copies = 2
                for _ in range(copies):
                    self.counter += 1
                    at = self.now + 0.001 + self.rng.random() * self.jitter
                    self.wire.append((at, self.counter, dst, data, src))

    def step(self) -> None:
        self._flush()
        times = [w[0] for w in self.wire]
        for core in (self.client, self.server):
            deadline = core.next_deadline()
            if deadline is not None:
                times.append(deadline)
        self.now = max(self.now, min(times))
        self.wire.sort(key=lambda w: (w[0], w[1]))
        while self.wire and self.wire[0][0] <= self.now:
            _, _, dst, data, src = self.wire.pop(0)
            dst.receive_datagram(data, src, self.now)
        for core in (self.client, self.server):
            deadline = core.next_deadline()
            if deadline is not None and deadline <= self.now:
                core.handle_timer(self.now)

    def run(self, done: Callable[[], bool], app: Callable[[], None], limit: float = 600.0) -> None:
        while not done():
            app()
            self.step()
            assert self.now < limit, "transfer did not finish"


def exchange(net: Net, request: bytes, reply_for: Callable[[bytes], bytes]) -> bytes:
    net.server.add_service(SERVICE, [RXNULL])
    conn = net.client.connect(SERVER, SERVICE, RXNULL)
    call = net.client.new_call(conn, net.now)
    call.write(request, net.now)
    call.close_send(net.now)
    server_calls: dict[Call, bytearray] = {}
    replied: set[Call] = set()
    got = bytearray()

    def app() -> None:
        for event in net.server.pop_events():
            if isinstance(event, IncomingCall):
                server_calls[event.call] = bytearray()
        for scall, buf in server_calls.items():
            if scall.error is None:
                buf += scall.read(1 << 20, net.now)
                if scall.at_eof and scall not in replied:
                    replied.add(scall)
                    scall.write(reply_for(bytes(buf)), net.now)
                    scall.close_send(net.now)
        net.client.pop_events()
        got.extend(call.read(1 << 20, net.now))

    net.run(lambda: call.at_eof or call.error is not None, app)
    assert call.error is None
    call.end(net.now)
    # Let the final ACK reach the server so it leaves HOLD.
    net.run(lambda: all(s.state == CallState.DALLY for s in server_calls), lambda: None)
    assert len(server_calls) == 1
    return bytes(got)


def test_zero_length_request_and_reply() -> None:
    net = Net()
    assert exchange(net, b"", lambda req: b"") == b""


def test_clean_transfer_both_ways() -> None:
    net = Net()
    request = random.Random(1).randbytes(300_000)
    reply = exchange(net, request, lambda req: req[::-1])
    assert reply == request[::-1]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_lossy_duplicating_reordering_pipe(seed: int) -> None:
    net = Net(loss=0.1, dup=0.05, jitter=0.01, seed=seed)
    request = random.Random(seed).randbytes(150_000)
    reply = exchange(net, request, lambda req: req + b"!")
    assert reply == request + b"!"
    # What rxdebug -rxstats and -peers show of it: the losses and duplicates it survived.
    stats, to_server = net.client.stats, net.client.peer(SERVER)
    sent = to_server.data_sent + to_server.resends
    assert to_server.data_sent > len(request) // OLD_MAX_PACKET and to_server.resends > 0
    assert net.server.stats.dup_read + stats.dup_read > 0
    words = struct.unpack(
        ">71i", encode_rx_stats(stats, [to_server], server_conns=0, client_conns=1, calls=0)
    )
    assert words[28 + P.DATA - 1] == sent  # packetsSent[data]
    assert words[45:48] == (to_server.data_sent, to_server.resends, stats.pushed)
    assert words[26] == stats.dup_read  # dupPacketsRead


def test_each_end_counts_what_the_other_end_counted_on_a_clean_pipe() -> None:
    net = Net()
    request = random.Random(1).randbytes(300_000)
    exchange(net, request, lambda req: req[::-1])
    while net.wire or net.client.schedule.outgoing or net.server.schedule.outgoing:
        net.step()  # what is still on its way
    client, server = net.client, net.server
    to_server, to_client = client.peer(SERVER), server.peer(CLIENT)
    for one, other, peer in ((client, server, to_server), (server, client, to_client)):
        words = struct.unpack(
            ">71i", encode_rx_stats(one.stats, [peer], server_conns=0, client_conns=0, calls=0)
        )
        assert list(words[28:41]) == other.stats.read[1:14]  # packets sent, read by type
    # Bytes of call data: the request one way, the reply the other.
    assert to_server.bytes_sent == to_client.bytes_received == len(request)
    assert to_client.bytes_sent == to_server.bytes_received == len(request)
    assert to_server.data_sent == -(-len(request) // (OLD_MAX_PACKET - P.HEADER_SIZE))
    assert to_server.resends == to_client.resends == 0
    assert client.stats.dup_read == server.stats.dup_read == 0


# ----- security hooks -------------------------------------------------------------------------


class XorConnection(ClientConnectionSecurity, ServerConnectionSecurity):
    """Test-only class: 4-byte length header, XOR 'encryption', a nonce challenge."""

    index = 5
    header_size = 4

    def __init__(self) -> None:
        self.sealed = 0
        self.unsealed = 0
        self.responses: list[list[int]] = []
        self._authenticated = False

    def seal(self, call_number: int, channel: int, seq: int, data: bytes) -> tuple[int, bytes]:
        self.sealed += 1
        return (seq * 7) & 0xFFFF, struct.pack(">I", len(data)) + bytes(b ^ 0x5A for b in data)

    def unseal(self, call_number: int, channel: int, seq: int, cksum: int, payload: bytes) -> bytes:
        if cksum != (seq * 7) & 0xFFFF:
            raise RxSecurityError(-1000)
        self.unsealed += 1
        (length,) = struct.unpack_from(">I", payload)
        return bytes(b ^ 0x5A for b in payload[4 : 4 + length])

    def respond(self, challenge: bytes, call_numbers: list[int]) -> bytes:
        self.responses.append(call_numbers)
        return b"ok:" + challenge

    @property
    def authenticated(self) -> bool:
        return self._authenticated

    def challenge(self) -> bytes | None:
        return b"nonce"

    def check_response(self, response: bytes) -> list[int]:
        if response != b"ok:nonce":
            raise RxSecurityError(-1001)
        self._authenticated = True
        return [1, 0, 0, 0]


class XorClass(ClientSecurity, ServerSecurity):
    index = 5

    def __init__(self) -> None:
        self.connections: list[XorConnection] = []

    def new_connection(self, epoch: int, cid: int) -> XorConnection:
        conn = XorConnection()
        self.connections.append(conn)
        return conn


def test_challenge_response_and_seal_hooks() -> None:
    net = Net()
    client_class, server_class = XorClass(), XorClass()
    net.server.add_service(SERVICE, [server_class])
    conn = net.client.connect(SERVER, SERVICE, client_class)
    call = net.client.new_call(conn, 0.0)
    call.write(b"secret request", 0.0)
    call.close_send(0.0)
    wire = net.client.datagrams_to_send(0.0)
    assert b"secret" not in wire[0][0]
    assert P.decode_header(wire[0][0]).cksum == 7
    net.server.receive_datagram(wire[0][0], CLIENT, 0.0)
    # The server holds the call and challenges instead of dispatching it.
    assert net.server.pop_events() == []
    challenges = [decode(d) for d, _ in net.server.datagrams_to_send(0.0)]
    assert [(h.type, h.call_number) for h, _ in challenges if h.type == P.CHALLENGE] == [
        (P.CHALLENGE, 0)
    ]
    # Unanswered, it is repeated every 2 s.
    net.server.handle_timer(2.0)
    assert [h.type for h, _ in sent(net.server, 2.0)].count(P.CHALLENGE) == 1
    for h, body in challenges:
        if h.type == P.CHALLENGE:
            net.client.receive_datagram(h.encode() + body, SERVER, 2.1)
    (response,) = [
        decode(d) for d, _ in net.client.datagrams_to_send(2.1) if decode(d)[0].type == P.RESPONSE
    ]
    assert response[0].call_number == 0 and response[0].flags & P.CLIENT_INITIATED
    assert client_class.connections[0].responses == [[1, 0, 0, 0]]
    net.server.receive_datagram(response[0].encode() + response[1], CLIENT, 2.1)
    (event,) = net.server.pop_events()
    assert isinstance(event, IncomingCall)
    assert event.call.read(100, 2.1) == b"secret request"
    assert server_class.connections[0].unsealed == 1 and client_class.connections[0].sealed == 1


def test_bad_response_aborts_the_connection() -> None:
    core = RxCore(rng=random.Random(5))
    sec = XorClass()
    core.add_service(SERVICE, [sec])
    header = P.Header(0x80001234, 0x100, 1, 1, 1, P.DATA, P.CLIENT_INITIATED, 0, 5, 7, SERVICE)
    core.receive_datagram(header.encode() + struct.pack(">I", 1) + b"\x00", CLIENT, 0.0)
    sent(core, 0.0)
    bad = header._replace(type=P.RESPONSE, call_number=0, seq=0, cksum=0)
    core.receive_datagram(bad.encode() + b"forged", CLIENT, 0.1)
    ((reply, body),) = sent(core, 0.1)
    assert reply.type == P.ABORT and reply.call_number == 0 and P.decode_abort(body) == -1001
    assert core.pop_events() == []


def test_challenge_on_idle_client_connection_is_ignored() -> None:
    core = RxCore(rng=random.Random(6))
    sec = XorClass()
    conn = core.connect(SERVER, SERVICE, sec)
    challenge = P.Header(core.epoch, conn.cid, 0, 0, 1, P.CHALLENGE, 0, 0, 5, 0, SERVICE)
    core.receive_datagram(challenge.encode() + b"nonce", SERVER, 0.0)
    assert sent(core, 0.0) == []


def test_soft_acks_already_seen_are_skipped_and_a_dropped_one_is_resent() -> None:
    core, call = client_call()
    call.conn.peer.rtt_sample(0.001, 0.0)
    call.write(b"x" * (6 * 1416 + 10), 0.0)
    call.close_send(0.0)
    call.cwind = 8
    assert len(data_in(sent(core, 0.0))) == 7
    for n_acks in range(1, 7):  # soft acks grow one at a time, nothing hard-acked
        body = ack_body(1, b"\x01" * n_acks, serial=n_acks)
        core.receive_datagram(server_packet(call, P.ACK, 0, 10 + n_acks, body), SERVER, 0.01)
    assert call.tx_sacked == 6 and [p.acked for p in call.tx] == [True] * 6 + [False]
    assert call.pipe == 1
    # The receiver dropped packet 2 it had soft-acked: it is no longer counted as acked,
    # and, with three later packets acked, resent at once.
    body = ack_body(1, b"\x01\x00\x01\x01\x01\x01\x01", serial=20)
    core.receive_datagram(server_packet(call, P.ACK, 0, 30, body), SERVER, 0.02)
    assert call.tx_sacked == 1 and not call.tx[1].acked
    assert [h.seq for h in data_in(sent(core, 0.02))] == [2]


def test_peers_no_connection_uses_are_let_go_once_their_connections_are_idle() -> None:
    """Packets from many source ports must not grow the endpoint's memory for ever: a peer
    lives as long as a connection uses it, and a while after it was last heard."""
    core = serving_core()
    server = core.connect(SERVER, SERVICE, RXNULL)
    for port in range(1000, 1100):
        request = client_packet(P.DATA, 1, 1, b"x", flags=P.LAST_PACKET, cid=port << 2)
        core.receive_datagram(request, ("10.0.0.9", port), 0.0)
    for event in core.pop_events():
        assert isinstance(event, IncomingCall)
        event.call.abort(RX_INVALID_OPERATION, 0.0)
    core.datagrams_to_send(0.0)
    assert core.known_peer(("10.0.0.9", 1000)) is not None
    now = 0.0
    while now < 2 * IDLE_CONNECTION_TIME:
        now += HOUSEKEEPING_INTERVAL
        core.handle_timer(now)
        core.datagrams_to_send(now)
    assert all(core.known_peer(("10.0.0.9", port)) is None for port in range(1000, 1100))
    assert core.known_peer(SERVER) is server.peer  # the client connection still uses it
