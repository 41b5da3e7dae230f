"""afsfuse-io against the real cell: write a file by fid, read it back at every level."""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pytest
import trio
from logins import kinit

from afsfuse.fs.callback import CallbackRegistry
from afsfuse.fs.cmservice import CacheManagerService
from afsfuse.keyring import Token
from afsfuse.rx.driver import open_endpoint
from afsfuse.rx.interfaces.fs import FS, AFSFid, AFSStoreStatus
from afsfuse.rx.rxkad import Level, RxkadClient
from afsfuse.testing.cell import Cell
from afsfuse.vl.vlclient import VLClient

pytestmark = pytest.mark.cell

SIZE = 5 * 1000 * 1000
ADMINS_ONLY = b"1\n0\nsystem:administrators 127\n\0"
ANYONE_READS = b"2\n0\nsystem:administrators 127\nsystem:anyuser 9\n\0"


@dataclass
class Files:
    readable: AFSFid  # in a directory where system:anyuser has rl
    private: AFSFid  # in a directory only administrators may use
    missing_vnode: AFSFid


def fid_text(fid: AFSFid) -> str:
    return f"{fid.Volume}.{fid.Vnode}.{fid.Unique}"


async def make_files(cell: Cell, admin: Token) -> Files:
    """Two fresh directories in the test volume, with different ACLs, and a file in each."""
    async with open_endpoint() as endpoint:
        CacheManagerService(CallbackRegistry()).install(endpoint)
        vl = VLClient.on_endpoint(endpoint, [cell.db_server.addr])
        location = await vl.locate("test")
        site = location.sites[0][0]
        security = RxkadClient(admin.session_key, admin.ticket, admin.kvno, Level.CRYPT)
        conn = endpoint.connect((site.addresses[0], FS.port), FS.service_id, security)
        root = AFSFid(location.rw_id, 1, 1)
        tag = secrets.token_hex(4)
        fids = []
        for kind, acl in (("open", ANYONE_READS), ("private", ADMINS_ONLY)):
            made = await FS.MakeDir(conn, root, f"io-{kind}-{tag}", AFSStoreStatus())
            # OpenAFS 1.8 fileservers predate StoreACL (164); OldStoreACL is understood by all.
            await FS.OldStoreACL(conn, made.OutFid, acl)
            created = await FS.CreateFile(
                conn, made.OutFid, "data", AFSStoreStatus(Mask=8, UnixModeBits=0o644)
            )
            fids.append(created.OutFid)
        readable, private = fids
        return Files(readable, private, readable._replace(Vnode=readable.Vnode + 1000))


@pytest.fixture(scope="module")
def files(cell: Cell, tokens: dict[str, Token]) -> Files:
    return trio.run(make_files, cell, tokens["admin"])


@pytest.fixture(scope="module")
def admin_env(cell: Cell, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return kinit(cell, "admin", tmp_path_factory.mktemp("io") / "cc_admin")


def afsfuse_io(
    cell: Cell,
    env: dict[str, str],
    command: str,
    fid: str,
    *extra: str,
    stdin: bytes | BinaryIO = b"",
) -> subprocess.CompletedProcess[bytes]:
    """Run the command; stdin given as bytes arrives through a pipe, a file as itself."""
    argv = [sys.executable, "-m", "afsfuse.io_cli", command, "--cell", cell.name, "--fid", fid]
    argv += ["--cellservdb", str(cell.cellservdb), *extra]
    feed = {"input": stdin} if isinstance(stdin, bytes) else {"stdin": stdin}
    return subprocess.run(argv, env=env, capture_output=True, timeout=60, **feed)


def test_write_then_read_back_at_every_level(
    cell: Cell, files: Files, admin_env: dict[str, str], tmp_path: Path
) -> None:
    data = os.urandom(SIZE)
    source = tmp_path / "in"
    source.write_bytes(data)
    with source.open("rb") as stdin:
        wrote = afsfuse_io(cell, admin_env, "fidwrite", fid_text(files.readable), "-v", stdin=stdin)
    assert wrote.returncode == 0, wrote.stderr
    assert f"fidwrite {SIZE} bytes".encode() in wrote.stderr
    want = hashlib.sha256(data).hexdigest()
    for level in ("none", "clear", "crypt"):
        out = tmp_path / f"out-{level}"
        read = afsfuse_io(
            cell, admin_env, "fidread", fid_text(files.readable), "--security", level,
            "-o", str(out), "-v",
        )  # fmt: skip
        assert read.returncode == 0, (level, read.stderr)
        assert hashlib.sha256(out.read_bytes()).hexdigest() == want, level
        assert b"MB/s" in read.stderr


def test_piped_write_and_read_to_stdout(cell: Cell, files: Files, admin_env: dict[str, str]):
    data = os.urandom(300_000)
    wrote = afsfuse_io(cell, admin_env, "fidwrite", fid_text(files.private), stdin=data)
    assert wrote.returncode == 0, wrote.stderr
    read = afsfuse_io(cell, admin_env, "fidread", fid_text(files.private), "--piece", "65536")
    assert read.returncode == 0, read.stderr
    assert read.stdout == data


def test_errors(cell: Cell, files: Files, admin_env: dict[str, str]) -> None:
    cases = [
        (("--cell", "no.such.cell"), fid_text(files.readable), "unknown cell no.such.cell"),
        ((), "12.34", "bad fid"),
        ((), "999999999.1.1", "no volume 999999999"),
        ((), fid_text(files.missing_vnode), "no such file"),
        (("--security", "none"), fid_text(files.private), "permission denied"),
    ]
    for extra, fid, message in cases:
        result = afsfuse_io(cell, admin_env, "fidread", fid, "-o", os.devnull, *extra)
        assert result.returncode != 0, message
        assert message in result.stderr.decode(), result.stderr


def test_no_token(cell: Cell, files: Files, admin_env: dict[str, str], tmp_path: Path) -> None:
    env = {**admin_env, "KRB5CCNAME": f"FILE:{tmp_path / 'empty'}"}
    result = afsfuse_io(cell, env, "fidread", fid_text(files.readable), "-o", os.devnull)
    assert result.returncode != 0
    assert "no token for" in result.stderr.decode()
