"""The test cell's delay line (afsfuse.testing.delay): Rx round trips to a server behind it
take the round trip it is set to, it changes while the cell runs, a real afsfuse mount
reads and writes through it, and its devices go with its process.  A check of the harness,
not of afsfuse's speed."""

from __future__ import annotations

import secrets
import subprocess
import time
from pathlib import Path

import pytest
import trio
from acls import ANYONE_WRITES
from local_users import User, UserPython
from logins import admin_token
from managers import ADMIN, manager
from mounting import afs_mount
from volumes import volume_root

from afsfuse.keyring.store import TokenStore
from afsfuse.rx.driver import open_endpoint
from afsfuse.rx.interfaces.vl import VL
from afsfuse.testing.cell import Cell
from afsfuse.testing.delay import DelayLine

pytestmark = pytest.mark.cell

SAMPLES = 10
#: However busy the machine, the quickest of SAMPLES calls comes within this of the setting.
SLACK = 0.025


async def _quickest_round_trip(addr: str) -> float:
    """The quickest of SAMPLES ProbeServer calls to the VL server (each a whole Rx call)."""
    async with open_endpoint() as endpoint:
        conn = endpoint.connect((addr, VL.port), VL.service_id)
        await VL.ProbeServer(conn)  # the first call also makes the connection
        times = []
        for _ in range(SAMPLES):
            started = time.monotonic()
            await VL.ProbeServer(conn)
            times.append(time.monotonic() - started)
    return min(times)


@pytest.mark.parametrize("rtt", [0.010, 0.001])
def test_rx_round_trips_take_the_set_time(far_cell: Cell, rtt: float) -> None:
    far_cell.set_delay(0, rtt)
    before = far_cell.delay_line(0).stats()
    quickest = trio.run(_quickest_round_trip, far_cell.servers[0].addr)
    after = far_cell.delay_line(0).stats()
    assert rtt <= quickest < rtt + SLACK
    for way in ("to_server", "to_host"):
        assert after[way]["forwarded"] - before[way]["forwarded"] >= SAMPLES + 1


async def _writable_volume(cell: Cell, cache: Path, name: str, store: TokenStore) -> None:
    async with manager(cell, cache, store) as m:
        await m.set_acl(await volume_root(m, cell.name, name), ANYONE_WRITES, ADMIN)
        await m.give_up_callbacks()


def test_a_mount_writes_and_another_reads_through_the_line(
    far_cell: Cell,
    users: dict[str, User],
    user_python: UserPython,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    far_cell.set_delay(0, 0.010)
    name = f"far.{secrets.token_hex(3)}"
    far_cell.exec("vos", "create", far_cell.servers[0].addr, "a", name, "-localauth")
    store = TokenStore()
    store.set(ADMIN, admin_token(far_cell, tmp_path / "cc_admin", monkeypatch))
    trio.run(_writable_volume, far_cell, tmp_path / "prepare", name, store)
    data = secrets.token_bytes(300_000)
    before = far_cell.delay_line(0).stats()
    # The second mount starts on an empty cache, so its read comes from the fileserver.
    for number in range(2):
        with afs_mount(far_cell, users, user_python, tmp_path / f"cache{number}") as mount:
            path = mount.path / ".:mount" / f"{far_cell.name}:{name}" / "far-file"
            if number == 0:
                path.write_bytes(data)  # close returns once the fileserver has it
            else:
                assert path.read_bytes() == data
    after = far_cell.delay_line(0).stats()
    frames = len(data) // 1500
    assert after["to_server"]["forwarded"] - before["to_server"]["forwarded"] > frames
    assert after["to_host"]["forwarded"] - before["to_host"]["forwarded"] > frames


def _links(netns: str | None = None) -> str:
    inside = ["ip", "netns", "exec", netns] if netns else []
    argv = [*inside, "ip", "-o", "link", "show"]
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout


def test_stopping_a_line_ends_its_process_and_devices() -> None:
    tag = secrets.token_hex(3)
    netns, host_tap, ns_tap = f"afsfuse-dl-{tag}", f"afdh{tag}", f"afdn{tag}"
    subprocess.run(["ip", "netns", "add", netns], check=True, timeout=30)
    try:
        line = DelayLine(host_tap, netns, ns_tap, 0.002)
        assert f" {host_tap}:" in _links() and f" {ns_tap}:" in _links(netns)
        line.stop()
        assert line.process.returncode == 0
        assert f" {host_tap}:" not in _links() and f" {ns_tap}:" not in _links(netns)
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False, timeout=30)
