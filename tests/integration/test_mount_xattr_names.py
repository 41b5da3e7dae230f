"""Extended attributes outside `afs.*` on a real mount: a security label or a POSIX ACL is
"not supported" (AFS keeps neither), so `ls -l` asks the mount for them once, not for every
entry; `afs.*` is still served; new files and directories take the caller's umask."""

from __future__ import annotations

import os
import re
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from acls import ALICE_ALL
from local_users import User, UserPython
from managers import ADMIN, manager
from mounting import Mount, afs_mount
from programs import ok, run
from volumes import volume_root

from afsfuse.keyring import Token
from afsfuse.keyring.store import TokenStore
from afsfuse.testing.cell import Cell

pytestmark = pytest.mark.cell

FILES, DIRS = 40, 5
#: A minimal POSIX ACL as setfacl stores it: version 2, then (tag, perm, id) little-endian
#: for the owner (rw), the group (r) and others (r).
POSIX_ACL = "0x" + "".join(("02000000", "01000600ffffffff", "04000400ffffffff", "20000400ffffffff"))


async def _prepare(cell: Cell, cache: Path, token: Token, volume: str) -> None:
    store = TokenStore()
    store.set(ADMIN, token)
    async with manager(cell, cache, store) as m:
        await m.set_acl(await volume_root(m, cell.name, volume, "rw"), ALICE_ALL, ADMIN)


@pytest.fixture(scope="module")
def mounted(
    cell: Cell,
    tokens: dict[str, Token],
    users: dict[str, User],
    user_python: UserPython,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Mount, Path]]:
    """A mount with alice's token, and a new volume of hers (as `.:mount` reaches it)."""
    volume = "xn." + secrets.token_hex(3)
    cell.exec("vos", "create", cell.servers[0].addr, "a", volume, "-maxquota", "0", "-localauth")
    trio.run(_prepare, cell, tmp_path_factory.mktemp("prepare"), tokens["admin"], volume)
    with afs_mount(cell, users, user_python, tmp_path_factory.mktemp("cache")) as mount:
        assert mount.ctl("alice", "aklog").returncode == 0
        yield mount, mount.path / ".:mount" / f"{mount.cell}:{volume}"


def _fresh(mount: Mount, top: Path) -> Path:
    d = top / ("t-" + secrets.token_hex(4))
    ok(run(mount, "mkdir", str(d), user="alice"))
    return d


def test_ls_l_asks_once_for_a_label_and_an_acl(mounted: tuple[Mount, Path]) -> None:
    mount, top = mounted
    d = _fresh(mount, top)
    made = "; ".join(
        [f"touch {d}/f{i}" for i in range(FILES)] + [f"mkdir {d}/d{i}" for i in range(DIRS)]
    )
    ok(run(mount, "sh", "-c", made, user="alice"))
    traced = ok(run(mount, "strace", "-f", "-e", "trace=getxattr,lgetxattr", "ls", "-l", str(d),
                    user="alice"))  # fmt: skip
    listing = traced.stdout.decode().splitlines()
    assert len(listing) == 1 + FILES + DIRS  # "total", then every entry
    assert all(re.match(r"[-d]rw", line) for line in listing[1:]), listing
    asked = re.findall(r'getxattr\("[^"]*", "([^"]+)".*= (-?\d+) ?(\w*)', traced.stderr.decode())
    assert sorted(asked) == [
        ("security.selinux", "-1", "EOPNOTSUPP"),
        ("system.posix_acl_access", "-1", "EOPNOTSUPP"),
    ]


def test_posix_acls_and_labels_are_not_supported(mounted: tuple[Mount, Path]) -> None:
    mount, top = mounted
    d = _fresh(mount, top)
    f = d / "f"
    ok(run(mount, "touch", str(f), user="alice"))
    for name in ("system.posix_acl_access", "security.selinux", "user.note"):
        done = run(mount, "getfattr", "-n", name, str(f), user="alice")
        assert done.returncode != 0 and b"Operation not supported" in done.stderr, done.stderr
    done = run(mount, "getfattr", "-n", "system.posix_acl_default", str(d), user="alice")
    assert done.returncode != 0 and b"Operation not supported" in done.stderr, done.stderr
    # As root (the owner check passed), the request reaches the daemon, which refuses it.
    for target in (f, d):
        done = run(mount, "setfattr", "-n", "system.posix_acl_access", "-v", POSIX_ACL,
                   str(target))  # fmt: skip
        assert done.returncode != 0 and b"Operation not supported" in done.stderr, done.stderr
    done = run(mount, "setfattr", "-x", "system.posix_acl_access", str(f))
    assert done.returncode != 0 and b"Operation not supported" in done.stderr, done.stderr
    absent = run(mount, "getfattr", "-n", "afs.mountpoint", str(f), user="alice")
    assert absent.returncode != 0 and b"No such attribute" in absent.stderr, absent.stderr


def test_afs_xattrs_are_still_served(mounted: tuple[Mount, Path]) -> None:
    mount, top = mounted
    d = _fresh(mount, top)
    ok(run(mount, "touch", str(d / "f"), user="alice"))
    fid = ok(run(mount, "getfattr", "--only-values", "-n", "afs.fid", str(d / "f"), user="alice"))
    assert re.fullmatch(rb"\d+\.\d+\.\d+", fid.stdout), fid.stdout
    volume = ok(run(mount, "getfattr", "--only-values", "-n", "afs.volume", str(d), user="alice"))
    assert volume.stdout == top.name.split(":", 1)[1].encode()
    acl = ok(run(mount, "getfattr", "--only-values", "-n", "afs.acl", str(d), user="alice"))
    assert b"\nalice\t127\n" in acl.stdout
    dump = ok(run(mount, "getfattr", "-d", "-m", "-", str(d / "f"), user="alice")).stdout.decode()
    assert {"afs.cell", "afs.fid", "afs.volume"} <= set(re.findall(r"^(afs\.\w+)=", dump, re.M))


def test_new_files_and_directories_take_the_umask(mounted: tuple[Mount, Path]) -> None:
    mount, top = mounted
    d = _fresh(mount, top)
    for umask, dir_mode, file_mode in (("022", 0o755, 0o644), ("077", 0o700, 0o600)):
        made = f"umask {umask} && mkdir {d}/d{umask} && touch {d}/f{umask} && echo x > {d}/w{umask}"
        ok(run(mount, "sh", "-c", made, user="alice"))
        modes = [stat.S_IMODE(os.stat(d / f"{kind}{umask}").st_mode) for kind in "dfw"]
        assert modes == [dir_mode, file_mode, file_mode], (umask, [oct(m) for m in modes])
    ok(run(mount, "chmod", "640", str(d / "f022"), user="alice"))
    assert stat.S_IMODE(os.stat(d / "f022").st_mode) == 0o640


def test_a_program_copied_in_runs(mounted: tuple[Mount, Path]) -> None:
    """exec(2) asks the file for security.capability: "not supported" means none."""
    mount, top = mounted
    d = _fresh(mount, top)
    ok(run(mount, "cp", "/bin/echo", str(d / "echo"), user="alice"))
    assert ok(run(mount, str(d / "echo"), "ran", user="alice")).stdout == b"ran\n"
