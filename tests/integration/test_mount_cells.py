"""The mounted read path across cells: a cell found only through DNS, a mount point into
another cell, and fileserver fail-over, driven by ordinary programs against a daemon
running as a separate process (`afsfuse mount`), as root without tokens (anonymous).

The fake DNS server runs in its own thread and trio loop, so it keeps answering while the
test process blocks on the mount; the daemon reaches it over loopback like any nameserver.
"""

from __future__ import annotations

import errno
import os
import queue
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from admin_rpcs import admin, afs, make_file
from logins import admin_token
from managers import ADMIN, manager
from mounting import acl, start_daemon, stop_daemon
from volumes import volume_root

from afsfuse.fs.callback import CallbackRegistry
from afsfuse.fs.cmservice import CacheManagerService
from afsfuse.fs.server import FS_PORT
from afsfuse.keyring import Token
from afsfuse.keyring.store import TokenStore
from afsfuse.rx.driver import open_endpoint
from afsfuse.rx.errors import RxError
from afsfuse.rx.interfaces.fs import AFS_SETMODE, FS, AFSFid, AFSStoreStatus
from afsfuse.rx.security import RXNULL
from afsfuse.testing.cell import Cell, running_cell
from afsfuse.testing.dns import FakeDNSServer, fake_dns

pytestmark = pytest.mark.cell

OTHER_CELL = "other.afsfuse.test"
#: A cell no CellServDB names: only the fake DNS server knows it.
DNS_CELL = "viadns.afsfuse.example"
ANYONE_READS = "system:anyuser 9"  # read and lookup
#: Mount options that keep a dead fileserver from holding a test for long.
DEAD_TIME = 2.0
SERVER_TIMEOUT = 8.0


@dataclass
class Mounted:
    path: Path
    pid: int
    log: Path

    def run(self, *argv: str, check: bool = True, timeout: float = 60):
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C"}
        return subprocess.run(argv, env=env, capture_output=True, timeout=timeout, check=check)

    def xattr(self, path: Path, name: str) -> bytes:
        return self.run("getfattr", "--only-values", "-n", name, str(path)).stdout


@contextmanager
def afsfuse_mount(work: Path, cells: list[Cell], *options: str) -> Iterator[Mounted]:
    """A daemon mounted on `work`/afs with a CellServDB of `cells` (the first is home)."""
    cellservdb = work / "CellServDB"
    cellservdb.write_text("".join(c.cellservdb.read_text() for c in cells))
    mountpoint = work / "afs"
    mountpoint.mkdir()
    log = work / "afsfuse.log"
    # A later --cellservdb replaces the home cell's own.
    options = ("--cellservdb", str(cellservdb), *options)
    pid = start_daemon(cells[0], mountpoint, work / "cache", log, extra_args=options)
    try:
        yield Mounted(mountpoint, pid, log)
    finally:
        stop_daemon(mountpoint, pid)
        print(f"daemon log: {log}")


@contextmanager
def dns_in_thread(records: list[str]) -> Iterator[FakeDNSServer]:
    """The fake DNS server, served from a thread of its own until the block ends."""
    handover: queue.Queue[tuple[FakeDNSServer, trio.lowlevel.TrioToken, trio.Event]] = queue.Queue()

    async def serve() -> None:
        stop = trio.Event()
        async with fake_dns(records) as server:
            handover.put((server, trio.lowlevel.current_trio_token(), stop))
            await stop.wait()

    thread = threading.Thread(target=trio.run, args=(serve,), daemon=True)
    thread.start()
    server, token, stop = handover.get(timeout=10)
    try:
        yield server
    finally:
        trio.from_thread.run_sync(stop.set, trio_token=token)
        thread.join(10)


async def _open_to_anyone(cell: Cell, cache: Path, token: Token, files: dict[str, bytes]) -> None:
    """root.cell readable by anyone, holding `files`, released."""
    store = TokenStore()
    store.set(ADMIN, token)
    async with manager(cell, cache, store) as m:
        root = await volume_root(m, cell.name, "root.cell", "rw")
        await admin(m, root, FS.OldStoreACL, afs(root), acl(ANYONE_READS))
        for name, data in files.items():
            await make_file(m, root, name, data)
    await trio.to_thread.run_sync(
        lambda: cell.exec("vos", "release", "root.cell", "-localauth", timeout=180)
    )


@pytest.fixture(scope="module")
def public_cell(cell: Cell, tokens: dict[str, Token], tmp_path_factory) -> Cell:
    """The session cell with root.cell readable by anonymous callers."""
    trio.run(_open_to_anyone, cell, tmp_path_factory.mktemp("c"), tokens["admin"], {})
    return cell


# -- 1. a cell known only to DNS ----------------------------------------------------------


def test_cell_found_through_dns_server_and_unknown_names_remembered(
    public_cell: Cell, tmp_path: Path
) -> None:
    vl_host = f"vl.{DNS_CELL}."
    records = [
        f"_afs3-vlserver._udp.{DNS_CELL}. 300 SRV 10 0 7003 {vl_host}",
        f"{vl_host} 300 A {public_cell.db_server.addr}",
    ]
    with dns_in_thread(records) as dns:
        server = f"{dns.addr[0]}:{dns.addr[1]}"
        with afsfuse_mount(tmp_path, [public_cell], "--dns-server", server) as mounted:
            via_dns = mounted.path / DNS_CELL
            assert DNS_CELL not in os.listdir(mounted.path)  # not listed before it is asked
            names = mounted.run("ls", "-a", str(via_dns)).stdout.split()
            assert dns.count(f"_afs3-vlserver._udp.{DNS_CELL}", "SRV") >= 1
            assert dns.count(vl_host, "A") >= 1
            # The same VL and fileservers under another name: the same root.cell RO, now
            # filed under the DNS name (the fileserver only knows its own cell's name).
            by_name = mounted.path / public_cell.name
            assert names == mounted.run("ls", "-a", str(by_name)).stdout.split()
            assert mounted.xattr(via_dns, "afs.cell") == DNS_CELL.encode()
            assert mounted.xattr(via_dns, "afs.volume") == b"root.cell.readonly"
            assert mounted.xattr(via_dns, "afs.fid") == mounted.xattr(by_name, "afs.fid")
            assert DNS_CELL in os.listdir(mounted.path)  # and listed once found

            unknown = "nosuch.afsfuse.example"
            started = time.monotonic()
            with pytest.raises(FileNotFoundError):
                os.stat(mounted.path / unknown)
            assert time.monotonic() - started < 2.0
            asked = dns.queries.total()
            assert dns.count(f"_afs3-vlserver._udp.{unknown}", "SRV") == 1
            for _ in range(3):
                with pytest.raises(FileNotFoundError):
                    os.stat(mounted.path / unknown)
            assert dns.queries.total() == asked  # "no such cell" is remembered


def test_without_dns_only_the_listed_cells_are_known(public_cell: Cell, tmp_path: Path) -> None:
    """--no-dns (afs.conf.client's AFS_AFSDB=false): a cell only DNS knows is not there,
    and no query is made."""
    vl_host = f"vl.{DNS_CELL}."
    records = [
        f"_afs3-vlserver._udp.{DNS_CELL}. 300 SRV 10 0 7003 {vl_host}",
        f"{vl_host} 300 A {public_cell.db_server.addr}",
    ]
    with dns_in_thread(records) as dns:
        server = f"{dns.addr[0]}:{dns.addr[1]}"
        with afsfuse_mount(tmp_path, [public_cell], "--dns-server", server, "--no-dns") as mounted:
            with pytest.raises(FileNotFoundError):
                os.stat(mounted.path / DNS_CELL)
            listed = mounted.path / public_cell.name
            assert mounted.xattr(listed, "afs.cell") == public_cell.name.encode()
            assert dns.queries.total() == 0


# -- 2. a mount point into another cell ---------------------------------------------------


@pytest.fixture(scope="module")
def other_cell() -> Iterator[Cell]:
    with running_cell(name=OTHER_CELL) as c:
        yield c


async def _cross_cell_volume(cell: Cell, cache: Path, token: Token, target: str) -> str:
    """A fresh volume of `cell`, readable by anyone, holding the mount point `other` to
    `target`; returns its name."""
    name = "xcell." + secrets.token_hex(3)
    await trio.to_thread.run_sync(
        lambda: cell.exec("vos", "create", cell.db_server.addr, "a", name, "-localauth")
    )
    store = TokenStore()
    store.set(ADMIN, token)
    async with manager(cell, cache, store) as m:
        root = await volume_root(m, cell.name, name, "rw")
        await admin(m, root, FS.OldStoreACL, afs(root), acl(ANYONE_READS))
        mode_0644 = AFSStoreStatus(Mask=AFS_SETMODE, UnixModeBits=0o644)
        await admin(m, root, FS.Symlink, afs(root), "other", target, mode_0644)
    return name


def test_mount_point_into_another_cell_reaches_its_read_only_root(
    public_cell: Cell,
    other_cell: Cell,
    tokens: dict[str, Token],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hello = b"hello from the other cell\n"
    other_token = admin_token(other_cell, tmp_path / "cc_other", monkeypatch)
    trio.run(_open_to_anyone, other_cell, tmp_path / "c1", other_token, {"hello.txt": hello})
    volume = trio.run(
        _cross_cell_volume, public_cell, tmp_path / "c2", tokens["admin"],
        f"#{OTHER_CELL}:root.cell.",
    )  # fmt: skip
    with afsfuse_mount(tmp_path, [public_cell, other_cell]) as mounted:
        holder = mounted.path / ".:mount" / f"{public_cell.name}:{volume}"
        assert mounted.xattr(holder, "afs.volume") == volume.encode()  # an RW volume
        point = holder / "other"
        assert mounted.xattr(point, "afs.mountpoint") == f"#{OTHER_CELL}:root.cell".encode()
        # Across cells a regular mount point prefers the RO volume, even from an RW parent.
        assert mounted.xattr(point, "afs.cell") == OTHER_CELL.encode()
        assert mounted.xattr(point, "afs.volume") == b"root.cell.readonly"
        assert (point / "hello.txt").read_bytes() == hello
        dump = mounted.run("getfattr", "-d", "-m", "-", str(point / "hello.txt")).stdout
        assert f'afs.cell="{OTHER_CELL}"'.encode() in dump
        assert b'afs.volume="root.cell.readonly"' in dump
        # The same volume as /afs/<other cell> shows.
        assert mounted.xattr(point, "afs.fid") == mounted.xattr(
            mounted.path / OTHER_CELL, "afs.fid"
        )


# -- 3. fail-over between the fileservers of a replicated volume --------------------------


async def _wait_until_serving(cell: Cell, index: int, volume: int, seconds: float = 90) -> None:
    """Until fileserver `index` answers for `volume` (a restarted one attaches volumes late)."""
    async with open_endpoint() as endpoint:
        CacheManagerService(CallbackRegistry()).install(endpoint)
        conn = endpoint.connect(
            (cell.servers[index].addr, FS_PORT), FS.service_id, RXNULL, dead_time=2
        )
        with trio.fail_after(seconds):
            while True:
                try:
                    await FS.FetchStatus(conn, AFSFid(volume, 1, 1))
                    return
                except RxError:
                    await trio.sleep(0.5)


def test_read_only_volume_fails_over_times_out_and_resumes(
    cell2: Cell, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {f"f{i}.txt": f"file {i} of {cell2.name}\n".encode() for i in range(5)}
    token = admin_token(cell2, tmp_path / "cc", monkeypatch)
    trio.run(_open_to_anyone, cell2, tmp_path / "c", token, files)
    options = ("--dead-time", str(DEAD_TIME), "--server-timeout", str(SERVER_TIMEOUT))
    stopped: set[int] = set()
    with afsfuse_mount(tmp_path, [cell2], *options) as mounted:
        root = mounted.path / cell2.name
        assert mounted.xattr(root, "afs.volume") == b"root.cell.readonly"
        ro_volume = int(mounted.xattr(root, "afs.fid").split(b".")[0])
        assert (root / "f0.txt").read_bytes() == files["f0.txt"]
        try:
            # One fileserver down, then the other: either way the RO replica is read.
            for index in (0, 1):
                cell2.stop_fileserver(index)
                stopped.add(index)
                started = time.monotonic()
                name = f"f{index + 1}.txt"
                assert mounted.run("cat", str(root / name)).stdout == files[name]
                print(f"read with fileserver {index} down: {time.monotonic() - started:.1f} s")
                cell2.start_fileserver(index)
                trio.run(_wait_until_serving, cell2, index, ro_volume)
                stopped.discard(index)
            # Both down: a timely ETIMEDOUT, not a hang.
            for index in (0, 1):
                cell2.stop_fileserver(index)
                stopped.add(index)
            started = time.monotonic()
            done = mounted.run("cat", str(root / "f3.txt"), check=False)
            seconds = time.monotonic() - started
            print(f"read with both fileservers down failed after {seconds:.1f} s")
            assert done.returncode != 0
            assert os.strerror(errno.ETIMEDOUT).encode() in done.stderr, done.stderr
            assert seconds < SERVER_TIMEOUT + 2
        finally:
            for index in sorted(stopped):
                cell2.start_fileserver(index)
            for index in sorted(stopped):
                trio.run(_wait_until_serving, cell2, index, ro_volume)
        # Back: the next read finds them again (down servers are probed on demand).
        started = time.monotonic()
        assert mounted.run("cat", str(root / "f4.txt")).stdout == files["f4.txt"]
        print(f"first read after the restart: {time.monotonic() - started:.1f} s")


# -- 4. a volume offline for a moment is waited for, not ENODEV ---------------------------


def test_reads_during_release_never_see_enodev(public_cell: Cell, tmp_path: Path) -> None:
    """While `vos release` re-clones root.cell's RO, its only site answers VOFFLINE; a cache
    manager that gave up there answered ENODEV (the old flake of test_mount_basic)."""
    with afsfuse_mount(tmp_path, [public_cell]) as mounted:
        root = mounted.path / public_cell.name
        mounted.run("ls", str(root))
        failures: list[bytes] = []
        releases = threading.Thread(
            target=lambda: [
                public_cell.exec("vos", "release", "root.cell", "-force", "-localauth", timeout=180)
                for _ in range(3)
            ]
        )
        releases.start()
        reads = 0
        while releases.is_alive():
            done = mounted.run("ls", "-la", str(root), check=False)
            reads += 1
            if done.returncode:
                failures.append(done.stderr)
            time.sleep(0.05)
        releases.join()
        waited = mounted.log.read_text().count("missing on every site; asking again")
        print(f"{reads} listings during 3 releases; {waited} waits for an offline volume")
        assert failures == []
