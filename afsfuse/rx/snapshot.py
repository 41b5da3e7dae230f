"""What an endpoint's peers, connections and calls look like now, for `afsfuse-ctl peers`,
`conns` and `calls` (kAFS's /proc/net/rxrpc/*).

Read on demand from the endpoint's own tables and never written: nothing here runs per
packet.  Kept apart from the per-packet modules, whose objects it only reads.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from .call import Call, CallState
from .connection import Connection
from .core import RxCore
from .peer import Address

#: What each call state is called here; a client's ACTIVE call is sending or receiving.
_STATE_NAMES = {
    CallState.PRECALL: "authenticating",
    CallState.HOLD: "replied",
    CallState.DALLY: "done",
    CallState.ERROR: "error",
}


@dataclass(frozen=True)
class PeerFigures:
    """One remote address: what Rx measured of the path to it."""

    address: Address
    #: Smoothed round trip and its mean deviation, seconds; None before the first sample.
    srtt: float | None
    rttvar: float | None
    #: The retransmit timeout now in force (backed off while packets go unanswered).
    rto: float
    max_packet: int
    #: Seconds since a packet from it last arrived; None if none ever did.
    heard_ago: float | None
    connections: int
    calls: int
    #: DATA packets sent the first time and resent, and bytes of call data written to and
    #: read from calls with it (rx/stats.py: Peer's own counters, as rxdebug -peers shows).
    data_sent: int
    resends: int
    bytes_sent: int
    bytes_received: int


@dataclass(frozen=True)
class ConnFigures:
    """One connection, either direction."""

    address: Address
    service_id: int
    epoch: int
    cid: int
    #: True for a connection we opened (a call we make), False for one a server opened to us.
    client: bool
    security_index: int
    #: Calls started on it so far, over its four channels.
    calls_made: int
    calls_live: int
    serial: int
    idle: float
    error: int | None


@dataclass(frozen=True)
class CallFigures:
    """One call under way."""

    address: Address
    service_id: int
    cid: int
    channel: int
    call_number: int
    client: bool
    #: The RPC's opcode: the first word of a client's request (None before it is sent).
    opcode: int | None
    state: str
    age: float
    #: Stream bytes the application wrote and read so far.
    bytes_sent: int
    bytes_received: int
    #: Congestion window, the peer's receive window, ours, and packets in flight.
    cwind: int
    twind: int
    rwind: int
    in_flight: int
    #: Seconds since anything arrived on it.
    quiet: float


@dataclass(frozen=True)
class RxFigures:
    peers: list[PeerFigures]
    connections: list[ConnFigures]
    calls: list[CallFigures]


def take(core: RxCore, now: float) -> RxFigures:
    """The endpoint's peers, connections and live calls (oldest first) at `now` (the core's
    clock)."""
    conns = list(itertools.chain(core._client_conns.values(), core._server_conns.values()))
    live = sorted(
        (call for call in core.schedule.live if call.live), key=lambda call: call.started_at
    )
    per_peer_conns: dict[Address, int] = {}
    for conn in conns:
        per_peer_conns[conn.addr] = per_peer_conns.get(conn.addr, 0) + 1
    per_peer_calls: dict[Address, int] = {}
    for call in live:
        per_peer_calls[call.conn.addr] = per_peer_calls.get(call.conn.addr, 0) + 1
    peers = [
        PeerFigures(
            address=peer.addr,
            srtt=peer.srtt or None,
            rttvar=peer.rttvar if peer.srtt else None,
            rto=peer.rto,
            max_packet=peer.max_packet,
            heard_ago=None if peer.heard == float("-inf") else now - peer.heard,
            connections=per_peer_conns.get(peer.addr, 0),
            calls=per_peer_calls.get(peer.addr, 0),
            data_sent=peer.data_sent,
            resends=peer.resends,
            bytes_sent=peer.bytes_sent,
            bytes_received=peer.bytes_received,
        )
        for peer in core._peers.values()
    ]
    return RxFigures(
        peers=peers,
        connections=[_connection(conn, now) for conn in conns],
        calls=[_call(call, now) for call in live],
    )


def _connection(conn: Connection[Call], now: float) -> ConnFigures:
    return ConnFigures(
        address=conn.addr,
        service_id=conn.service_id,
        epoch=conn.epoch,
        cid=conn.cid,
        client=conn.is_client,
        security_index=conn.security_index,
        calls_made=sum(conn.call_numbers),
        calls_live=sum(1 for call in conn.calls if call is not None and call.live),
        serial=conn.serial,
        idle=now - conn.last_activity,
        error=conn.error,
    )


def _call(call: Call, now: float) -> CallFigures:
    if call.state != CallState.ACTIVE:
        state = _STATE_NAMES[call.state]
    elif not call.is_client:
        state = "serving"
    else:
        state = "receiving" if call.tx_last_sent else "sending"
    head = call.head
    return CallFigures(
        address=call.conn.addr,
        service_id=call.conn.service_id,
        cid=call.conn.cid,
        channel=call.channel,
        call_number=call.call_number,
        client=call.is_client,
        opcode=int.from_bytes(head, "big") if call.is_client and len(head) == 4 else None,
        state=state,
        age=now - call.started_at,
        bytes_sent=call.bytes_written,
        bytes_received=call.bytes_read,
        cwind=call.cwind,
        twind=call.twind,
        rwind=call.rwind,
        in_flight=call.pipe,
        quiet=now - call.last_receive,
    )
