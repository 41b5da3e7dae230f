"""`afsfuse-ctl` views on the client side (tables) and `tokens --all`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import pytest
import trio

from afsfuse.ctl import viewcli
from afsfuse.ctl.ops import TokenOps
from afsfuse.ctl.server import ControlError, PeerCred, Request
from afsfuse.fs.api import CacheManagerViews
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
