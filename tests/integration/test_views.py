"""`afsfuse-ctl` views and metrics against a real mount of the real cell, each checked after
known work: a read shows its fileserver up with calls and a round trip; a file written and
held open shows as dirty in `cache`; a stopped fileserver shows down, a read waiting on it
shows in `calls`, and the log says it went and came back; `tokens --all` is root's; the
metrics text, from afsfuse-ctl and from the listener, parses as Prometheus text."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from acls import ANYONE_WRITES
from local_users import User, UserPython
from managers import ADMIN, manager
from mounting import Mount, afs_mount
from programs import eventually
from prometheus_client.parser import text_string_to_metric_families
from volumes import volume_root

from afsfuse.keyring import Token
from afsfuse.keyring.store import TokenStore
from afsfuse.testing.cell import Cell
from afsfuse.vl.rank import RANK_NETWORK, RANK_SUBNET

pytestmark = pytest.mark.cell

#: A silent fileserver is given up after 3 s, an operation after 15 s.
FAST_FAILOVER = ("--dead-time", "3", "--server-timeout", "15")
UNREAD_SIZE = 8 << 20


@dataclass(frozen=True)
class Volume:
    name: str
    #: sha256 of `unread`, a file this mount has never read.
    unread_digest: str


async def _prepare(cell: Cell, cache: Path, token: Token, name: str, data: bytes) -> None:
    store = TokenStore()
    store.set(ADMIN, token)
    async with manager(cell, cache, store) as m:
        root = await volume_root(m, cell.name, name, "rw")
        await m.set_acl(root, ANYONE_WRITES, ADMIN)
        fid, _ = await m.create(root, "unread", 0o644, ADMIN)
        await m.write(fid, 0, data, ADMIN)
        await m.store_data(fid, ADMIN)
        await m.give_up_callbacks()


@pytest.fixture(scope="module")
def volume(
    cell: Cell, tokens: dict[str, Token], tmp_path_factory: pytest.TempPathFactory
) -> Volume:
    name = f"views.{secrets.token_hex(3)}"
    cell.exec("vos", "create", cell.servers[0].addr, "a", name, "-maxquota", "0", "-localauth")
    data = secrets.token_bytes(UNREAD_SIZE)
    cache = tmp_path_factory.mktemp("prepare")
    trio.run(_prepare, cell, cache, tokens["admin"], name, data)
    return Volume(name, hashlib.sha256(data).hexdigest())


@dataclass
class Watched:
    mount: Mount
    metrics_socket: Path


@pytest.fixture(scope="module")
def watched(
    cell: Cell,
    volume: Volume,
    users: dict[str, User],
    user_python: UserPython,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Watched]:
    cache = tmp_path_factory.mktemp("views-cache")
    where = Path(tempfile.mkdtemp(prefix="afsfuse-metrics-"))
    sock = where / "metrics.sock"
    extra = (*FAST_FAILOVER, "--metrics-listen", str(sock))
    try:
        with afs_mount(cell, users, user_python, cache, extra_args=extra) as mount:
            assert mount.ctl("alice", "aklog").returncode == 0
            yield Watched(mount, sock)
    finally:
        shutil.rmtree(where, ignore_errors=True)


def view(mount: Mount, *args: str, user: str | None = None) -> Any:
    done = mount.ctl(user, *args, "--json")
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


def table(mount: Mount, *args: str) -> str:
    done = mount.ctl(None, *args)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def volume_dir(mount: Mount, volume: Volume) -> Path:
    return mount.path / ".:mount" / f"{mount.cell}:{volume.name}"


def fileserver(cell: Cell) -> str:
    return f"{cell.servers[0].addr}:7000"


def server_entry(mount: Mount, address: str) -> dict[str, Any]:
    found = [s for s in view(mount, "servers")["servers"] if s["address"] == address]
    assert len(found) == 1, found
    return found[0]


def families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def server_up(text: str, address: str) -> float:
    samples = families(text)["afsfuse_server_up"].samples
    (value,) = [s.value for s in samples if s.labels["address"] == address]
    return value


def test_a_read_shows_its_server_volume_cell_and_peer(
    cell: Cell, watched: Watched, volume: Volume
) -> None:
    mount = watched.mount
    path = volume_dir(mount, volume) / "seen"
    data = secrets.token_bytes(300_000)
    path.write_bytes(data)
    assert path.read_bytes() == data
    address = fileserver(cell)

    server = server_entry(mount, address)
    assert server["kind"] == "file" and server["up"] and server["calls"] > 0
    assert server["rtt"] is not None and 0 < server["rtt"] < 1
    db = server_entry(mount, f"{cell.db_server.addr}:7003")
    assert (db["kind"], db["cell"], db["up"]) == ("database", cell.name, True)
    assert RANK_SUBNET <= db["rank"] < RANK_NETWORK  # on our subnet, refined by round trip
    assert db["calls"] >= 1 and db["rtt"] is not None
    line = next(line for line in table(mount, "servers").splitlines() if address in line)
    assert line.split()[:2] == ["file", address] and " up " in line

    (home,) = [c for c in view(mount, "cells")["cells"] if c["name"] == cell.name]
    assert home["home"] and home["source"] == "CellServDB"
    assert f"{cell.db_server.addr}:7003" in home["vlservers"]

    site = f"{cell.servers[0].addr} /vicepa"
    (rw,) = [v for v in view(mount, "volumes")["volumes"] if v["name"] == volume.name]
    assert (rw["type"], rw["sites"], rw["in_use"]) == ("rw", [site], site)
    assert rw["files"] >= 2 and rw["callbacks"] >= 1 and rw["callback_expires"] > 0
    assert volume.name in table(mount, "volumes")

    (peer,) = [p for p in view(mount, "peers")["peers"] if p["address"] == address]
    assert peer["rtt"] is not None and peer["connections"] >= 1 and peer["heard_ago"] >= 0
    # The store sent the file; the read came from the cache the store left (replies only).
    assert peer["data_sent"] > 0 and peer["bytes_sent"] >= len(data) and peer["bytes_received"]
    conns = [c for c in view(mount, "conns")["conns"] if c["address"] == address]
    assert any(c["service"] == "FS" and c["direction"] == "out" and c["calls_made"] for c in conns)


def test_a_file_written_and_held_open_shows_dirty(watched: Watched, volume: Volume) -> None:
    mount = watched.mount
    size = (3 << 20) + 10
    script = (
        "import os, sys\n"
        "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)\n"
        f"os.write(fd, os.urandom({size}))\n"
        "print('written', flush=True)\n"
        "sys.stdin.readline()\n"
        "os.close(fd)\n"
    )
    path = volume_dir(mount, volume) / "held"
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline() == b"written\n"
        cache = view(mount, "cache")["cache"]
        assert cache["dirty_files"] >= 1 and cache["dirty_bytes"] >= size, cache
        assert cache["clean_limit"] > 0 and cache["clean_bytes"] <= cache["clean_limit"]
        assert "dirty:" in table(mount, "cache")
        child.stdin.write(b"close\n")
        child.stdin.flush()
        assert child.wait(timeout=60) == 0
    finally:
        child.kill()
    cache = view(mount, "cache")["cache"]
    assert (cache["dirty_files"], cache["dirty_bytes"], cache["unsent_files"]) == (0, 0, 0)
    assert path.stat().st_size == size


def test_root_sees_every_token_and_alice_may_not(
    cell: Cell,
    watched: Watched,
    users: dict[str, User],
) -> None:
    mount = watched.mount
    listed = view(mount, "tokens", "--all")["tokens"]
    (alices,) = [t for t in listed if t["uid"] == users["alice"].uid]
    assert alices["cell"] == cell.name and isinstance(alices["viceid"], int)
    assert alices["end"] > time.time()
    assert set(alices) == {"uid", "pag", "host", "cell", "client", "viceid", "begin", "end"}
    assert f"uid {users['alice'].uid}" in table(mount, "tokens", "--all")
    refused = mount.ctl("alice", "tokens", "--all")
    assert refused.returncode == 1 and b"not allowed" in refused.stderr
    # Her own tokens she still sees.
    assert view(mount, "tokens", user="alice")["tokens"][0]["cell"] == cell.name


def scrape(sock: Path, request: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(30)
        client.connect(str(sock))
        client.sendall(request)
        reply = b""
        while chunk := client.recv(65536):
            reply += chunk
    return reply


def test_metrics_parse_from_the_command_and_the_listener(cell: Cell, watched: Watched) -> None:
    mount = watched.mount
    text = table(mount, "metrics")
    found = families(text)
    assert server_up(text, fileserver(cell)) == 1
    assert found["afsfuse_rpcs"].type == "counter"
    assert sum(s.value for s in found["afsfuse_rpcs"].samples) > 0
    assert found["afsfuse_cache_clean_limit_bytes"].samples[0].value > 0
    reply = scrape(watched.metrics_socket, b"GET /metrics HTTP/1.1\r\nHost: afs\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"text/plain; version=0.0.4" in head
    assert set(families(body.decode())) == set(found)
    assert scrape(watched.metrics_socket, b"GET /tokens HTTP/1.0\r\n\r\n").startswith(
        b"HTTP/1.1 404"
    )
    assert os.stat(watched.metrics_socket).st_mode & 0o777 == 0o666


def test_a_stopped_fileserver_shows_down_and_a_waiting_read_in_calls(
    cell: Cell, watched: Watched, volume: Volume
) -> None:
    mount = watched.mount
    address = fileserver(cell)
    unread = volume_dir(mount, volume) / "unread"
    assert unread.stat().st_size == UNREAD_SIZE  # status held; its data never read here
    cell.stop_fileserver(0)
    try:
        reader = subprocess.Popen(["cat", str(unread)], stdout=subprocess.DEVNULL)
        try:
            seen: list[dict[str, Any]] = []

            def waiting() -> bool:
                calls = view(mount, "calls")["calls"]
                seen[:] = [c for c in calls if c["server"] == address and c["direction"] == "out"]
                return bool(seen)

            eventually(waiting, 10)
            call = seen[0]
            assert (call["service"], call["rpc"]) == ("FS", "FetchData64"), call
            assert call["state"] in ("sending", "receiving") and call["age"] >= 0
            assert call["bytes_sent"] > 0 and call["cwind"] >= 1
            assert reader.wait(timeout=60) != 0  # no fileserver: the read fails
        finally:
            reader.kill()
        server = server_entry(mount, address)
        assert not server["up"] and server["down_for"] >= 0 and server["last_error"]
        assert server_up(table(mount, "metrics"), address) == 0
        assert " down " in table(mount, "servers")
    finally:
        cell.start_fileserver(0)

    def read_back() -> bool:
        done = subprocess.run(["sha256sum", str(unread)], capture_output=True, timeout=60)
        return done.returncode == 0 and done.stdout.split()[0].decode() == volume.unread_digest

    eventually(read_back, 60)
    assert server_entry(mount, address)["up"]
    log = mount.log()
    host = cell.servers[0].addr
    assert f"fileserver {host} is down" in log and f"fileserver {host} is back" in log
