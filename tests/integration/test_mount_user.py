"""An ordinary user mounts afsfuse in a directory of their own (through fusermount3), gets a
token into it, reads what their rights allow, and unmounts it; other users cannot look in."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from local_users import User, UserPython, as_user
from logins import kinit
from mounting import BIN, acl, no_client_files, process_gone

from afsfuse.ctl.protocol import control_socket_path, registry_path
from afsfuse.fs.callback import CallbackRegistry
from afsfuse.fs.cmservice import CacheManagerService
from afsfuse.keyring import Token
from afsfuse.rx.driver import open_endpoint
from afsfuse.rx.interfaces.fs import FS, AFSFid, AFSStoreStatus
from afsfuse.rx.interfaces.vl import VL
from afsfuse.rx.rxkad import Level, RxkadClient
from afsfuse.testing.cell import Cell

pytestmark = pytest.mark.cell

SECRET = b"only alice's rights read this\n"


async def _private_volume(cell: Cell, admin: Token, volume: str) -> None:
    """A new volume whose root only alice (and the admins) may read, holding secret.txt."""
    cell.exec("vos", "create", cell.servers[0].addr, "a", volume, "-localauth")
    vl_addr, fs_addr = cell.db_server.addr, cell.servers[0].addr
    async with open_endpoint() as endpoint:
        CacheManagerService(CallbackRegistry()).install(endpoint)
        with trio.fail_after(60):
            vl = endpoint.connect((vl_addr, 7003), VL.service_id)
            entry = await VL.GetEntryByNameU(vl, volume)
            security = RxkadClient(admin.session_key, admin.ticket, admin.kvno, Level.CRYPT)
            conn = endpoint.connect((fs_addr, 7000), FS.service_id, security)
            root = AFSFid(entry.volumeId[0], 1, 1)
            await FS.OldStoreACL(conn, root, acl("alice 9"))
            created = await FS.CreateFile(conn, root, "secret.txt", AFSStoreStatus())
            await FS.StoreData64(
                conn, created.OutFid, AFSStoreStatus(), 0, len(SECRET), len(SECRET), data=SECRET
            )
            await FS.GiveUpAllCallBacks(conn)


@pytest.fixture
def home(users: dict[str, User]) -> Iterator[Path]:
    """A directory alice owns, reachable by everyone (as a home directory would be)."""
    base = Path(tempfile.mkdtemp(prefix="afsfuse-user-"))
    base.chmod(0o755)
    alice = users["alice"]
    for sub in ("afs", "cache", "run"):
        (base / sub).mkdir()
        os.chown(base / sub, alice.uid, alice.gid)
    (base / "run").chmod(0o700)
    os.chown(base, alice.uid, alice.gid)
    yield base
    subprocess.run(["fusermount3", "-u", "-z", str(base / "afs")], check=False, timeout=30)
    shutil.rmtree(base, ignore_errors=True)


async def test_a_user_mounts_reads_with_her_token_and_unmounts(
    cell: Cell,
    tokens: dict[str, Token],
    users: dict[str, User],
    user_python: UserPython,
    home: Path,
) -> None:
    volume = f"user.{os.getpid()}"
    await _private_volume(cell, tokens["admin"], volume)
    alice, bob = users["alice"], users["bob"]
    mnt = home / "afs"
    ccache = home / "run" / "ccache"
    kerberos = kinit(cell, "alice", ccache)
    os.chown(ccache, alice.uid, alice.gid)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(home / "run"),
        "KRB5_CONFIG": kerberos["KRB5_CONFIG"],
        "KRB5CCNAME": kerberos["KRB5CCNAME"],
        **user_python.env,
    }

    def as_alice(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*as_user(alice), *argv], env=env, capture_output=True, text=True,
            timeout=120, check=check,
        )  # fmt: skip

    as_alice(
        user_python.interpreter, str(BIN / "afsfuse"), "mount", str(mnt),
        "--cellservdb", str(cell.cellservdb), "--thiscell", cell.name,
        "--cache-dir", str(home / "cache"), "--log-file", str(home / "afsfuse.log"),
        *no_client_files(home),
    )  # fmt: skip
    socket = control_socket_path(mnt, home / "run" / "afsfuse")
    pid = int(json.loads(registry_path(socket).read_text())["pid"])
    line = next(ln for ln in Path("/proc/mounts").read_text().splitlines() if f" {mnt} " in ln)
    assert " fuse.afsfuse " in line
    assert f"user_id={alice.uid}" in line
    assert "allow_other" not in line, "a user's mount must not be open to other users"

    assert cell.name in as_alice("ls", str(mnt)).stdout.split()
    secret = mnt / ".:mount" / f"{cell.name}:{volume}" / "secret.txt"
    refused = as_alice("cat", str(secret), check=False)
    assert refused.returncode != 0, "without a token alice is anonymous"
    as_alice(user_python.interpreter, str(BIN / "afsfuse-ctl"), "--mount", str(mnt), "aklog")
    assert as_alice("cat", str(secret)).stdout.encode() == SECRET

    # FUSE keeps other users out of a mount made without allow_other, root included.
    other = subprocess.run(
        [*as_user(bob), "ls", str(mnt)], capture_output=True, text=True, timeout=30, check=False
    )
    assert other.returncode != 0 and "Permission denied" in other.stderr

    as_alice("fusermount3", "-u", str(mnt))
    assert process_gone(pid, 15), "the daemon outlived its unmount"
    assert not os.path.ismount(mnt)
