"""Volume location: which fileservers hold a volume, asked of a cell's VL servers.

Any VL server of a cell can answer a lookup (ubik reads work on every replica), so a lookup
moves on to the next server when one is silent, fails at the Rx level or reports a ubik
problem; an answer from the VLDB itself (VL_NOENT above all) is final.  Servers too old for
the UUID-aware RPCs answer RXGEN_OPCODE, and we remember per server which generation works.

Each server's record says whether it answered last time, how many lookups it was asked and
how many failed (`afsfuse-ctl servers`); a server that stops answering, and one that answers
again, is logged once each way.
"""

from __future__ import annotations

import ipaddress
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio

from afsfuse.rx.connection import DEFAULT_DEAD_TIME
from afsfuse.rx.driver import Endpoint
from afsfuse.rx.errors import RXGEN_OPCODE, RxAbort
from afsfuse.rx.interfaces.vl import (
    ANYVOL,
    BACKVOL,
    ROVOL,
    RWVOL,
    VL,
    VL_BADNAME,
    VL_MAXNAMELEN,
    VL_NOENT,
    VLADDR_UUID,
    VLF_BACKEXISTS,
    VLF_ROEXISTS,
    VLF_RWEXISTS,
    VLSF_DONTUSE,
    VLSF_ROVOL,
    VLSF_RWVOL,
    VLSF_UUID,
    ListAddrByAttributes,
    nvldbentry,
    uvldbentry,
    vldbentry,
)
from afsfuse.rx.rpc import ConnectionLike
from afsfuse.rx.security import RXNULL, ClientSecurity
from afsfuse.vl.rank import Ranks

log = logging.getLogger(__name__)

Address = tuple[str, int]
#: A VLDB entry in any of the three layouts (see _GENERATIONS).
Entry = uvldbentry | nvldbentry | vldbentry

#: Ubik's error codes: the database replica cannot serve us now, another may.
UBIK_ERRORS = range(5376, 5632)
#: RPC generations, newest first: uvldbentry (UUIDs), nvldbentry (13 sites), vldbentry (8).
_GENERATIONS = ("U", "N", "O")
_NO_UUID = uuid.UUID(int=0)


@dataclass(frozen=True)
class VolumeSite:
    """One fileserver holding a volume: all its addresses and the partition."""

    addresses: tuple[str, ...]
    partition: int
    flags: int
    server_uuid: uuid.UUID | None = None


@dataclass(frozen=True)
class VolumeLocation:
    """A VLDB entry in the terms a cache manager needs: ids and sites per volume type."""

    name: str
    #: RW, RO and BK ids (0 where that volume has none), indexed by RWVOL, ROVOL, BACKVOL.
    volume_ids: tuple[int, int, int]
    flags: int
    #: Sites per volume type, same indexing.
    sites: tuple[tuple[VolumeSite, ...], tuple[VolumeSite, ...], tuple[VolumeSite, ...]]

    @property
    def rw_id(self) -> int:
        return self.volume_ids[RWVOL]

    @property
    def ro_id(self) -> int:
        return self.volume_ids[ROVOL]

    @property
    def bk_id(self) -> int:
        return self.volume_ids[BACKVOL]

    def type_of(self, volume_id: int) -> int | None:
        """RWVOL, ROVOL or BACKVOL for one of this entry's ids, else None."""
        if volume_id == 0:
            return None
        for voltype, known in enumerate(self.volume_ids):
            if known == volume_id:
                return voltype
        return None

    def sites_for(self, volume_id: int) -> tuple[VolumeSite, ...]:
        voltype = self.type_of(volume_id)
        return () if voltype is None else self.sites[voltype]


def _existing_ids(entry: Entry) -> tuple[int, int, int]:
    """The entry's ids, 0 for a type its flags say does not exist: the VLDB reserves RO and
    BK ids at creation, long before (if ever) such a volume is made."""
    wanted = (VLF_RWEXISTS, VLF_ROEXISTS, VLF_BACKEXISTS)
    rw, ro, bk = (i if entry.flags & f else 0 for i, f in zip(entry.volumeId, wanted, strict=True))
    return rw, ro, bk


@dataclass(frozen=True)
class _RawSite:
    server: int | uuid.UUID  # an IPv4 value, or the fileserver's UUID
    unique: int
    partition: int
    flags: int


def ipv4_text(value: int) -> str:
    return str(ipaddress.IPv4Address(value & 0xFFFFFFFF))


def _raw_sites(entry: Entry) -> list[_RawSite]:
    """The per-site columns of any of the three entry layouts, as rows."""
    count = max(0, min(entry.nServers, len(entry.serverFlags)))
    sites = []
    for i in range(count):
        flags = entry.serverFlags[i]
        server: int | uuid.UUID
        if isinstance(entry, uvldbentry):
            number = entry.serverNumber[i]
            server = number if flags & VLSF_UUID else number.time_low
            unique = entry.serverUnique[i]
        else:
            server, unique = entry.serverNumber[i], 0
        sites.append(_RawSite(server, unique, entry.serverPartition[i], flags))
    return sites


def _usable(site: _RawSite) -> bool:
    return bool(site.flags & (VLSF_RWVOL | VLSF_ROVOL)) and not site.flags & VLSF_DONTUSE


def select_sites(
    raw: Sequence[_RawSite], addresses: Callable[[_RawSite], tuple[str, ...]]
) -> tuple[tuple[VolumeSite, ...], tuple[VolumeSite, ...], tuple[VolumeSite, ...]]:
    """RW sites, RO sites and BK sites (backups live with the RW); DONTUSE sites are left out
    and so are servers without a known address."""
    by_type: tuple[list[VolumeSite], list[VolumeSite], list[VolumeSite]] = ([], [], [])
    for site in raw:
        if not _usable(site):
            continue
        addrs = addresses(site)
        if not addrs:
            continue
        server_uuid = site.server if isinstance(site.server, uuid.UUID) else None
        volume_site = VolumeSite(addrs, site.partition, site.flags, server_uuid)
        if site.flags & VLSF_RWVOL:
            by_type[RWVOL].append(volume_site)
            by_type[BACKVOL].append(volume_site)
        if site.flags & VLSF_ROVOL:
            by_type[ROVOL].append(volume_site)
    return tuple(by_type[RWVOL]), tuple(by_type[ROVOL]), tuple(by_type[BACKVOL])


@dataclass
class VLServerState:
    """One VL server as this client found it."""

    address: Address
    up: bool = True
    #: When it stopped answering (trio clock).
    down_since: float | None = None
    #: Lookups asked of it, and those it failed (so that another server was asked).
    calls: int = 0
    failed: int = 0
    last_error: str = ""


def _should_try_another_server(error: RxAbort) -> bool:
    """Rx-level failures (negative codes) and ubik trouble are about that one server."""
    return error.code < 0 or error.code in UBIK_ERRORS


class VLClient:
    """Looks volumes up in one cell's VLDB, rotating across its VL servers."""

    def __init__(
        self,
        servers: Sequence[Address],
        connect: Callable[[Address], ConnectionLike],
        cell: str = "",
        ranks: Ranks | None = None,
    ):
        if not servers:
            raise ValueError("a cell needs at least one VL server")
        self.servers = list(servers)
        #: For log lines: which cell these servers serve, when known.
        self._of_cell = f" of cell {cell}" if cell else ""
        self.states = {addr: VLServerState(addr) for addr in self.servers}
        self._connect = connect
        self._conns: dict[Address, ConnectionLike] = {}
        self._generation: dict[Address, int] = {}
        #: Shared with the fileservers' table when the cache manager made this client; on
        #: its own, every server ranks alike and the cell's order stands.
        self.ranks = ranks if ranks is not None else Ranks(list)
        #: Fileserver UUID -> (address-list uniquifier, addresses).
        self._uuid_addresses: dict[uuid.UUID, tuple[int, tuple[str, ...]]] = {}

    @classmethod
    def on_endpoint(
        cls,
        endpoint: Endpoint,
        hosts: Sequence[str],
        security: ClientSecurity = RXNULL,
        *,
        dead_time: float = DEFAULT_DEAD_TIME,
        hard_timeout: float | None = 60.0,
    ) -> VLClient:
        """A client whose connections are made on an afsfuse.rx.driver.Endpoint."""

        def connect(addr: Address) -> ConnectionLike:
            return endpoint.connect(
                addr, VL.service_id, security, dead_time=dead_time, hard_timeout=hard_timeout
            )

        return cls([(host, VL.port) for host in hosts], connect)

    def _conn(self, addr: Address) -> ConnectionLike:
        conn = self._conns.get(addr)
        if conn is None:
            conn = self._conns[addr] = self._connect(addr)
        return conn

    async def locate(self, volume: str | int) -> VolumeLocation:
        """The entry for a volume name (".readonly"/".backup" allowed) or a numeric id.

        Raises RxAbort: VL_NOENT for an unknown volume, the last server's error when none
        of the cell's VL servers could answer.
        """
        if isinstance(volume, str) and volume.isdigit():
            volume = int(volume)
        if isinstance(volume, str) and not 0 < len(volume.encode()) < VL_MAXNAMELEN:
            raise RxAbort(VL_BADNAME, f"bad volume name {volume!r}")
        last_error: RxAbort | None = None
        for addr in self.order():
            state = self.states[addr]
            state.calls += 1
            try:
                location = await self._locate_on(addr, volume)
            except RxAbort as error:
                if not _should_try_another_server(error):
                    self._answered(state)
                    raise
                self._failed(state, error)
                last_error = error
                continue
            self._answered(state)
            return location
        assert last_error is not None
        raise last_error

    def order(self) -> list[Address]:
        """The servers in the order the next lookup asks them: those not found failing
        first, each group best ranked first (vl/rank.py), ties as the cell lists them."""
        states, rank = self.states, self.ranks.rank
        return sorted(self.servers, key=lambda addr: (not states[addr].up, rank(addr)))

    async def probe(self, addr: Address) -> None:
        """Ask one server whether it is there (VL.ProbeServer), so its round trip stays
        known while another server answers the lookups; its state follows the outcome."""
        state = self.states[addr]
        try:
            await VL.ProbeServer(self._conn(addr))
        except RxAbort as error:
            self._failed(state, error)
            return
        self._answered(state)

    def _failed(self, state: VLServerState, error: RxAbort) -> None:
        state.failed += 1
        state.last_error = str(error)
        if state.up:
            state.up = False
            state.down_since = trio.current_time()
            log.warning(
                "database server %s:%d%s failed: %s; asking another",
                *state.address, self._of_cell, error,
            )  # fmt: skip

    def _answered(self, state: VLServerState) -> None:
        if not state.up:
            log.warning("database server %s:%d%s answers again", *state.address, self._of_cell)
        state.up = True
        state.down_since = None

    async def _locate_on(self, addr: Address, volume: str | int) -> VolumeLocation:
        conn = self._conn(addr)
        generation = self._generation.get(addr, 0)
        while True:
            kind = _GENERATIONS[generation]
            try:
                entry = await self._fetch_entry(conn, kind, volume)
                break
            except RxAbort as error:
                if error.code != RXGEN_OPCODE or generation + 1 == len(_GENERATIONS):
                    raise
                generation += 1
                self._generation[addr] = generation
                log.debug("VL server %s:%d is older: trying %s", *addr, _GENERATIONS[generation])
        raw = _raw_sites(entry)
        resolved: dict[uuid.UUID, tuple[str, ...]] = {}
        for site in raw:
            if _usable(site) and isinstance(site.server, uuid.UUID) and site.server not in resolved:
                resolved[site.server] = await self._server_addresses(conn, site)

        def addresses(site: _RawSite) -> tuple[str, ...]:
            if isinstance(site.server, uuid.UUID):
                return resolved[site.server]
            return (ipv4_text(site.server),)

        return VolumeLocation(
            name=entry.name,
            volume_ids=_existing_ids(entry),
            flags=entry.flags,
            sites=select_sites(raw, addresses),
        )

    @staticmethod
    async def _fetch_entry(conn: ConnectionLike, kind: str, volume: str | int) -> Entry:
        if kind == "U":
            # The VL server looks an all-digit name up as an id, as OpenAFS's CM relies on.
            return await VL.GetEntryByNameU(conn, str(volume))
        if isinstance(volume, int):
            if kind == "N":
                return await VL.GetEntryByIDN(conn, volume, ANYVOL)
            return await VL.GetEntryByID(conn, volume, ANYVOL)
        if kind == "N":
            return await VL.GetEntryByNameN(conn, volume)
        return await VL.GetEntryByNameO(conn, volume)

    async def _server_addresses(self, conn: ConnectionLike, site: _RawSite) -> tuple[str, ...]:
        """All addresses of a multi-homed fileserver, cached until its uniquifier changes."""
        assert isinstance(site.server, uuid.UUID)
        cached = self._uuid_addresses.get(site.server)
        if cached is not None and cached[0] == site.unique:
            return cached[1]
        query = ListAddrByAttributes(Mask=VLADDR_UUID, uuid=site.server)
        try:
            reply = await VL.GetAddrsU(conn, query)
        except RxAbort as error:
            if error.code != VL_NOENT:
                raise
            reply = None
        if reply is None or reply.nentries <= 0:
            log.warning("VL server knows no addresses for fileserver %s", site.server)
            return ()
        addrs = tuple(ipv4_text(a) for a in reply.blkaddrs[: reply.nentries])
        self._uuid_addresses[site.server] = (reply.uniquifier, addrs)
        return addrs
