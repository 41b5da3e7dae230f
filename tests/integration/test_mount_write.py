"""Writing through a real afsfuse mount, with ordinary programs, as root (anonymous) and as
afsfuse-alice with her own token: AFS close semantics (close and fsync return once the
fileserver has the data, or fail with the store's errno), namespace changes seen by a second
mount through callbacks, ACLs, quotas and mount points through xattrs and afsfuse-ctl."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import secrets
import select
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from subprocess import PIPE

import pytest
import trio
from acls import ALICE_ALL, ANYONE_WRITES
from local_users import User, UserPython, as_user
from logins import kinit
from managers import ADMIN, manager
from mounting import Mount, afs_mount
from programs import eventually, feed, ok, run
from volumes import volume_root

from afsfuse.cache.base import MAX_FILE_SIZE
from afsfuse.fs.acl import Acl
from afsfuse.keyring import Token
from afsfuse.keyring.store import TokenStore
from afsfuse.testing.cell import Cell

pytestmark = pytest.mark.cell

QUOTA_KB = 1024
#: Short server timeouts so a stopped fileserver fails a store in seconds, not minutes.
FAST_FAILOVER = ("--dead-time", "3", "--server-timeout", "15")


@dataclass(frozen=True)
class Volumes:
    work: str
    quota: str
    other: str


async def _prepare(cell: Cell, cache: Path, token: Token, names: Volumes) -> None:
    store = TokenStore()
    store.set(ADMIN, token)
    async with manager(cell, cache, store) as m:
        for volume in (names.work, names.quota, names.other):
            root = await volume_root(m, cell.name, volume, "rw")
            await m.set_acl(root, ALICE_ALL, ADMIN)
        work = await volume_root(m, cell.name, names.work, "rw")
        public, _ = await m.mkdir(work, "public", 0o777, ADMIN)
        await m.set_acl(public, ANYONE_WRITES, ADMIN)


@pytest.fixture(scope="module")
def volumes(
    cell: Cell, tokens: dict[str, Token], tmp_path_factory: pytest.TempPathFactory
) -> Volumes:
    suffix = secrets.token_hex(3)
    names = Volumes(f"w.{suffix}", f"wq.{suffix}", f"wx.{suffix}")
    server = cell.servers[0].addr
    for volume in (names.work, names.other):
        cell.exec("vos", "create", server, "a", volume, "-maxquota", "0", "-localauth")
    cell.exec("vos", "create", server, "a", names.quota, "-maxquota", str(QUOTA_KB), "-localauth")
    trio.run(_prepare, cell, tmp_path_factory.mktemp("prepare"), tokens["admin"], names)
    return names


@pytest.fixture(scope="module")
def writer(
    cell: Cell,
    volumes: Volumes,
    users: dict[str, User],
    user_python: UserPython,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Mount]:
    cache = tmp_path_factory.mktemp("writer-cache")
    with afs_mount(cell, users, user_python, cache, extra_args=FAST_FAILOVER) as mount:
        assert mount.ctl("alice", "aklog").returncode == 0
        yield mount


@pytest.fixture(scope="module")
def reader(
    cell: Cell,
    volumes: Volumes,
    users: dict[str, User],
    user_python: UserPython,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Mount]:
    """A second mount: what it shows came from the fileserver (and its callbacks)."""
    cache = tmp_path_factory.mktemp("reader-cache")
    with afs_mount(cell, users, user_python, cache) as mount:
        assert mount.ctl("alice", "aklog").returncode == 0
        yield mount


def volume_path(mount: Mount, volume: str) -> Path:
    return mount.path / ".:mount" / f"{mount.cell}:{volume}"


def fresh_dir(mount: Mount, volume: str, user: str | None = "alice") -> str:
    """A new directory name, made as `user` in the volume (root: in its public directory)."""
    name = "t-" + secrets.token_hex(4)
    base = volume_path(mount, volume) / ("public" if user is None else "")
    ok(run(mount, "mkdir", str(base / name), user=user))
    return os.path.join("public" if user is None else "", name)


def python(mount: Mount, script: str, *args: str, user: str | None = "alice"):
    """A Python script as `user`; its result is checked by the caller."""
    return mount.run("python3", "-c", textwrap.dedent(script), *args, user=user, check=False)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


WRITE_PATTERNS = r"""
import os, subprocess, sys
path = sys.argv[1]
model = bytearray()

def check(note):
    with open(path, "rb") as f:
        assert f.read() == model, note
    other = subprocess.run(["cat", path], capture_output=True, check=True).stdout
    assert other == model, note + " (another process)"
    assert os.stat(path).st_size == len(model), note

with open(path, "wb") as f:
    f.write(b"A" * 300_000)
model += b"A" * 300_000
check("create")
with open(path, "ab") as f:
    f.write(b"tail")
model += b"tail"
check("append")
with open(path, "r+b") as f:
    f.seek(70_000)
    f.write(b"middle")
    model[70_000:70_006] = b"middle"
    f.flush()
    f.seek(0)
    assert f.read() == model  # read back through the writing descriptor at once
    f.truncate(100_000)
    del model[100_000:]
    os.fsync(f.fileno())
check("overwrite, ftruncate, fsync")
os.truncate(path, 50_000)
del model[50_000:]
check("truncate(2)")
with open(path, "r+b") as f:
    f.seek(400_000)
    f.write(b"after a hole")
    os.fdatasync(f.fileno())
model += bytes(400_000 - len(model)) + b"after a hole"
check("hole")
fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
os.write(fd, b"short")
dup = os.dup(fd)
os.close(fd)
os.write(dup, b" and more")
os.close(dup)
model[:] = b"short and more"
check("O_TRUNC and a dup'ed descriptor")
big = path + ".big"
with open(big, "wb") as f:
    f.truncate(5 << 30)
    f.seek((5 << 30) - 4)
    f.write(b"end!")
    f.seek(10)
    f.write(b"start")
with open(big, "rb") as f:
    f.seek((4 << 30) + 5)
    assert f.read(4) == bytes(4)
    f.seek((5 << 30) - 8)
    assert f.read() == b"\0\0\0\0end!"
assert os.stat(big).st_size == 5 << 30
print("ok")
"""


def test_write_patterns_and_another_mount_sees_them(
    writer: Mount, reader: Mount, volumes: Volumes
) -> None:
    where = fresh_dir(writer, volumes.work)
    path = volume_path(writer, volumes.work) / where / "f"
    assert ok(python(writer, WRITE_PATTERNS, str(path))).stdout == b"ok\n"
    seen = volume_path(reader, volumes.work) / where
    assert reader.run("cat", str(seen / "f"), user="alice").stdout == b"short and more"
    big = seen / "f.big"
    assert os.stat(big).st_size == 5 << 30
    with open(big, "rb") as f:
        f.seek((5 << 30) - 4)
        assert f.read() == b"end!"
        f.seek(10)
        assert f.read(5) == b"start"


def test_programs_as_root_anonymous(writer: Mount, reader: Mount, volumes: Volumes) -> None:
    where = fresh_dir(writer, volumes.work, user=None)
    d = volume_path(writer, volumes.work) / where
    source = Path("/usr/lib/python3.11/os.py")
    ok(run(writer, "cp", str(source), str(d / "os.py")))
    ok(run(writer, "dd", "if=/dev/urandom", f"of={d / 'rand'}", "bs=1M", "count=3", "status=none"))
    ok(run(writer, "diff", str(source), str(d / "os.py")))
    ok(run(writer, "mv", str(d / "os.py"), str(d / "moved.py")))
    ok(run(writer, "ln", "-s", "moved.py", str(d / "sym")))
    ok(run(writer, "chmod", "600", str(d / "moved.py")))
    ok(run(writer, "touch", "-d", "2001-09-09 01:46:40 UTC", str(d / "rand")))
    ok(run(writer, "tar", "cf", str(d / "t.tar"), "-C", str(d), "moved.py", "rand"))
    other = volume_path(reader, volumes.work) / where
    eventually(lambda: sorted(os.listdir(other)) == ["moved.py", "rand", "sym", "t.tar"])
    assert sha256(other / "rand") == sha256(d / "rand")
    assert os.readlink(other / "sym") == "moved.py"
    assert os.stat(other / "moved.py").st_mode & 0o777 == 0o600
    assert os.stat(other / "rand").st_mtime == 1_000_000_000
    assert sha256(other / "moved.py") == sha256(source)
    with tarfile.open(other / "t.tar") as tar:
        assert sorted(tar.getnames()) == ["moved.py", "rand"]


def test_namespace_changes_as_alice(writer: Mount, reader: Mount, volumes: Volumes) -> None:
    where = fresh_dir(writer, volumes.work)
    d = volume_path(writer, volumes.work) / where
    other = volume_path(reader, volumes.work) / where

    def alice(*argv: str) -> subprocess.CompletedProcess[bytes]:
        return run(writer, *argv, user="alice")

    ok(alice("mkdir", "-p", str(d / "a" / "b"), str(d / "c")))
    ok(alice("sh", "-c", f"echo one > {d}/a/one; echo two > {d}/c/two; echo b > {d}/a/b/f"))
    assert sorted(os.listdir(other)) == ["a", "c"]  # read once: the reader now holds callbacks
    assert sorted(os.listdir(other / "a")) == ["b", "one"]

    done = alice("rmdir", str(d / "a" / "b"))
    assert done.returncode != 0 and b"not empty" in done.stderr
    ok(alice("mv", str(d / "a" / "one"), str(d / "c" / "two")))  # across directories, replacing
    ok(alice("mv", str(d / "c"), str(d / "a" / "c2")))  # a directory, into another
    ok(alice("ln", str(d / "a" / "c2" / "two"), str(d / "a" / "c2" / "hard")))
    done = alice("ln", str(d / "a" / "c2" / "two"), str(d / "a" / "elsewhere"))
    assert done.returncode != 0  # AFS links only within one directory
    ok(alice("rm", str(d / "a" / "b" / "f")))
    ok(alice("rmdir", str(d / "a" / "b")))
    assert alice("cat", str(d / "a" / "c2" / "hard")).stdout == b"one\n"
    assert os.stat(d / "a" / "c2" / "two").st_nlink == 2

    eventually(lambda: sorted(os.listdir(other)) == ["a"])
    eventually(lambda: sorted(os.listdir(other / "a")) == ["c2"])
    assert sorted(os.listdir(other / "a" / "c2")) == ["hard", "two"]
    assert (other / "a" / "c2" / "hard").read_bytes() == b"one\n"

    # Across volumes: EXDEV, and mv copies instead.
    elsewhere = fresh_dir(writer, volumes.other)
    target = volume_path(writer, volumes.other) / elsewhere
    done = python(writer, "import os, sys; os.rename(sys.argv[1], sys.argv[2])",
                  str(d / "a" / "c2" / "hard"), str(target / "x"))  # fmt: skip
    assert b"Invalid cross-device link" in done.stderr
    ok(alice("mv", str(d / "a"), str(target / "a")))
    assert not os.path.exists(d / "a")
    assert (target / "a" / "c2" / "two").read_bytes() == b"one\n"


def test_over_quota_copy_fails(writer: Mount, reader: Mount, volumes: Volumes, tmp_path) -> None:
    source = Path("/tmp") / f"afsfuse-5mb-{secrets.token_hex(4)}"
    source.write_bytes(secrets.token_bytes(5 << 20))
    source.chmod(0o644)
    try:
        target = volume_path(writer, volumes.quota) / "five-mb"
        done = writer.run("cp", str(source), str(target), user="alice", check=False)
        assert done.returncode != 0
        assert b"Disk quota exceeded" in done.stderr
        # Nothing claims the copy worked: the other mount does not show the whole file.
        seen = volume_path(reader, volumes.quota) / "five-mb"
        assert reader.run("cmp", str(source), str(seen), user="alice", check=False).returncode
        ok(run(writer, "rm", "-f", str(target), user="alice"))
        listed = writer.ctl("alice", "listquota", str(volume_path(writer, volumes.quota)))
        assert listed.returncode == 0, listed.stderr
        assert volumes.quota in listed.stdout.decode() and str(QUOTA_KB) in listed.stdout.decode()
    finally:
        source.unlink()


def test_fileserver_stopped_at_close(
    cell: Cell, writer: Mount, reader: Mount, volumes: Volumes
) -> None:
    where = fresh_dir(writer, volumes.work)
    path = volume_path(writer, volumes.work) / where / "patient"
    cached = path.with_name("cached")
    script = r"""
        import hashlib, os, sys, time
        data = os.urandom(64 << 20)
        fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, data)
        print("written", flush=True)
        sys.stdin.readline()
        try:
            os.close(fd)
            print("closed", flush=True)
        except OSError as e:
            print("failed", e.errno, flush=True)
        sys.stdin.readline()
        fd = os.open(sys.argv[1], os.O_RDWR)
        assert os.read(fd, len(data) + 1) == data  # nothing was lost
        for attempt in range(60):  # the fileserver may still be starting
            try:
                os.fsync(fd)
                break
            except OSError:
                time.sleep(1)
        os.close(fd)
        print(hashlib.sha256(data).hexdigest(), flush=True)
    """
    env = {"PATH": "/usr/bin:/bin", **writer.user_env["alice"]}
    child = subprocess.Popen(
        [*as_user(writer.local["alice"]), "python3", "-c", textwrap.dedent(script), str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
    )  # fmt: skip
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline() == b"written\n"
        ok(feed(writer, cached, b"cached\n"))
        assert ok(run(writer, "cat", str(cached), user="alice")).stdout == b"cached\n"
        cell.stop_fileserver(0)
        try:
            child.stdin.write(b"close\n")
            child.stdin.flush()
            # The store waits for the server; a file whose callback holds is served meanwhile.
            started = time.monotonic()
            assert ok(run(writer, "cat", str(cached), user="alice")).stdout == b"cached\n"
            assert time.monotonic() - started < 2
            assert not select.select([child.stdout], [], [], 0)[0]  # close still storing
            result = child.stdout.readline().split()
            assert result[0] == b"failed", result
            assert int(result[1]) in (5, 110), result  # EIO or ETIMEDOUT
        finally:
            cell.start_fileserver(0)
        child.stdin.write(b"retry\n")
        child.stdin.flush()
        digest = child.stdout.readline().strip().decode()
        assert child.wait(timeout=180) == 0
    finally:
        child.kill()
    seen = volume_path(reader, volumes.work) / where / "patient"
    eventually(lambda: os.stat(seen).st_size == 64 << 20, 30)
    assert sha256(seen) == digest


def test_data_survives_kill_9_after_close(
    cell: Cell,
    volumes: Volumes,
    reader: Mount,
    users: dict[str, User],
    user_python: UserPython,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with afs_mount(cell, users, user_python, tmp_path_factory.mktemp("doomed")) as doomed:
        assert doomed.ctl("alice", "aklog").returncode == 0
        where = fresh_dir(doomed, volumes.work)
        data = secrets.token_bytes(3 << 20)
        path = volume_path(doomed, volumes.work) / where / "kept"
        ok(feed(doomed, path, data))
        os.kill(doomed.pid, 9)
    seen = volume_path(reader, volumes.work) / where / "kept"
    eventually(lambda: seen.read_bytes() == data)


def test_stdlib_tar_extracts_and_diffs_clean(writer: Mount, volumes: Volumes) -> None:
    public = Path(tempfile.mkdtemp(prefix="afsfuse-stdlib-"))
    try:
        public.chmod(0o755)
        archive = public / "stdlib.tar"
        subprocess.run(
            ["tar", "cf", str(archive), "--exclude=__pycache__", "--exclude=*-packages",
             "-C", "/usr/lib", "python3.11"],
            check=True, timeout=120,
        )  # fmt: skip
        archive.chmod(0o644)
        with tarfile.open(archive) as tar:
            entries = len(tar.getmembers())
        where = fresh_dir(writer, volumes.work)
        d = volume_path(writer, volumes.work) / where
        rpcs_before = writer.stats()["rpcs"]
        started = time.monotonic()
        ok(run(writer, "tar", "xf", str(archive), "-C", str(d), user="alice", timeout=900))
        extracted = time.monotonic() - started
        rpcs = {k: n - rpcs_before.get(k, 0) for k, n in writer.stats()["rpcs"].items()}
        done = run(writer, "diff", "-r", "--no-dereference", "--exclude=__pycache__",
                   "--exclude=*-packages",
                   "/usr/lib/python3.11", str(d / "python3.11"), user="alice",
                   timeout=600)  # fmt: skip
        compared = time.monotonic() - started - extracted
    finally:
        shutil.rmtree(public)
    print(f"tar x of {entries} stdlib entries: {extracted:.1f} s; diff -r: {compared:.1f} s")
    print("RPCs for tar x:", ", ".join(f"{k} {n}" for k, n in sorted(rpcs.items()) if n))
    assert done.returncode == 0, done.stdout[-2000:]


TIMES_BEFORE_AND_AFTER_CLOSE = r"""
import os, sys
for name in ("early", "late"):
    fd = os.open(os.path.join(sys.argv[1], name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, name.encode())
    if name == "early":
        os.utime(fd, (1_000_000_000, 1_000_000_000))  # futimens, as tar x does
        assert os.fstat(fd).st_mtime == 1_000_000_000
    os.close(fd)
os.utime(os.path.join(sys.argv[1], "late"), (1_100_000_000, 1_100_000_000))
print("ok")
"""


def test_a_time_set_before_close_goes_with_the_store(
    writer: Mount, reader: Mount, volumes: Volumes
) -> None:
    """A writer's futimens before close rides with the data in the close's StoreData;
    a time set after close is stored at once (StoreStatus).  Both reach another client."""
    where = fresh_dir(writer, volumes.work)
    d = volume_path(writer, volumes.work) / where
    rpcs_before = writer.stats()["rpcs"]
    assert ok(python(writer, TIMES_BEFORE_AND_AFTER_CLOSE, str(d))).stdout == b"ok\n"
    rpcs = {k: n - rpcs_before.get(k, 0) for k, n in writer.stats()["rpcs"].items()}
    assert rpcs.get("FS.StoreStatus") == 1, rpcs
    other = volume_path(reader, volumes.work) / where
    eventually(lambda: os.stat(other / "late").st_mtime == 1_100_000_000)
    assert os.stat(other / "early").st_mtime == 1_000_000_000
    assert reader.run("cat", str(other / "early"), user="alice").stdout == b"early"


def test_git_in_afs(writer: Mount, volumes: Volumes) -> None:
    where = fresh_dir(writer, volumes.work)
    d = volume_path(writer, volumes.work) / where
    # Files belong to AFS ids, not local uids: git must be told the directory is safe.
    git = ["git", "-c", "user.name=Alice", "-c", "user.email=alice@example.test",
           "-c", "init.defaultBranch=main", "-c", "safe.directory=*", "-C", str(d)]  # fmt: skip
    ok(run(writer, "sh", "-c", f"echo hello > {d}/README; mkdir {d}/src; echo x > {d}/src/x.c",
                  user="alice"))  # fmt: skip
    ok(run(writer, *git, "init", "-q", user="alice"))
    ok(run(writer, *git, "add", ".", user="alice"))
    ok(run(writer, *git, "commit", "-q", "-m", "first", user="alice"))
    assert ok(run(writer, *git, "status", "--porcelain", user="alice")).stdout == b""
    ok(run(writer, "sh", "-c", f"echo changed >> {d}/README", user="alice"))
    assert ok(run(writer, *git, "status", "--porcelain", user="alice")).stdout == b" M README\n"
    ok(run(writer, *git, "commit", "-qam", "second", user="alice"))
    log = ok(run(writer, *git, "log", "--format=%s", user="alice")).stdout
    assert log == b"second\nfirst\n"
    ok(run(writer, *git, "fsck", "--strict", user="alice"))


def test_compileall_writes_pyc(writer: Mount, volumes: Volumes) -> None:
    where = fresh_dir(writer, volumes.work)
    d = volume_path(writer, volumes.work) / where
    for name in ("one", "two"):
        ok(run(writer, "sh", "-c", f"echo 'VALUE = \"{name}\"' > {d}/{name}.py", user="alice"))
    ok(run(writer, "python3", "-m", "compileall", "-q", str(d), user="alice"))
    cached = sorted(os.listdir(d / "__pycache__"))
    assert cached == ["one.cpython-311.pyc", "two.cpython-311.pyc"]
    # PYTHONPATH cannot name a path with a colon in it (.:mount): import from sys.path.
    script = "import sys; sys.path.insert(0, sys.argv[1]); import one; print(one.VALUE)"
    pyc = d / "__pycache__" / "one.cpython-311.pyc"
    before = os.stat(pyc).st_mtime_ns
    time.sleep(1.1)
    out = ok(run(writer, "python3", "-c", script, str(d), user="alice"))
    assert out.stdout == b"one\n"
    assert os.stat(pyc).st_mtime_ns == before  # valid, so used rather than written again


def test_acls_through_xattrs_and_ctl(writer: Mount, reader: Mount, volumes: Volumes) -> None:
    where = fresh_dir(writer, volumes.work)
    d = volume_path(writer, volumes.work) / where
    ok(run(writer, "sh", "-c", f"echo secret > {d}/s", user="alice"))
    text = ok(run(writer, "getfattr", "--only-values", "-n", "afs.acl", str(d), user="alice"))
    acl = Acl.parse(text.stdout)
    assert acl.positive == {"system:administrators": 127, "alice": 127, "system:anyuser": 9}

    # Only alice: bob is shut out at once, in this mount and (by callback) in the other.
    assert ok(reader.ctl("bob", "aklog")).returncode == 0
    assert reader.run("cat", str(volume_path(reader, volumes.work) / where / "s"),
                      user="bob").stdout == b"secret\n"  # fmt: skip
    mine = "2\n0\nsystem:administrators 127\nalice 127\n"
    ok(run(writer, "setfattr", "-n", "afs.acl", "-v", mine, str(d), user="alice"))
    done = reader.run("cat", str(volume_path(reader, volumes.work) / where / "s"),
                      user="bob", check=False)  # fmt: skip
    assert done.returncode != 0 and b"Permission denied" in done.stderr

    ok(writer.ctl("alice", "setacl", str(d), "bob", "read", "system:anyuser", "l"))
    listed = ok(writer.ctl("alice", "listacl", str(d))).stdout.decode()
    assert "  bob rl\n" in listed and "  system:anyuser l\n" in listed
    ok(writer.ctl("alice", "setacl", "--negative", str(d), "bob", "r"))
    listed = ok(writer.ctl("alice", "listacl", str(d))).stdout.decode()
    assert "Negative rights:\n  bob r\n" in listed
    done = writer.ctl("bob", "setacl", str(d), "bob", "all")
    assert done.returncode != 0  # bob may not administer
    ok(writer.ctl("alice", "setacl", "--clear", str(d), "system:administrators", "all",
                  "alice", "all"))  # fmt: skip
    listed = ok(writer.ctl("alice", "listacl", str(d))).stdout.decode()
    assert "bob" not in listed and "alice rlidwka" in listed


def test_mount_points_and_quota(writer: Mount, volumes: Volumes) -> None:
    where = fresh_dir(writer, volumes.work)
    d = volume_path(writer, volumes.work) / where
    ok(writer.ctl("alice", "mkmount", str(d / "q"), volumes.quota, "--rw"))
    ok(writer.ctl("alice", "mkmount", str(d / "x"), volumes.other, "--cell", writer.cell))
    out = ok(writer.ctl("alice", "lsmount", str(d / "q"), str(d / "x"))).stdout.decode()
    assert f"'{d / 'q'}' is a mount point for volume '%{volumes.quota}'" in out
    assert f"is a mount point for volume '#{writer.cell}:{volumes.other}'" in out
    assert writer.ctl("alice", "lsmount", str(d)).returncode != 0
    assert (
        ok(run(writer, "getfattr", "--only-values", "-n", "afs.volume", str(d / "q"))).stdout
        == volumes.quota.encode()
    )
    data = secrets.token_bytes(300 << 10)
    ok(feed(writer, d / "q" / "file", data))
    assert (d / "q" / "file").read_bytes() == data
    quota = ok(writer.ctl("alice", "listquota", "--json", str(d / "q"))).stdout.decode()
    assert f'"quota": {QUOTA_KB}' in quota
    df = ok(run(writer, "df", "-k", "--output=size,used", str(d / "q"))).stdout.split()
    assert int(df[-2]) == QUOTA_KB and int(df[-1]) >= 300
    ok(writer.ctl("alice", "rmmount", str(d / "x")))
    ok(run(writer, "rmdir", str(d / "q"), user="alice"))
    assert os.listdir(d) == []


FLUSHED_WHILE_OPEN = r"""
import hashlib, os, sys
data = os.urandom(200 << 10)
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, data)
print("written", hashlib.sha256(data).hexdigest(), flush=True)
sys.stdin.readline()
os.close(fd)
print("closed", flush=True)
"""


def test_flushes_forget_what_is_cached_but_never_unsent_data(
    writer: Mount, reader: Mount, volumes: Volumes
) -> None:
    where = fresh_dir(writer, volumes.work)
    d = volume_path(writer, volumes.work) / where
    data = secrets.token_bytes(300 << 10)
    ok(feed(writer, d / "cached", data))

    def fetched() -> int:
        return writer.stats()["rpcs"].get("FS.FetchData64", 0)

    def read_back() -> bytes:
        return ok(run(writer, "cat", str(d / "cached"), user="alice")).stdout

    assert read_back() == data
    before = fetched()
    assert read_back() == data and fetched() == before  # the cache answers
    for verb in ("flush", "flushvolume"):
        ok(writer.ctl("alice", verb, str(d / "cached")))
        assert read_back() == data and fetched() > before, verb  # fetched again
        before = fetched()
    done = writer.ctl("alice", "flushall")
    assert done.returncode == 1 and b"only root may flush everything" in done.stderr
    ok(writer.ctl(None, "flushall"))
    assert read_back() == data and fetched() > before

    # Written and not yet closed: no flush forgets it, and the close then stores it.
    env = {"PATH": "/usr/bin:/bin", **writer.user_env["alice"]}
    argv = ["python3", "-c", FLUSHED_WHILE_OPEN, str(d / "open")]
    child = subprocess.Popen(
        [*as_user(writer.local["alice"]), *argv], stdin=PIPE, stdout=PIPE, env=env
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        said, digest = child.stdout.readline().split()
        assert said == b"written"
        ok(writer.ctl("alice", "flush", str(d / "open")))
        ok(writer.ctl("alice", "flushvolume", str(d)))
        ok(writer.ctl(None, "flushall"))
        shown = ok(run(writer, "cat", str(d / "open"), user="alice")).stdout
        assert hashlib.sha256(shown).hexdigest().encode() == digest
        child.stdin.write(b"close\n")
        child.stdin.flush()
        assert child.stdout.readline() == b"closed\n"
        assert child.wait(timeout=60) == 0
    finally:
        child.kill()
    seen = volume_path(reader, volumes.work) / where / "open"
    stored = lambda: ok(run(reader, "cat", str(seen), user="alice")).stdout  # noqa: E731
    eventually(lambda: hashlib.sha256(stored()).hexdigest().encode() == digest, 30)


def test_setquota_is_for_the_cells_administrators(
    cell: Cell, writer: Mount, volumes: Volumes, tmp_path: Path
) -> None:
    path = str(volume_path(writer, volumes.quota))
    done = writer.ctl("alice", "setquota", path, str(2 * QUOTA_KB))
    assert done.returncode == 1 and b"setquota" in done.stderr
    done = writer.ctl("alice", "setquota", path, "-1")
    assert done.returncode == 1 and b"'max' must be a quota in KiB" in done.stderr

    # Root with the cell admin's ticket acts with the admin's token.
    admin_env = {**kinit(cell, "admin", tmp_path / "krb5cc"), "PATH": "/usr/bin:/bin"}
    ctl = [sys.executable, "-m", "afsfuse.ctl.cli", "--mount", str(writer.path)]

    def as_admin(*args: str) -> subprocess.CompletedProcess[bytes]:
        return ok(subprocess.run([*ctl, *args], env=admin_env, capture_output=True, timeout=60))

    as_admin("aklog")
    try:
        listed = json.loads(as_admin("setquota", "--json", path, str(2 * QUOTA_KB)).stdout)
        assert listed["volume"] == volumes.quota and listed["quota"] == 2 * QUOTA_KB
        shown = json.loads(ok(writer.ctl("alice", "listquota", "--json", path)).stdout)
        assert shown[0]["quota"] == 2 * QUOTA_KB
    finally:
        as_admin("setquota", path, str(QUOTA_KB))
        as_admin("unlog")


def test_rights_decide_who_may_write(writer: Mount, volumes: Volumes) -> None:
    where = fresh_dir(writer, volumes.work)
    d = volume_path(writer, volumes.work) / where
    ok(run(writer, "sh", "-c", f"echo mine > {d}/f", user="alice"))
    assert ok(writer.ctl("bob", "aklog")).returncode == 0
    for argv in (["sh", "-c", f"echo bob > {d}/f"], ["touch", f"{d}/new"], ["rm", f"{d}/f"],
                 ["mkdir", f"{d}/sub"]):  # fmt: skip
        done = writer.run(*argv, user="bob", check=False)
        assert done.returncode != 0 and b"Permission denied" in done.stderr, argv
    done = writer.run("chown", "bob", str(d / "f"), user="alice", check=False)
    assert done.returncode != 0  # only the cell's administrators may chown
    assert (d / "f").read_bytes() == b"mine\n"


PAST_THE_LIMIT = r"""
import errno, os, sys
path, limit = sys.argv[1], int(sys.argv[2])

def refused(call, *args):
    try:
        call(*args)
    except OSError as e:
        assert e.errno == errno.EFBIG, (call.__name__, args[1:], e)
    else:
        raise AssertionError(f"{call.__name__}{args[1:]} succeeded")

fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
os.write(fd, b"kept")
refused(os.pwrite, fd, b"x", 2**62)
refused(os.pwrite, fd, b"x", limit)
refused(os.ftruncate, fd, 2**62)
refused(os.ftruncate, fd, limit + 1)
os.close(fd)
refused(os.truncate, path, limit + 1)
with open(path, "rb") as f:
    assert f.read() == b"kept"
print("ok")
"""


def test_writes_past_the_largest_file_fail_with_efbig(writer: Mount, volumes: Volumes) -> None:
    d = volume_path(writer, volumes.work) / fresh_dir(writer, volumes.work)
    logged = len(writer.log())
    done = python(writer, PAST_THE_LIMIT, str(d / "f"), str(MAX_FILE_SIZE))
    assert ok(done).stdout == b"ok\n"
    new_log = writer.log()[logged:]
    assert "Traceback" not in new_log and "File too large" not in new_log, new_log
    ok(run(writer, "sh", "-c", f"echo next > {d}/g", user="alice"))  # still serving
    assert (d / "g").read_bytes() == b"next\n"


class _Dirent(ctypes.Structure):
    """glibc's struct dirent on 64-bit Linux."""

    _fields_ = [
        ("d_ino", ctypes.c_uint64),
        ("d_off", ctypes.c_int64),
        ("d_reclen", ctypes.c_ushort),
        ("d_type", ctypes.c_ubyte),
        ("d_name", ctypes.c_char * 256),
    ]


def _readdir(directory: Path) -> dict[str, int]:
    """name -> d_ino exactly as readdir(3) gives them: Python's listings hide `.` and `..`,
    and `ls -i` may stat instead of showing d_ino."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.opendir.restype = ctypes.c_void_p
    libc.readdir.argtypes = libc.closedir.argtypes = [ctypes.c_void_p]
    libc.readdir.restype = ctypes.POINTER(_Dirent)
    handle = libc.opendir(os.fsencode(directory))
    assert handle, os.strerror(ctypes.get_errno())
    try:
        entries = {}
        while entry := libc.readdir(handle):
            entries[os.fsdecode(entry.contents.d_name)] = entry.contents.d_ino
        return entries
    finally:
        libc.closedir(handle)


def test_every_directory_lists_dot_and_dot_dot(writer: Mount, volumes: Volumes) -> None:
    top = volume_path(writer, volumes.work)
    d = top / fresh_dir(writer, volumes.work)
    ok(run(writer, "mkdir", str(d / "inner"), user="alice"))
    ok(run(writer, "touch", str(d / "inner" / "file"), user="alice"))
    ok(writer.ctl("alice", "mkmount", str(d / "mp"), volumes.other))
    root = writer.path
    parents = {
        root: root,  # the mount's root: `..` is itself, as on a filesystem's own root
        root / ".:mount": root,
        top: root / ".:mount",  # a volume's root
        d: top,
        d / "inner": d,
        d / "mp": d,  # a volume root reached through a mount point
    }
    for directory, parent in parents.items():
        names = ok(run(writer, "ls", "-a", str(directory))).stdout.decode().split()
        assert names[:2] == [".", ".."], (directory, names)
        listed = _readdir(directory)
        assert listed["."] == os.stat(directory).st_ino, (directory, listed)
        assert listed[".."] == os.stat(parent).st_ino, (directory, listed)
        assert sorted(listed) == sorted(names)
        assert sorted(os.listdir(directory)) == sorted(names[2:])
        assert sorted(e.name for e in os.scandir(directory)) == sorted(names[2:])
    assert os.stat(d / "inner" / "..").st_ino == os.stat(d).st_ino  # what readdir says
    assert set(_readdir(d / "inner")) == {".", "..", "file"}


def test_a_mount_without_xattrs(
    cell: Cell,
    volumes: Volumes,
    reader: Mount,
    users: dict[str, User],
    user_python: UserPython,
    tmp_path: Path,
) -> None:
    with afs_mount(cell, users, user_python, tmp_path / "cache", extra_args=["--no-xattrs"]) as m:
        assert m.ctl("alice", "aklog").returncode == 0
        d = volume_path(m, volumes.work) / fresh_dir(m, volumes.work)
        data = secrets.token_bytes(300_000)
        ok(feed(m, d / "copy", data))  # write(2) after write(2), never asked for xattrs
        listing = ok(run(m, "ls", "-l", str(d), user="alice")).stdout.decode()
        assert "copy" in listing and "300000" in listing
        refused = run(m, "getfattr", "-n", "afs.fid", str(d / "copy"), user="alice")
        assert refused.returncode != 0 and b"Operation not supported" in refused.stderr
        assert b"alice" in ok(m.ctl("alice", "listacl", str(d))).stdout  # ACLs still there
    seen = volume_path(reader, volumes.work) / d.relative_to(volume_path(m, volumes.work))
    assert ok(run(reader, "cat", str(seen / "copy"), user="alice")).stdout == data


#: Appends of 1 to 16 numbered 1 KiB blocks, each open(O_APPEND), write, close, for a while;
#: each must end where the file now ends, and the file must then hold every block in order.
APPEND_IN_A_LOOP = r"""
import os, random, sys, time
path, seconds = sys.argv[1], float(sys.argv[2])
rng = random.Random(7)
model = bytearray()
appends = 0
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    data = b"".join(b"%07d\n" % (len(model) // 1024 + i) * 128 for i in range(rng.randint(1, 16)))
    with open(path, "ab", buffering=0) as f:
        f.write(data)
        ended = f.tell()
    model += data
    appends += 1
    if ended != len(model):
        print(f"append {appends} ended at {ended}, not {len(model)}")
        break
with open(path, "rb") as f:
    got = f.read()
if got == model:
    print(f"ok: {appends} appends")
else:
    print(f"after {appends} appends: {len(got)} bytes, not {len(model)}")
"""

#: Every name of a directory with its status (readdirplus, then stat), again and again.
LIST_IN_A_LOOP = r"""
import os, sys
directory, stop = sys.argv[1], sys.argv[2]
while not os.path.exists(stop):
    with os.scandir(directory) as entries:
        for entry in entries:
            try:
                entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                pass  # removed since it was listed
"""

#: New small files in a directory, again and again, keeping the last few.
CREATE_IN_A_LOOP = r"""
import os, sys
directory, stop = sys.argv[1], sys.argv[2]
n = 0
while not os.path.exists(stop):
    with open(os.path.join(directory, f"new{n}"), "wb") as f:
        f.write(b"x")
    if n >= 4:
        os.unlink(os.path.join(directory, f"new{n - 4}"))
    n += 1
"""


def test_appends_land_at_the_end_while_the_directory_is_listed(
    writer: Mount, volumes: Volumes
) -> None:
    """open(O_APPEND), write, close again and again, while another process lists the
    directory with each entry's status: every append starts where the one before ended.

    Anyone may read here, so the kernel keeps the file's attributes, its length included,
    and an O_APPEND write goes where that length says.  The listing runs as root
    (anonymous) while alice creates files there: each listing then meets a new file whose
    status anonymous has not got yet, and waits for the fileserver in the middle, which is
    when an append's store can end under it (with two mounts, the other mount's writes do
    the same).  A listing that then showed the length from before the append made the
    next append overwrite it."""
    d = volume_path(writer, volumes.work) / fresh_dir(writer, volumes.work, user=None)
    public = Path(tempfile.mkdtemp(prefix="afsfuse-append-"))  # alice can see `stop` here
    public.chmod(0o755)
    stop = public / "stop"
    alice = [*as_user(writer.local["alice"]), "python3", "-c", CREATE_IN_A_LOOP, str(d), str(stop)]
    others = [
        subprocess.Popen(["python3", "-c", LIST_IN_A_LOOP, str(d), str(stop)], stderr=PIPE),
        subprocess.Popen(alice, stderr=PIPE, env={"PATH": "/usr/bin:/bin"}),
    ]
    try:
        done = python(writer, APPEND_IN_A_LOOP, str(d / "log"), "15", user=None)
    finally:
        stop.touch()
        problems = [p.communicate(timeout=30)[1] for p in others]
        shutil.rmtree(public)
    assert [p.returncode for p in others] == [0, 0], problems
    assert ok(done).stdout.startswith(b"ok: "), done.stdout.decode()


#: Append (O_APPEND) 1 KiB blocks, each naming its number, to a file of about 60 of them,
#: while two threads read it whole: every block read must be one a write put there.  The
#: file is rewritten ("wb") back to 45-75 blocks once it reaches 120, with the readers
#: held off (a read racing a truncation is another matter).  Prints "ok: ..." or the first
#: wrong read.
APPEND_AND_READ = r"""
import random, sys, threading, time
path, seconds = sys.argv[1], float(sys.argv[2])
def blocks(version, first, count):
    out = []
    for i in range(first, first + count):
        header = b"v%d b%d\n" % (version, i)
        out.append((header * (1024 // len(header) + 1))[:1024])
    return b"".join(out)
with open(path, "wb") as f:
    f.write(blocks(0, 0, 60))
stop = threading.Event()
gates = [threading.Lock(), threading.Lock()]
wrong = []
reads = [0]
def reader(gate):
    while not stop.is_set() and not wrong:
        with gate, open(path, "rb") as f:
            data = f.read()
        reads[0] += 1
        for i in range(len(data) // 1024):
            got = data[i * 1024 : (i + 1) * 1024]
            version = got[1 : got.index(b" ")] if got.startswith(b"v") else b""
            if not version.isdigit() or got != blocks(int(version), i, 1):
                wrong.append(f"read {reads[0]}: block {i} of {len(data)} bytes: {got[:24]!r}")
                break
readers = [threading.Thread(target=reader, args=(gate,)) for gate in gates]
for t in readers:
    t.start()
rng = random.Random(5)
length, version, appends = 60, 0, 0
deadline = time.monotonic() + seconds
while time.monotonic() < deadline and not wrong:
    version += 1
    if length < 120:
        count = rng.randint(1, 16)
        with open(path, "ab", buffering=0) as f:
            f.write(blocks(version, length, count))
        length += count
        appends += 1
    else:
        length = rng.randint(45, 75)
        with gates[0], gates[1], open(path, "wb", buffering=0) as f:
            f.write(blocks(version, 0, length))
stop.set()
for t in readers:
    t.join()
print(wrong[0] if wrong else f"ok: {appends} appends, {reads[0]} reads")
"""


def test_readers_on_the_appending_mount_see_only_written_blocks(
    writer: Mount, volumes: Volumes
) -> None:
    """A file appended to over and over while readers on the same mount read it whole:
    no read holds zeros or a block no write put there.

    Between a write and the close that stores it, this mount shows the file with the
    length of its writes beside the data version they went over.  Remembered as the
    kernel's version and length, that pair, once the close had stored a newer version,
    had reads served from the older version up to the longer length: they came back
    short, and the kernel filled the rest of its pages with zeros."""
    d = volume_path(writer, volumes.work) / fresh_dir(writer, volumes.work, user=None)
    done = python(writer, APPEND_AND_READ, str(d / "f"), "15", user=None)
    assert ok(done).stdout.startswith(b"ok: "), done.stdout.decode()
