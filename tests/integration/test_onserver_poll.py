"""The benchmark's "on the server" poller against the real fileserver: it waits for a store
that comes late, and gives up at its time limit saying what is missing."""

from __future__ import annotations

import secrets
import sys
import threading
import time
from pathlib import Path

import pytest
import trio
from conftest import cache_manager_endpoint

from afsfuse.keyring import Token
from afsfuse.rx.driver import ClientConnection
from afsfuse.rx.interfaces.fs import AFS_SETMODE, FS, AFSFid, AFSStoreStatus
from afsfuse.rx.rxkad import Level, RxkadClient
from afsfuse.testing.cell import Cell
from afsfuse.vl.vlclient import VLClient

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from onserver import Expected, NotOnServer, ServerWatch

pytestmark = pytest.mark.cell

LATE_BYTES = 3 * 1000 * 1000
DELAY = 0.5
MODE = AFSStoreStatus(Mask=AFS_SETMODE, UnixModeBits=0o644)


async def _admin_conn(cell: Cell, admin: Token, endpoint) -> tuple[ClientConnection, AFSFid]:
    vl = VLClient.on_endpoint(endpoint, [cell.db_server.addr])
    location = await vl.locate("test")
    security = RxkadClient(admin.session_key, admin.ticket, admin.kvno, Level.CRYPT)
    host = location.sites[0][0].addresses[0]
    conn = endpoint.connect((host, FS.port), FS.service_id, security)
    return conn, AFSFid(location.rw_id, 1, 1)


async def _make(cell: Cell, admin: Token, name: str) -> AFSFid:
    """A directory `name` in the test volume's root holding `late` (empty) and `early` (10
    bytes); the fid of `late`."""
    async with cache_manager_endpoint(cell) as cm:
        conn, root = await _admin_conn(cell, admin, cm.endpoint)
        directory = (await FS.MakeDir(conn, root, name, AFSStoreStatus())).OutFid
        late = (await FS.CreateFile(conn, directory, "late", MODE)).OutFid
        early = (await FS.CreateFile(conn, directory, "early", MODE)).OutFid
        await FS.StoreData64(conn, early, AFSStoreStatus(), 0, 10, 10, data=b"0123456789")
        return late


async def _store_late(cell: Cell, admin: Token, late: AFSFid, started: list[float]) -> None:
    async with cache_manager_endpoint(cell) as cm:
        conn, _root = await _admin_conn(cell, admin, cm.endpoint)
        await trio.sleep(DELAY)
        started.append(time.monotonic())
        data = bytes(LATE_BYTES)
        await FS.StoreData64(conn, late, AFSStoreStatus(), 0, len(data), len(data), data=data)


def test_waits_for_a_late_store(cell: Cell, tokens: dict[str, Token]) -> None:
    name = f"poll-{secrets.token_hex(4)}"
    late = trio.run(_make, cell, tokens["admin"], name)
    started: list[float] = []
    writer = threading.Thread(
        target=trio.run, args=(_store_late, cell, tokens["admin"], late, started)
    )
    watch = ServerWatch(cell.name, [cell.db_server.addr], "test", tokens["admin"])
    expected = Expected({f"{name}/late": LATE_BYTES, f"{name}/early": 10})
    writer.start()
    try:
        stored = watch.wait(expected, timeout=60)
    finally:
        writer.join(timeout=60)
    assert not writer.is_alive() and started
    # The file was there, empty, from the start: only its full length ends the wait.
    assert stored.at > started[0]
    assert stored.last_pass >= 0


def test_gives_up_at_its_time_limit_saying_what_is_missing(
    cell: Cell, tokens: dict[str, Token]
) -> None:
    name = f"poll-{secrets.token_hex(4)}"
    trio.run(_make, cell, tokens["admin"], name)
    watch = ServerWatch(cell.name, [cell.db_server.addr], "test", tokens["admin"])
    expected = Expected({f"{name}/early": 10, f"{name}/late": 5, f"{name}/never": 1})
    began = time.monotonic()
    with pytest.raises(NotOnServer) as failed:
        watch.wait(expected, timeout=2)
    assert time.monotonic() - began < 30
    assert "not on the server after 2 s: 1 of 3 files complete" in str(failed.value)
    assert "1 of 2 directories whole" in str(failed.value)
