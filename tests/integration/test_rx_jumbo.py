"""Rx packets as big as the path allows, watched on the fileserver's link.

A cell whose links run at MTU 9000 with its fileserver started -jumbo: afsfuse-io's store
and reads (rxkad crypt and clear) go in packets over 1444 bytes both ways, with no IP
fragment.  The session's 1500-byte cell: the same transfers never exceed 1444 bytes.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from captures import Capture, tshark_read
from logins import admin_token, kinit

from afsfuse.fs.callback import CallbackRegistry
from afsfuse.fs.cmservice import CacheManagerService
from afsfuse.keyring import Token
from afsfuse.rx.driver import open_endpoint
from afsfuse.rx.interfaces.fs import FS, AFSFid, AFSStoreStatus
from afsfuse.rx.rxkad import Level, RxkadClient
from afsfuse.testing.cell import Cell, running_cell
from afsfuse.vl.vlclient import VLClient

pytestmark = pytest.mark.cell

SIZE = 4 * 1000 * 1000
OLD_MAX_PACKET = 1444
FILE_MODE = AFSStoreStatus(Mask=8, UnixModeBits=0o644)


@pytest.fixture(scope="module")
def jumbo_cell() -> Iterator[Cell]:
    with running_cell(name="jumbo.afsfuse.test", jumbo=True) as c:
        yield c


async def new_file(cell: Cell, admin: Token) -> str:
    """A fresh empty file in the test volume's root; its fid as afsfuse-io takes it."""
    async with open_endpoint() as endpoint:
        CacheManagerService(CallbackRegistry()).install(endpoint)
        location = await VLClient.on_endpoint(endpoint, [cell.db_server.addr]).locate("test")
        security = RxkadClient(admin.session_key, admin.ticket, admin.kvno, Level.CRYPT)
        conn = endpoint.connect(
            (location.sites[0][0].addresses[0], FS.port), FS.service_id, security
        )
        root = AFSFid(location.rw_id, 1, 1)
        made = await FS.CreateFile(conn, root, f"jumbo-{secrets.token_hex(4)}", FILE_MODE)
        fid = made.OutFid
        return f"{fid.Volume}.{fid.Vnode}.{fid.Unique}"


def afsfuse_io(cell: Cell, env: dict[str, str], *argv: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "afsfuse.io_cli", *argv, "--cell", cell.name,
         "--cellservdb", str(cell.cellservdb)],
        env=env, capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


async def transfers(
    cell: Cell, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> tuple[list[int], list[int], int]:
    """Store SIZE random bytes with afsfuse-io, read them back at crypt and at clear, all
    under a capture of the fileserver's link.  Returns the sizes of the Rx datagrams (UDP
    payloads) to the fileserver and from it, and how many IP fragments passed."""
    admin = admin_token(cell, tmp_path / "cc_admin", monkeypatch)
    env = kinit(cell, "admin", tmp_path / "cc_io")
    fid = await new_file(cell, admin)
    data = os.urandom(SIZE)
    (tmp_path / "in").write_bytes(data)
    capture = Capture(cell.servers[0].host_if, tmp_path / "fs.pcapng")
    try:
        await capture.started()
        with (tmp_path / "in").open("rb") as source:
            done = subprocess.run(
                [sys.executable, "-m", "afsfuse.io_cli", "fidwrite", "--fid", fid,
                 "--security", "crypt", "--cell", cell.name,
                 "--cellservdb", str(cell.cellservdb)],
                env=env, stdin=source, capture_output=True, timeout=120, check=False,
            )  # fmt: skip
        assert done.returncode == 0, done.stderr
        for level in ("crypt", "clear"):
            out = tmp_path / f"out-{level}"
            afsfuse_io(cell, env, "fidread", "--fid", fid, "--security", level, "-o", str(out))
            assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(data).digest()
        await trio.sleep(0.5)  # the last packets reach the capture
    finally:
        capture.stop()
    rows = tshark_read(capture.path, "udp.port == 7000", "udp.srcport", "udp.length")
    to_server = [int(length) - 8 for src, length in rows if src != "7000"]
    from_server = [int(length) - 8 for src, length in rows if src == "7000"]
    fragments = tshark_read(capture.path, "ip.flags.mf == 1 || ip.frag_offset > 0", "frame.number")
    print(
        f"\n{cell.name}: to the fileserver {len(to_server)} datagrams, largest "
        f"{max(to_server)}; from it {len(from_server)}, largest {max(from_server)}"
    )
    return to_server, from_server, len(fragments)


def test_the_jumbo_cell_runs_its_links_at_9000_and_its_fileserver_with_jumbo(
    jumbo_cell: Cell,
) -> None:
    server = jumbo_cell.servers[0]
    for argv in (
        ["ip", "link", "show", jumbo_cell.bridge],
        ["ip", "link", "show", server.host_if],
        ["ip", "netns", "exec", server.netns, "ip", "-o", "link", "show", "up", "type", "veth"],
    ):
        shown = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
        assert " mtu 9000 " in shown.stdout, shown.stdout
    status = jumbo_cell.exec("bos", "status", "-server", server.addr, "-long", "-localauth")
    assert "fileserver -jumbo" in status, status


async def test_big_packets_both_ways_at_mtu_9000(
    jumbo_cell: Cell, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    to_server, from_server, fragments = await transfers(jumbo_cell, monkeypatch, tmp_path)
    assert fragments == 0
    # The two reads: nearly all their bytes come in packets over 1444 bytes.
    assert sum(size for size in from_server if size > OLD_MAX_PACKET) > 1.8 * SIZE
    assert max(from_server) <= 8588
    # The store: once the fileserver's ACK trailer said it takes more, so do we.
    assert sum(size for size in to_server if size > OLD_MAX_PACKET) > SIZE // 2
    assert max(to_server) <= 8588


async def test_nothing_over_1444_bytes_at_mtu_1500(
    cell: Cell, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    to_server, from_server, fragments = await transfers(cell, monkeypatch, tmp_path)
    assert fragments == 0
    assert len(from_server) * OLD_MAX_PACKET > 2 * SIZE  # the reads did pass here
    assert max(to_server) <= OLD_MAX_PACKET and max(from_server) <= OLD_MAX_PACKET
