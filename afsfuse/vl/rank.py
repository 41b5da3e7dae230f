"""Server ranks: which of several fileservers or database servers is asked first.

A rank is a number, lowest first, as `fs getserverprefs` shows it.  Its base is the
distance OpenAFS ranks by: this host 5000, a host on one of its subnets 20000, on one of its
(classful) networks 30000, anywhere else 40000.  Within its band a server moves by the round
trip Rx measured to it, a point per 0.1 ms (at most 9999, so it never leaves its band): of
equally near servers the one that answers soonest comes first, as kAFS picks by RTT.  A
measured round trip moves a rank only once it differs from the one the rank was set from by
more than a fifth (and at least half a millisecond), so noise never reorders servers.  A rank
set with `fs setserverprefs` wins over all of it until it is set again.

Sans-I/O: fs/ranker.py feeds the peers' smoothed round trips in on a timer; rotation and the
VL client only read ranks, a dictionary lookup per candidate.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

#: (host, port), as the socket module gives it.
Address = tuple[str, int]

RANK_HOST, RANK_SUBNET, RANK_NETWORK, RANK_ELSEWHERE = 5000, 20000, 30000, 40000
#: The largest rank: an unsigned short in OpenAFS.
MAX_RANK = 0xFFFF
#: Seconds of round trip worth one rank point, and the most points a round trip adds.
RTT_POINT = 0.0001
MAX_RTT_POINTS = 9999
#: A new round trip moves a rank when it differs from the one in use by more than this
#: fraction of it, and by more than HYSTERESIS_FLOOR seconds.
HYSTERESIS = 0.2
HYSTERESIS_FLOOR = 0.0005


def _classful_mask(address: int) -> int:
    for top_bits, width, mask in (
        (0, 1, 0xFF000000),
        (0b10, 2, 0xFFFF0000),
        (0b110, 3, 0xFFFFFF00),
    ):
        if address >> (32 - width) == top_bits:
            return mask
    return 0


def distance_rank(address: str, interfaces: list[tuple[int, int]]) -> int:
    """The rank OpenAFS gives a server at `address` from this host's (address, netmask)
    interfaces (without the random 0-14 it adds to spread equal servers: here the round
    trip tells them apart)."""
    try:
        server = int(ipaddress.IPv4Address(address))
    except ValueError:
        return RANK_ELSEWHERE
    rank = RANK_ELSEWHERE
    for mine, subnet_mask in interfaces:
        network_mask = _classful_mask(mine)
        if server & network_mask != mine & network_mask:
            continue
        if server & subnet_mask != mine & subnet_mask:
            rank = min(rank, RANK_NETWORK)
        else:
            rank = min(rank, RANK_HOST if server == mine else RANK_SUBNET)
    return rank


@dataclass
class Rank:
    """One server address's rank and what it was made of."""

    #: By distance.
    base: int
    #: Set by `fs setserverprefs`; wins when not None.
    pref: int | None = None
    #: The round trip (seconds) the rank was last set from; None before one was measured.
    rtt: float | None = None
    #: Met in use (not only named by a preference): fs/ranker.py keeps its round trip known.
    met: bool = False
    #: The rank in effect.
    value: int = 0

    def settle(self) -> None:
        if self.pref is not None:
            self.value = self.pref
        elif self.rtt is None:
            self.value = self.base
        else:
            self.value = self.base + min(MAX_RTT_POINTS, round(self.rtt / RTT_POINT))


class Ranks:
    """The ranks of every fileserver and database server address met, by (host, port)."""

    def __init__(self, interfaces: Callable[[], list[tuple[int, int]]]) -> None:
        self._interfaces = interfaces
        self._known: list[tuple[int, int]] | None = None
        self._ranks: dict[Address, Rank] = {}

    def _entry(self, addr: Address) -> Rank:
        entry = self._ranks.get(addr)
        if entry is None:
            if self._known is None:
                self._known = self._interfaces()
            entry = self._ranks[addr] = Rank(distance_rank(addr[0], self._known))
            entry.settle()
        return entry

    def rank(self, addr: Address) -> int:
        """The rank in effect for a server in use (so from now on it is also measured)."""
        entry = self._ranks.get(addr)
        if entry is None or not entry.met:
            entry = self._entry(addr)
            entry.met = True
        return entry.value

    def peek(self, addr: Address) -> int:
        """The rank `addr` has or would have, without counting it as met."""
        return self._entry(addr).value

    def set_pref(self, addr: Address, rank: int) -> None:
        """`fs setserverprefs`: `addr` ranks `rank` (bounded to 0..MAX_RANK) from now on,
        whatever its distance and round trip; one not met yet is noted for later."""
        entry = self._entry(addr)
        entry.pref = min(max(rank, 0), MAX_RANK)
        entry.settle()

    def measured(self, addr: Address, rtt: float) -> bool:
        """Take a smoothed round trip into `addr`'s rank, past the hysteresis only; True
        when the rank in effect changed."""
        entry = self._entry(addr)
        old = entry.rtt
        if old is not None and abs(rtt - old) <= max(old * HYSTERESIS, HYSTERESIS_FLOOR):
            return False
        entry.rtt = rtt
        before = entry.value
        entry.settle()
        return entry.value != before

    def met(self) -> list[Address]:
        """Every address met in use."""
        return [addr for addr, entry in self._ranks.items() if entry.met]
