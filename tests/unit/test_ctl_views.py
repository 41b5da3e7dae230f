"""`afsfuse-ctl` views on the client side (tables), `tokens --all` and the metrics text:
written here, read back with prometheus_client's own text-format parser; the metrics
listener over a real unix socket and a real TCP port on 127.0.0.1."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from afsfuse.ctl import metrics, scrape, viewcli
from afsfuse.ctl.ops import TokenOps
from afsfuse.ctl.server import ControlError, PeerCred, Request
from afsfuse.fs.api import CacheManagerViews
from afsfuse.fs.stats import Stats
from afsfuse.fs.views import (
    CacheView,
    CallView,
    CellView,
    ConnView,
    PeerView,
    ServerView,
    VolumeView,
)
from afsfuse.keyring.store import Identity, TokenStore
from afsfuse.keyring.token import Token

NOW = 1_700_000_000.0


class Views:
    """Records as the cache manager would give them."""

    def cell_views(self) -> list[CellView]:
        return [CellView("c.test", "CellServDB", True, ("10.0.0.1:7003",), ("c",), None)]

    def server_views(self) -> list[ServerView]:
        return [
            ServerView("file", None, "10.0.0.1:7000", True, None, 0.0012, 5000, 40, 1, "x"),
            ServerView("file", None, "10.0.0.2:7000", False, 12.0, None, 20000, 3, 3, 'say "no"'),
            ServerView("database", "c.test", "10.0.0.1:7003", True, None, 0.002, 1, 5, 0, ""),
        ]

    def volume_views(self) -> list[VolumeView]:
        return [
            VolumeView("c.test", "proj", 7, "rw", ("10.0.0.1 /vicepa",), "10.0.0.1 /vicepa",
                       4, 3, 100.0, 500.0),
            VolumeView("c.test", "gone.readonly", 9, "ro", ("10.0.0.2 /vicepa",), None,
                       0, 0, None, -5.0),
        ]  # fmt: skip

    def call_views(self) -> list[CallView]:
        return [
            CallView("10.0.0.1:7000", "FS", "FetchData64", "out", "receiving", 2.5, 40,
                     3 << 20, 16, 32, 32, 0, 0.01),
        ]  # fmt: skip

    def peer_views(self) -> list[PeerView]:
        return [
            PeerView("10.0.0.1:7000", 0.0012, 0.0003, 0.02, 1444, 0.5, 2, 1, 700, 12, 1 << 20,
                     40 << 20),
        ]  # fmt: skip

    def conn_views(self) -> list[ConnView]:
        return [
            ConnView("10.0.0.1:7000", "FS", "out", 0x1234, 0x80000001, "rxkad", 41, 1, 900,
                     0.0, None),
            ConnView("10.0.0.1:7001", "CB", "in", 0x44, 0x9000, "rxnull", 2, 0, 4, 3.0, None),
        ]  # fmt: skip

    async def cache_view(self) -> CacheView:
        return CacheView(
            clean_bytes=300 << 20, clean_limit=1 << 30, files=120, chunk_size=1 << 20,
            memory_bytes=64 << 20, memory_limit=64 << 20, dirty_files=2, dirty_bytes=5 << 20,
            dirty_memory_bytes=100, dirty_memory_limit=32 << 20, unsent_files=1, leftovers=1,
            leftover_bytes=4096, data_hits=90, data_misses=10, status_hits=900,
            status_misses=100,
        )  # fmt: skip


def token(cell: str, end: float, viceid: int | None = 1001) -> Token:
    return Token(cell, cell.upper(), f"alice@{cell.upper()}", b"SECRETKY", b"TICKETBYTES",
                 int(NOW) - 10, int(end), viceid)  # fmt: skip


def tokens() -> TokenStore:
    store = TokenStore(clock=lambda: NOW)
    store.set(Identity(1001), token("c.test", NOW + 3600))
    store.set(Identity(1002), token("c.test", NOW - 1, None))
    store.set(Identity(1002), token("o.test", NOW + 60))
    store.set(Identity(1001, host="192.0.2.9"), token("c.test", NOW + 60))
    return store


def stats() -> Stats:
    s = Stats(bytes_fetched=1 << 20, callbacks_received=7, failovers=2)
    s.rpcs.update({"FS.FetchData64": 12, "VL.GetEntryByNameU": 2})
    s.rpc_errors["FS.FetchData64"] = 1
    return s


def families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


async def test_the_metrics_text_parses_and_says_what_the_views_say() -> None:
    manager: CacheManagerViews = Views()  # mypy checks the fake against the protocol
    text = await metrics.text(manager, stats(), tokens(), clock=lambda: NOW)
    found = families(text)
    # Every sample belongs to a family with HELP and TYPE (none came out untyped).
    assert all(f.type in ("counter", "gauge") and f.documentation for f in found.values())
    assert all(name.startswith("afsfuse_") for name in found)

    def samples(name: str) -> dict[tuple[tuple[str, str], ...], float]:
        return {tuple(sorted(s.labels.items())): s.value for s in found[name].samples}

    up = samples("afsfuse_server_up")
    assert up[(("address", "10.0.0.1:7000"), ("cell", ""), ("kind", "file"))] == 1
    assert up[(("address", "10.0.0.2:7000"), ("cell", ""), ("kind", "file"))] == 0
    assert up[(("address", "10.0.0.1:7003"), ("cell", "c.test"), ("kind", "database"))] == 1
    rtt = samples("afsfuse_server_rtt_seconds")
    assert len(rtt) == 2 and 0.0012 in rtt.values()  # none for the server never measured
    assert found["afsfuse_server_calls"].type == "counter"
    assert samples("afsfuse_rpcs") == {
        (("rpc", "FS.FetchData64"),): 12,
        (("rpc", "VL.GetEntryByNameU"),): 2,
    }
    assert samples("afsfuse_rx_resends") == {(("peer", "10.0.0.1:7000"),): 12}
    assert samples("afsfuse_rx_received_bytes") == {(("peer", "10.0.0.1:7000"),): 40 << 20}
    assert samples("afsfuse_calls_in_flight") == {(("direction", "out"), ("service", "FS")): 1}
    assert samples("afsfuse_volumes_without_site_up") == {(): 1}
    assert samples("afsfuse_callbacks_held") == {(): 3}
    assert samples("afsfuse_cache_dirty_bytes") == {(): 5 << 20}
    assert samples("afsfuse_cache_hits") == {
        (("kind", "data"),): 90,
        (("kind", "status"),): 900,
    }
    assert samples("afsfuse_tokens") == {(("state", "valid"),): 3, (("state", "expired"),): 1}
    assert samples("afsfuse_token_holders") == {(): 3}
    assert samples("afsfuse_fetched_bytes") == {(): 1 << 20}
    # Counts only: no principal, no key, no ticket.
    for secret in ("alice", "SECRETKY", "TICKET", "U0VDUkVU"):
        assert secret not in text


def test_labels_and_help_are_escaped_as_the_parser_reads_them() -> None:
    family = metrics.Family("afsfuse_test_total", "counter", 'a "help"\\ line\nwith two lines')
    odd = 'quote " backslash \\ newline \n end'
    family.add(3, what=odd)
    family.add(0.25, what="plain")
    gauge = metrics.Family("afsfuse_float", "gauge", "special values")
    gauge.add(float("inf"), v="inf")
    gauge.add(float("nan"), v="nan")
    found = families(metrics.exposition([family, gauge]))
    parsed = found["afsfuse_test"]
    assert parsed.documentation == 'a "help"\\ line\nwith two lines'
    assert [(s.name, s.labels["what"], s.value) for s in parsed.samples] == [
        ("afsfuse_test_total", odd, 3),
        ("afsfuse_test_total", "plain", 0.25),
    ]
    values = {s.labels["v"]: s.value for s in found["afsfuse_float"].samples}
    assert values["inf"] == float("inf") and values["nan"] != values["nan"]


@pytest.mark.parametrize(
    ("name", "kind"), [("afsfuse_calls", "counter"), ("9lives", "gauge"), ("ok", "summary")]
)
def test_a_family_must_follow_the_conventions(name: str, kind: str) -> None:
    with pytest.raises(ValueError):
        metrics.Family(name, kind, "help")


def test_a_label_name_must_be_one() -> None:
    family = metrics.Family("afsfuse_x", "gauge", "help")
    with pytest.raises(ValueError):
        family.add(1, **{"__reserved": "x"})


def request(uid: int, op: str = "tokens_all") -> Request:
    return Request(op=op, peer=PeerCred(pid=1, uid=uid, gid=uid), uid=uid, args={})


async def test_only_root_lists_every_token_and_never_a_key() -> None:
    ops = TokenOps(tokens(), "c.test", clock=lambda: NOW)
    with pytest.raises(ControlError) as refused:
        await ops.tokens_all(request(1001))
    assert refused.value.code == "EPERM"
    listed = (await ops.tokens_all(request(0)))["tokens"]
    assert [(t["uid"], t["pag"], t["host"], t["cell"], t["viceid"]) for t in listed] == [
        (1001, None, "192.0.2.9", "c.test", 1001),
        (1001, None, None, "c.test", 1001),
        (1002, None, None, "c.test", None),
        (1002, None, None, "o.test", 1001),
    ]
    assert {key for t in listed for key in t} == {
        "uid", "pag", "host", "cell", "client", "viceid", "begin", "end",
    }  # fmt: skip
    assert "SECRETKY" not in repr(listed) and "TICKET" not in repr(listed)


class Client:
    """What the view commands ask the daemon, answered from the records above as the
    daemon's ops encode them."""

    def __init__(self) -> None:
        self.views: CacheManagerViews = Views()  # mypy checks the fake against the protocol

    def call(self, op: str, uid: int | None = None, **args: Any) -> Any:
        if op == "cache":
            return {"cache": asdict(trio.run(self.views.cache_view))}
        if op == "tokens_all":
            return trio.run(TokenOps(tokens(), "c.test").tokens_all, request(0))
        found = getattr(self.views, f"{op[:-1]}_views")()
        return {op: [asdict(item) for item in found]}


def shown(
    command: Callable[..., Any], capsys: pytest.CaptureFixture[str], json: bool = False
) -> tuple[Any, str]:
    result = command(Client(), argparse.Namespace(json=json))
    return result, capsys.readouterr().out


def test_tables_for_people(capsys: pytest.CaptureFixture[str]) -> None:
    _, out = shown(viewcli.servers, capsys)
    lines = out.splitlines()
    assert lines[0].split() == [
        "TYPE", "ADDRESS", "CELL", "STATE", "RTT", "RANK", "CALLS", "ERRORS", "LAST", "ERROR",
    ]  # fmt: skip
    assert lines[1].split()[:8] == ["file", "10.0.0.1:7000", "-", "up", "1.2ms", "5000", "40", "1"]
    assert "down 12.0s" in lines[2] and 'say "no"' in lines[2]
    # Numbers line up on the right: the CALLS column ends in the same place on each line.
    ends = {
        line.index(word) + len(word)
        for line, word in zip(lines, ("CALLS", "40", "3"), strict=False)
    }
    assert len(ends) == 1
    _, out = shown(viewcli.volumes, capsys)
    assert "proj" in out and "10.0.0.1 /vicepa" in out and "none up" in out
    _, out = shown(viewcli.calls, capsys)
    assert "FetchData64" in out and "3.0M" in out and "16/32/32" in out and "2.5s" in out
    _, out = shown(viewcli.peers, capsys)
    assert "1.2ms" in out and "1444" in out and "700" in out and "40M" in out
    _, out = shown(viewcli.conns, capsys)
    assert "80000001:00001234" in out and "rxkad" in out
    _, out = shown(viewcli.cells, capsys)
    assert "c.test (home)" in out and "CellServDB" in out
    _, out = shown(viewcli.cache, capsys)
    assert out.startswith("AFS using 29% of cache blocks (307200 of 1048576 1k blocks)")
    assert "2 files, 5.0M" in out and "90.0% (90 of 100)" in out
    _, out = shown(viewcli.tokens_all, capsys)
    assert "uid 1001" in out and "uid 1001@192.0.2.9" in out and "expired" in out
    assert "SECRETKY" not in out


def test_json_is_the_reply_as_it_came(capsys: pytest.CaptureFixture[str]) -> None:
    result, out = shown(viewcli.servers, capsys, json=True)
    assert out == "" and result["servers"][1]["down_for"] == 12.0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (0.0012, "1.2ms"), (0.25, "250ms"), (3.44, "3.4s"), (300, "5m"), (7200, "2h")],
)
def test_duration(seconds: float | None, text: str) -> None:
    assert viewcli.duration(seconds) == text


@pytest.mark.parametrize(
    ("count", "text"), [(512, "512"), (1536, "1.5K"), (64 << 20, "64M"), (2 << 30, "2.0G")]
)
def test_size(count: int, text: str) -> None:
    assert viewcli.size(count) == text


async def http(connect: Callable[[], Awaitable[trio.SocketStream]], raw: bytes) -> bytes:
    stream = await connect()
    async with stream:
        await stream.send_all(raw)
        reply = b""
        while chunk := await stream.receive_some(65536):
            reply += chunk
    return reply


async def test_the_listener_serves_get_metrics_only(tmp_path: Path) -> None:
    path = tmp_path / "metrics.sock"
    render_count = 0

    async def render() -> str:
        nonlocal render_count
        render_count += 1
        return await metrics.text(Views(), stats(), tokens(), clock=lambda: NOW)

    def unix() -> Awaitable[trio.SocketStream]:
        return trio.open_unix_socket(str(path))

    async with trio.open_nursery() as nursery:
        await nursery.start(scrape.serve_metrics, path, render)
        assert path.stat().st_mode & 0o777 == 0o666
        reply = await http(unix, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"version=0.0.4" in head
        assert "afsfuse_server_up" in families(body.decode())
        assert (await http(unix, b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(
            b"HTTP/1.1 404"
        )
        post = b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        assert (await http(unix, post)).startswith(b"HTTP/1.1 405")
        assert (await http(unix, b"NONSENSE\r\n\r\n")).startswith(b"HTTP/1.1 400")
        huge = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n"
        # Refused at 8 KiB; the rest, unread, may reset the connection before the answer.
        with contextlib.suppress(trio.BrokenResourceError):
            assert (await http(unix, huge)).startswith(b"HTTP/1.1 431")
        head_only = await http(unix, b"HEAD /metrics HTTP/1.0\r\n\r\n")
        assert head_only.startswith(b"HTTP/1.1 200") and head_only.endswith(b"\r\n\r\n")
        assert render_count == 2
        nursery.cancel_scope.cancel()
    assert not path.exists()


async def test_a_silent_scraper_is_dropped(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.abc.Clock
) -> None:
    monkeypatch.setattr(scrape, "TIMEOUT", 5.0)

    async def render() -> str:
        return "# nothing\n"

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(scrape.serve_metrics, ("127.0.0.1", 0), render)
        port = listeners[0].socket.getsockname()[1]
        silent = await trio.open_tcp_stream("127.0.0.1", port)
        started = trio.current_time()
        assert await silent.receive_some(100) == b""  # closed by the server
        assert trio.current_time() - started == pytest.approx(5.0, abs=0.1)
        nursery.cancel_scope.cancel()


async def test_the_listener_on_a_tcp_port() -> None:
    async def render() -> str:
        return "# nothing\n"

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(scrape.serve_metrics, ("127.0.0.1", 0), render)
        port = listeners[0].socket.getsockname()[1]
        reply = await http(
            lambda: trio.open_tcp_stream("127.0.0.1", port), b"GET /metrics HTTP/1.0\r\n\r\n"
        )
        assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"\r\n\r\n# nothing\n")
        nursery.cancel_scope.cancel()
