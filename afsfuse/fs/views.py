"""What `afsfuse-ctl cells`, `servers`, `volumes`, `calls`, `peers`, `conns` and `cache` show,
and the metrics export: small records built on demand from the state the cache manager keeps
for its own work.  Nothing here is counted per request or per packet; each view is a walk
over tables that exist anyway.

Times are seconds relative to now (an age, or how long until something), never clock
readings, so that a record means the same on both ends of the control socket.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from afsfuse.cache.store import CacheStore
from afsfuse.fs.cell import CellDB
from afsfuse.fs.server import FS_PORT, ServerTable
from afsfuse.fs.stats import Stats
from afsfuse.fs.vnode import Vnode
from afsfuse.fs.volume import VolumeCache, site_name
from afsfuse.rx.interfaces.fs import FS
from afsfuse.rx.interfaces.pt import PT
from afsfuse.rx.interfaces.vl import BACKVOL, ROVOL, RWVOL, VL
from afsfuse.rx.rpc import Interface
from afsfuse.rx.snapshot import RxFigures
from afsfuse.vl.cellservdb import cell_key
from afsfuse.vl.vlclient import VLClient, VolumeSite

#: The services we call, by service id (the callback service is the one calls come to).
_CLIENT_SERVICES: dict[int, Interface] = {i.service_id: i for i in (FS, VL, PT)}
_SERVER_SERVICES = {1: "CB"}
_SECURITY = {0: "rxnull", 2: "rxkad"}
_TYPES = {RWVOL: ("rw", ""), ROVOL: ("ro", ".readonly"), BACKVOL: ("bk", ".backup")}


def _address(addr: tuple[str, int]) -> str:
    return f"{addr[0]}:{addr[1]}"


@dataclass(frozen=True)
class CellView:
    name: str
    #: "CellServDB" (the configuration files) or "DNS".
    source: str
    home: bool
    vlservers: tuple[str, ...]
    aliases: tuple[str, ...]
    linked_cell: str | None


@dataclass(frozen=True)
class ServerView:
    #: "file" or "database" (a VL server).
    kind: str
    #: A database server's cell; None for a fileserver (it may serve volumes of any cell).
    cell: str | None
    address: str
    up: bool
    #: Seconds since it was found down (None while up).
    down_for: float | None
    #: Smoothed round trip Rx measured on the calls made to it (None before the first).
    rtt: float | None
    #: Its preference, lowest first (`fs getserverprefs`: as set, else by distance and
    #: round trip, vl/rank.py): among a volume's sites for a fileserver, among its cell's
    #: servers for a database server.
    rank: int
    calls: int
    #: Calls that failed: a fileserver's that ended in an error (its refusals included);
    #: a database server's that had to be asked of another server.
    errors: int
    last_error: str


@dataclass(frozen=True)
class VolumeView:
    cell: str
    name: str
    id: int
    #: "rw", "ro" or "bk".
    type: str
    #: "ADDRESS /vicepX" for each site, in the order rotation tries them (best rank first).
    sites: tuple[str, ...]
    #: The site the next call goes to: the best ranked whose server is not down.  None when
    #: all are down (the next call probes them).
    in_use: str | None
    #: Files of the volume known here, and those whose callback promise holds now.
    files: int
    callbacks: int
    #: Seconds until the first of those promises ends (None without any).
    callback_expires: float | None
    #: Seconds until the VLDB entry is looked up again (negative: at the next use).
    entry_expires: float


@dataclass(frozen=True)
class CallView:
    server: str
    #: "FS", "VL", "PT" for calls we make, "CB" for those fileservers make to us.
    service: str
    #: The RPC's name where known ("FetchData64"), else its opcode.
    rpc: str
    #: "out" for a call we make, "in" for one made to us.
    direction: str
    state: str
    age: float
    bytes_sent: int
    bytes_received: int
    cwind: int
    twind: int
    rwind: int
    in_flight: int
    #: Seconds since anything arrived on it.
    quiet: float


@dataclass(frozen=True)
class PeerView:
    address: str
    rtt: float | None
    rtt_deviation: float | None
    rto: float
    max_packet: int
    heard_ago: float | None
    connections: int
    calls: int
    #: DATA packets sent (first time) and resent; bytes of call data sent and received.
    data_sent: int
    resends: int
    bytes_sent: int
    bytes_received: int


@dataclass(frozen=True)
class ConnView:
    address: str
    service: str
    direction: str
    cid: int
    epoch: int
    security: str
    calls_made: int
    calls_live: int
    serial: int
    idle: float
    error: int | None


@dataclass(frozen=True)
class CacheView:
    #: Clean data on disk and the bound it is held to; files with clean data cached.
    clean_bytes: int
    clean_limit: int
    files: int
    chunk_size: int
    #: Recently used chunks kept in memory, and their bound.
    memory_bytes: int
    memory_limit: int
    #: Data written here and not yet on a fileserver: files, bytes, of which in memory.
    dirty_files: int
    dirty_bytes: int
    dirty_memory_bytes: int
    dirty_memory_limit: int
    #: Dirty files whose store failed, waiting to be tried again.
    unsent_files: int
    #: Unsent data set aside because the file changed on the server.
    leftovers: int
    leftover_bytes: int
    data_hits: int
    data_misses: int
    status_hits: int
    status_misses: int


def cell_views(cells: CellDB) -> list[CellView]:
    aliases = cells.aliases()
    return [
        CellView(
            name=cell.name,
            source=cell.source,
            home=cell_key(cell.name) == cell_key(cells.this_cell),
            vlservers=tuple(_address(addr) for addr in cell.vlservers),
            aliases=tuple(
                sorted(
                    alias
                    for alias, real in aliases.items()
                    if cell_key(real) == cell_key(cell.name)
                )
            ),
            linked_cell=cell.linked_cell,
        )
        for cell in cells.known()
    ]


def server_views(
    servers: ServerTable, vl: Mapping[str, VLClient], rx: RxFigures, now: float
) -> list[ServerView]:
    rtts = {peer.address: peer.srtt for peer in rx.peers}
    views = [
        ServerView(
            kind="file",
            cell=None,
            address=_address(server.address),
            up=server.up,
            down_for=None if server.down_since is None else now - server.down_since,
            rtt=rtts.get(server.address),
            rank=servers.rank(server),
            calls=server.calls,
            errors=server.errors,
            last_error=server.last_error,
        )
        for server in servers.all()
    ]
    for cell, client in vl.items():
        for addr in client.order():
            state = client.states[addr]
            views.append(
                ServerView(
                    kind="database",
                    cell=cell,
                    address=_address(addr),
                    up=state.up,
                    down_for=None if state.down_since is None else now - state.down_since,
                    rtt=rtts.get(addr),
                    rank=client.ranks.peek(addr),
                    calls=state.calls,
                    errors=state.failed,
                    last_error=state.last_error,
                )
            )
    return views


def volume_views(
    volumes: VolumeCache, servers: ServerTable, vnodes: Iterable[Vnode], now: float
) -> list[VolumeView]:
    held: dict[tuple[str, int], list[float]] = {}
    for vnode in vnodes:
        expiries = held.setdefault((vnode.fid.cell, vnode.fid.volume), [])
        expiries.append(vnode.cb_expires if vnode.callback_valid(now) else 0.0)
    views = []
    for cell, expires, entry in volumes.entries():
        for voltype, volume_id in enumerate(entry.volume_ids):
            if not volume_id:
                continue
            sites = sorted(entry.sites[voltype], key=lambda site: _site_rank(servers, site))
            in_use = None
            for site in sites:
                found = [servers.find(addr, FS_PORT) for addr in site.addresses]
                if any(server is None or server.up for server in found):
                    in_use = site_name(site)
                    break
            expiries = held.get((cell, volume_id), [])
            valid = [when for when in expiries if when > 0.0]
            kind, suffix = _TYPES[voltype]
            views.append(
                VolumeView(
                    cell=cell,
                    name=entry.name + suffix,
                    id=volume_id,
                    type=kind,
                    sites=tuple(site_name(site) for site in sites),
                    in_use=in_use,
                    files=len(expiries),
                    callbacks=len(valid),
                    callback_expires=min(valid) - now if valid else None,
                    entry_expires=expires - now,
                )
            )
    return views


def _site_rank(servers: ServerTable, site: VolumeSite) -> int:
    """The best rank among a site's addresses: rotation sorts addresses by rank."""
    return min(servers.ranks.peek((addr, FS_PORT)) for addr in site.addresses)


def _service(service_id: int, client: bool) -> str:
    """FS, VL, PT for what we call; CB for what fileservers call here; else the number."""
    if client:
        interface = _CLIENT_SERVICES.get(service_id)
        return interface.name if interface is not None else str(service_id)
    return _SERVER_SERVICES.get(service_id, str(service_id))


def call_views(rx: RxFigures) -> list[CallView]:
    views = []
    for call in rx.calls:
        interface = _CLIENT_SERVICES.get(call.service_id) if call.client else None
        rpc = "-"
        if call.opcode is not None:
            known = interface.by_opcode.get(call.opcode) if interface is not None else None
            rpc = known.name if known is not None else str(call.opcode)
        views.append(
            CallView(
                server=_address(call.address),
                service=_service(call.service_id, call.client),
                rpc=rpc,
                direction="out" if call.client else "in",
                state=call.state,
                age=call.age,
                bytes_sent=call.bytes_sent,
                bytes_received=call.bytes_received,
                cwind=call.cwind,
                twind=call.twind,
                rwind=call.rwind,
                in_flight=call.in_flight,
                quiet=call.quiet,
            )
        )
    return views


def peer_views(rx: RxFigures) -> list[PeerView]:
    return [
        PeerView(
            address=_address(peer.address),
            rtt=peer.srtt,
            rtt_deviation=peer.rttvar,
            rto=peer.rto,
            max_packet=peer.max_packet,
            heard_ago=peer.heard_ago,
            connections=peer.connections,
            calls=peer.calls,
            data_sent=peer.data_sent,
            resends=peer.resends,
            bytes_sent=peer.bytes_sent,
            bytes_received=peer.bytes_received,
        )
        for peer in rx.peers
    ]


def conn_views(rx: RxFigures) -> list[ConnView]:
    views = []
    for conn in rx.connections:
        views.append(
            ConnView(
                address=_address(conn.address),
                service=_service(conn.service_id, conn.client),
                direction="out" if conn.client else "in",
                cid=conn.cid,
                epoch=conn.epoch,
                security=_SECURITY.get(conn.security_index, str(conn.security_index)),
                calls_made=conn.calls_made,
                calls_live=conn.calls_live,
                serial=conn.serial,
                idle=conn.idle,
                error=conn.error,
            )
        )
    return views


def cache_view(store: CacheStore, stats: Stats, memory: tuple[int, int]) -> CacheView:
    """Blocking (the disk cache's size is a query, leftovers are files): run in a worker
    thread.  `memory` is the chunk memory's (used, bound)."""
    dirty = store.dirty.list()
    chunk = store.dirty.chunk_size
    dirty_bytes = 0
    for item in dirty:
        for index in item.chunks:
            dirty_bytes += max(0, min(item.length, (index + 1) * chunk) - index * chunk)
    leftovers = store.leftovers.list()
    return CacheView(
        clean_bytes=store.clean_bytes(),
        clean_limit=store.size_limit,
        files=store.files_held(),
        chunk_size=store.chunk_size,
        memory_bytes=memory[0],
        memory_limit=memory[1],
        dirty_files=len(dirty),
        dirty_bytes=dirty_bytes,
        dirty_memory_bytes=store.dirty.memory_used(),
        dirty_memory_limit=store.dirty.memory_budget,
        unsent_files=sum(1 for item in dirty if item.unsent),
        leftovers=len(leftovers),
        leftover_bytes=sum(item.size for item in leftovers),
        data_hits=stats.data_hits,
        data_misses=stats.data_misses,
        status_hits=stats.status_hits,
        status_misses=stats.status_misses,
    )
