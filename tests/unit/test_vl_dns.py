"""Cell discovery through DNS, against the fake authoritative server on 127.0.0.1."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import dns.resolver
import pytest
import trio
import trio.testing

from afsfuse.testing.dns import FakeDNSServer, fake_dns
from afsfuse.vl.dns import (
    MAX_HOSTS,
    PRSERVER,
    CellLookupError,
    CellLookupTimeout,
    CellResolver,
    DnsServer,
    lookup_cell,
    make_resolver,
)

SRV_NAME = "_afs3-vlserver._udp.example.org"
HOSTS = [
    "vl1.example.org. 3600 A 192.0.2.1",
    "vl2.example.org. 3600 A 192.0.2.2",
    "vl3.example.org. 3600 A 192.0.2.3",
]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def server() -> AsyncIterator[FakeDNSServer]:
    async with fake_dns(HOSTS) as s:
        yield s


def cell_resolver(server: FakeDNSServer, clock: FakeClock, **kw) -> CellResolver:
    kw.setdefault("timeout", 2.0)
    return CellResolver(make_resolver([server.addr], try_timeout=0.3), clock=clock, **kw)


async def test_srv_is_preferred_and_afsdb_never_asked(server, clock):
    server.set_records(
        [
            *HOSTS,
            f"{SRV_NAME}. 3600 SRV 0 0 7003 vl1.example.org.",
            "example.org. 3600 AFSDB 1 vl2.example.org.",
        ]
    )
    found = await cell_resolver(server, clock).lookup("example.org")
    assert found is not None
    assert found.source == "srv"
    assert found.cell == "example.org"
    assert found.servers == (DnsServer("vl1.example.org", "192.0.2.1", 7003, 0),)
    assert server.count(SRV_NAME, "SRV") == 1
    assert server.count("example.org", "AFSDB") == 0


async def test_srv_order_ports_and_ranks(server, clock):
    server.set_records(
        [
            *HOSTS,
            f"{SRV_NAME}. 3600 SRV 10 0 7003 vl3.example.org.",
            f"{SRV_NAME}. 3600 SRV 0 5 17003 vl1.example.org.",
            f"{SRV_NAME}. 3600 SRV 0 50 27003 vl2.example.org.",
        ]
    )
    found = await cell_resolver(server, clock).lookup("Example.ORG.")
    assert found is not None
    # Priority first, then the heavier weight; every port from its own record.
    assert found.addresses == [("192.0.2.2", 27003), ("192.0.2.1", 17003), ("192.0.2.3", 7003)]
    assert [s.rank for s in found.servers] == [0, 0, 10]


async def test_afsdb_fallback_keeps_subtype_1_on_port_7003(server, clock):
    server.set_records(
        [
            *HOSTS,
            "example.org. 3600 AFSDB 1 vl1.example.org.",
            "example.org. 3600 AFSDB 1 vl2.example.org.",
            "example.org. 3600 AFSDB 2 vl3.example.org.",
        ]
    )
    found = await cell_resolver(server, clock).lookup("example.org")
    assert found is not None
    assert found.source == "afsdb"
    assert sorted(found.addresses) == [("192.0.2.1", 7003), ("192.0.2.2", 7003)]
    assert server.count(SRV_NAME, "SRV") == 1
    assert server.count("vl3.example.org", "A") == 0


async def test_every_a_record_is_kept_and_aaaa_is_never_asked(server, clock):
    server.set_records(
        [
            "example.org. 3600 AFSDB 1 vl.example.org.",
            "vl.example.org. 3600 A 192.0.2.7",
            "vl.example.org. 3600 A 192.0.2.8",
            "vl.example.org. 3600 AAAA 2001:db8::7",
        ]
    )
    found = await cell_resolver(server, clock).lookup("example.org")
    assert found is not None
    assert sorted(found.addresses) == [("192.0.2.7", 7003), ("192.0.2.8", 7003)]
    assert server.count("vl.example.org", "AAAA") == 0


async def test_cname_alias_reports_the_real_cell_name(server, clock):
    server.set_records(
        [
            *HOSTS,
            "alias.example.net. 3600 CNAME example.org.",
            "example.org. 3600 AFSDB 1 vl1.example.org.",
        ]
    )
    found = await cell_resolver(server, clock).lookup("alias.example.net")
    assert found is not None
    assert found.cell == "example.org"
    assert found.addresses == [("192.0.2.1", 7003)]


async def test_unknown_cell_is_none_fast_and_negatively_cached(server, clock):
    resolver = cell_resolver(server, clock, negative_ttl=600.0)
    started = time.monotonic()
    assert await resolver.lookup("nosuch.example.org") is None
    assert time.monotonic() - started < 0.5
    asked = sum(server.queries.values())
    assert asked == 2  # the SRV name, then AFSDB

    clock.now += 599
    assert await resolver.lookup("NoSuch.example.org") is None
    assert sum(server.queries.values()) == asked

    clock.now += 2
    assert await resolver.lookup("nosuch.example.org") is None
    assert sum(server.queries.values()) == 2 * asked


async def test_positive_cache_lasts_the_smallest_ttl(server, clock):
    server.set_records(
        [
            f"{SRV_NAME}. 300 SRV 0 0 7003 vl.example.org.",
            "vl.example.org. 120 A 192.0.2.1",
        ]
    )
    resolver = cell_resolver(server, clock, min_ttl=0.0)
    first = await resolver.lookup("example.org")
    assert first is not None
    assert first.expires_at == clock.now + 120

    clock.now += 119
    assert await resolver.lookup("example.org") == first
    assert server.count(SRV_NAME, "SRV") == 1

    clock.now += 2
    server.set_records(
        [
            f"{SRV_NAME}. 300 SRV 0 0 7003 vl.example.org.",
            "vl.example.org. 120 A 192.0.2.9",
        ]
    )
    refreshed = await resolver.lookup("example.org")
    assert refreshed is not None
    assert refreshed.addresses == [("192.0.2.9", 7003)]
    assert server.count(SRV_NAME, "SRV") == 2


async def test_tiny_ttls_are_raised_to_the_minimum(server, clock):
    server.set_records(["example.org. 0 AFSDB 1 vl1.example.org.", *HOSTS])
    resolver = cell_resolver(server, clock, min_ttl=60.0)
    found = await resolver.lookup("example.org")
    assert found is not None
    assert found.expires_at == clock.now + 60
    await resolver.lookup("example.org")
    assert server.count("example.org", "AFSDB") == 1


async def test_silent_server_times_out_within_the_budget_and_is_not_cached(clock):
    async with fake_dns(HOSTS, silent=True) as server:
        resolver = cell_resolver(server, clock, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(CellLookupTimeout):
            await resolver.lookup("example.org")
        assert time.monotonic() - started < 1.5
        asked = server.count(SRV_NAME, "SRV")
        assert asked >= 1

        server.silent = False
        server.set_records(["example.org. 3600 AFSDB 1 vl1.example.org.", *HOSTS])
        found = await resolver.lookup("example.org")
        assert found is not None
        assert server.count(SRV_NAME, "SRV") > asked


async def test_slow_server_within_the_budget_still_answers(clock):
    async with fake_dns(["example.org. 3600 AFSDB 1 vl1.example.org.", *HOSTS]) as server:
        server.delay = 0.1
        found = await cell_resolver(server, clock, timeout=2.0).lookup("example.org")
        assert found is not None
        assert found.addresses == [("192.0.2.1", 7003)]


async def test_server_failure_is_an_error_not_a_timeout_and_not_cached(server, clock):
    server.servfail.add(SRV_NAME)
    resolver = cell_resolver(server, clock)
    with pytest.raises(CellLookupError) as raised:
        await resolver.lookup("example.org")
    assert not isinstance(raised.value, CellLookupTimeout)
    with pytest.raises(CellLookupError):
        await resolver.lookup("example.org")
    assert server.count(SRV_NAME, "SRV") == 2


async def test_hosts_that_do_not_resolve_are_left_out(server, clock):
    server.set_records(
        [
            *HOSTS,
            f"{SRV_NAME}. 3600 SRV 0 0 7003 vl1.example.org.",
            f"{SRV_NAME}. 3600 SRV 0 0 7003 gone.example.org.",
            f"{SRV_NAME}. 3600 SRV 0 0 7003 vl2.example.org.",
        ]
    )
    server.servfail.add("vl2.example.org")
    found = await cell_resolver(server, clock).lookup("example.org")
    assert found is not None
    assert found.addresses == [("192.0.2.1", 7003)]

    # With no host left, the failure is reported rather than taken for "no such cell".
    server.servfail.add("vl1.example.org")
    clock.now += 7200
    with pytest.raises(CellLookupError):
        await cell_resolver(server, clock).lookup("example.org")


@pytest.mark.parametrize(
    "name", ["", ".", "..", ".trash", "a b.org", "-x.org", "x_y.org", "a" * 64 + ".org", "é.org"]
)
async def test_invalid_cell_names_are_refused_without_a_query(server, clock, name):
    assert await cell_resolver(server, clock).lookup(name) is None
    assert not server.queries


async def test_hostile_srv_records_are_skipped_and_afsdb_is_tried(server, clock):
    server.set_records(
        [
            *HOSTS,
            f"{SRV_NAME}. 3600 SRV 0 0 7003 .",
            f"{SRV_NAME}. 3600 SRV 0 0 0 vl1.example.org.",
            f"{SRV_NAME}. 3600 SRV 0 0 7003 bad\\000name.example.org.",
            f"{SRV_NAME}. 3600 SRV 0 0 7003 under_score.example.org.",
            "example.org. 3600 AFSDB 1 vl3.example.org.",
            "example.org. 3600 AFSDB 1 .",
        ]
    )
    found = await cell_resolver(server, clock).lookup("example.org")
    assert found is not None
    assert found.source == "afsdb"
    assert found.addresses == [("192.0.2.3", 7003)]
    asked_a = {name for (name, rdtype) in server.queries if rdtype == "A"}
    assert asked_a == {"vl3.example.org"}


async def test_unusable_addresses_are_dropped(server, clock):
    server.set_records(
        [
            "example.org. 3600 AFSDB 1 vl.example.org.",
            "vl.example.org. 3600 A 0.0.0.0",
            "vl.example.org. 3600 A 224.0.0.1",
            "vl.example.org. 3600 A 255.255.255.255",
        ]
    )
    assert await cell_resolver(server, clock).lookup("example.org") is None


async def test_huge_answer_is_capped(server, clock):
    records = [f"{SRV_NAME}. 3600 SRV {i % 7} 0 7003 h{i}.example.org." for i in range(500)]
    records += [f"h{i}.example.org. 3600 A 10.0.{i // 256}.{i % 256}" for i in range(500)]
    records += [f"h0.example.org. 3600 A 10.1.0.{i}" for i in range(1, 200)]
    server.set_records(records)
    found = await cell_resolver(server, clock).lookup("example.org")
    assert found is not None
    assert len(found.servers) == MAX_HOSTS
    # The lowest priority wins, and the host with 200 addresses takes one slot, not all.
    assert all(s.rank == 0 for s in found.servers)
    assert len({s.hostname for s in found.servers}) == MAX_HOSTS
    assert sum(n for (_, rdtype), n in server.queries.items() if rdtype == "A") <= MAX_HOSTS


async def test_concurrent_lookups_share_one_set_of_queries(server, clock):
    server.set_records(["example.org. 3600 AFSDB 1 vl1.example.org.", *HOSTS])
    server.delay = 0.05
    resolver = cell_resolver(server, clock)
    results = []

    async def look() -> None:
        results.append(await resolver.lookup("example.org"))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(look)
    assert len(results) == 5
    assert results[0] is not None
    assert all(r == results[0] for r in results)
    assert server.count(SRV_NAME, "SRV") == 1
    assert server.count("example.org", "AFSDB") == 1


async def test_a_waiter_takes_over_when_the_first_lookup_is_cancelled(server, clock):
    server.set_records(["example.org. 3600 AFSDB 1 vl1.example.org.", *HOSTS])
    server.silent = True
    resolver = cell_resolver(server, clock)
    results = []

    async def first(scope: trio.CancelScope) -> None:
        with scope:
            await resolver.lookup("example.org")
        results.append("cancelled" if scope.cancelled_caught else "finished")

    async def second() -> None:
        results.append(await resolver.lookup("example.org"))

    async with trio.open_nursery() as nursery:
        first_scope = trio.CancelScope()
        nursery.start_soon(first, first_scope)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(second)
        await trio.testing.wait_all_tasks_blocked()
        assert server.count(SRV_NAME, "SRV") == 1  # the second is waiting, not asking
        server.silent = False
        first_scope.cancel()
    assert results[0] == "cancelled"
    assert results[1] is not None
    assert results[1].addresses == [("192.0.2.1", 7003)]
    assert server.count(SRV_NAME, "SRV") >= 2


async def test_prserver_uses_its_own_srv_records(server, clock):
    server.set_records(
        [
            *HOSTS,
            "_afs3-prserver._udp.example.org. 3600 SRV 0 0 7102 vl3.example.org.",
            "example.org. 3600 AFSDB 1 vl1.example.org.",
        ]
    )
    found = await cell_resolver(server, clock).lookup("example.org", PRSERVER)
    assert found is not None
    assert found.service == PRSERVER
    assert found.addresses == [("192.0.2.3", 7102)]


async def test_prserver_falls_back_to_the_vl_servers_on_port_7002(server, clock):
    server.set_records(["example.org. 3600 AFSDB 1 vl1.example.org.", *HOSTS])
    resolver = cell_resolver(server, clock)
    found = await resolver.lookup("example.org", PRSERVER)
    assert found is not None
    assert found.addresses == [("192.0.2.1", 7002)]
    vl = await resolver.lookup("example.org")
    assert vl is not None
    assert vl.addresses == [("192.0.2.1", 7003)]
    assert server.count("example.org", "AFSDB") == 1


async def test_lookup_cell_uses_the_given_resolver(server, clock):
    server.set_records(["example.org. 3600 AFSDB 1 vl1.example.org.", *HOSTS])
    found = await lookup_cell("example.org", cell_resolver(server, clock))
    assert found is not None
    assert found.addresses == [("192.0.2.1", 7003)]


async def test_fake_server_tells_nodata_from_nxdomain_and_ignores_garbage(server):
    server.set_records([f"{SRV_NAME}. 3600 SRV 0 0 7003 vl1.example.org.", *HOSTS])
    resolver = make_resolver([server.addr], try_timeout=0.3)
    with trio.socket.socket(type=trio.socket.SOCK_DGRAM) as sock:
        await sock.sendto(b"\x00garbage", server.addr)
    answer = await resolver.resolve("vl1.example.org", "A")
    assert [r.address for r in answer] == ["192.0.2.1"]
    # example.org owns nothing but has descendants: the name exists, the type does not.
    with pytest.raises(dns.resolver.NoAnswer):
        await resolver.resolve("example.org", "AFSDB")
    with pytest.raises(dns.resolver.NXDOMAIN):
        await resolver.resolve("nosuch.example.org", "A")
    assert server.count("example.org", "AFSDB") == 1
