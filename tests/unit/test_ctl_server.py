"""The control socket server in-process: framing, hostile input, limits, socket life cycle.

Privilege separation between users is in tests/integration/test_ctl.py (real processes
under other uids); here every client is this (root) process.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from afsfuse.ctl import cli, protocol, server
from afsfuse.ctl import client as ctl_client
from afsfuse.ctl.ops import StatsOps, SysnameOps, TokenOps
from afsfuse.ctl.protocol import token_to_wire
from afsfuse.ctl.server import Handlers, serve_control
from afsfuse.keyring.store import Identity, TokenStore
from afsfuse.keyring.token import Token

CELL = "afsfuse.test"


def make_token(viceid: int | None = None, end: float | None = None) -> Token:
    now = int(time.time())
    return Token(
        cell=CELL,
        realm="AFSFUSE.TEST",
        client="alice@AFSFUSE.TEST",
        session_key=b"SECRETKY",
        ticket=b"\x61" + b"T" * 300,
        begin=now - 5,
        end=int(end) if end is not None else now + 3600,
        viceid=viceid,
    )


class Daemon:
    def __init__(self, path: Path, store: TokenStore, sysnames: list[str]) -> None:
        self.path = path
        self.store = store
        self.sysnames = sysnames

    async def connect(self) -> Line:
        return Line(await trio.open_unix_socket(os.fspath(self.path)))


class Line:
    """A raw line-level client, to send what afsfuse-ctl never would."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def send(self, raw: bytes) -> None:
        await self.stream.send_all(raw)

    async def reply(self) -> dict | None:
        with trio.fail_after(5):
            while b"\n" not in self.buffer:
                data = await self.stream.receive_some(65536)
                if not data:
                    return None
                self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    async def call(self, request: dict) -> dict | None:
        await self.send(json.dumps(request).encode() + b"\n")
        return await self.reply()


def broken_stats() -> dict:
    raise RuntimeError("a bug in the statistics source")


@pytest.fixture
async def daemon(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Daemon]:
    store = TokenStore()
    sysnames = ["amd64_linux26"]

    async def fill_viceid(token: Token) -> Token:

        if token.client.startswith("nobody"):
            raise OSError("PT server unreachable")
        return replace(token, viceid=1001)

    handlers = Handlers(
        TokenOps(store, CELL, fill_viceid=fill_viceid),
        SysnameOps(lambda: sysnames, lambda names: sysnames.__setitem__(slice(None), names)),
        StatsOps(broken_stats),
    )
    path = await nursery.start(serve_control, tmp_path / "run" / "ctl.sock", handlers)
    yield Daemon(path, store, sysnames)


async def test_socket_is_open_to_all_in_a_private_directory(daemon: Daemon) -> None:
    # Run by root: anyone may connect (identity comes from SO_PEERCRED), no one may swap it.
    assert stat.S_ISSOCK(daemon.path.stat().st_mode)
    assert stat.S_IMODE(daemon.path.stat().st_mode) == 0o666
    assert stat.S_IMODE(daemon.path.parent.stat().st_mode) == 0o755


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"\xff\xfe not utf-8\n", "EPROTO"),
        (b"{not json\n", "EPROTO"),
        (b"[1, 2]\n", "EPROTO"),
        (b'"tokens"\n', "EPROTO"),
        (b'{"op": 7}\n', "EPROTO"),
        (b"[" * 100_00 + b"\n", "EPROTO"),
        (b'{"op": "format_disk"}\n', "ENOSYS"),
        (b'{"op": "tokens", "uid": "0"}\n', "EINVAL"),
        (b'{"op": "tokens", "uid": -1}\n', "EINVAL"),
        (b'{"op": "tokens", "uid": 1e999}\n', "EINVAL"),
        (b'{"op": "settoken"}\n', "EINVAL"),
        (b'{"op": "settoken", "token": {"cell": "x"}}\n', "EINVAL"),
        (b'{"op": "unlog", "cell": ["a"]}\n', "EINVAL"),
        (b'{"op": "unlog", "cell": "never.held"}\n', "ENOENT"),
        (b'{"op": "sysname", "names": "single"}\n', "EINVAL"),
        (b'{"op": "sysname", "names": []}\n', "EINVAL"),
        (b'{"op": "sysname", "names": [".."]}\n', "EINVAL"),
        (b'{"op": "sysname", "names": ["a/b"]}\n', "EINVAL"),
        (b'{"op": "stats"}\n', "EIO"),  # the handler raised: reported, not fatal
    ],
)
async def test_bad_requests_get_an_error_and_the_connection_goes_on(
    daemon: Daemon, raw: bytes, code: str
) -> None:
    line = await daemon.connect()
    await line.send(raw)
    reply = await line.reply()

    assert reply is not None
    assert reply["ok"] is False and reply["error"] == code and reply["message"]
    assert await line.call({"op": "wscell"}) == {"ok": True, "result": {"cell": CELL}}


async def test_bad_tokens_are_refused(daemon: Daemon) -> None:
    good = token_to_wire(make_token())
    line = await daemon.connect()
    for change in [
        {"session_key": "AAAA"},  # 3 bytes
        {"session_key": "!!notbase64!!"},
        {"ticket": ""},
        {"ticket": "QQ==" * 5000},  # 15000 bytes: above rxkad's 12000
        {"cell": "UPPER.test"},
        {"cell": "a/b"},
        {"end": good["begin"] - 1},
        {"end": int(time.time()) - 1},  # expired
        {"kvno": True},
        {"viceid": 2**40},
    ]:
        reply = await line.call({"op": "settoken", "token": {**good, **change}})
        assert reply is not None and reply["error"] == "EINVAL", change
    assert daemon.store.list(Identity(0)) == []


async def test_settoken_tokens_unlog(daemon: Daemon) -> None:
    line = await daemon.connect()
    token = make_token(viceid=4242)  # a claimed id: the daemon asks PT instead

    reply = await line.call({"op": "settoken", "token": token_to_wire(token)})
    assert reply is not None and reply["ok"], reply
    listed = await line.call({"op": "tokens"})

    assert listed is not None
    (shown,) = listed["result"]["tokens"]
    assert shown == {
        "cell": CELL, "realm": "AFSFUSE.TEST", "client": "alice@AFSFUSE.TEST",
        "viceid": 1001, "begin": token.begin, "end": token.end, "kvno": 256,
    }  # fmt: skip
    assert listed["result"]["uid"] == 0
    assert "session_key" not in json.dumps(listed) and "ticket" not in json.dumps(listed)
    stored = daemon.store.get(Identity(0), CELL)
    assert stored is not None and stored.session_key == b"SECRETKY"
    assert stored.ticket == token.ticket

    assert await line.call({"op": "unlog"}) == {"ok": True, "result": {"removed": [CELL]}}
    assert daemon.store.list(Identity(0)) == []


async def test_token_is_kept_without_id_when_pt_fails(daemon: Daemon) -> None:

    line = await daemon.connect()
    token = replace(make_token(), client="nobody@AFSFUSE.TEST")
    reply = await line.call({"op": "settoken", "token": token_to_wire(token)})

    assert reply is not None and reply["ok"]
    assert reply["result"]["token"]["viceid"] is None
    assert daemon.store.get(Identity(0), CELL) is not None


async def test_root_may_act_for_another_uid(daemon: Daemon) -> None:
    line = await daemon.connect()
    reply = await line.call({"op": "settoken", "uid": 1234, "token": token_to_wire(make_token())})

    assert reply is not None and reply["ok"]
    assert daemon.store.get(Identity(1234), CELL) is not None
    assert daemon.store.list(Identity(0)) == []


async def test_root_sets_the_sysname_list(daemon: Daemon) -> None:
    line = await daemon.connect()
    reply = await line.call({"op": "sysname", "names": ["amd64_linux26", "amd64_linux24"]})

    assert reply == {"ok": True, "result": {"names": ["amd64_linux26", "amd64_linux24"]}}
    assert daemon.sysnames == ["amd64_linux26", "amd64_linux24"]


async def test_an_overlong_line_is_refused_and_the_server_goes_on(daemon: Daemon) -> None:
    line = await daemon.connect()
    await line.send(b'{"op": "tokens", "pad": "' + b"x" * (protocol.MAX_LINE + 10))
    reply = await line.reply()

    assert reply is not None and reply["error"] == "E2BIG"
    assert await line.reply() is None  # the stream cannot be resynchronised: closed
    fresh = await daemon.connect()
    assert (await fresh.call({"op": "wscell"}) or {}).get("ok") is True


async def test_several_requests_in_one_write(daemon: Daemon) -> None:
    line = await daemon.connect()
    await line.send(b'{"op": "wscell"}\n\n{"op": "sysname"}\n{"op": "wscell"')
    first, second = await line.reply(), await line.reply()
    await line.send(b"}\n")
    third = await line.reply()

    assert first is not None and first["result"] == {"cell": CELL}
    assert second is not None and second["result"] == {"names": ["amd64_linux26"]}
    assert third == first


def test_connection_caps_per_uid_and_in_all_but_never_for_root() -> None:
    admission = server.Admission(total=3, per_uid=2)

    assert admission.enter(1001) and admission.enter(1001)
    assert not admission.enter(1001)  # alice's cap
    assert admission.enter(1002)
    assert not admission.enter(1003)  # the total cap
    assert all(admission.enter(0) for _ in range(10))  # root always gets in
    admission.leave(1001)
    assert not admission.enter(1003)  # root's connections count towards the total
    for _ in range(10):
        admission.leave(0)
    assert admission.enter(1003)


async def test_a_refused_connection_is_told_to_retry(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, nursery: trio.Nursery
) -> None:
    monkeypatch.setattr(server.Admission, "enter", lambda self, uid: False)
    path = await nursery.start(serve_control, tmp_path / "one" / "s.sock", Handlers())
    refused = Line(await trio.open_unix_socket(os.fspath(path)))

    assert (await refused.reply() or {}).get("error") == "EAGAIN"
    assert await refused.reply() is None


async def test_life_cycle_registry_and_stale_socket(tmp_path: Path) -> None:
    path = tmp_path / "ctl" / "m.sock"
    registry = protocol.registry_path(path)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: serve_control(
                path, Handlers(), mountpoint=str(tmp_path), task_status=task_status
            )
        )
        entry = json.loads(registry.read_text())
        assert entry == {"mountpoint": str(tmp_path), "socket": str(path), "pid": os.getpid()}
        with pytest.raises(FileExistsError):  # a live daemon keeps its socket
            await serve_control(path, Handlers())
        nursery.cancel_scope.cancel()
    assert not path.exists() and not registry.exists()

    # A socket left by a daemon that died is replaced.

    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(os.fspath(path))
    dead.close()
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, path, Handlers())
        stream = await trio.open_unix_socket(os.fspath(path))
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_client_finds_the_only_mount(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nursery: trio.Nursery
) -> None:
    system = tmp_path / "system"
    monkeypatch.setattr(protocol, "SYSTEM_DIR", system)
    monkeypatch.setattr(protocol, "DEFAULT_MOUNTPOINT", str(tmp_path / "afs"))
    monkeypatch.setattr(ctl_client, "DEFAULT_MOUNTPOINT", str(tmp_path / "afs"))
    with pytest.raises(ctl_client.MountNotFound, match="no afsfuse mount found"):
        ctl_client.find_control_socket()

    mount_a = tmp_path / "a"
    mount_a.mkdir()
    handlers = Handlers(TokenOps(TokenStore(), CELL))
    path_a = protocol.control_socket_path(mount_a)
    assert path_a.parent == system
    await nursery.start(
        lambda task_status: serve_control(
            path_a, handlers, mountpoint=str(mount_a), task_status=task_status
        )
    )
    found = await trio.to_thread.run_sync(ctl_client.find_control_socket)
    assert found == path_a
    assert ctl_client.find_control_socket(str(mount_a)) == path_a
    with pytest.raises(ctl_client.MountNotFound, match="no afsfuse mount at"):
        ctl_client.find_control_socket(str(tmp_path))

    def ask() -> object:
        with ctl_client.ControlClient(found) as client:
            return client.call("wscell")

    assert await trio.to_thread.run_sync(ask) == {"cell": CELL}

    mount_b = tmp_path / "b"
    mount_b.mkdir()
    path_b = protocol.control_socket_path(mount_b)
    await nursery.start(
        lambda task_status: serve_control(
            path_b, handlers, mountpoint=str(mount_b), task_status=task_status
        )
    )
    with pytest.raises(ctl_client.MountNotFound, match="several afsfuse mounts"):
        await trio.to_thread.run_sync(ctl_client.find_control_socket)


async def test_cli_output(
    tmp_path: Path, nursery: trio.Nursery, capsys: pytest.CaptureFixture[str]
) -> None:

    store = TokenStore()
    store.set(Identity(0), replace(make_token(), end=int(time.time()) - 10))  # expired
    store.set(Identity(0), replace(make_token(), cell="other.test"))  # no AFS id known
    stats = {"rx": {"packets_sent": 3, "calls": 2}, "uptime": 5}
    handlers = Handlers(TokenOps(store, CELL), StatsOps(lambda: stats))
    path = await nursery.start(serve_control, tmp_path / "c" / "s.sock", handlers)

    async def run(*args: str) -> tuple[int, str, str]:
        status = await trio.to_thread.run_sync(cli.main, ["--socket", str(path), *args])
        out, err = capsys.readouterr()
        return status, out, err

    assert await run("stats") == (0, "rx.calls: 2\nrx.packets_sent: 3\nuptime: 5\n", "")
    assert await run("wscell") == (0, f"This workstation belongs to cell '{CELL}'\n", "")
    status, out, _ = await run("tokens")
    expiry = time.ctime(store.list(Identity(0))[1].end)[4:16]
    assert status == 0 and out == (
        "\nTokens held by the Cache Manager:\n\n"
        f"RxkadTokens for {CELL} [>> Expired <<]\n"
        f"RxkadTokens for other.test [Expires {expiry}]\n"
        "   --End of list--\n"
    )
    status, out, _ = await run("tokens", "--json")
    assert status == 0 and [t["cell"] for t in json.loads(out)["tokens"]] == [CELL, "other.test"]
    assert await run("sysname") == (
        1,
        "",
        "afsfuse-ctl: sysname: this daemon has no 'sysname' operation\n",
    )
    assert await run("unlog", "nowhere.test") == (
        1,
        "",
        "afsfuse-ctl: unlog: no token for nowhere.test\n",
    )
