"""The nearest replica: with root.cell's RO sites on two fileservers at different distances
(the harness's delay lines), a mount reads from the nearer one, moves to the other when
their distances swap, and follows root's `setserverprefs` over both."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from admin_rpcs import admin, afs, make_file
from local_users import User, UserPython
from logins import admin_token
from managers import ADMIN, manager
from mounting import Mount, acl, afs_mount
from volumes import volume_root

from afsfuse.keyring import Token
from afsfuse.keyring.store import TokenStore
from afsfuse.rx.interfaces.fs import FS
from afsfuse.testing.cell import Cell, running_cell

pytestmark = pytest.mark.cell

#: Round trips of the far and the near server.
FAR, NEAR = 0.040, 0.004
#: Seconds between the ranker's rounds in the mount (`checkservers -interval`): a server not
#: used is probed after ten of them.
INTERVAL = 1
#: Bound on noticing a swap: ten rounds of silence before the probe, and time to spare.
SWAP_BOUND = 60.0


@pytest.fixture(scope="module")
def far_and_near() -> Iterator[Cell]:
    """Two fileservers, each behind a delay line (none yet), root.cell replicated on both."""
    with running_cell(fileservers=2, name="near.afsfuse.test", delays={0: 0.0, 1: 0.0}) as c:
        yield c


async def _publish(cell: Cell, cache: Path, token: Token, name: str, data: bytes) -> None:
    """root.cell readable by anyone, holding `name`, released to both RO sites."""
    store = TokenStore()
    store.set(ADMIN, token)
    async with manager(cell, cache, store) as m:
        root = await volume_root(m, cell.name, "root.cell", "rw")
        await admin(m, root, FS.OldStoreACL, afs(root), acl("system:anyuser 9"))
        await make_file(m, root, name, data)
    await trio.to_thread.run_sync(
        lambda: cell.exec("vos", "release", "root.cell", "-localauth", timeout=180)
    )


def _calls(mount: Mount) -> dict[str, int]:
    done = mount.ctl(None, "--json", "servers")
    assert done.returncode == 0, done.stderr
    return {
        s["address"].removesuffix(":7000"): s["calls"]
        for s in json.loads(done.stdout)["servers"]
        if s["kind"] == "file"
    }


def _ranks(mount: Mount) -> dict[str, int]:
    done = mount.ctl(None, "getserverprefs", "-numeric")
    assert done.returncode == 0, done.stderr
    return {
        host: int(rank)
        for host, rank in (line.split() for line in done.stdout.decode().splitlines())
    }


def _served_by(mount: Mount, path: Path, data: bytes) -> set[str]:
    """The fileservers a read of `path`, its cached copy flushed first, was served by."""
    before = _calls(mount)
    flushed = mount.ctl(None, "flush", str(path))
    assert flushed.returncode == 0, flushed.stderr
    assert path.read_bytes() == data
    after = _calls(mount)
    return {addr for addr, calls in after.items() if calls > before.get(addr, 0)}


def _until_served_by(mount: Mount, path: Path, data: bytes, server: str, bound: float) -> float:
    """Read until one read is served by `server` alone; the seconds it took."""
    started = time.monotonic()
    while True:
        served = _served_by(mount, path, data)
        if served == {server}:
            return time.monotonic() - started
        assert time.monotonic() - started < bound, (served, _ranks(mount))
        time.sleep(0.5)


def test_reads_go_to_the_nearer_site_follow_a_swap_and_a_preference(
    far_and_near: Cell,
    users: dict[str, User],
    user_python: UserPython,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cell = far_and_near
    data = secrets.token_bytes(100_000)
    token = admin_token(cell, tmp_path / "cc", monkeypatch)
    trio.run(_publish, cell, tmp_path / "admin-cache", token, "data", data)
    first, second = (server.addr for server in cell.servers)
    cell.set_delay(0, FAR)
    cell.set_delay(1, NEAR)
    with afs_mount(cell, users, user_python, tmp_path / "cache") as mount:
        set_interval = mount.ctl(None, "checkservers", "-interval", str(INTERVAL))
        assert set_interval.returncode == 0, set_interval.stderr
        path = mount.path / cell.name / "data"
        assert path.read_bytes() == data
        took = _until_served_by(mount, path, data, second, bound=10 * INTERVAL)
        ranks = _ranks(mount)
        print(f"nearer site in use {took:.1f} s after the first read; ranks {ranks}")
        assert ranks[second] < ranks[first]
        for _ in range(3):  # and it stays there
            assert _served_by(mount, path, data) == {second}

        cell.set_delay(0, NEAR)
        cell.set_delay(1, FAR)
        took = _until_served_by(mount, path, data, first, bound=SWAP_BOUND)
        print(f"swap followed in {took:.1f} s; ranks {_ranks(mount)}")
        assert _served_by(mount, path, data) == {first}

        # Root's preference wins over the round trips: back to the far one.
        prefer = mount.ctl(None, "setserverprefs", "-servers", second, "100")
        assert prefer.returncode == 0, prefer.stderr
        assert _ranks(mount)[second] == 100
        assert _served_by(mount, path, data) == {second}
