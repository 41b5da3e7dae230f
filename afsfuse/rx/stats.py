"""What the Rx endpoint counts for `rxdebug -rxstats`, and OpenAFS's layout of it.

Counters are bumped where the event is already in hand (a packet type just unpacked, a
burst of DATA handed out, a duplicate found): an increment, no allocation, nothing looked up
for their sake.  What concerns one address (DATA packets sent and resent, bytes of call
data) is counted on its Peer, for `rxdebug -peers`; the endpoint's DATA and resend
totals are those summed over the peers when rxdebug asks.

What the figures mean here, where afsfuse differs from OpenAFS:

- packets read and sent are counted by Rx packet type; each part of a received jumbogram
  counts as one DATA packet, and rxdebug's own requests and our replies count too.
- "free packets" (rxdebug's first line and -rxstats) is 0, and the total it is shown
  against is the packets calls hold now (queued to send or resend, or received and not yet
  read): afsfuse keeps no pool of packet buffers, each packet is its own buffer, so none is
  ever free.  Packet allocations and allocation failures stay 0 for the same reason.
- bogus reads are datagrams dropped unread: malformed, failing their security check, or
  rxdebug requests beyond its rate; "last from host" is the last sender of one.
- spurious reads are packets for a connection or call we do not have (late or stray).
- pushed resends are packets the acks showed lost (resent without waiting for the timer).
- a peer's bytes sent and received are the call data our calls with it wrote and read,
  counted per write and read rather than per packet: headers, acks and resends are not in
  them (OpenAFS counts every packet's payload).
- no round-trip totals are kept (a sum, a minimum and a maximum on every ACK would cost the
  bulk transfers); each peer's smoothed round trip is in `rxdebug -peers`.
- select counts, "greedy", "ignored acked packets" and dally drops have no counterpart and
  stay 0.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable

from . import packet as P
from .peer import Peer

#: rx_statistics of OpenAFS 1.8: 71 int32 words, in this order (rx.h).
RX_N_PACKET_TYPES = 13
_FIELDS = (
    "packetRequests receivePktAllocFailures sendPktAllocFailures specialPktAllocFailures"
    " socketGreedy bogusPacketOnRead bogusHost noPacketOnRead noPacketBuffersOnRead selects"
    " sendSelects"
    + " packetsRead" * RX_N_PACKET_TYPES
    + " dataPacketsRead ackPacketsRead dupPacketsRead spuriousPacketsRead"
    + " packetsSent" * RX_N_PACKET_TYPES
    + " ackPacketsSent pingPacketsSent abortPacketsSent busyPacketsSent dataPacketsSent"
    " dataPacketsReSent dataPacketsPushed ignoreAckedPacket totalRtt totalRttUsec minRtt"
    " minRttUsec maxRtt maxRttUsec nRttSamples nServerConns nClientConns nPeerStructs"
    " nCallStructs nFreeCallStructs netSendFailures fatalErrors ignorePacketDally"
    " receiveCbufPktAllocFailures sendCbufPktAllocFailures nBusies spare spare spare spare"
).split()
RX_STATS = struct.Struct(f">{len(_FIELDS)}i")
#: Word index of each field (the first, for the per-type arrays).
_AT = {name: _FIELDS.index(name) for name in _FIELDS}


class RxStats:
    """Endpoint-wide counters.  `read` and `sent` are indexed by the packet type byte, so
    any byte a hostile datagram carries is a valid index; DATA sent is counted on the peers
    instead (per burst)."""

    __slots__ = (
        "bogus",
        "bogus_host",
        "dup_read",
        "pings_sent",
        "pushed",
        "read",
        "send_failures",
        "sent",
        "short",
        "spurious_read",
    )

    def __init__(self) -> None:
        self.read = [0] * 256
        self.sent = [0] * 256
        self.dup_read = 0
        self.spurious_read = 0
        self.pings_sent = 0
        self.pushed = 0
        self.bogus = 0
        self.bogus_host = ""
        #: Datagrams too short to hold an Rx header (bogus too).
        self.short = 0
        self.send_failures = 0

    def dropped(self, host: str) -> None:
        """A datagram from `host` dropped unread."""
        self.bogus += 1
        self.bogus_host = host


def _host(address: str) -> int:
    """An IPv4 address as a number; 0 for none."""
    try:
        return int(ipaddress.IPv4Address(address))
    except ValueError:
        return 0


def encode_rx_stats(
    stats: RxStats, peers: Iterable[Peer], *, server_conns: int, client_conns: int, calls: int
) -> bytes:
    """The rx_statistics rxdebug -rxstats reads: our counters and the peers' totals."""
    n_peers = data_sent = resent = 0
    for peer in peers:
        n_peers += 1
        data_sent += peer.data_sent + peer.resends
        resent += peer.resends
    read, sent = stats.read, stats.sent[:]
    sent[P.DATA] = data_sent
    words = [0] * len(_FIELDS)
    words[_AT["packetsRead"] : _AT["packetsRead"] + RX_N_PACKET_TYPES] = read[1:14]
    words[_AT["packetsSent"] : _AT["packetsSent"] + RX_N_PACKET_TYPES] = sent[1:14]
    figures = {
        "bogusPacketOnRead": stats.bogus,
        "bogusHost": _host(stats.bogus_host),
        "dataPacketsRead": read[P.DATA] - stats.dup_read,
        "ackPacketsRead": read[P.ACK],
        "dupPacketsRead": stats.dup_read,
        "spuriousPacketsRead": stats.spurious_read,
        "ackPacketsSent": sent[P.ACK],
        "pingPacketsSent": stats.pings_sent,
        "abortPacketsSent": sent[P.ABORT],
        "busyPacketsSent": sent[P.BUSY],
        "dataPacketsSent": data_sent - resent,
        "dataPacketsReSent": resent,
        "dataPacketsPushed": stats.pushed,
        "nServerConns": server_conns,
        "nClientConns": client_conns,
        "nPeerStructs": n_peers,
        "nCallStructs": calls,
        "netSendFailures": stats.send_failures,
    }
    for name, value in figures.items():
        words[_AT[name]] = value
    return RX_STATS.pack(*(P.wrap_int32(w) for w in words))
