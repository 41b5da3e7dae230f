"""Packet sizes in the sans-I/O Rx core: what our ACK trailers advertise for a path, how
far a peer's trailer lets our DATA packets grow, and big packets and jumbograms taken in."""

from __future__ import annotations

import random

import pytest

from afsfuse.rx import packet as P
from afsfuse.rx.call import Call
from afsfuse.rx.core import RxCore
from afsfuse.rx.peer import MIN_PACKET, OLD_MAX_PACKET, packet_limit
from afsfuse.rx.schedule import IncomingCall
from afsfuse.rx.security import RXNULL

CLIENT = ("10.0.0.2", 7001)
SERVER = ("10.0.0.1", 7000)
SERVICE = 52
#: An OpenAFS 1.8 fileserver started -jumbo on a 9000-byte link: its ACK trailer's
#: maxMTU and ifMTU (its sizes rounded to whole 1416-byte jumbogram steps).
JUMBO_FILESERVER = (15604, 8524)


def core_on(mtu: int, seed: int = 1) -> RxCore:
    return RxCore(rng=random.Random(seed), path_mtu=lambda _addr: mtu)


def datagrams(core: RxCore, now: float) -> list[bytes]:
    return [bytes(d) for d, _ in core.datagrams_to_send(now)]


def of_type(ptype: int, sent: list[bytes]) -> list[bytes]:
    return [d for d in sent if P.decode_header(d).type == ptype]


def client_call(mtu: int) -> tuple[RxCore, Call]:
    core = core_on(mtu)
    call = core.new_call(core.connect(SERVER, SERVICE, RXNULL), 0.0)
    assert call is not None
    return core, call


def ack_from_server(call: Call, first: int, trailer: tuple[int, int], serial: int) -> bytes:
    conn = call.conn
    header = P.Header(
        conn.epoch, conn.cid | call.channel, call.call_number, 0, serial, P.ACK, 0, 0, 0, 0,
        SERVICE,
    )  # fmt: skip
    return header.encode() + P.AckBody(first, first, 0, P.ACK_IDLE, b"", *trailer, 32, 6).encode()


def client_data(seq: int, serial: int, body: bytes, flags: int) -> bytes:
    header = P.Header(
        0x80001234, 0x100, 1, seq, serial, P.DATA, flags | P.CLIENT_INITIATED, 0, 0, 0, SERVICE
    )
    return header.encode() + body


@pytest.mark.parametrize(
    ("mtu", "size"), [(1500, 1444), (9000, 8588), (65536, 8588), (1280, 1224), (576, 520)]
)
def test_the_packet_limit_leaves_room_for_ip_and_udp_headers(mtu: int, size: int) -> None:
    assert packet_limit(mtu) == size
    assert packet_limit(100) == MIN_PACKET


@pytest.mark.parametrize(("mtu", "advertised"), [(1500, 1444), (9000, 8588), (1400, 1344)])
def test_our_acks_advertise_the_paths_packet_size_and_no_jumbograms(
    mtu: int, advertised: int
) -> None:
    core = core_on(mtu)
    core.add_service(SERVICE, [RXNULL])
    core.receive_datagram(client_data(1, 1, b"x", P.REQUEST_ACK), CLIENT, 0.0)
    acks = [P.decode_ack(d[P.HEADER_SIZE :]) for d in of_type(P.ACK, datagrams(core, 0.0))]
    assert acks
    for ack in acks:
        assert (ack.max_mtu, ack.if_mtu, ack.max_dgram_packets) == (advertised, advertised, 1)
        assert ack.rwind == 16


def test_packets_grow_once_the_trailer_allows_on_a_jumbo_path() -> None:
    core, call = client_call(9000)
    peer = call.conn.peer
    call.write(b"a" * 1416 * 3, 0.0)
    first = of_type(P.DATA, datagrams(core, 0.0))
    assert [len(d) for d in first] == [OLD_MAX_PACKET]  # before any trailer: 1444
    core.receive_datagram(ack_from_server(call, 2, JUMBO_FILESERVER, 1), SERVER, 0.01)
    assert peer.max_packet == 8524  # the fileserver's ifMTU bounds its maxMTU
    call.write(b"b" * 8496 * 3, 0.01)
    call.close_send(0.01)
    call.cwind = 32
    later = of_type(P.DATA, datagrams(core, 0.01))
    # The packet built before the ACK keeps its size; the held-back tail and the later
    # writes fill 8524-byte packets, and what is left goes last.
    assert [len(d) for d in later] == [1444, 8524, 8524, 8524, 1444]


def test_a_1500_byte_path_keeps_1444_whatever_the_peer_says() -> None:
    core, call = client_call(1500)
    core.receive_datagram(ack_from_server(call, 1, JUMBO_FILESERVER, 1), SERVER, 0.0)
    assert call.conn.peer.max_packet == OLD_MAX_PACKET
    call.write(b"x" * 100_000, 0.0)
    call.cwind = 32
    assert max(len(d) for d in of_type(P.DATA, datagrams(core, 0.0))) == OLD_MAX_PACKET


def test_a_trailer_shrinks_the_packets_again_and_never_below_the_minimum() -> None:
    core, call = client_call(9000)
    peer = call.conn.peer
    core.receive_datagram(ack_from_server(call, 1, JUMBO_FILESERVER, 1), SERVER, 0.0)
    assert peer.max_packet == 8524
    core.receive_datagram(ack_from_server(call, 1, (16384, 4000), 2), SERVER, 0.0)
    assert peer.max_packet == 4000  # its link became smaller
    core.receive_datagram(ack_from_server(call, 1, (1444, 1444), 3), SERVER, 0.0)
    assert peer.max_packet == 1444  # it restarted without -jumbo
    core.receive_datagram(ack_from_server(call, 1, (100, 100), 4), SERVER, 0.0)
    assert peer.max_packet == MIN_PACKET


def test_big_packets_and_jumbograms_come_in_whole() -> None:
    core = core_on(9000)
    core.add_service(SERVICE, [RXNULL])
    big = bytes(random.Random(3).randbytes(8560))
    core.receive_datagram(client_data(1, 1, big, P.MORE_PACKETS), CLIENT, 0.0)
    # A jumbogram of six packets, 2 to 7: 1412 bytes each but the last, which ends the call.
    parts = [bytes([seq]) * (1412 if seq < 7 else 700) for seq in range(2, 8)]
    body = parts[0]
    for seq, part in zip(range(3, 8), parts[1:], strict=True):
        # A jumbo header carries all the flags of the packet it starts.
        flags = P.LAST_PACKET if seq == 7 else P.JUMBO_PACKET
        body += P.JUMBO_HEADER.pack(flags | P.CLIENT_INITIATED, 0) + part
    core.receive_datagram(client_data(2, 2, body, P.JUMBO_PACKET), CLIENT, 0.0)
    (event,) = core.pop_events()
    assert isinstance(event, IncomingCall)
    call = event.call
    assert call.at_eof is False and call.read(1 << 20, 0.0) == big + b"".join(parts)
    assert call.at_eof
    assert core.stats.read[P.DATA] == 7  # each part of the jumbogram counts as a packet


def test_two_cores_on_a_jumbo_path_exchange_big_packets_both_ways() -> None:
    """A request and its reply over an in-memory 9000-byte path: after the first ACK each
    way, both ends build 8588-byte packets (each first piece goes out at 1444 bytes),
    and every byte arrives."""
    client, server = core_on(9000, 1), core_on(9000, 2)
    server.add_service(SERVICE, [RXNULL])
    request = random.Random(4).randbytes(500_000)
    call = client.new_call(client.connect(SERVER, SERVICE, RXNULL), 0.0)
    assert call is not None
    written = answered = 0
    sizes: dict[str, list[int]] = {"to server": [], "to client": []}
    served: Call | None = None
    got, reply = bytearray(), bytearray()
    now = 0.0
    while not call.at_eof:
        now += 0.001
        assert now < 10, "the exchange did not finish"
        if written < len(request) and call.tx_backlog < 8:
            # Each end writes in pieces: packets are built as they are written, so those
            # after the other end's first ACK are sized by its trailer.
            call.write(request[written : written + 50_000], now)
            written += 50_000
            if written >= len(request):
                call.close_send(now)
        for src, dst, addr, key in (
            (client, server, CLIENT, "to server"),
            (server, client, SERVER, "to client"),
        ):
            for data, _ in src.datagrams_to_send(now):
                if P.decode_header(data).type == P.DATA:
                    sizes[key].append(len(data))
                dst.receive_datagram(bytes(data), addr, now)
        for event in server.pop_events():
            if isinstance(event, IncomingCall):
                served = event.call
        if served is not None and not served.tx_closed:
            got += served.read(1 << 20, now)
            if served.at_eof and served.tx_backlog < 8:
                served.write(bytes(got[::-1][answered : answered + 50_000]), now)
                answered += 50_000
                if answered >= len(got):
                    served.close_send(now)
        client.pop_events()
        reply += call.read(1 << 20, now)
        for core in (client, server):
            deadline = core.next_deadline()
            if deadline is not None and deadline <= now:
                core.handle_timer(now)
    assert bytes(got) == request and bytes(reply) == request[::-1]
    for key in sizes:
        assert max(sizes[key]) == 8588, key
        assert sum(1 for s in sizes[key] if s == 8588) * 8560 > len(request) * 0.8, key
