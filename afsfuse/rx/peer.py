"""What the Rx engine knows of one remote host:port: round-trip time and packet size.

Every connection to an address shares its Peer, so a round trip measured on one call times
the retransmissions of the next.  It also counts what went to and came from the address,
for `rxdebug -peers` (rx/stats.py sums them for -rxstats).  Sans-I/O, like the rest of the
core: the path MTU it starts from is looked up by the driver (rx/pathmtu.py).

Packet sizes count the 28-byte Rx header but not the IP and UDP headers, as OpenAFS does.
A peer's packets may grow past 1444 bytes only when both our route to it and its ACK
trailer allow, so a 1500-byte path never sees an IP fragment.
"""

from __future__ import annotations

#: A UDP address as the socket module gives it.
Address = tuple[str, int]

INITIAL_RTO = 2.0
#: Our sender asks for an immediate ack of each burst, so no delayed-ack allowance is added.
MIN_RTO = 0.02
MAX_RTO = 60.0
#: Every Rx peer takes this, and we send no more until its ACK trailer says it takes more:
#: a 1500-byte frame less the headers OpenAFS reserves (OLD_MAX_PACKET_SIZE).
OLD_MAX_PACKET = 1444
#: The largest packet we send or advertise: OpenAFS's own sending limit (rx_MyMaxSendSize),
#: which a 9000-byte link allows.
MAX_PACKET = 8588
MIN_PACKET = 520
#: IPv6, its fragment header and UDP: what OpenAFS keeps free below the link MTU
#: (RX_IPUDP_SIZE), so one size rule fits both address families.
IP_UDP_OVERHEAD = 56
ETHERNET_MTU = 1500
#: Bounds of the first wait before pinging a server whose reply stream went quiet (two
#: round trips in between); the wait doubles while nothing comes.
STALL_PROBE_MIN = 0.005
STALL_PROBE_MAX = 0.05
#: A request is followed by a ping (a round-trip sample) when the peer's last sample is
#: older than this, so that the round trip of a server in use stays measured (server
#: ranks, fs/ranker.py) at the cost of at most a ping and its answer a second.
RTT_REFRESH = 1.0
#: A sample after this long without one starts the estimate afresh: the path may have
#: changed meanwhile (a replica probed now and then must not keep its old round trip).
RTT_STALE = 5.0


class Peer:
    """Round-trip estimate, retransmit timeout and packet size for one address."""

    __slots__ = (
        "addr",
        "bytes_received",
        "bytes_sent",
        "data_sent",
        "heard",
        "if_mtu",
        "max_packet",
        "resends",
        "rto",
        "rttvar",
        "sampled_at",
        "srtt",
        "stall_wait",
        "their_if_mtu",
        "their_max_mtu",
    )

    def __init__(self, addr: Address, path_mtu: int = ETHERNET_MTU) -> None:
        self.addr = addr
        #: The largest packet our route to the address carries whole: what our ACKs
        #: advertise as both ifMTU and maxMTU (a larger maxMTU would let an OpenAFS
        #: sender fragment), and the bound on what we send.
        self.if_mtu = packet_limit(path_mtu)
        #: The peer's last advertised maxMTU (0 until its first ACK trailer) and ifMTU.
        self.their_max_mtu = 0
        self.their_if_mtu: int | None = None
        #: When a packet from this address last arrived on one of our connections.
        self.heard = float("-inf")
        self.srtt = 0.0  # 0 until the first sample
        self.rttvar = 0.0
        #: When the last round-trip sample was taken.
        self.sampled_at = float("-inf")
        self.rto = INITIAL_RTO
        #: The largest DATA packet we build for the peer now (header included).
        self.max_packet = min(OLD_MAX_PACKET, self.if_mtu)
        #: How long a reply stream may go quiet before we probe the sender: two round
        #: trips, bounded.  Kept here because every received DATA packet re-arms it.
        self.stall_wait = STALL_PROBE_MIN
        #: DATA packets sent the first time, and resent; bytes of call data
        #: written to and read from calls with it (counted per write and read, not per
        #: packet: no headers, acks or resends).
        self.data_sent = 0
        self.resends = 0
        self.bytes_sent = 0
        self.bytes_received = 0

    def rtt_sample(self, sample: float, now: float) -> None:
        """Van Jacobson: smoothed RTT and mean deviation; a fresh sample undoes back-off.
        The first sample, or the first after RTT_STALE, sets the estimate outright."""
        if sample < 0:
            return
        # Every ACK of a bulk send brings a sample: comparisons, not min() and max() calls.
        srtt = self.srtt
        if srtt == 0.0 or now - self.sampled_at >= RTT_STALE:
            srtt = sample
            rttvar = sample / 2
        else:
            err = sample - srtt
            srtt += err / 8
            rttvar = self.rttvar
            rttvar += ((err if err >= 0 else -err) - rttvar) / 4
        self.srtt = srtt
        self.rttvar = rttvar
        self.sampled_at = now
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

    def set_max_packet(self, max_mtu: int, if_mtu: int | None) -> None:
        """The peer's ACK trailer: it takes packets up to max_mtu, its link carries if_mtu.

        We send the smallest of those and our own path's limit (OpenAFS's natMTU and
        maxMTU rules, without its IP-fragment "jumbograms").
        """
        self.their_max_mtu = max_mtu
        self.their_if_mtu = if_mtu
        limit = min(self.if_mtu, max_mtu, if_mtu or max_mtu)
        self.max_packet = MIN_PACKET if limit < MIN_PACKET else limit


def packet_limit(path_mtu: int) -> int:
    """The largest Rx packet a path of this MTU carries unfragmented, within our bounds."""
    return max(MIN_PACKET, min(MAX_PACKET, path_mtu - IP_UDP_OVERHEAD))
