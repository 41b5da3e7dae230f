"""A fake authoritative DNS server on loopback, so cell discovery is tested without the Internet.

It answers from zone-file lines given by the test, says NXDOMAIN for names it does not hold,
counts every question it receives (so a test can prove a cache saved a query), and can be
told to answer late, or not at all, to drive the resolver's timeouts.  It runs as a task in
the test's own trio loop and serves UDP only: answers of any size go out whole, as a hostile
server would send them.

    async with fake_dns(["example.org. 300 AFSDB 1 vl.example.org.",
                         "vl.example.org. 300 A 192.0.2.1"]) as server:
        resolver = make_resolver([server.addr])
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import trio

MAX_CNAME_CHAIN = 8


def _key(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


class FakeDNSServer:
    """Zone data, query counts and misbehaviour switches of one running fake server.

    `delay` (seconds before each answer), `silent` (drop every question) and `servfail`
    (names answered with SERVFAIL) may be changed while the server runs.
    """

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self._sock = sock
        self.addr: tuple[str, int] = sock.getsockname()
        self.queries: Counter[tuple[str, str]] = Counter()
        self.delay = 0.0
        self.silent = False
        self.servfail: set[str] = set()
        self._rrsets: dict[tuple[dns.name.Name, dns.rdatatype.RdataType], dns.rrset.RRset] = {}

    def set_records(self, records: Iterable[str]) -> None:
        """Replace the zone with `records`: lines `name ttl TYPE rdata`, names absolute."""
        self._rrsets = {}
        for line in records:
            name, ttl, rdtype, rdata = line.split(None, 3)
            rrset = dns.rrset.from_text(name, int(ttl), dns.rdataclass.IN, rdtype, rdata)
            held = self._rrsets.get((rrset.name, rrset.rdtype))
            if held is None:
                self._rrsets[(rrset.name, rrset.rdtype)] = rrset
            else:
                held.union_update(rrset)  # type: ignore[no-untyped-call]

    def count(self, name: str, rdtype: str) -> int:
        """How many times (name, type) was asked; the name without its final dot."""
        return self.queries[(name.rstrip(".").lower(), rdtype.upper())]

    def _exists(self, name: dns.name.Name) -> bool:
        # A name "exists" if it owns records or has descendants that do (an empty non-terminal).
        return any(owner.is_subdomain(name) for owner, _ in self._rrsets)

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        name, rdtype = question.name, question.rdtype
        if _key(name) in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        for _ in range(MAX_CNAME_CHAIN):
            rrset = self._rrsets.get((name, rdtype))
            if rrset is not None:
                response.answer.append(rrset)
                break
            alias = self._rrsets.get((name, dns.rdatatype.CNAME))
            if alias is None:
                if not self._exists(name):
                    response.set_rcode(dns.rcode.NXDOMAIN)
                break
            response.answer.append(alias)
            name = alias[0].target
        return response

    async def _reply(self, query: dns.message.Message, peer: tuple[str, int]) -> None:
        if self.delay:
            await trio.sleep(self.delay)
        await self._sock.sendto(self.answer(query).to_wire(), peer)

    async def serve(self, nursery: trio.Nursery) -> None:
        while True:
            data, peer = await self._sock.recvfrom(65535)
            try:
                query = dns.message.from_wire(data)
            except dns.exception.DNSException:
                continue
            for question in query.question:
                self.queries[(_key(question.name), dns.rdatatype.to_text(question.rdtype))] += 1
            if not self.silent:
                nursery.start_soon(self._reply, query, peer)


@asynccontextmanager
async def fake_dns(
    records: Iterable[str] = (), *, delay: float = 0.0, silent: bool = False
) -> AsyncIterator[FakeDNSServer]:
    """Run a fake server on 127.0.0.1 (ephemeral port) for the duration of the block."""
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        await sock.bind(("127.0.0.1", 0))
        server = FakeDNSServer(sock)
        server.set_records(records)
        server.delay = delay
        server.silent = silent
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.serve, nursery)
            try:
                yield server
            finally:
                nursery.cancel_scope.cancel()
