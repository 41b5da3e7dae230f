"""The views behind `afsfuse-ctl` (fs/views.py, rx/snapshot.py) built from real tables: Rx
endpoints on 127.0.0.1, a real disk cache, a volume cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from afsfuse.cache.base import FidKey
from afsfuse.cache.store import CacheStore, CleanItem
from afsfuse.fs import views
from afsfuse.fs.server import ServerConfig, ServerTable
from afsfuse.fs.stats import Stats
from afsfuse.fs.vnode import VnodeTable
from afsfuse.fs.volume import VolumeCache
from afsfuse.rx.driver import ServerCall, open_endpoint
from afsfuse.rx.interfaces.fs import FS
from afsfuse.rx.interfaces.vl import VLSF_ROVOL, VLSF_RWVOL
from afsfuse.vl.vlclient import VolumeLocation, VolumeSite

LOCAL = "127.0.0.1"
KiB = 1024


async def test_rx_figures_show_a_call_in_flight_both_ways() -> None:
    release = trio.Event()

    async def slow(call: ServerCall) -> None:
        request = await call.recv_rest()
        await release.wait()
        await call.send(request[::-1])

    async with open_endpoint(LOCAL) as server, open_endpoint(LOCAL) as client:
        server.serve(FS.service_id, slow)
        conn = client.connect((LOCAL, server.port), FS.service_id)
        request = FS.FetchData64.encode_request((1, 2, 3), 0, 1 << 20)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(conn.rpc, request)
                while not server.figures().calls:
                    await trio.sleep(0.01)
                await trio.sleep(0.05)
                out = views.call_views(client.figures())
                served = views.call_views(server.figures())
                release.set()
        assert [(c.service, c.rpc, c.direction, c.state) for c in out] == [
            ("FS", "FetchData64", "out", "receiving")
        ]
        assert out[0].bytes_sent == len(request) and out[0].bytes_received == 0
        assert out[0].server == f"{LOCAL}:{server.port}" and out[0].age >= 0.05
        assert [(c.service, c.direction, c.state) for c in served] == [("CB", "in", "serving")]
        assert served[0].bytes_received == len(request)
        # Over: no calls; the peer has a round trip, the connection its call.
        assert client.figures().calls == []
        peers = views.peer_views(client.figures())
        assert [p.address for p in peers] == [f"{LOCAL}:{server.port}"]
        assert peers[0].rtt is not None and 0 < peers[0].rtt < 1 and peers[0].connections == 1
        assert peers[0].data_sent >= 1 and peers[0].bytes_sent == len(request)
        assert peers[0].bytes_received == len(request)
        conns = views.conn_views(client.figures())
        assert [(c.service, c.direction, c.calls_made, c.calls_live) for c in conns] == [
            ("FS", "out", 1, 0)
        ]


def test_cache_view_counts_clean_dirty_and_leftovers(tmp_path: Path) -> None:
    with CacheStore(tmp_path / "cache", 1 << 20, chunk_size=64 * KiB) as store:
        clean = FidKey("c.test", 1, 2, 3)
        store.put_many([CleanItem(clean, 5, i, b"x" * 64 * KiB) for i in range(3)])
        small, big = FidKey("c.test", 1, 4, 5), FidKey("c.test", 1, 6, 7)
        store.dirty.begin(small, 1, 0)
        store.dirty.write(small, 0, b"y" * 100)
        store.dirty.begin(big, 1, 0)
        store.dirty.write(big, 0, b"z" * (100 * KiB))
        store.dirty.update(big, unsent=True)
        stats = Stats(data_hits=3, data_misses=1)
        view = views.cache_view(store, stats, (10, 20))
    assert 3 * 64 * KiB <= view.clean_bytes <= view.clean_limit == 1 << 20
    assert (view.files, view.chunk_size, view.memory_bytes, view.memory_limit) == (
        1, 64 * KiB, 10, 20,
    )  # fmt: skip
    assert (view.dirty_files, view.dirty_bytes, view.unsent_files) == (2, 100 + 100 * KiB, 1)
    assert (view.leftovers, view.leftover_bytes) == (0, 0)
    assert (view.data_hits, view.data_misses) == (3, 1)


async def test_volume_view_shows_sites_best_ranked_first_the_one_in_use_and_callbacks() -> None:
    ro_sites = (VolumeSite(("10.0.0.1",), 0, VLSF_ROVOL), VolumeSite(("10.0.0.2",), 1, VLSF_ROVOL))
    rw_site = (VolumeSite(("10.0.0.3",), 0, VLSF_RWVOL),)
    entry = VolumeLocation("proj", (100, 101, 0), 0, (rw_site, ro_sites, ()))

    async def locate(cell: str, volume: str | int) -> VolumeLocation:
        return entry

    volumes = VolumeCache(locate, ttl=600)
    await volumes.location("c.test", "proj")
    servers = ServerTable(None, ServerConfig())  # type: ignore[arg-type]
    for addr, rank in (("10.0.0.1", 30000), ("10.0.0.2", 100), ("10.0.0.3", 5000)):
        servers.set_rank(addr, rank)
    vnodes = VnodeTable()
    now = trio.current_time()
    vnodes.get(FidKey("c.test", 101, 1, 1)).cb_expires = now + 30
    vnodes.get(FidKey("c.test", 101, 1, 1)).status = object()  # type: ignore[assignment]
    vnodes.get(FidKey("c.test", 101, 2, 2))  # known, no callback

    def found() -> dict[int, views.VolumeView]:
        return {v.id: v for v in views.volume_views(volumes, servers, vnodes.all(), now)}

    ro = found()[101]
    assert (ro.name, ro.type, ro.sites) == (
        "proj.readonly",
        "ro",
        ("10.0.0.2 /vicepb", "10.0.0.1 /vicepa"),  # the preferred one first
    )
    assert ro.in_use == "10.0.0.2 /vicepb"
    assert (ro.files, ro.callbacks) == (2, 1) and ro.callback_expires == pytest.approx(30)
    servers.mark_down(servers.get("10.0.0.2"), "gone")
    servers.mark_down(servers.get("10.0.0.3"), "gone")
    ro, rw = found()[101], found()[100]
    assert ro.in_use == "10.0.0.1 /vicepa"  # the preferred site's server is down
    assert rw.in_use is None and rw.callbacks == 0 and rw.sites == ("10.0.0.3 /vicepa",)
    assert 599 < ro.entry_expires <= 600
