"""Rx wire encoding: header layout, ACK bodies and trailers, jumbograms, rxdebug bodies."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from afsfuse.rx import packet as P


def test_header_puts_checksum_before_service_id() -> None:
    header = P.Header(0x80000001, 0x1000 | 2, 7, 3, 9, P.DATA, P.LAST_PACKET, 0, 2, 0xB793, 52)
    raw = header.encode()
    assert len(raw) == P.HEADER_SIZE
    assert raw[24:26] == b"\xb7\x93"
    assert raw[26:28] == b"\x00\x34"
    decoded = P.decode_header(raw)
    assert decoded == header
    assert decoded.channel == 2


def test_short_header_is_a_decode_error() -> None:
    with pytest.raises(P.PacketDecodeError):
        P.decode_header(b"\0" * 27)


def test_ack_round_trip_with_full_trailer() -> None:
    ack = P.AckBody(5, 7, 42, P.ACK_REQUESTED, b"\x01\x00\x01", 1444, 1444, 32, 1)
    raw = ack.encode()
    assert len(raw) == 37 + 3
    # The trailer is unaligned: it starts 3 pad bytes after the acks array.
    assert struct.unpack_from(">I", raw, 18 + 3 + 3)[0] == 1444
    assert P.decode_ack(raw) == ack


def test_hot_path_ack_encoder_matches_the_dataclass() -> None:
    fast = P.encode_ack(1, 2, 3, P.ACK_IDLE, b"\x01\x01", 1444, 1400, 32, 1)
    assert fast == P.AckBody(1, 2, 3, P.ACK_IDLE, b"\x01\x01", 1444, 1400, 32, 1).encode()


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (0, (None, None, None, None)),
        (2, (1444, 1400, None, None)),
        (3, (1444, 1400, 32, None)),
        (5, (1444, 1400, 32, 6)),
    ],
)
def test_ack_tolerates_missing_short_and_long_trailers(words: int, expected: tuple) -> None:
    head = struct.pack(">HHIIIBB", 0, 0, 1, 1, 1, P.ACK_DELAY, 1) + b"\x01"
    trailer = b"\0\0\0" + struct.pack(">5I", 1444, 1400, 32, 6, 99)[: 4 * words] if words else b""
    ack = P.decode_ack(head + trailer + b"\x07")  # a stray byte that makes no full word
    assert (ack.max_mtu, ack.if_mtu, ack.rwind, ack.max_dgram_packets) == expected
    assert ack.acks == b"\x01"


@pytest.mark.parametrize("words", [0, 2, 4, 5])
def test_hot_path_ack_fields_agree_with_the_dataclass(words: int) -> None:
    head = struct.pack(">HHIIIBB", 0, 0, 3, 9, 77, P.ACK_REQUESTED, 2) + b"\x01\x00"
    trailer = b"\0\0\0" + struct.pack(">5I", 1444, 1400, 32, 6, 99)[: 4 * words] if words else b""
    raw = memoryview(head + trailer)
    ack = P.decode_ack(raw)
    assert P.decode_ack_fields(raw) == (
        ack.first_packet,
        ack.previous_packet,
        ack.serial,
        ack.reason,
        ack.acks,
        ack.max_mtu,
        ack.if_mtu,
        ack.rwind,
    )
    assert type(P.decode_ack_fields(raw)[4]) is bytes


@pytest.mark.parametrize("decoder", [P.decode_ack, P.decode_ack_fields])
def test_ack_with_more_acks_than_bytes_is_rejected(decoder: Callable) -> None:
    with pytest.raises(P.PacketDecodeError):
        decoder(struct.pack(">HHIIIBB", 0, 0, 1, 1, 1, 1, 10) + b"\x01")
    with pytest.raises(P.PacketDecodeError):
        decoder(b"\0" * 17)


def test_jumbogram_splits_into_sub_packets() -> None:
    header = P.Header(1, 4, 1, 10, 100, P.DATA, P.JUMBO_PACKET | P.CLIENT_INITIATED, 3, 0, 11, 1)
    first = b"a" * P.JUMBO_BUFFER_SIZE
    second = b"b" * P.JUMBO_BUFFER_SIZE
    body = (
        first
        + P.JUMBO_HEADER.pack(P.JUMBO_PACKET, 22)
        + second
        + P.JUMBO_HEADER.pack(P.LAST_PACKET, 33)
        + b"tail"
    )
    parts = P.split_jumbogram(header, body)
    assert [p for _, p in parts] == [first, second, b"tail"]
    assert [(h.seq, h.serial, h.cksum) for h, _ in parts] == [
        (10, 100, 11),
        (11, 101, 22),
        (12, 102, 33),
    ]
    assert parts[2][0].flags == P.LAST_PACKET
    assert parts[1][0].user_status == 0


def test_truncated_jumbogram_is_a_decode_error() -> None:
    header = P.Header(1, 4, 1, 1, 1, P.DATA, P.JUMBO_PACKET, 0, 0, 0, 1)
    with pytest.raises(P.PacketDecodeError):
        P.split_jumbogram(header, b"x" * 100)


def test_version_and_debug_bodies_have_the_rxdebug_sizes() -> None:
    body = P.encode_version_body(" afsfuse")
    assert len(body) == 65 and body.startswith(b" afsfuse\0")
    stats = P.encode_debug_stats(3, 10)
    assert len(stats) == 56
    assert stats[14] == ord("S")  # the version character after three int32s and two chars
    assert P.encode_debug_bad_type() == struct.pack(">ii", -8, -8)
    assert P.decode_debug_request(struct.pack(">ii", 1, 0)) == (1, 0)


def test_rxdebug_connection_entry_has_openafs_layout() -> None:
    conn = P.DebugConn(
        ("198.18.0.2", 7000), 0x80001234, 0x5678, 9, (3, 0, 1, 0), -1, True, 2,
        bytes([P.RX_STATE_ACTIVE, 0, P.RX_STATE_DALLY, 0]),
        bytes([P.RX_MODE_RECEIVING, 0, P.RX_MODE_EOF, 0]), 1444,
    )  # fmt: skip
    raw = conn.encode()
    assert len(raw) == 176  # sizeof(struct rx_debugConn)
    host, cid, serial, *numbers, error = struct.unpack_from(">4sIi4Ii", raw)
    assert (host, cid, serial, numbers, error) == (
        bytes([198, 18, 0, 2]),
        0x5678,
        9,
        [3, 0, 1, 0],
        -1,
    )
    assert raw[32:34] == (7000).to_bytes(2, "big")  # port, in network order
    assert (raw[35], raw[36]) == (P.RX_SERVER_CONNECTION, 2)  # type, securityIndex
    assert raw[40:44] == bytes([2, 0, 3, 0]) and raw[44:48] == bytes([2, 0, 4, 0])
    assert raw[56] == P.RX_SECTYPE_UNK  # secStats.type: no counters kept for rxkad
    assert struct.unpack_from(">II", raw, 132) == (0x80001234, 1444)  # epoch, natMTU
    assert conn._replace(security_index=0).encode()[56] == P.RX_SECTYPE_NULL


def test_rxdebug_peer_entry_has_openafs_layout() -> None:
    peer = P.DebugPeer(("10.1.2.3", 7001), 12.5, 3.0, 8588, 1444, 40, 3, (5 << 32) + 7, 99)
    raw = peer.encode()
    assert len(raw) == 132  # sizeof(struct rx_debugPeer)
    assert raw[:6] == bytes([10, 1, 2, 3]) + (7001).to_bytes(2, "big")
    assert struct.unpack_from(">H", raw, 6) == (8588,)  # ifMTU
    assert struct.unpack_from(">ii", raw, 24) == (100, 12)  # rtt ms << 3, rtt_dev ms << 2
    assert struct.unpack_from(">II", raw, 40) == (40, 3)  # nSent, reSends
    assert struct.unpack_from(">HH", raw, 60) == (1444, 1444)  # natMTU, maxMTU
    assert struct.unpack_from(">IIII", raw, 76) == (5, 7, 0, 99)  # bytes sent, received
    # Counters past what the fields hold wrap, as OpenAFS's do.
    assert peer._replace(sent=1 << 32, bytes_received=1 << 64).encode()[40:44] == bytes(4)


def test_rxdebug_lists_end_where_rxdebug_stops() -> None:
    # rxdebug stops at a connection whose cid is 0xffffffff and a peer at host 0xffffffff.
    assert len(P.DEBUG_CONN_END) == 176 and P.DEBUG_CONN_END[4:8] == b"\xff" * 4
    assert not any(P.DEBUG_CONN_END[:4] + P.DEBUG_CONN_END[8:])
    assert len(P.DEBUG_PEER_END) == 132 and P.DEBUG_PEER_END[:4] == b"\xff" * 4
    assert not any(P.DEBUG_PEER_END[4:])


def test_abort_round_trip() -> None:
    assert P.decode_abort(P.encode_abort(-455)) == -455
    with pytest.raises(P.PacketDecodeError):
        P.decode_abort(b"\0")


@given(st.binary(max_size=300))
def test_decoders_raise_only_decode_errors(data: bytes) -> None:
    decoders = (P.decode_header, P.decode_ack, P.decode_ack_fields, P.decode_abort)
    for decoder in (*decoders, P.decode_debug_request):
        with contextlib.suppress(P.PacketDecodeError):
            decoder(data)


@given(st.binary(max_size=4000), st.integers(0, 255))
def test_jumbo_split_raises_only_decode_errors(body: bytes, flags: int) -> None:
    header = P.Header(1, 4, 1, 1, 1, P.DATA, flags, 0, 0, 0, 1)
    try:
        parts = P.split_jumbogram(header, body)
    except P.PacketDecodeError:
        return
    assert sum(len(p) for _, p in parts) <= len(body)
