"""The control socket driven by the real `afsfuse-ctl`, as root and as unprivileged users.

The server runs in the test's trio loop (no FUSE mount needed); each client is a separate
process, switched to a local user with setpriv, so SO_PEERCRED reports real other uids.
Local users afsfuse-alice and afsfuse-bob are created if missing (useradd -M) and kept.
Everything the users need (socket, ccache, krb5.conf) is in a 0755 directory of our own,
since pytest's tmp_path (under /tmp/pytest-of-root, 0700) is closed to them.  They run the
virtualenv's interpreter, which `make` builds on Debian's Python so that every user can.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
from local_users import User, UserPython, as_user
from logins import kinit

from afsfuse.ctl.ops import SysnameOps, TokenOps
from afsfuse.ctl.server import Handlers, serve_control
from afsfuse.keyring import token_from_ccache, with_viceid
from afsfuse.keyring.store import Identity, TokenStore
from afsfuse.rx.driver import open_endpoint
from afsfuse.rx.interfaces.pt import PT
from afsfuse.testing.cell import Cell

AFSFUSE_CTL = Path(sys.executable).parent / "afsfuse-ctl"
CELL = "afsfuse.test"
DEADLINE = 30.0


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory every local user can traverse (the socket and client files live here)."""
    path = Path(tempfile.mkdtemp(prefix="afsfuse-ctl-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Daemon:
    def __init__(
        self, socket: Path, store: TokenStore, sysnames: list[str], python: UserPython
    ) -> None:
        self.socket = socket
        self.store = store
        self.sysnames = sysnames
        self.python = python

    async def ctl(
        self, user: User | None, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """Run afsfuse-ctl against this daemon, as user (None: root)."""
        argv = [str(AFSFUSE_CTL), "--socket", str(self.socket), *args]
        base = {"PATH": os.environ["PATH"], "HOME": "/", "LANG": "C.UTF-8"}
        if user is not None:
            argv = [*as_user(user), self.python.interpreter, *argv]
            base.update(self.python.env)
        with trio.fail_after(DEADLINE):
            return await trio.run_process(
                argv, env={**base, **(env or {})}, capture_stdout=True, capture_stderr=True,
                check=False,
            )  # fmt: skip

    async def json(self, user: User | None, *args: str, env: dict[str, str] | None = None):
        done = await self.ctl(user, "--json", *args, env=env)
        assert done.returncode == 0, done.stderr.decode()
        return json.loads(done.stdout)


async def start_daemon(
    nursery: trio.Nursery, directory: Path, python: UserPython, fill_viceid=None
) -> Daemon:
    store = TokenStore()
    sysnames = ["amd64_linux26"]
    handlers = Handlers(
        TokenOps(store, CELL, fill_viceid=fill_viceid),
        SysnameOps(lambda: sysnames, lambda names: sysnames.__setitem__(slice(None), names)),
    )
    socket = await nursery.start(serve_control, directory / "ctl.sock", handlers)
    return Daemon(socket, store, sysnames, python)


@pytest.fixture
async def daemon(nursery: trio.Nursery, public_dir: Path, user_python: UserPython) -> Daemon:
    return await start_daemon(nursery, public_dir, user_python)


def refused(done: subprocess.CompletedProcess[bytes], why: str) -> bool:
    return done.returncode == 1 and why in done.stderr.decode() and not done.stdout


# -- without the cell -------------------------------------------------------------------------


async def test_only_root_sets_the_sysname_list(daemon: Daemon, users: dict[str, User]) -> None:
    alice = users["alice"]
    done = await daemon.ctl(alice, "sysname", "evil_sys")
    assert refused(done, "not allowed: only root may set the sysname list")
    assert daemon.sysnames == ["amd64_linux26"]

    done = await daemon.ctl(None, "sysname", "amd64_linux26", "amd64_linux24")
    assert done.returncode == 0, done.stderr
    shown = await daemon.ctl(alice, "sysname")
    assert shown.stdout == b"Current sysname list is 'amd64_linux26' 'amd64_linux24'\n"


async def test_a_user_cannot_act_for_another_uid(daemon: Daemon, users: dict[str, User]) -> None:
    alice, bob = users["alice"], users["bob"]
    for args in (["tokens"], ["unlog"]):
        done = await daemon.ctl(bob, "--uid", str(alice.uid), *args)
        assert refused(done, "not allowed: only root may act for another uid"), done
    assert (await daemon.json(bob, "tokens"))["uid"] == bob.uid
    assert (await daemon.json(None, "tokens", "--uid", str(alice.uid)))["uid"] == alice.uid


HOSTILE = r"""
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
lines = [b"\xff\xfe\n", b"{\n", b"[]\n", b'{"op": null}\n', b'{"op": "tokens", "uid": 0}\n',
         b'{"op": "settoken", "token": {"cell": "afsfuse.test", "ticket": "%%%"}}\n',
         b"[" * 50000 + b"\n", b'{"op": "wscell"}\n']
s.sendall(b"".join(lines))
f = s.makefile("rb")
print(json.dumps([json.loads(f.readline()) for _ in lines]))
s.sendall(b'{"op": "x", "pad": "' + b"y" * 70000)
print(json.dumps(json.loads(f.readline())))
"""


async def test_hostile_lines_from_a_user_get_errors_and_the_server_goes_on(
    daemon: Daemon, users: dict[str, User]
) -> None:
    argv = [*as_user(users["bob"]), daemon.python.interpreter, "-c", HOSTILE, str(daemon.socket)]
    with trio.fail_after(DEADLINE):
        done = await trio.run_process(
            argv,
            capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    replies, overlong = (json.loads(line) for line in done.stdout.splitlines())

    codes = [reply.get("error") for reply in replies]
    assert codes == ["EPROTO", "EPROTO", "EPROTO", "EPROTO", "EPERM", "EINVAL", "EPROTO", None]
    assert replies[-1] == {"ok": True, "result": {"cell": CELL}}
    assert overlong["error"] == "E2BIG"
    assert (await daemon.json(users["alice"], "wscell")) == {"cell": CELL}


# -- with the real cell: aklog from real Kerberos tickets ----------------------------------


@pytest.fixture
async def cell_daemon(
    cell: Cell, nursery: trio.Nursery, public_dir: Path, user_python: UserPython
) -> AsyncIterator[Daemon]:
    """A daemon that asks the cell's PT server for each token's AFS id, as the mount will."""
    async with open_endpoint() as endpoint:
        pt = endpoint.connect((cell.db_server.addr, PT.port), PT.service_id)
        fill = lambda token: with_viceid(token, pt)  # noqa: E731
        yield await start_daemon(nursery, public_dir, user_python, fill)


@pytest.fixture
def logged_in(cell: Cell, users: dict[str, User], public_dir: Path) -> dict[str, dict[str, str]]:
    """kinit for each local user (as the cell user of the same name): its client environment."""
    krb5_conf = public_dir / "krb5.conf"
    shutil.copy(cell.env()["KRB5_CONFIG"], krb5_conf)
    krb5_conf.chmod(0o644)
    result = {}
    for short, user in users.items():
        home = public_dir / user.name
        home.mkdir(mode=0o700)
        ccache = home / "krb5cc"
        kinit(cell, short, ccache)
        os.chown(home, user.uid, user.gid)
        os.chown(ccache, user.uid, user.gid)
        result[short] = {"KRB5_CONFIG": str(krb5_conf), "KRB5CCNAME": f"FILE:{ccache}"}
    return result


def pts_id(cell: Cell, name: str) -> int:
    out = cell.exec("pts", "examine", name, "-localauth")
    found = re.search(rf"Name: {re.escape(name)}, id: (-?\d+),", out)
    assert found, out
    return int(found[1])


@pytest.mark.cell
async def test_aklog_then_tokens_as_unprivileged_users(
    cell: Cell,
    cell_daemon: Daemon,
    users: dict[str, User],
    logged_in: dict[str, dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    daemon, alice, bob = cell_daemon, users["alice"], users["bob"]
    done = await daemon.ctl(alice, "aklog", env=logged_in["alice"])
    assert done.returncode == 0 and not done.stdout and not done.stderr, done

    listed = await daemon.json(alice, "tokens")
    (token,) = listed["tokens"]
    monkeypatch.setenv("KRB5_CONFIG", logged_in["alice"]["KRB5_CONFIG"])
    expected = await trio.to_thread.run_sync(
        token_from_ccache, CELL, logged_in["alice"]["KRB5CCNAME"]
    )  # the afs ticket aklog left in alice's cache
    assert token == {
        "cell": CELL, "realm": cell.realm, "client": f"alice@{cell.realm}",
        "viceid": pts_id(cell, "alice"), "begin": expected.begin, "end": expected.end,
        "kvno": 256,
    }  # fmt: skip
    stored = daemon.store.get(Identity(alice.uid), CELL)
    assert stored is not None and stored.ticket == expected.ticket
    assert stored.session_key == expected.session_key

    shown = await daemon.ctl(alice, "tokens")
    expiry = time.ctime(expected.end)[4:16]
    assert shown.stdout.decode() == (
        "\nTokens held by the Cache Manager:\n\n"
        f"User's (AFS ID {token['viceid']}) rxkad tokens for {CELL} [Expires {expiry}]\n"
        "   --End of list--\n"
    )

    # bob sees none of it, and cannot remove it.
    assert (await daemon.json(bob, "tokens"))["tokens"] == []
    done = await daemon.ctl(bob, "unlog")
    assert done.returncode == 0, done.stderr
    done = await daemon.ctl(bob, "unlog", CELL)
    assert refused(done, f"no token for {CELL}")
    done = await daemon.ctl(bob, "--uid", str(alice.uid), "unlog")
    assert refused(done, "not allowed")
    assert len((await daemon.json(alice, "tokens"))["tokens"]) == 1

    # bob's own aklog gives bob his own token; alice's is untouched.
    done = await daemon.ctl(bob, "aklog", "-c", CELL, env=logged_in["bob"])
    assert done.returncode == 0, done.stderr
    (bobs,) = (await daemon.json(bob, "tokens"))["tokens"]
    assert bobs["client"] == f"bob@{cell.realm}" and bobs["viceid"] == pts_id(cell, "bob")
    (alices,) = (await daemon.json(alice, "tokens"))["tokens"]
    assert alices["client"] == f"alice@{cell.realm}"

    # alice's unlog removes alice's token only.
    done = await daemon.ctl(alice, "unlog")
    assert done.returncode == 0, done.stderr
    assert (await daemon.json(alice, "tokens"))["tokens"] == []
    assert len((await daemon.json(bob, "tokens"))["tokens"]) == 1


@pytest.mark.cell
async def test_aklog_without_kerberos_tickets_fails_clearly(
    cell_daemon: Daemon, users: dict[str, User], logged_in: dict[str, dict[str, str]]
) -> None:
    env = {**logged_in["alice"], "KRB5CCNAME": "FILE:/nonexistent/krb5cc"}
    done = await cell_daemon.ctl(users["alice"], "aklog", env=env)

    assert refused(done, f"aklog: no token for {CELL}: no usable Kerberos credentials")
    assert cell_daemon.store.list(Identity(users["alice"].uid)) == []
