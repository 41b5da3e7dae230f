"""Two afsfuse mounts of one cell, driven by ordinary programs: callback coherence (the
kernel's page and dentry caches included), restart with a warm disk cache, bulk status for
`ls -l`, status as the fileserver gives it, @sys after a sysname change, the counters of
`afsfuse-ctl stats`, errors, and unmount by SIGTERM.

Changes are made behind the mounts' backs, as the cell admin: with the FS stubs from this
process, or with `afsfuse-io fidwrite`.  Each admin session gives its callbacks back, so no
fileserver waits on a dead port when it breaks them later.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
from admin_rpcs import admin, afs, fid_of, write
from local_users import User, UserPython
from logins import kinit
from managers import ADMIN, manager
from mounting import BIN, SYSNAME, Mount, acl, afs_mount, process_gone, start_daemon, stop_daemon
from volumes import volume_root

from afsfuse.fs.manager import CacheManager
from afsfuse.fs.vnode import AfsFid
from afsfuse.keyring import Token
from afsfuse.keyring.store import TokenStore
from afsfuse.rx.errors import RxError
from afsfuse.rx.interfaces.fs import AFS_SETMODE, AFS_SETMODTIME, FS, AFSStoreStatus
from afsfuse.testing.cell import Cell

pytestmark = pytest.mark.cell

T = TypeVar("T")
#: Longest wait for a callback break to reach a mount after the change returned.
BREAK_WAIT = 1.0
MANY = 200
CACHED_SIZE = 700_000
OTHER_SYSNAME = "othersys"
SAME_MTIME = 1_700_000_000


class Admin:
    """The cell admin acting over Rx from this process, one short session per change."""

    def __init__(self, cell: Cell, token: Token, work: Path) -> None:
        self.cell = cell
        self.tokens = TokenStore()
        self.tokens.set(ADMIN, token)
        self.work = work

    def __call__(self, job: Callable[[CacheManager], Awaitable[T]]) -> T:
        return trio.run(self._session, job)

    async def _session(self, job: Callable[[CacheManager], Awaitable[T]]) -> T:
        async with manager(self.cell, self.work, self.tokens) as m:
            try:
                return await job(m)
            finally:
                with trio.move_on_after(5, shield=True):
                    for server in self.cell.servers:
                        conn = m.endpoint.connect((server.addr, 7000), FS.service_id)
                        with suppress(RxError):
                            await FS.GiveUpAllCallBacks(conn)

    def write(self, fid: AfsFid, data: bytes, mtime: int | None = None) -> None:
        """Replace the contents; with `mtime`, the file keeps that modification time."""
        status = AFSStoreStatus()
        if mtime is not None:
            status = AFSStoreStatus(Mask=AFS_SETMODTIME, ClientModTime=mtime)
        length = len(data)
        self(
            lambda m: admin(m, fid, FS.StoreData64, afs(fid), status, 0, length, length, data=data)
        )

    def fetch_status(self, fid: AfsFid) -> Any:
        async def job(m: CacheManager) -> Any:
            return (await admin(m, fid, FS.FetchStatus, afs(fid))).OutStatus

        return self(job)

    def create(self, parent: AfsFid, name: str, data: bytes) -> AfsFid:
        async def job(m: CacheManager) -> AfsFid:
            return await _new_file(m, parent, name, data)

        return self(job)

    def remove(self, parent: AfsFid, name: str) -> None:
        self(lambda m: admin(m, parent, FS.RemoveFile, afs(parent), name))


async def _new_file(m: CacheManager, parent: AfsFid, name: str, data: bytes) -> AfsFid:
    mode = AFSStoreStatus(Mask=AFS_SETMODE, UnixModeBits=0o644)
    fid = fid_of(parent, (await admin(m, parent, FS.CreateFile, afs(parent), name, mode)).OutFid)
    if data:
        await write(m, fid, data)
    return fid


async def _new_dir(m: CacheManager, parent: AfsFid, name: str, rights: bytes) -> AfsFid:
    reply = await admin(m, parent, FS.MakeDir, afs(parent), name, AFSStoreStatus())
    fid = fid_of(parent, reply.OutFid)
    await admin(m, fid, FS.OldStoreACL, afs(fid), rights)
    return fid


@dataclass
class Volume:
    """A volume of this module's own, made by the admin."""

    name: str
    root: AfsFid
    fids: dict[str, AfsFid]
    cached: bytes

    def path(self, mount: Mount, *names: str) -> Path:
        return mount.path.joinpath(".:mount", f"{mount.cell}:{self.name}", *names)


@pytest.fixture(scope="module")
def admin_cm(
    cell: Cell, tokens: dict[str, Token], tmp_path_factory: pytest.TempPathFactory
) -> Admin:
    return Admin(cell, tokens["admin"], tmp_path_factory.mktemp("admin-cache"))


@pytest.fixture(scope="module")
def volume(cell: Cell, admin_cm: Admin) -> Volume:
    name = "coh." + secrets.token_hex(3)
    cell.exec("vos", "create", cell.db_server.addr, "a", name, "-localauth")
    cached = secrets.token_bytes(CACHED_SIZE)
    readable = acl("system:anyuser 9")

    async def populate(m: CacheManager) -> Volume:
        root = await volume_root(m, cell.name, name, "rw")
        await admin(m, root, FS.OldStoreACL, afs(root), readable)
        fids = {"": root}
        for file, data in (
            ("file.txt", b"version 1\n"),
            ("same.txt", b"A" * 4000),
            ("doomed.txt", b"soon gone\n"),
            ("cached.bin", cached),
        ):
            fids[file] = await _new_file(m, root, file, data)
        many = fids["many"] = await _new_dir(m, root, "many", readable)
        for i in range(MANY):
            await _new_file(m, many, f"f{i:03d}", b"x" * i)
        sysdir = fids["sysdir"] = await _new_dir(m, root, "sysdir", readable)
        for sysname in (SYSNAME, OTHER_SYSNAME):
            directory = await _new_dir(m, sysdir, sysname, readable)
            await _new_file(m, directory, "marker", f"{sysname}\n".encode())
        closed = fids["closed"] = await _new_dir(m, root, "closed", acl())
        await _new_file(m, closed, "secret", b"no\n")
        lookup_only = fids["lookup-only"] = await _new_dir(
            m, root, "lookup-only", acl("system:anyuser 8")
        )
        fids["unreadable"] = await _new_file(m, lookup_only, "unreadable", b"no\n")
        return Volume(name, root, fids, cached)

    return admin_cm(populate)


@pytest.fixture(scope="module")
def mounts(
    cell: Cell,
    volume: Volume,
    users: dict[str, User],
    user_python: UserPython,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Mount, Mount]]:
    with ExitStack() as stack:
        a, b = (
            stack.enter_context(
                afs_mount(cell, users, user_python, tmp_path_factory.mktemp(f"cache-{which}"))
            )
            for which in "ab"
        )
        yield a, b


def cat(mount: Mount, path: Path) -> bytes:
    return mount.run("cat", str(path)).stdout


def wait_for_breaks(mount: Mount, before: int) -> None:
    """Poll the mount's break counter (at most BREAK_WAIT) until it passed `before`."""
    deadline = time.monotonic() + BREAK_WAIT
    while mount.stats()["callbacks_received"] <= before:
        assert time.monotonic() < deadline, f"no callback break within {BREAK_WAIT} s"
        time.sleep(0.02)


def breaks(mount: Mount) -> int:
    return mount.stats()["callbacks_received"]


def rpcs(stats: dict[str, Any], name: str) -> int:
    return stats["rpcs"].get(name, 0)


# -- coherence -----------------------------------------------------------------------------


def test_a_change_through_the_fs_stubs_is_seen_by_both_mounts(
    mounts: tuple[Mount, Mount], volume: Volume, admin_cm: Admin
) -> None:
    fid = volume.fids["file.txt"]
    for mount in mounts:
        for _ in range(2):  # the second read comes from the kernel's page cache
            assert cat(mount, volume.path(mount, "file.txt")) == b"version 1\n"
    before = [breaks(mount) for mount in mounts]
    new = b"version 2, a little longer\n"
    admin_cm.write(fid, new)
    for mount, count in zip(mounts, before, strict=True):
        wait_for_breaks(mount, count)
        assert cat(mount, volume.path(mount, "file.txt")) == new
        size = mount.run("stat", "-c", "%s", str(volume.path(mount, "file.txt"))).stdout
        assert int(size) == len(new)


def test_a_same_size_change_is_not_hidden_by_the_page_cache(
    mounts: tuple[Mount, Mount], volume: Volume, admin_cm: Admin
) -> None:
    """Same length, same modification time: only the break can tell the kernel that the
    pages it holds are stale."""
    a, _ = mounts
    path = volume.path(a, "same.txt")
    fid = volume.fids["same.txt"]
    admin_cm.write(fid, b"A" * 4000, SAME_MTIME)
    content = b"A" * 4000
    for letter in b"BCDEF":
        assert cat(a, path) == content
        assert cat(a, path) == content
        before = breaks(a)
        content = bytes([letter]) * 4000
        admin_cm.write(fid, content, SAME_MTIME)
        wait_for_breaks(a, before)
        assert cat(a, path) == content
        shown = a.run("stat", "-c", "%s %Y", str(path)).stdout.split()
        assert shown == [b"4000", str(SAME_MTIME).encode()]


def test_a_change_by_afsfuse_io_fidwrite_reaches_an_open_reader(
    cell: Cell,
    mounts: tuple[Mount, Mount],
    volume: Volume,
    tmp_path: Path,
) -> None:
    """A program that keeps the file open sees the new bytes at its next read too."""
    _, b = mounts
    path = volume.path(b, "file.txt")
    old = cat(b, path)
    new = b"written by fidwrite\n"
    reader = subprocess.Popen(
        [
            "python3", "-c",
            "import os, sys\n"
            "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
            "print(os.pread(fd, 4096, 0).decode(), end='', flush=True)\n"
            "sys.stdin.readline()\n"
            "print(os.pread(fd, 4096, 0).decode(), end='', flush=True)\n",
            str(path),
        ],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert reader.stdout is not None and reader.stdin is not None
        assert reader.stdout.read(len(old)) == old
        env = kinit(cell, "admin", tmp_path / "cc_admin")
        fid = volume.fids["file.txt"]
        before = breaks(b)
        subprocess.run(
            [BIN / "afsfuse-io", "fidwrite", "--cell", cell.name,
             "--fid", f"{fid.volume}.{fid.vnode}.{fid.unique}",
             "--cellservdb", str(cell.cellservdb)],
            input=new, env=env, check=True, timeout=60,
        )  # fmt: skip
        wait_for_breaks(b, before)
        reader.stdin.write(b"\n")
        reader.stdin.flush()
        assert reader.stdout.read(len(new)) == new
    finally:
        reader.kill()
        reader.wait()
    assert cat(b, path) == new


def test_names_added_and_removed_behind_the_mounts_back(
    mounts: tuple[Mount, Mount], volume: Volume, admin_cm: Admin
) -> None:
    a, _ = mounts
    top = volume.path(a)
    listing = a.run("ls", str(top)).stdout.split()
    assert b"doomed.txt" in listing and b"newcomer.txt" not in listing
    assert cat(a, top / "doomed.txt") == b"soon gone\n"  # its dentry is now in the kernel

    before = breaks(a)
    admin_cm.create(volume.root, "newcomer.txt", b"new\n")
    wait_for_breaks(a, before)
    assert b"newcomer.txt" in a.run("ls", str(top)).stdout.split()
    assert cat(a, top / "newcomer.txt") == b"new\n"

    before = breaks(a)
    admin_cm.remove(volume.root, "doomed.txt")
    wait_for_breaks(a, before)
    gone = a.run("cat", str(top / "doomed.txt"), check=False)
    assert gone.returncode != 0 and b"No such file or directory" in gone.stderr
    assert b"doomed.txt" not in a.run("ls", str(top)).stdout.split()


# -- status --------------------------------------------------------------------------------


def test_stat_shows_what_the_fileserver_reports(
    mounts: tuple[Mount, Mount], volume: Volume, admin_cm: Admin
) -> None:
    a, _ = mounts
    for name, kind in (("file.txt", "regular file"), ("sysdir", "directory")):
        status = admin_cm.fetch_status(volume.fids[name])
        shown = a.run("stat", "-c", "%F|%u|%g|%a|%s|%h|%Y", str(volume.path(a, name)))
        expected = [
            kind,
            status.Owner,
            status.Group,
            f"{status.UnixModeBits & 0o7777:o}",
            status.Length,
            status.LinkCount,
            status.ClientModTime,
        ]
        assert shown.stdout.decode().strip().split("|") == [str(v) for v in expected]


def test_ls_l_of_a_big_directory_uses_inline_bulk_status(
    mounts: tuple[Mount, Mount], volume: Volume
) -> None:
    _, b = mounts  # b has not looked at "many" yet
    before = b.stats()
    lines = b.run("ls", "-l", str(volume.path(b, "many"))).stdout.decode().splitlines()
    after = b.stats()
    entries = [line.split() for line in lines[1:]]
    assert [e[-1] for e in entries] == [f"f{i:03d}" for i in range(MANY)]
    assert all(e[0] == "-rw-r--r--" and int(e[4]) == int(e[-1][1:]) for e in entries)
    bulk = rpcs(after, "FS.InlineBulkStatus") - rpcs(before, "FS.InlineBulkStatus")
    single = rpcs(after, "FS.FetchStatus") - rpcs(before, "FS.FetchStatus")
    assert -(-MANY // 50) <= bulk <= 2 * -(-MANY // 50)
    assert single <= 3, f"{single} FetchStatus calls for ls -l"
    # Everything is cached now: a second listing costs no status RPC at all.
    b.run("ls", "-l", str(volume.path(b, "many")))
    again = b.stats()
    for rpc in ("FS.InlineBulkStatus", "FS.FetchStatus"):
        assert rpcs(again, rpc) == rpcs(after, rpc)


# -- @sys ----------------------------------------------------------------------------------


def test_sysname_change_is_seen_by_the_next_lookup_and_only_root_may_make_it(
    mounts: tuple[Mount, Mount], volume: Volume
) -> None:
    a, _ = mounts
    at_sys = volume.path(a, "sysdir", "@sys")
    try:
        assert cat(a, at_sys / "marker") == f"{SYSNAME}\n".encode()
        done = a.ctl("alice", "sysname", OTHER_SYSNAME)
        assert done.returncode == 1 and b"not allowed" in done.stderr
        assert cat(a, at_sys / "marker") == f"{SYSNAME}\n".encode()

        assert a.ctl(None, "sysname", "nosuch_sys", OTHER_SYSNAME).returncode == 0
        assert cat(a, at_sys / "marker") == f"{OTHER_SYSNAME}\n".encode()
        inode = a.run("stat", "-c", "%i", str(at_sys), str(at_sys.parent / OTHER_SYSNAME))
        first, second = inode.stdout.split()
        assert first == second
        shown = a.ctl("bob", "sysname").stdout.decode()
        assert shown == f"Current sysname list is 'nosuch_sys' '{OTHER_SYSNAME}'\n"
    finally:
        assert a.ctl(None, "sysname", SYSNAME).returncode == 0
    assert cat(a, at_sys / "marker") == f"{SYSNAME}\n".encode()


# -- errors --------------------------------------------------------------------------------


def test_unknown_cells_are_enoent_quickly(mounts: tuple[Mount, Mount]) -> None:
    a, _ = mounts
    for name in ("nosuchcell", "no.such.cell.invalid", ".no.such.cell.invalid"):
        started = time.monotonic()
        done = a.run("stat", str(a.path / name), check=False)
        seconds = time.monotonic() - started
        assert done.returncode != 0 and b"No such file or directory" in done.stderr, name
        assert seconds < 2.0, f"{name}: {seconds:.1f} s"


def test_no_rights_is_eacces(mounts: tuple[Mount, Mount], volume: Volume) -> None:
    a, _ = mounts
    closed = volume.path(a, "closed")
    unreadable = volume.path(a, "lookup-only", "unreadable")
    for user in (None, "bob"):
        for argv in (
            ["ls", str(closed)],
            ["cat", str(closed / "secret")],
            ["cat", str(unreadable)],
        ):
            done = a.run(*argv, user=user, check=False)
            assert done.returncode != 0 and b"Permission denied" in done.stderr, (user, argv)
    # Lookup right only: the name is there, its contents are not.
    assert a.run("ls", str(unreadable.parent)).stdout.split() == [b"unreadable"]


# -- counters ------------------------------------------------------------------------------


def test_stats_show_rpcs_cache_use_bytes_and_breaks(mounts: tuple[Mount, Mount]) -> None:
    a, _ = mounts
    text = a.ctl("bob", "stats").stdout.decode()
    values = dict(line.split(": ", 1) for line in text.splitlines())
    for counter in ("status_hits", "status_misses", "data_hits", "data_misses"):
        assert int(values[counter]) > 0, counter
    assert int(values["bytes_fetched"]) > 0
    assert int(values["callbacks_received"]) >= 4
    for rpc in ("FS.FetchStatus", "FS.FetchData64", "VL.GetEntryByNameU"):
        assert int(values[f"rpcs.{rpc}"]) > 0, rpc


# -- restart and unmount -------------------------------------------------------------------


def test_restart_revalidates_cached_files_without_fetching_them_again(
    cell: Cell, mounts: tuple[Mount, Mount], volume: Volume
) -> None:
    a, _ = mounts
    digest = hashlib.sha256(volume.cached).hexdigest()
    path = volume.path(a, "cached.bin")
    assert a.run("sha256sum", str(path)).stdout.split()[0].decode() == digest
    stop_daemon(a.path, a.pid)
    assert not os.path.ismount(a.path)
    a.pid = start_daemon(cell, a.path, a.cache, a.log_file)

    assert a.run("sha256sum", str(path)).stdout.split()[0].decode() == digest
    stats = a.stats()
    assert rpcs(stats, "FS.FetchData64") == 0
    assert stats["bytes_fetched"] == 0
    assert rpcs(stats, "FS.FetchStatus") >= 1  # re-validated, not trusted blindly
    assert stats["data_hits"] > 0 and stats["data_misses"] == 0


def test_beside_another_client_on_port_7001_a_mount_takes_another_port_and_gets_breaks(
    cell: Cell,
    mounts: tuple[Mount, Mount],
    volume: Volume,
    admin_cm: Admin,
    users: dict[str, User],
    user_python: UserPython,
    tmp_path: Path,
) -> None:
    """Another AFS client (OpenAFS's afsd, kAFS) holds UDP 7001, the callback port: a third
    afsfuse mount, with no --port, says so in its log and takes a free port, where the
    fileserver's breaks reach it as they reach the two mounts already running."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other_client:
        with suppress(OSError):  # already taken by another client: as good
            other_client.bind(("0.0.0.0", 7001))
        with afs_mount(cell, users, user_python, tmp_path / "cache") as third:
            port = re.search(r"callback port (\d+)\)", third.log())
            assert port is not None and int(port.group(1)) != 7001, third.log()
            assert "port 7001 is taken; callbacks use an ephemeral port" in third.log()
            fid = volume.fids["file.txt"]
            path = volume.path(third, "file.txt")
            everyone = (*mounts, third)
            for mount in everyone:
                cat(mount, volume.path(mount, "file.txt"))
            before = [breaks(mount) for mount in everyone]
            new = b"changed beside another client\n"
            admin_cm.write(fid, new)
            for mount, count in zip(everyone, before, strict=True):
                wait_for_breaks(mount, count)
            assert cat(third, path) == new


def test_sigterm_unmounts_cleanly_and_gives_callbacks_back(
    cell: Cell, mounts: tuple[Mount, Mount], volume: Volume, admin_cm: Admin
) -> None:
    _, b = mounts
    assert cat(b, volume.path(b, "file.txt"))  # holds a callback on it
    os.kill(b.pid, signal.SIGTERM)
    assert process_gone(b.pid, 15)
    assert not os.path.ismount(b.path)
    assert os.listdir(b.path) == []
    log = b.log()
    assert "signal 15: unmounting" in log
    assert "gave up callbacks" in log
    # The fileserver holds no callback for the departed mount: when the file changes, not
    # one packet goes to the port it listened on.
    port = int(re.findall(r"callback port (\d+)", log)[-1])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("0.0.0.0", port))
        listener.settimeout(2.0)
        change = threading.Thread(
            target=admin_cm.write, args=(volume.fids["file.txt"], b"after the unmount\n")
        )
        change.start()
        try:
            packet = listener.recvfrom(2048)
        except TimeoutError:
            packet = None
    assert packet is None, f"the fileserver still calls back the unmounted daemon: {packet}"
    change.join(30)
