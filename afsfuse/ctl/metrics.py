"""The figures of `afsfuse-ctl` views as Prometheus text (exposition format 0.0.4), for
`afsfuse-ctl metrics` and the daemon's optional metrics listener (ctl/scrape.py).

The format is written here rather than through prometheus_client: the figures already exist
as records (fs/views.py) read once per scrape, so the library's registry and collector
classes would only wrap them, and the daemon would carry a dependency for a few lines of
escaping.  The tests parse the output with prometheus_client's own parser.

Counts only: servers, volumes and cache figures, never a path, a token or anything per user
(tokens are counted, not listed).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from afsfuse.fs.api import CacheManagerViews
from afsfuse.fs.stats import Stats
from afsfuse.fs.views import CacheView
from afsfuse.keyring.store import TokenStore

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

Labels = dict[str, str]


@dataclass
class Family:
    """One metric: its samples share a name, a type and a help line.  A counter's name ends
    in `_total`, as Prometheus's conventions ask."""

    name: str
    kind: str
    help: str
    samples: list[tuple[Labels, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name) or self.kind not in ("counter", "gauge"):
            raise ValueError(f"bad metric {self.name!r} ({self.kind})")
        if self.kind == "counter" and not self.name.endswith("_total"):
            raise ValueError(f"counter {self.name!r} must end in _total")

    def add(self, value: float, **labels: str) -> None:
        for name in labels:
            if not _LABEL.match(name) or name.startswith("__"):
                raise ValueError(f"bad label name {name!r}")
        self.samples.append((labels, value))


def exposition(families: Iterable[Family]) -> str:
    """The text a scrape gets: HELP and TYPE lines, then the samples, of each family."""
    lines = []
    for family in families:
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for labels, value in family.samples:
            lines.append(f"{family.name}{_labels(labels)} {_number(value)}")
    return "\n".join(lines) + "\n"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    pairs = [f'{name}="{_escape_value(value)}"' for name, value in labels.items()]
    return "{" + ",".join(pairs) + "}"


def _escape_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


async def collect(
    manager: CacheManagerViews,
    stats: Stats,
    tokens: TokenStore,
    clock: Callable[[], float] = time.time,
) -> list[Family]:
    """Every family, read now."""
    families = _servers(manager) + _calls(manager) + _volumes(manager)
    families += _cache(await manager.cache_view())
    families += _activity(stats) + _tokens(tokens, clock())
    return families


async def text(
    manager: CacheManagerViews,
    stats: Stats,
    tokens: TokenStore,
    clock: Callable[[], float] = time.time,
) -> str:
    return exposition(await collect(manager, stats, tokens, clock))


def _servers(manager: CacheManagerViews) -> list[Family]:
    up = Family("afsfuse_server_up", "gauge", "Whether the server answered when last asked.")
    rtt = Family(
        "afsfuse_server_rtt_seconds", "gauge", "Smoothed round trip Rx measured to the server."
    )
    calls = Family("afsfuse_server_calls_total", "counter", "Calls made to the server.")
    errors = Family(
        "afsfuse_server_errors_total", "counter", "Calls to the server that ended in an error."
    )
    for server in manager.server_views():
        labels = {"kind": server.kind, "address": server.address, "cell": server.cell or ""}
        up.add(int(server.up), **labels)
        if server.rtt is not None:
            rtt.add(server.rtt, **labels)
        calls.add(server.calls, **labels)
        errors.add(server.errors, **labels)
    return [up, rtt, calls, errors, *_peers(manager)]


def _peers(manager: CacheManagerViews) -> list[Family]:
    peers = manager.peer_views()
    count = Family("afsfuse_rx_peers", "gauge", "Remote addresses Rx keeps figures for.")
    count.add(len(peers))
    data = Family(
        "afsfuse_rx_data_packets_sent_total", "counter", "DATA packets sent, resends apart."
    )
    resends = Family("afsfuse_rx_resends_total", "counter", "DATA packets sent again.")
    sent = Family("afsfuse_rx_sent_bytes_total", "counter", "Call data sent.")
    received = Family("afsfuse_rx_received_bytes_total", "counter", "Call data received.")
    for peer in peers:
        data.add(peer.data_sent, peer=peer.address)
        resends.add(peer.resends, peer=peer.address)
        sent.add(peer.bytes_sent, peer=peer.address)
        received.add(peer.bytes_received, peer=peer.address)
    return [count, data, resends, sent, received]


def _calls(manager: CacheManagerViews) -> list[Family]:
    in_flight = Family(
        "afsfuse_calls_in_flight", "gauge", "Rx calls under way, by service and direction."
    )
    counts: dict[tuple[str, str], int] = {}
    for call in manager.call_views():
        key = (call.service, call.direction)
        counts[key] = counts.get(key, 0) + 1
    for (service, direction), count in sorted(counts.items()):
        in_flight.add(count, service=service, direction=direction)
    conns = Family("afsfuse_rx_connections", "gauge", "Rx connections, by direction.")
    by_direction = {"in": 0, "out": 0}
    for conn in manager.conn_views():
        by_direction[conn.direction] += 1
    for direction, count in by_direction.items():
        conns.add(count, direction=direction)
    return [in_flight, conns]


def _volumes(manager: CacheManagerViews) -> list[Family]:
    volumes = manager.volume_views()
    known = Family("afsfuse_volumes", "gauge", "Volumes with a VLDB entry cached, by type.")
    by_type = {"rw": 0, "ro": 0, "bk": 0}
    for volume in volumes:
        by_type[volume.type] += 1
    for kind, count in by_type.items():
        known.add(count, type=kind)
    callbacks = Family("afsfuse_callbacks_held", "gauge", "Files whose callback promise holds now.")
    callbacks.add(sum(volume.callbacks for volume in volumes))
    no_site = Family(
        "afsfuse_volumes_without_site_up",
        "gauge",
        "Volumes none of whose sites is up (the next call probes them).",
    )
    no_site.add(sum(1 for volume in volumes if volume.sites and volume.in_use is None))
    cells = Family("afsfuse_cells", "gauge", "Cells known, by where they came from.")
    by_source: dict[str, int] = {}
    for cell in manager.cell_views():
        by_source[cell.source] = by_source.get(cell.source, 0) + 1
    for source, count in sorted(by_source.items()):
        cells.add(count, source=source)
    return [known, callbacks, no_site, cells]


def _gauge(name: str, help: str, value: float) -> Family:
    family = Family(name, "gauge", help)
    family.add(value)
    return family


def _counter(name: str, help: str, value: float) -> Family:
    family = Family(name, "counter", help)
    family.add(value)
    return family


def _cache(cache: CacheView) -> list[Family]:
    hits = Family("afsfuse_cache_hits_total", "counter", "Reads served without a fetch.")
    misses = Family("afsfuse_cache_misses_total", "counter", "Reads that needed a fetch.")
    hits.add(cache.data_hits, kind="data")
    hits.add(cache.status_hits, kind="status")
    misses.add(cache.data_misses, kind="data")
    misses.add(cache.status_misses, kind="status")
    return [
        _gauge("afsfuse_cache_clean_bytes", "Clean data in the disk cache.", cache.clean_bytes),
        _gauge(
            "afsfuse_cache_clean_limit_bytes",
            "The bound the disk cache's clean data is held to.",
            cache.clean_limit,
        ),
        _gauge("afsfuse_cache_files", "Files with clean data in the disk cache.", cache.files),
        _gauge("afsfuse_cache_memory_bytes", "Chunks kept in memory.", cache.memory_bytes),
        _gauge(
            "afsfuse_cache_memory_limit_bytes",
            "The bound on chunks kept in memory.",
            cache.memory_limit,
        ),
        _gauge("afsfuse_cache_dirty_files", "Files with data not yet stored.", cache.dirty_files),
        _gauge("afsfuse_cache_dirty_bytes", "Data not yet stored.", cache.dirty_bytes),
        _gauge(
            "afsfuse_cache_dirty_memory_bytes",
            "Data not yet stored, kept in memory.",
            cache.dirty_memory_bytes,
        ),
        _gauge(
            "afsfuse_cache_unsent_files",
            "Files whose store failed, waiting to be tried again.",
            cache.unsent_files,
        ),
        _gauge(
            "afsfuse_cache_leftovers",
            "Unsent data set aside because the file changed on the server.",
            cache.leftovers,
        ),
        _gauge("afsfuse_cache_leftover_bytes", "Bytes of the leftovers.", cache.leftover_bytes),
        hits,
        misses,
    ]


def _activity(stats: Stats) -> list[Family]:
    rpcs = Family("afsfuse_rpcs_total", "counter", "RPCs made, by name.")
    for name, count in sorted(stats.rpcs.items()):
        rpcs.add(count, rpc=name)
    rpc_errors = Family("afsfuse_rpc_errors_total", "counter", "RPCs that failed, by name.")
    for name, count in sorted(stats.rpc_errors.items()):
        rpc_errors.add(count, rpc=name)
    return [
        rpcs,
        rpc_errors,
        _counter(
            "afsfuse_fetched_bytes_total",
            "File data fetched from fileservers.",
            stats.bytes_fetched,
        ),
        _counter("afsfuse_served_bytes_total", "File data read by programs.", stats.bytes_served),
        _counter(
            "afsfuse_stored_bytes_total", "File data stored on fileservers.", stats.bytes_stored
        ),
        _counter(
            "afsfuse_callback_breaks_total",
            "Callback breaks received from fileservers.",
            stats.callbacks_received,
        ),
        _counter(
            "afsfuse_failovers_total", "Times a call moved on to another site.", stats.failovers
        ),
        _counter("afsfuse_busy_waits_total", "Waits on a busy volume.", stats.busy_waits),
        _counter(
            "afsfuse_vldb_refreshes_total",
            "VLDB entries looked up again after a fileserver's answer.",
            stats.vldb_refreshes,
        ),
        _counter(
            "afsfuse_leftovers_total",
            "Unsent data set aside since the daemon started.",
            stats.leftovers,
        ),
        _counter(
            "afsfuse_memory_trims_total",
            "Times freed memory was given back to the system (malloc_trim).",
            stats.memory_trims,
        ),
    ]


def _tokens(tokens: TokenStore, now: float) -> list[Family]:
    held = tokens.all()
    counts = Family("afsfuse_tokens", "gauge", "Tokens held, by state; never who holds them.")
    expired = sum(1 for _, _, token in held if token.end <= now)
    counts.add(len(held) - expired, state="valid")
    counts.add(expired, state="expired")
    holders = _gauge(
        "afsfuse_token_holders", "Users and PAGs holding tokens.", len({h[:2] for h in held})
    )
    return [counts, holders]
