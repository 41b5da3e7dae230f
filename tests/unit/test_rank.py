"""Server ranks (vl/rank.py) and the ranker that keeps them current (fs/ranker.py)."""

from __future__ import annotations

import math

import trio

from afsfuse.fs.ranker import IDLE_ROUNDS, MAX_IDLE_PROBES, Ranker
from afsfuse.vl.rank import (
    MAX_RANK,
    RANK_ELSEWHERE,
    RANK_HOST,
    RANK_NETWORK,
    RANK_SUBNET,
    Ranks,
    distance_rank,
)

#: This host: 10.1.2.3/24 and 192.168.7.1/24.
INTERFACES = [(0x0A010203, 0xFFFFFF00), (0xC0A80701, 0xFFFFFF00)]
FS, VL = 7000, 7003


def test_distance_bands_as_openafs() -> None:
    hosts = ("10.1.2.3", "10.1.2.200", "10.9.9.9", "192.168.7.9", "192.168.8.1", "8.8.8.8")
    ranks = [distance_rank(addr, INTERFACES) for addr in hosts]
    assert ranks == [RANK_HOST, RANK_SUBNET, RANK_NETWORK, RANK_SUBNET, RANK_ELSEWHERE, 40000]
    assert distance_rank("fs1.example.com", INTERFACES) == RANK_ELSEWHERE


def test_round_trip_orders_servers_within_their_band_never_across() -> None:
    ranks = Ranks(lambda: INTERFACES)
    subnet, network = ("10.1.2.9", FS), ("10.5.0.1", FS)
    assert (ranks.rank(subnet), ranks.rank(network)) == (RANK_SUBNET, RANK_NETWORK)
    assert ranks.measured(subnet, 0.0123)
    assert ranks.rank(subnet) == RANK_SUBNET + 123
    assert ranks.measured(subnet, 30.0)  # a satellite link still ranks as on our subnet
    assert ranks.measured(network, 0.0001)
    assert RANK_SUBNET < ranks.rank(subnet) < RANK_NETWORK < ranks.rank(network)


def test_hysteresis_a_fifth_and_at_least_half_a_millisecond() -> None:
    ranks = Ranks(lambda: INTERFACES)
    addr = ("10.1.2.9", FS)
    ranks.measured(addr, 0.010)
    assert not ranks.measured(addr, 0.0119)  # within a fifth
    assert not ranks.measured(addr, 0.0081)
    assert ranks.rank(addr) == RANK_SUBNET + 100
    assert ranks.measured(addr, 0.0121)
    assert ranks.rank(addr) == RANK_SUBNET + 121
    lan = ("10.1.2.10", FS)
    ranks.measured(lan, 0.0002)
    assert not ranks.measured(lan, 0.0006)  # a fifth of 0.2 ms is noise on a LAN: the floor
    assert ranks.measured(lan, 0.0008)


def test_a_preference_wins_until_set_again_and_is_bounded() -> None:
    ranks = Ranks(lambda: INTERFACES)
    addr = ("10.1.2.9", FS)
    ranks.set_pref(addr, 7)
    assert ranks.met() == []  # named by a preference only: not probed
    assert ranks.rank(addr) == 7 and ranks.met() == [addr]
    assert not ranks.measured(addr, 0.5)
    assert ranks.rank(addr) == 7
    ranks.set_pref(addr, 1 << 20)
    assert ranks.rank(addr) == MAX_RANK
    # A VL server's preference is its own: the fileserver on the same host keeps its rank.
    ranks.set_pref(("10.1.2.20", VL), 3)
    assert (ranks.rank(("10.1.2.20", VL)), ranks.rank(("10.1.2.20", FS))) == (3, RANK_SUBNET)


def test_interfaces_are_read_once() -> None:
    asked = []

    def interfaces() -> list[tuple[int, int]]:
        asked.append(1)
        return INTERFACES

    ranks = Ranks(interfaces)
    for addr in ("10.1.2.9", "10.1.2.10", "8.8.8.8"):
        ranks.rank((addr, FS))
    assert asked == [1]


class Peers:
    """Round trips as Rx would have measured them, and the probes a ranker sends."""

    def __init__(self) -> None:
        self.known: dict[tuple[str, int], tuple[float, float]] = {}
        self.probed: list[tuple[str, int]] = []

    def round_trip(self, addr: tuple[str, int]) -> tuple[float, float] | None:
        return self.known.get(addr)

    async def probe(self, addr: tuple[str, int]) -> None:
        self.probed.append(addr)
        await trio.sleep(0.001)
        self.known[addr] = (0.003 if addr[1] == VL else 0.002, trio.current_time())


async def test_idle_servers_are_probed_longest_silent_first_and_few_a_round(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Servers nobody uses are measured too; those heard from lately are not asked."""
    peers, ranks = Peers(), Ranks(lambda: INTERFACES)
    ranker = Ranker(ranks, peers.round_trip, peers.probe, lambda: 1.0, 1.0)
    await trio.sleep(100)
    now = trio.current_time()
    servers = [(f"10.1.2.{n}", FS) for n in range(1, 8)] + [("10.1.2.50", VL)]
    for addr in servers:
        ranks.rank(addr)
    peers.known[servers[0]] = (0.001, now - 1)  # in use
    peers.known[servers[1]] = (0.001, now - 50)
    peers.known[servers[2]] = (0.001, now - 20)
    peers.known[servers[3]] = (0.001, now - IDLE_ROUNDS + 1)  # not silent long enough
    chosen = ranker.idle(now)
    assert len(chosen) == MAX_IDLE_PROBES
    assert chosen == [servers[n] for n in (4, 5, 6, 7)]  # never measured: silent longest
    await ranker.round()
    assert sorted(peers.probed) == sorted(chosen)
    assert [ranks.rank(addr) for addr in chosen] == [RANK_SUBNET + 20] * 3 + [RANK_SUBNET + 30]
    assert ranks.rank(servers[0]) == RANK_SUBNET + 10  # measured by use, taken the same round
    peers.probed.clear()
    assert ranker.idle(trio.current_time()) == [servers[1], servers[2]]
    await ranker.round()
    assert sorted(peers.probed) == [servers[1], servers[2]]


async def test_a_probe_that_hangs_is_cut_and_the_round_goes_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ranks = Ranks(lambda: INTERFACES)
    known = {("10.1.2.1", FS): (0.004, -math.inf)}

    async def hang(addr: tuple[str, int]) -> None:
        await trio.sleep_forever()

    ranker = Ranker(ranks, known.get, hang, lambda: 5.0, 2.0)
    ranks.rank(("10.1.2.1", FS))
    started = trio.current_time()
    await ranker.round()
    assert trio.current_time() - started == 4.0  # twice the probe timeout
    assert ranks.rank(("10.1.2.1", FS)) == RANK_SUBNET + 40


async def test_the_task_rounds_at_the_interval_and_at_once_when_it_changes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    peers, ranks = Peers(), Ranks(lambda: INTERFACES)
    interval = [100.0]
    ranker = Ranker(ranks, peers.round_trip, peers.probe, lambda: interval[0], 1.0)
    ranks.rank(("10.1.2.1", FS))
    async with trio.open_nursery() as nursery:
        await nursery.start(ranker.run)
        await trio.sleep(99)
        assert peers.probed == []
        interval[0] = 2.0  # `fs checkservers -interval 2`: a round at once
        ranker.interval_changed()
        await trio.sleep(0.5)
        assert peers.probed == [("10.1.2.1", FS)]
        assert ranks.rank(("10.1.2.1", FS)) == RANK_SUBNET + 20
        await trio.sleep(2)  # then every 2 s (heard 2 s ago: not idle, no probe)
        assert peers.probed == [("10.1.2.1", FS)]
        interval[0] = 0.1
        ranker.interval_changed()
        await trio.sleep(0.05)  # silent for over ten rounds of 0.1 s now: probed again
        assert peers.probed == [("10.1.2.1", FS)] * 2
        nursery.cancel_scope.cancel()
