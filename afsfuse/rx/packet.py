"""Rx wire format: the 28-byte header, ACK bodies, jumbograms, VERSION and DEBUG replies.

Everything here is pure encoding.  Decoders accept hostile bytes: they either return a value
or raise PacketDecodeError, nothing else.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import NamedTuple

HEADER_SIZE = 28
# epoch, cid, callNumber, seq, serial, type, flags, userStatus, securityIndex, cksum, serviceId.
# The 16-bit checksum precedes serviceId on the wire, whatever the C struct says.
HEADER = struct.Struct(">IIIIIBBBBHH")

# Packet types.
DATA = 1
ACK = 2
BUSY = 3
ABORT = 4
ACKALL = 5
CHALLENGE = 6
RESPONSE = 7
DEBUG = 8
PARAMS = 9
VERSION = 13

# Header flags.
CLIENT_INITIATED = 0x01
REQUEST_ACK = 0x02
LAST_PACKET = 0x04
MORE_PACKETS = 0x08
SLOW_START_OK = 0x20  # on ACK packets
JUMBO_PACKET = 0x20  # on DATA packets

# ACK reasons.
ACK_REQUESTED = 1
ACK_DUPLICATE = 2
ACK_OUT_OF_SEQUENCE = 3
ACK_EXCEEDS_WINDOW = 4
ACK_NOSPACE = 5
ACK_PING = 6
ACK_PING_RESPONSE = 7
ACK_DELAY = 8
ACK_IDLE = 9

MAX_ACKS = 255
CID_MASK = 0xFFFFFFFC
CHANNEL_MASK = 3

JUMBO_BUFFER_SIZE = 1412
JUMBO_HEADER = struct.Struct(">BxH")  # flags of the next sub-packet, pad, its cksum

ABORT_BODY = struct.Struct(">i")
ACK_HEAD = struct.Struct(">HHIIIBB")  # bufferSpace, maxSkew, first, previous, serial, reason, n
ACK_TRAILER_WORD = struct.Struct(">I")
# 3 pad bytes, then maxMTU, ifMTU, rwind, maxDgramPackets: unaligned after the acks array.
ACK_TRAILER = struct.Struct(">3xIIII")

VERSION_BODY_SIZE = 65
DEBUG_IN = struct.Struct(">ii")
# rx_debugIn types.
DEBUG_GETSTATS = 1
DEBUG_GETCONN = 2
DEBUG_GETALLCONN = 3
DEBUG_RXSTATS = 4
DEBUG_GETPEER = 5
DEBUG_BAD_TYPE = -8
# nFreePackets, packetReclaims, callsExecuted, waitingForPackets, usedFDs, version, spare,
# nWaiting, idleThreads, nWaited, nPackets, then six spare words: 56 bytes.
DEBUG_STATS = struct.Struct(">iiibbbbiiii6i")
DEBUG_STATS_VERSION = ord("S")
# rx_debugConn (176 bytes): host, cid, serial, callNumber[4], error, port, flags, type,
# securityIndex, 3 spare, callState[4], callMode[4], callFlags[4], callOther[4]; secStats:
# type, level, 10 spare, flags, expires, packets and bytes received and sent, 4 + 8 spares;
# then epoch, natMTU, 9 spare words.  Host and port stay in network order, as rxdebug reads.
DEBUG_CONN = struct.Struct(">4sIi4Ii2sBBB3x4s4s4s4sBB10xiIIIII8x32xII36x")
# rx_debugPeer (132 bytes): host, port, ifMTU, idleWhen, refCount, burstSize, burst,
# burstWait, rtt (ms << 3), rtt_dev (ms << 2), timeout (rxdebug zeroes what it gets),
# nSent, reSends, in/outPacketSkew, rateFlag, natMTU, maxMTU, maxDgramPackets,
# ifDgramPackets, MTU, cwind, nDgramPackets, congestSeq, bytesSent and bytesReceived
# (high, low), 10 spare words.
DEBUG_PEER = struct.Struct(">4s2sHIhBB8xii8xIIiii8HIIII40x")
_UINT32 = 0xFFFFFFFF
_UINT64 = (1 << 64) - 1
# rx_debugConn call states and modes, connection types and security object types.
RX_STATE_NOTINIT, RX_STATE_PRECALL, RX_STATE_ACTIVE, RX_STATE_DALLY, RX_STATE_HOLD = range(5)
RX_MODE_SENDING, RX_MODE_RECEIVING, RX_MODE_ERROR, RX_MODE_EOF = range(1, 5)
RX_CLIENT_CONNECTION, RX_SERVER_CONNECTION = 0, 1
RX_SECTYPE_UNK, RX_SECTYPE_NULL = 0, 1
_END_OF_LIST = b"\xff" * 4


class PacketDecodeError(ValueError):
    """Bytes that do not form the Rx packet they claim to be."""


class Header(NamedTuple):
    epoch: int
    cid: int
    call_number: int
    seq: int
    serial: int
    type: int
    flags: int
    user_status: int
    security_index: int
    cksum: int
    service_id: int

    @property
    def channel(self) -> int:
        return self.cid & CHANNEL_MASK

    def encode(self) -> bytes:
        return HEADER.pack(*self)


def decode_header(data: bytes | memoryview) -> Header:
    if len(data) < HEADER_SIZE:
        raise PacketDecodeError(f"datagram of {len(data)} bytes is shorter than an Rx header")
    return Header._make(HEADER.unpack_from(data))


# Not slots=True: mypyc, which compiles this module, rejects it (its classes have fixed
# attributes anyway).
@dataclass
class AckBody:
    """An ACK packet body.  Trailer fields are None when the peer did not send them."""

    first_packet: int
    previous_packet: int
    serial: int
    reason: int
    acks: bytes = b""
    max_mtu: int | None = None
    if_mtu: int | None = None
    rwind: int | None = None
    max_dgram_packets: int | None = None
    buffer_space: int = 0
    max_skew: int = 0

    def encode(self) -> bytes:
        head = ACK_HEAD.pack(
            self.buffer_space,
            self.max_skew,
            self.first_packet,
            self.previous_packet,
            self.serial,
            self.reason,
            len(self.acks),
        )
        trailer = b"".join(
            ACK_TRAILER_WORD.pack(word)
            for word in (self.max_mtu, self.if_mtu, self.rwind, self.max_dgram_packets)
            if word is not None
        )
        return head + self.acks + b"\0\0\0" + trailer


def encode_ack(
    first_packet: int,
    previous_packet: int,
    serial: int,
    reason: int,
    acks: bytes,
    max_mtu: int,
    if_mtu: int,
    rwind: int,
    max_dgram_packets: int,
) -> bytes:
    """The full ACK body with a 4-word trailer, without building an AckBody (hot path)."""
    return b"".join(
        (
            ACK_HEAD.pack(0, 0, first_packet, previous_packet, serial, reason, len(acks)),
            acks,
            ACK_TRAILER.pack(max_mtu, if_mtu, rwind, max_dgram_packets),
        )
    )


def decode_ack_fields(
    body: bytes | memoryview,
) -> tuple[int, int, int, int, bytes, int | None, int | None, int | None]:
    """What a sender uses of an ACK, without building an AckBody (hot path).

    (first_packet, previous_packet, serial, reason, acks, max_mtu, if_mtu, rwind); the
    trailer's are None when the peer did not send them.
    """
    size = len(body)
    if size >= ACK_HEAD.size:
        _space, _skew, first, previous, serial, reason, n_acks = ACK_HEAD.unpack_from(body)
        end = ACK_HEAD.size + n_acks
        if size >= end + ACK_TRAILER.size:  # the whole trailer, as every current peer sends it
            max_mtu, if_mtu, rwind, _dgrams = ACK_TRAILER.unpack_from(body, end)
            acks = bytes(body[ACK_HEAD.size : end])
            return first, previous, serial, reason, acks, max_mtu, if_mtu, rwind
    ack = decode_ack(body)
    return (
        ack.first_packet,
        ack.previous_packet,
        ack.serial,
        ack.reason,
        ack.acks,
        ack.max_mtu,
        ack.if_mtu,
        ack.rwind,
    )


def decode_ack(body: bytes | memoryview) -> AckBody:
    size = len(body)
    if size < ACK_HEAD.size:
        raise PacketDecodeError(f"ACK body of {size} bytes is too short")
    _space, _skew, first, previous, serial, reason, n_acks = ACK_HEAD.unpack_from(body)
    end = ACK_HEAD.size + n_acks
    if size < end:
        raise PacketDecodeError(f"ACK claims {n_acks} acks but carries {size - 18}")
    acks = bytes(body[ACK_HEAD.size : end])
    if size >= end + ACK_TRAILER.size:  # the whole trailer, as every current peer sends it
        return AckBody(first, previous, serial, reason, acks, *ACK_TRAILER.unpack_from(body, end))
    # The trailer starts after 3 pad bytes and may be absent or partial.
    ack = AckBody(first, previous, serial, reason, acks)
    words = []
    offset = end + 3
    while offset + 4 <= size:
        words.append(ACK_TRAILER_WORD.unpack_from(body, offset)[0])
        offset += 4
    fields = ("max_mtu", "if_mtu", "rwind", "max_dgram_packets")
    for name, value in zip(fields, words, strict=False):
        setattr(ack, name, value)
    return ack


def encode_abort(code: int) -> bytes:
    return ABORT_BODY.pack(code)


def decode_abort(body: bytes | memoryview) -> int:
    if len(body) < 4:
        raise PacketDecodeError("ABORT body shorter than its error code")
    code: int = ABORT_BODY.unpack_from(body)[0]
    return code


def split_jumbogram(header: Header, body: bytes | memoryview) -> list[tuple[Header, bytes]]:
    """Split one DATA datagram into its sub-packets (a single one if it is not a jumbogram).

    Every sub-packet but the last has exactly JUMBO_BUFFER_SIZE bytes and is followed by a
    4-byte header describing the *next* sub-packet.
    """
    parts: list[tuple[Header, bytes]] = []
    current = header
    offset = 0
    while current.flags & JUMBO_PACKET:
        next_at = offset + JUMBO_BUFFER_SIZE
        if len(body) < next_at + JUMBO_HEADER.size:
            raise PacketDecodeError("jumbogram truncated inside a sub-packet")
        parts.append((current, bytes(body[offset:next_at])))
        flags, cksum = JUMBO_HEADER.unpack_from(body, next_at)
        offset = next_at + JUMBO_HEADER.size
        current = current._replace(
            seq=(current.seq + 1) & 0xFFFFFFFF,
            serial=(current.serial + 1) & 0xFFFFFFFF,
            flags=flags,
            cksum=cksum,
            user_status=0,
        )
    parts.append((current, bytes(body[offset:])))
    return parts


def encode_version_body(version: str) -> bytes:
    """The 65-byte VERSION reply body: the version string, NUL-padded (and NUL-terminated)."""
    raw = version.encode("ascii", "replace")[: VERSION_BODY_SIZE - 1]
    return raw.ljust(VERSION_BODY_SIZE, b"\0")


def decode_debug_request(body: bytes | memoryview) -> tuple[int, int]:
    if len(body) < DEBUG_IN.size:
        raise PacketDecodeError("DEBUG request shorter than rx_debugIn")
    return DEBUG_IN.unpack_from(body)


def encode_debug_stats(calls_executed: int, packets_held: int) -> bytes:
    """rx_debugStats: no free packets out of `packets_held` (rx/stats.py says why), one
    socket, no call ever waits for a thread."""
    return DEBUG_STATS.pack(
        0, 0, wrap_int32(calls_executed), 0, 1, DEBUG_STATS_VERSION, 0, 0, 0, 0,
        wrap_int32(packets_held), *[0] * 6,
    )  # fmt: skip


def encode_debug_bad_type() -> bytes:
    return DEBUG_IN.pack(DEBUG_BAD_TYPE, DEBUG_BAD_TYPE)


class DebugConn(NamedTuple):
    """What rxdebug shows of one connection."""

    addr: tuple[str, int]
    epoch: int
    cid: int
    serial: int
    call_numbers: tuple[int, int, int, int]
    error: int
    server: bool
    security_index: int
    #: RX_STATE_* and RX_MODE_* of the four channels.
    call_states: bytes
    call_modes: bytes
    mtu: int

    def encode(self) -> bytes:
        host, port = self.addr
        return DEBUG_CONN.pack(
            socket.inet_aton(host),
            self.cid & 0xFFFFFFFF,
            wrap_int32(self.serial),
            *(n & 0xFFFFFFFF for n in self.call_numbers),
            wrap_int32(self.error),
            port.to_bytes(2, "big"),
            0,
            RX_SERVER_CONNECTION if self.server else RX_CLIENT_CONNECTION,
            self.security_index,
            self.call_states,
            self.call_modes,
            bytes(4),
            bytes(4),
            # No per-connection counters here: rxdebug says so for rxkad, shows rxnull's.
            RX_SECTYPE_NULL if self.security_index == 0 else RX_SECTYPE_UNK,
            *(0,) * 7,  # level, flags, expiry, packets and bytes received and sent
            self.epoch & 0xFFFFFFFF,
            self.mtu,
        )


class DebugPeer(NamedTuple):
    """What rxdebug shows of one peer."""

    addr: tuple[str, int]
    rtt_ms: float
    rtt_dev_ms: float
    #: Our path's packet size (ifMTU), and what we send the peer now (natMTU, maxMTU, MTU).
    if_mtu: int
    mtu: int
    #: DATA packets sent and of them resent; payload bytes sent and received.
    sent: int = 0
    resends: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0

    def encode(self) -> bytes:
        host, port = self.addr
        rtt = min(int(self.rtt_ms * 8), 0x7FFFFFFF)
        dev = min(int(self.rtt_dev_ms * 4), 0x7FFFFFFF)
        mtus = (self.mtu, self.mtu, 0, 0, self.mtu, 0, 0, 0)  # natMTU, maxMTU... MTU
        sent, received = self.bytes_sent & _UINT64, self.bytes_received & _UINT64
        return DEBUG_PEER.pack(
            socket.inet_aton(host), port.to_bytes(2, "big"), self.if_mtu, 0, 0, 0, 0,
            rtt, dev, self.sent & _UINT32, self.resends & _UINT32, 0, 0, 0, *mtus,
            sent >> 32, sent & _UINT32, received >> 32, received & _UINT32,
        )  # fmt: skip


#: The entry after the last: a connection with cid 0xffffffff, a peer at 255.255.255.255.
DEBUG_CONN_END = bytes(4) + _END_OF_LIST + bytes(DEBUG_CONN.size - 8)
DEBUG_PEER_END = _END_OF_LIST + bytes(DEBUG_PEER.size - 4)


def wrap_int32(n: int) -> int:
    """A counter as a C int32 holds it: wrapped."""
    return (n + 0x80000000) % 0x100000000 - 0x80000000
