"""Unsent data through crashes, failed stores and other clients (README: "Data not yet on
the fileserver").

Mount A is killed with SIGKILL, or unmounted cleanly after a failed close, and mounted again
on the same cache directory; mount B is another client of the same cell.  What A wrote is
stored once the fileserver takes it, with nobody closing the file again, unless another
client changed the file meanwhile: then A's data is set aside as a leftover its writer can
restore, and nobody's data is written over.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from acls import ALICE_ALL, ANYONE_WRITES
from local_users import User, UserPython, as_user
from managers import ADMIN, manager
from mounting import Mount, afs_mount, process_gone, start_daemon
from programs import eventually, feed, ok, run
from volumes import volume_root

from afsfuse.keyring import Token
from afsfuse.keyring.store import TokenStore
from afsfuse.testing.cell import Cell

pytestmark = pytest.mark.cell

#: Unsent data is tried again every second here (30 s by default).
RETRY = ("--store-retry", "1", "--dead-time", "3", "--server-timeout", "10")
SMALL = 500_000  # under one chunk: kept in memory while dirty
BIG = 3_000_000  # three chunks: on the cache disk from the first write


@pytest.fixture(scope="module")
def volume(cell: Cell, tokens: dict[str, Token], tmp_path_factory: pytest.TempPathFactory) -> str:
    """A volume of this module's own: alice administers it, anyone writes in `public`."""
    name = f"u.{secrets.token_hex(3)}"
    cell.exec("vos", "create", cell.servers[0].addr, "a", name, "-maxquota", "0", "-localauth")

    async def prepare() -> None:
        store = TokenStore()
        store.set(ADMIN, tokens["admin"])
        async with manager(cell, tmp_path_factory.mktemp("prepare"), store) as m:
            root = await volume_root(m, cell.name, name, "rw")
            await m.set_acl(root, ALICE_ALL, ADMIN)
            public, _ = await m.mkdir(root, "public", 0o777, ADMIN)
            await m.set_acl(public, ANYONE_WRITES, ADMIN)

    trio.run(prepare)
    return name


@pytest.fixture(scope="module")
def other(
    cell: Cell,
    volume: str,
    users: dict[str, User],
    user_python: UserPython,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Mount]:
    """Mount B: another client of the cell."""
    with afs_mount(cell, users, user_python, tmp_path_factory.mktemp("b-cache")) as mount:
        ok(mount.ctl("alice", "aklog"))
        yield mount


@pytest.fixture
def mount_a(
    cell: Cell,
    volume: str,
    users: dict[str, User],
    user_python: UserPython,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Mount]:
    with afs_mount(
        cell, users, user_python, tmp_path_factory.mktemp("a-cache"), extra_args=RETRY
    ) as mount:
        ok(mount.ctl("alice", "aklog"))
        yield mount


def in_volume(mount: Mount, volume: str, *parts: str) -> Path:
    return mount.path.joinpath(".:mount", f"{mount.cell}:{volume}", *parts)


def new_dir(mount: Mount, volume: str, user: str | None) -> str:
    """A fresh directory: alice's own, or (root, anonymous) one in `public`."""
    name = os.path.join("" if user else "public", "t-" + secrets.token_hex(4))
    ok(run(mount, "mkdir", str(in_volume(mount, volume, name)), user=user))
    return name


def hold_open(mount: Mount, path: Path, data: bytes, user: str | None) -> subprocess.Popen[bytes]:
    """A program that writes `data` to `path` and keeps the file open (never closes it)."""
    script = textwrap.dedent(
        """
        import sys
        f = open(sys.argv[1], "wb")
        f.write(sys.stdin.buffer.read(int(sys.argv[2])))
        print("written", flush=True)
        sys.stdin.read()
        """
    )
    argv = ["python3", "-c", script, str(path), str(len(data))]
    env = {"PATH": "/usr/bin:/bin"}
    if user is not None:
        env.update(mount.user_env[user])
        argv = [*as_user(mount.local[user]), *argv]
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(data)
    child.stdin.flush()
    assert child.stdout.readline() == b"written\n"
    return child


def crash(mount: Mount) -> None:
    """SIGKILL the daemon; its mount is left dead (ENOTCONN), then detached."""
    os.kill(mount.pid, signal.SIGKILL)
    assert process_gone(mount.pid, 10)
    subprocess.run(["fusermount3", "-u", str(mount.path)], check=False, timeout=30)
    subprocess.run(["umount", "-l", str(mount.path)], check=False, capture_output=True)


def clean_stop(mount: Mount) -> None:
    subprocess.run(["fusermount3", "-u", str(mount.path)], check=True, timeout=60)
    assert process_gone(mount.pid, 30)


def restart(cell: Cell, mount: Mount) -> None:
    """Mount again on the same cache directory; alice logs in again (tokens are memory)."""
    mount.pid = start_daemon(cell, mount.path, mount.cache, mount.log_file, extra_args=RETRY)
    ok(mount.ctl("alice", "aklog"))


def set_quota(cell: Cell, mount: Mount, volume: str, kb: int) -> None:
    """Through the volserver, then until the fileserver says so too."""
    cell.exec("vos", "setfields", volume, "-maxquota", str(kb), "-localauth")
    path = str(in_volume(mount, volume))

    def applied() -> bool:
        listed = json.loads(ok(mount.ctl("alice", "listquota", "--json", path)).stdout)
        return listed[0]["quota"] == kb

    eventually(applied, 30)


def leftovers(mount: Mount, user: str | None) -> list[dict]:
    return json.loads(ok(mount.ctl(user, "leftovers", "--json")).stdout)["leftovers"]


def test_crashed_writers_data_never_overwrites_another_clients_file(
    cell: Cell, volume: str, mount_a: Mount, other: Mount, tmp_path: Path
) -> None:
    where = new_dir(mount_a, volume, "alice")
    path_a, path_b = in_volume(mount_a, volume, where, "f"), in_volume(other, volume, where, "f")
    ok(feed(mount_a, path_a, b"old\n"))
    writer = hold_open(mount_a, path_a, b"A" * BIG, "alice")
    crash(mount_a)
    writer.kill()
    writer.wait()
    ok(feed(other, path_b, b"NEW-FROM-B"))

    restart(cell, mount_a)
    assert ok(run(mount_a, "cat", str(path_a), user="alice")).stdout == b"NEW-FROM-B"
    opened = "import os, sys; os.close(os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND))"
    ok(run(mount_a, "python3", "-c", opened, str(path_a), user="alice"))
    assert ok(run(mount_a, "cat", str(path_a), user="alice")).stdout == b"NEW-FROM-B"
    fresh = in_volume(other, volume, where)
    ok(run(other, "ls", str(fresh), user="alice"))  # B asks the server again after A's close
    assert ok(run(other, "cat", str(path_b), user="alice")).stdout == b"NEW-FROM-B"

    kept = leftovers(mount_a, "alice")
    assert [item["size"] for item in kept] == [BIG], kept
    assert kept[0]["uid"] == mount_a.local["alice"].uid and kept[0]["missing"] == []
    assert leftovers(mount_a, "bob") == []
    assert "kept as leftover " + kept[0]["id"] in mount_a.log()
    refused = mount_a.ctl("bob", "leftovers", "discard", kept[0]["id"])
    assert refused.returncode == 1 and b"another user" in refused.stderr

    restored = in_volume(mount_a, volume, where, "restored")
    ok(mount_a.ctl("alice", "leftovers", "restore", kept[0]["id"], str(restored)))
    seen = in_volume(other, volume, where, "restored")
    eventually(lambda: seen.read_bytes() == b"A" * BIG, 20)
    assert leftovers(mount_a, "alice") == []


def test_crashed_writers_data_is_stored_after_restart(
    cell: Cell, volume: str, mount_a: Mount, other: Mount
) -> None:
    """Nobody else wrote the files: what the killed daemon held is stored, small files (kept
    in memory while dirty) included, once they had been dirty for a moment."""
    where = new_dir(mount_a, volume, None)
    contents = {"small": secrets.token_bytes(SMALL), "big": secrets.token_bytes(BIG)}
    writers = [
        hold_open(mount_a, in_volume(mount_a, volume, where, name), data, None)
        for name, data in contents.items()
    ]
    dirty_on_disk = mount_a.cache / "dirty"
    eventually(lambda: len(list(dirty_on_disk.glob("*/*/state.json"))) == 2, 10)
    crash(mount_a)
    for writer in writers:
        writer.kill()
        writer.wait()

    restart(cell, mount_a)
    for name, data in contents.items():
        seen = in_volume(other, volume, where, name)
        eventually(lambda seen=seen, data=data: seen.read_bytes() == data, 30)
    assert leftovers(mount_a, None) == []


@pytest.mark.parametrize("failure", ["quota", "server"])
def test_failed_close_is_kept_through_unmount_and_stored_later(
    cell: Cell, volume: str, mount_a: Mount, other: Mount, failure: str
) -> None:
    where = new_dir(mount_a, volume, "alice")
    path_a, path_b = in_volume(mount_a, volume, where, "f"), in_volume(other, volume, where, "f")
    ok(feed(other, path_b, b""))
    eventually(lambda: ok(run(mount_a, "cat", str(path_a), user="alice")).stdout == b"")
    data = secrets.token_bytes(SMALL)
    if failure == "quota":
        set_quota(cell, other, volume, 100)
    else:
        cell.stop_fileserver(0)
    stopped = failure == "server"
    try:
        # Written in place: an O_TRUNC open would store its truncation at once, and fail.
        write = "import sys\nwith open(sys.argv[1], 'r+b') as f: f.write(sys.stdin.buffer.read())"
        env = {"PATH": "/usr/bin:/bin", **mount_a.user_env["alice"]}
        argv = [*as_user(mount_a.local["alice"]), "python3", "-c", write, str(path_a)]
        failed = subprocess.run(argv, input=data, env=env, capture_output=True, timeout=120)
        assert failed.returncode != 0
        expected = b"Disk quota exceeded" if failure == "quota" else b"timed out"
        assert expected in failed.stderr, failed.stderr
        clean_stop(mount_a)
        if stopped:
            cell.start_fileserver(0)
            stopped = False
        restart(cell, mount_a)
        assert ok(run(mount_a, "cat", str(path_a), user="alice")).stdout == data
        if failure == "quota":
            assert os.stat(path_b).st_size == 0  # not on the server yet
    finally:
        if failure == "quota":
            set_quota(cell, other, volume, 0)
        elif stopped:
            cell.start_fileserver(0)
    eventually(lambda: path_b.read_bytes() == data, 40)
    eventually(lambda: "is stored" in mount_a.log())  # logged once the store answered
    assert leftovers(mount_a, "alice") == []


def test_daemon_killed_during_a_store_stores_the_whole_file_after_restart(
    cell: Cell, volume: str, mount_a: Mount, other: Mount
) -> None:
    """The fileserver may hold part of the store when the daemon dies: that version is the
    daemon's own doing (its data version and the modification time it sent), so the next
    run stores the whole file over it, and sets nothing aside."""
    where = new_dir(mount_a, volume, "alice")
    data = secrets.token_bytes(48 << 20)  # over a second at rxkad crypt
    writer = hold_open(mount_a, in_volume(mount_a, volume, where, "f"), data, "alice")
    assert writer.stdin is not None
    writer.stdin.close()  # the program closes: the store starts
    time.sleep(0.3)
    crash(mount_a)
    writer.wait(timeout=30)
    restart(cell, mount_a)
    seen = in_volume(other, volume, where, "f")
    eventually(lambda: seen.read_bytes() == data, 60)
    eventually(lambda: "is stored" in mount_a.log())  # by the run after the crash
    assert leftovers(mount_a, None) == []


def test_a_close_over_another_clients_newer_data_fails_and_sets_its_data_aside(
    volume: str, mount_a: Mount, other: Mount
) -> None:
    """Two programs on two clients write one file; the second to close does not clobber the
    first: its close fails with EIO and its data becomes a leftover."""
    where = new_dir(mount_a, volume, "alice")
    path_a, path_b = in_volume(mount_a, volume, where, "f"), in_volume(other, volume, where, "f")
    ok(feed(mount_a, path_a, b"old-content\n"))
    script = textwrap.dedent(
        """
        import sys
        f = open(sys.argv[1], "r+b")
        f.write(b"A-DATA")
        f.flush()
        print("written", flush=True)
        sys.stdin.readline()
        try:
            f.close()
        except OSError as e:
            print("failed", e.errno, flush=True)
        else:
            print("closed", flush=True)
        """
    )
    env = {"PATH": "/usr/bin:/bin", **mount_a.user_env["alice"]}
    argv = [*as_user(mount_a.local["alice"]), "python3", "-c", script, str(path_a)]
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline() == b"written\n"
        eventually(
            lambda: ok(run(other, "cat", str(path_b), user="alice")).stdout == b"old-content\n"
        )
        ok(feed(other, path_b, b"NEW-FROM-B"))
        child.stdin.write(b"close\n")
        child.stdin.flush()
        assert child.stdout.readline().split() == [b"failed", str(errno.EIO).encode()]
    finally:
        child.kill()
        child.wait()
    assert ok(run(other, "cat", str(path_b), user="alice")).stdout == b"NEW-FROM-B"
    assert ok(run(mount_a, "cat", str(path_a), user="alice")).stdout == b"NEW-FROM-B"
    kept = leftovers(mount_a, "alice")
    assert len(kept) == 1 and kept[0]["reason"] == "another client changed the file"
    mine = in_volume(mount_a, volume, where, "mine")
    ok(mount_a.ctl("alice", "leftovers", "restore", kept[0]["id"], str(mine)))
    assert ok(run(mount_a, "cat", str(mine), user="alice")).stdout == b"A-DATAntent\n"


def test_unsent_writes_are_read_with_the_version_they_were_written_over(
    volume: str, mount_a: Mount, other: Mount
) -> None:
    """While a file has unsent writes here, its other bytes are those of the version they
    were written over, never another client's newer version mixed in."""
    where = new_dir(mount_a, volume, "alice")
    path_a, path_b = in_volume(mount_a, volume, where, "f"), in_volume(other, volume, where, "f")
    ok(feed(mount_a, path_a, b"o" * (2 << 20)))
    script = textwrap.dedent(
        """
        import os, sys
        fd = os.open(sys.argv[1], os.O_RDWR)
        os.pwrite(fd, b"A", 0)
        print("written", flush=True)
        sys.stdin.readline()
        try:
            tail = os.pread(fd, 4, 1 << 20)
        except OSError as e:
            tail = str(e.errno).encode()
        print(tail.decode(), flush=True)
        """
    )
    env = {"PATH": "/usr/bin:/bin", **mount_a.user_env["alice"]}
    argv = [*as_user(mount_a.local["alice"]), "python3", "-c", script, str(path_a)]
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline() == b"written\n"
        ok(feed(other, path_b, b"B" * (2 << 20)))
        time.sleep(1)  # the callback break reaches mount A
        child.stdin.write(b"read\n")
        child.stdin.flush()
        assert child.stdout.readline() == b"oooo\n"
    finally:
        child.kill()
        child.wait()
