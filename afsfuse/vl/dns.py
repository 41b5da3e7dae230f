"""Finding a cell's database servers in DNS: SRV first, then AFSDB, as OpenAFS's afsd does.

A cell missing from CellServDB can still be reached when its domain publishes
`_afs3-vlserver._udp.<cell>` SRV records (priority is the server rank, the port comes from the
record) or AFSDB records of subtype 1 (VL servers on the default port).  Host names are
resolved to IPv4 addresses; AAAA records are not asked for, because Rx here speaks IPv4 only.

Names reach this module from `ls /afs/<anything>`, so it is built for hostile input: invalid
names are refused without a query, "no such cell" is remembered for a while (negative cache),
answers are capped at MAX_HOSTS and checked record by record, concurrent lookups of one cell
share one set of queries, and every lookup is bounded in time.  A timeout or a failing
nameserver raises (it says nothing about the cell); only a clear "not in DNS" returns None.

Only absolute names are queried: a cell name is a DNS domain, and the resolver's search list
would turn `ls /afs/foo` into lookups in the local domain.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Literal, NamedTuple

import dns.asyncbackend
import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.rrset
import trio

VLSERVER = "afs3-vlserver"
PRSERVER = "afs3-prserver"
DEFAULT_PORTS = {VLSERVER: 7003, PRSERVER: 7002}
#: OpenAFS MAXHOSTSPERCELL: servers kept from one answer.
MAX_HOSTS = 8
AFSDB_VLSERVER = 1
#: Entries kept in the cache; `ls /afs/$RANDOM` in a loop must not grow memory without bound.
MAX_CACHE_ENTRIES = 4096

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")


class CellLookupError(Exception):
    """DNS could not tell whether the cell exists (server failure, refusal, bad reply)."""


class CellLookupTimeout(CellLookupError):
    """No answer within the lookup's time budget."""


@dataclass(frozen=True)
class DnsServer:
    hostname: str
    address: str
    port: int
    #: SRV priority (lower is preferred); 0 for AFSDB.
    rank: int


@dataclass(frozen=True)
class CellServers:
    """Servers of one service of one cell, as DNS published them."""

    #: The cell's own name: the owner of the records, lowercased (differs from the name asked
    #: for when DNS aliases it with a CNAME).  Informational only: it comes from DNS.
    cell: str
    service: str
    source: Literal["srv", "afsdb"]
    servers: tuple[DnsServer, ...]
    #: On the CellResolver's clock; the smallest TTL seen, clamped to its limits.
    expires_at: float

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [(server.address, server.port) for server in self.servers]


def make_resolver(
    nameservers: Iterable[tuple[str, int]] | None = None, *, try_timeout: float = 1.0
) -> dns.asyncresolver.Resolver:
    """A dnspython resolver for the given (address, port) nameservers, or the system's."""
    if nameservers is None:
        resolver = dns.asyncresolver.Resolver()
    else:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(a, p) for a, p in nameservers]
    resolver.timeout = try_timeout
    return resolver


def _domain(text: str) -> dns.name.Name | None:
    """`text` as an absolute domain name if it is a plausible host or cell name, else None."""
    text = text.lower().removesuffix(".")
    if not text or len(text) > 253:
        return None
    if not all(_LABEL.match(label) for label in text.split(".")):
        return None
    return dns.name.from_text(text)


def _hostname(name: dns.name.Name) -> str | None:
    """The text of a target name from an answer, if it is a usable host name."""
    try:
        text = name.to_text(omit_final_dot=True)
    except dns.exception.DNSException:
        return None
    return None if _domain(text) is None else text.lower()


_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def _usable_ipv4(text: str) -> bool:
    address = ipaddress.IPv4Address(text)
    return not (address.is_unspecified or address.is_multicast or address == _BROADCAST)


class _Answer(NamedTuple):
    """What a lookup takes from a DNS answer that has records."""

    rrset: dns.rrset.RRset
    #: The owner of the records: the name asked for, or where its CNAMEs led.
    canonical_name: dns.name.Name
    #: The smallest TTL on the way, CNAMEs included.
    minimum_ttl: int


class _Pending:
    """One lookup in progress; later callers for the same key wait for its outcome."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.settled = False
        self.result: CellServers | None = None
        self.error: CellLookupError | None = None


class CellResolver:
    """Cell lookups through one DNS resolver, with positive and negative caching.

    `clock` is only used for cache expiry (tests pass a fake one); `timeout` bounds a whole
    lookup, every query included.  TTLs are clamped to [min_ttl, max_ttl] so a zero TTL does
    not turn every path lookup into a DNS query.
    """

    def __init__(
        self,
        resolver: dns.asyncresolver.Resolver | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        timeout: float = 4.0,
        negative_ttl: float = 600.0,
        min_ttl: float = 60.0,
        max_ttl: float = 86400.0,
    ) -> None:
        self._resolver = resolver if resolver is not None else make_resolver()
        self._clock = clock
        self.timeout = timeout
        self.negative_ttl = negative_ttl
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self._cache: dict[tuple[str, str], tuple[float, CellServers | None]] = {}
        self._pending: dict[tuple[str, str], _Pending] = {}

    async def lookup(self, cell: str, service: str = VLSERVER) -> CellServers | None:
        """The servers DNS publishes for `cell`, or None if DNS has none.

        Raises CellLookupTimeout if DNS did not answer in time, CellLookupError if it
        failed otherwise; neither outcome is cached.
        """
        if service not in DEFAULT_PORTS:
            raise ValueError(f"unknown AFS service {service!r}")
        domain = _domain(cell)
        if domain is None:
            return None
        key = (domain.to_text(omit_final_dot=True), service)
        while True:
            cached = self._cache.get(key)
            if cached is not None and cached[0] > self._clock():
                return cached[1]
            pending = self._pending.get(key)
            if pending is None:
                return await self._lead(key, domain, service)
            await pending.done.wait()
            if pending.settled:
                if pending.error is not None:
                    raise type(pending.error)(*pending.error.args)
                return pending.result
            # The leading lookup was cancelled: go round and lead one ourselves.

    async def _lead(
        self, key: tuple[str, str], domain: dns.name.Name, service: str
    ) -> CellServers | None:
        pending = self._pending[key] = _Pending()
        try:
            try:
                result = await self._fetch_in_time(domain, service)
            except CellLookupError as error:
                pending.error = error
                pending.settled = True
                raise
            expires = result.expires_at if result is not None else self._clock() + self.negative_ttl
            self._remember(key, expires, result)
            pending.result = result
            pending.settled = True
            return result
        finally:
            del self._pending[key]
            pending.done.set()

    def _remember(self, key: tuple[str, str], expires: float, result: CellServers | None) -> None:
        if len(self._cache) >= MAX_CACHE_ENTRIES:
            now = self._clock()
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            while len(self._cache) >= MAX_CACHE_ENTRIES:
                del self._cache[next(iter(self._cache))]
        self._cache[key] = (expires, result)

    async def _fetch_in_time(self, domain: dns.name.Name, service: str) -> CellServers | None:
        try:
            with trio.fail_after(self.timeout):
                return await self._fetch(domain, service)
        except trio.TooSlowError:
            raise CellLookupTimeout(
                f"no DNS answer for cell {domain} within {self.timeout:g} s"
            ) from None

    async def _fetch(self, domain: dns.name.Name, service: str) -> CellServers | None:
        found = await self._from_srv(domain, service)
        if found is not None:
            return found
        if service == VLSERVER:
            return await self._from_afsdb(domain)
        # No SRV for this service: the VL servers run it too, on its default port.
        vl = await self.lookup(domain.to_text(), VLSERVER)
        if vl is None:
            return None
        port = DEFAULT_PORTS[service]
        servers = tuple(replace(server, port=port) for server in vl.servers)
        return replace(vl, service=service, servers=servers)

    async def _query(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> _Answer | None:
        """One DNS question; None when the name or the type does not exist."""
        try:
            answer = await self._resolver.resolve(
                name,
                rdtype,
                search=False,
                lifetime=self.timeout,
                backend=dns.asyncbackend.get_backend("trio"),
            )
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        except dns.exception.Timeout as error:
            raise CellLookupTimeout(f"{name} {rdtype.name}: {error}") from None
        except dns.exception.DNSException as error:
            raise CellLookupError(f"{name} {rdtype.name}: {error}") from None
        if answer.rrset is None:
            return None
        return _Answer(answer.rrset, answer.canonical_name, answer.chaining_result.minimum_ttl)

    async def _from_srv(self, domain: dns.name.Name, service: str) -> CellServers | None:
        owner = dns.name.from_text(f"_{service}._udp", origin=domain)
        answer = await self._query(owner, dns.rdatatype.SRV)
        if answer is None:
            return None
        records = sorted(answer.rrset, key=lambda r: (r.priority, -r.weight))
        candidates: list[tuple[str, int, int]] = []
        for record in records:
            hostname = _hostname(record.target)
            if hostname is None or record.port == 0:
                continue
            if all((hostname, record.port) != (h, p) for h, p, _ in candidates):
                candidates.append((hostname, record.port, record.priority))
            if len(candidates) == MAX_HOSTS:
                break
        cell = _cell_of_srv(answer.canonical_name, service) or domain.to_text(omit_final_dot=True)
        return await self._addresses(cell, service, "srv", candidates, answer.minimum_ttl)

    async def _from_afsdb(self, domain: dns.name.Name) -> CellServers | None:
        answer = await self._query(domain, dns.rdatatype.AFSDB)
        if answer is None:
            return None
        candidates: list[tuple[str, int, int]] = []
        for record in answer.rrset:
            hostname = _hostname(record.hostname) if record.subtype == AFSDB_VLSERVER else None
            if hostname is None:
                continue
            if (hostname, DEFAULT_PORTS[VLSERVER], 0) not in candidates:
                candidates.append((hostname, DEFAULT_PORTS[VLSERVER], 0))
            if len(candidates) == MAX_HOSTS:
                break
        cell = _hostname(answer.canonical_name) or domain.to_text(omit_final_dot=True)
        return await self._addresses(cell, VLSERVER, "afsdb", candidates, answer.minimum_ttl)

    async def _addresses(
        self,
        cell: str,
        service: str,
        source: Literal["srv", "afsdb"],
        candidates: list[tuple[str, int, int]],
        ttl: float,
    ) -> CellServers | None:
        """Resolve the candidate hosts at once; hosts that do not resolve are left out."""
        found: list[list[DnsServer]] = [[] for _ in candidates]
        ttls = [ttl]
        errors: list[CellLookupError] = []

        async def resolve(index: int, hostname: str, port: int, rank: int) -> None:
            try:
                answer = await self._query(dns.name.from_text(hostname), dns.rdatatype.A)
            except CellLookupError as error:
                errors.append(error)
                return
            if answer is None:
                return
            ttls.append(answer.minimum_ttl)
            found[index] = [
                DnsServer(hostname, record.address, port, rank)
                for record in answer.rrset
                if _usable_ipv4(record.address)
            ]

        async with trio.open_nursery() as nursery:
            for index, (hostname, port, rank) in enumerate(candidates):
                nursery.start_soon(resolve, index, hostname, port, rank)

        # Every host's first address before anyone's second: one host with a hundred
        # addresses must not push the cell's other servers out of the list.
        servers: list[DnsServer] = []
        by_depth = itertools.chain.from_iterable(itertools.zip_longest(*found))
        for server in by_depth:
            if len(servers) == MAX_HOSTS:
                break
            if server is not None and all(
                (s.address, s.port) != (server.address, server.port) for s in servers
            ):
                servers.append(server)
        if not servers:
            if errors:
                raise errors[0]
            return None
        ttl = min(max(min(ttls), self.min_ttl), self.max_ttl)
        return CellServers(cell, service, source, tuple(servers), self._clock() + ttl)


def _cell_of_srv(canonical: dns.name.Name, service: str) -> str | None:
    """The cell an SRV answer speaks for: its owner name without the `_service._udp` labels."""
    labels = [label.lower() for label in canonical.labels]
    if labels[:2] != [f"_{service}".encode(), b"_udp"]:
        return None
    return _hostname(dns.name.Name(canonical.labels[2:]))


_default: CellResolver | None = None


async def lookup_cell(name: str, resolver: CellResolver | None = None) -> CellServers | None:
    """VL servers of cell `name` from DNS; `resolver` defaults to one using the system's DNS."""
    global _default
    if resolver is None:
        if _default is None:
            _default = CellResolver()
        resolver = _default
    return await resolver.lookup(name, VLSERVER)
