"""afsfuse mounted for real on the test cell, driven by ordinary programs as root and as
unprivileged local users (afsfuse-alice, afsfuse-bob) with tokens from their own kinit.

The daemon is a separate process (`afsfuse mount`, backgrounded): no syscall on the mount
ever comes from a thread that serves it.  Content is created as the cell admin over Rx.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from admin_rpcs import admin, afs, fid_of, write
from local_users import User, UserPython
from logins import kinit
from managers import ADMIN, manager
from mounting import BIN, SYSNAME, Mount, acl, afs_mount, process_gone
from volumes import volume_root

from afsfuse.fs.vnode import AfsFid
from afsfuse.keyring import Token
from afsfuse.keyring.store import TokenStore
from afsfuse.rx.interfaces.fs import AFS_SETMODE, FS, AFSStoreStatus
from afsfuse.testing.cell import Cell

pytestmark = pytest.mark.cell

SMALL = b"hello, afs!\n"
SECRET = b"alice only\n"
MEDIUM_SIZE = 3 * 1024 * 1024 + 17
BIG_SIZE = (1 << 30) + 4096 + 3


@dataclass
class Tree:
    """What the admin put in the cell."""

    medium: bytes
    big_sha256: str
    big_fid: AfsFid
    quota_blocks: int


async def _populate(cell: Cell, cache: Path, token: Token, big_source: Path) -> AfsFid:
    store = TokenStore()
    store.set(ADMIN, token)
    async with manager(cell, cache, store) as m:
        root_cell = await volume_root(m, cell.name, "root.cell", "rw")
        await admin(m, root_cell, FS.OldStoreACL, afs(root_cell), acl("system:anyuser 9"))
        mode_0644 = AFSStoreStatus(Mask=AFS_SETMODE, UnixModeBits=0o644)
        await admin(
            m, root_cell, FS.Symlink, afs(root_cell), "test", f"#{cell.name}:test.", mode_0644
        )
        test = await volume_root(m, cell.name, "test", "rw")
        await admin(m, test, FS.OldStoreACL, afs(test), acl("system:anyuser 9"))

        async def new_file(parent: AfsFid, name: str, data: bytes) -> AfsFid:
            reply = await admin(m, parent, FS.CreateFile, afs(parent), name, mode_0644)
            fid = fid_of(parent, reply.OutFid)
            if data:
                await write(m, fid, data)
            return fid

        async def new_dir(parent: AfsFid, name: str, acl: bytes | None = None) -> AfsFid:
            reply = await admin(m, parent, FS.MakeDir, afs(parent), name, AFSStoreStatus())
            fid = fid_of(parent, reply.OutFid)
            if acl is not None:
                await admin(m, fid, FS.OldStoreACL, afs(fid), acl)
            return fid

        await new_file(test, "small.txt", SMALL)
        await new_file(test, "medium.bin", big_source.read_bytes()[:MEDIUM_SIZE])
        sys_dir = await new_dir(test, SYSNAME)
        await new_file(sys_dir, "marker", b"sys\n")
        private = await new_dir(test, "private", acl("alice 9"))
        await new_file(private, "secret.txt", SECRET)
        return await new_file(test, "big.bin", b"")


@pytest.fixture(scope="module")
def tree(cell: Cell, tokens: dict[str, Token], tmp_path_factory: pytest.TempPathFactory) -> Tree:
    work = tmp_path_factory.mktemp("tree")
    big = work / "big.bin"
    digest = hashlib.sha256()
    with open(big, "wb") as out:
        seed = secrets.token_bytes(32)
        block = hashlib.shake_256(seed).digest(1 << 20)
        written = 0
        while written < BIG_SIZE:
            piece = block[: min(len(block), BIG_SIZE - written)]
            piece = written.to_bytes(8, "little") + piece[8:] if len(piece) > 8 else piece
            out.write(piece)
            digest.update(piece)
            written += len(piece)
    big_fid = trio.run(_populate, cell, work / "cache", tokens["admin"], big)
    medium = big.read_bytes()[:MEDIUM_SIZE]
    env = kinit(cell, "admin", work / "cc_admin")
    env["KRB5CCNAME"] = f"FILE:{work / 'cc_admin'}"
    fid_text = f"{big_fid.volume}.{big_fid.vnode}.{big_fid.unique}"
    with open(big, "rb") as source:
        subprocess.run(
            [BIN / "afsfuse-io", "fidwrite", "--cell", cell.name, "--fid", fid_text,
             "--cellservdb", str(cell.cellservdb)],
            stdin=source, env=env, check=True, timeout=600,
        )  # fmt: skip
    big.unlink()
    db = cell.db_server.addr
    cell.exec("vos", "create", db, "a", "quota.vol", "-maxquota", "5000", "-localauth")
    cell.exec("vos", "release", "root.cell", "-localauth", timeout=180)
    return Tree(medium, digest.hexdigest(), big_fid, 5000)


@pytest.fixture(scope="module")
def mounted(
    cell: Cell,
    tree: Tree,
    users: dict[str, User],
    user_python: UserPython,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Mount]:
    with afs_mount(cell, users, user_python, tmp_path_factory.mktemp("mount-cache")) as mount:
        yield mount


def test_root_lists_the_cell_and_its_rw_path(mounted: Mount) -> None:
    names = mounted.run("ls", "-a", str(mounted.path)).stdout.decode().split()
    assert {mounted.cell, "." + mounted.cell, ".:mount"} <= set(names)
    assert mounted.run("ls", str(mounted.path / ".:mount")).stdout == b""


def test_cell_reaches_root_cell_readonly_and_dot_cell_the_rw(mounted: Mount) -> None:
    ro = mounted.path / mounted.cell
    rw = mounted.path / ("." + mounted.cell)
    assert (
        mounted.run("getfattr", "--only-values", "-n", "afs.volume", str(ro)).stdout
        == b"root.cell.readonly"
    )
    assert (
        mounted.run("getfattr", "--only-values", "-n", "afs.volume", str(rw)).stdout == b"root.cell"
    )
    # The mount point made with FS.Symlink (mode 0644) is a directory, traversed.
    for top in (ro, rw):
        out = mounted.run("stat", "-c", "%F", str(top / "test")).stdout.decode().strip()
        assert out == "directory"
        assert (top / "test" / "small.txt").read_bytes() == SMALL


def test_mountpoint_xattrs(mounted: Mount) -> None:
    point = mounted.path / ("." + mounted.cell) / "test"
    value = mounted.run("getfattr", "--only-values", "-n", "afs.mountpoint", str(point)).stdout
    assert value == f"#{mounted.cell}:test".encode()
    dump = mounted.run("getfattr", "-d", "-m", "-", str(point / "small.txt")).stdout.decode()
    assert f'afs.cell="{mounted.cell}"' in dump
    assert 'afs.volume="test"' in dump
    assert "afs.fid=" in dump


def test_dynamic_mount_by_name_and_by_id(mounted: Mount, tree: Tree) -> None:
    by_name = mounted.path / ".:mount" / f"{mounted.cell}:test"
    assert (by_name / "small.txt").read_bytes() == SMALL
    by_id = mounted.path / ".:mount" / f"{mounted.cell}:{tree.big_fid.volume}"
    assert sorted(os.listdir(by_id)) == sorted(os.listdir(by_name))
    missing = mounted.path / ".:mount" / f"{mounted.cell}:no.such.volume"
    assert mounted.run("ls", str(missing), check=False).returncode != 0


def test_at_sys(mounted: Mount) -> None:
    test = mounted.path / mounted.cell / "test"
    assert (test / "@sys" / "marker").read_bytes() == b"sys\n"
    names = mounted.run("find", str(test), "-maxdepth", "1").stdout.decode().split()
    assert str(test / SYSNAME) in names


def test_files_of_several_sizes(mounted: Mount, tree: Tree) -> None:
    test = mounted.path / mounted.cell / "test"
    assert mounted.run("cat", str(test / "small.txt")).stdout == SMALL
    out = mounted.run("sha256sum", str(test / "medium.bin")).stdout.split()[0].decode()
    assert out == hashlib.sha256(tree.medium).hexdigest()
    assert os.stat(test / "medium.bin").st_size == MEDIUM_SIZE


def test_large_file_sha256(mounted: Mount, tree: Tree) -> None:
    big = mounted.path / mounted.cell / "test" / "big.bin"
    assert os.stat(big).st_size == BIG_SIZE
    started = time.monotonic()
    out = mounted.run("sha256sum", str(big), timeout=900).stdout.split()[0].decode()
    seconds = time.monotonic() - started
    print(f"sha256sum of {BIG_SIZE} bytes through the mount: {seconds:.1f} s "
          f"({BIG_SIZE / seconds / 1e6:.0f} MB/s)")  # fmt: skip
    assert out == tree.big_sha256


def test_df_shows_the_volume_quota(mounted: Mount, tree: Tree) -> None:
    quota = mounted.path / ".:mount" / f"{mounted.cell}:quota.vol"
    out = mounted.run("df", "-k", "--output=size", str(quota)).stdout.decode().split()
    assert out[-1] == str(tree.quota_blocks)


def test_alice_reads_what_bob_cannot_even_after_her(mounted: Mount) -> None:
    private = mounted.path / mounted.cell / "test" / "private"
    secret = private / "secret.txt"
    assert mounted.ctl("alice", "aklog").returncode == 0
    assert mounted.ctl("bob", "aklog").returncode == 0
    for _ in range(2):  # and again, with everything alice did cached
        assert mounted.run("cat", str(secret), user="alice").stdout == SECRET
        assert mounted.run("ls", str(private), user="alice").stdout.split() == [b"secret.txt"]
        assert mounted.run("stat", str(secret), user="alice").returncode == 0
        for argv in (["cat", str(secret)], ["ls", str(private)], ["stat", str(secret)]):
            done = mounted.run(*argv, user="bob", check=False)
            assert done.returncode != 0, argv
            assert b"Permission denied" in done.stderr, (argv, done.stderr)
    # Anonymous root (no token) is refused too; the public file is readable by everyone.
    assert mounted.run("cat", str(secret), check=False).returncode != 0
    public = mounted.path / mounted.cell / "test" / "small.txt"
    assert mounted.run("cat", str(public), user="bob").stdout == SMALL


def test_zz_clean_unmount_leaves_no_process_and_a_usable_mountpoint(mounted: Mount) -> None:
    subprocess.run(["fusermount3", "-u", str(mounted.path)], check=True, timeout=30)
    assert process_gone(mounted.pid, 30)
    assert not os.path.ismount(mounted.path)
    assert os.listdir(mounted.path) == []
