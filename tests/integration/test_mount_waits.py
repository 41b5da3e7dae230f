"""How long a real afsfuse mount makes programs wait: reads while its fileserver stops
answering.  (OpenAFS's rxdebug and cmdebug against its Rx port: test_mount_debug.py.)

The fileserver process is frozen with SIGSTOP (it neither answers nor refuses: the worst
case for a client), always thawed again in a `finally`.  Every read(2) must end within
`--server-timeout` plus a generous margin, with data or with ETIMEDOUT/EIO, and reads work
again once the fileserver is back.
"""

from __future__ import annotations

import errno
import hashlib
import json
import secrets
import select
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from admin_rpcs import admin, afs, make_file
from fileservers import frozen
from local_users import User, UserPython
from managers import ADMIN, manager
from mounting import Mount, acl, afs_mount
from volumes import volume_root

from afsfuse.keyring import Token
from afsfuse.keyring.store import TokenStore
from afsfuse.rx.interfaces.fs import FS
from afsfuse.testing.cell import Cell

pytestmark = pytest.mark.cell

SERVER_TIMEOUT = 3.0
#: What a read may take beyond the server timeout: scheduling on a busy 2-core machine.
#: (The kernel asks once more for a page its failed read-ahead did not bring; that request
#: must fail at once, the server being known silent, not wait the timeout again.)
MARGIN = 2.5
FILE_SIZE = 48 << 20
MiB = 1 << 20


@dataclass(frozen=True)
class Data:
    volume: str
    content: bytes


async def _populate(cell: Cell, cache: Path, token: Token, volume: str, content: bytes) -> None:
    store = TokenStore()
    store.set(ADMIN, token)
    async with manager(cell, cache, store) as m:
        root = await volume_root(m, cell.name, volume, "rw")
        await admin(m, root, FS.OldStoreACL, afs(root), acl("system:anyuser 9"))
        await make_file(m, root, "data.bin", content)


@pytest.fixture(scope="module")
def data(cell: Cell, tokens: dict[str, Token], tmp_path_factory: pytest.TempPathFactory) -> Data:
    volume = f"waits.{secrets.token_hex(3)}"
    cell.exec("vos", "create", cell.servers[0].addr, "a", volume, "-maxquota", "0", "-localauth")
    content = hashlib.shake_256(secrets.token_bytes(16)).digest(FILE_SIZE)
    trio.run(
        _populate, cell, tmp_path_factory.mktemp("waits-prepare"), tokens["admin"], volume, content
    )
    return Data(volume, content)


@pytest.fixture(scope="module")
def mounted(
    cell: Cell,
    data: Data,
    users: dict[str, User],
    user_python: UserPython,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Mount]:
    cache = tmp_path_factory.mktemp("waits-cache")
    extra = ("--server-timeout", str(SERVER_TIMEOUT))
    with afs_mount(cell, users, user_python, cache, extra_args=extra) as mount:
        yield mount


#: Reads 1 MiB at a time: one read before "go", then up to `reads` timed reads (stopping at
#: the third error), each reported as [seconds, bytes or -errno].
READER = r"""
import json, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
os.read(fd, 1 << 20)
print("ready", flush=True)
sys.stdin.readline()
errors = 0
for _ in range(int(sys.argv[2])):
    started = time.monotonic()
    try:
        result = len(os.read(fd, 1 << 20))
    except OSError as e:
        result = -e.errno
        errors += 1
    print(json.dumps([time.monotonic() - started, result]), flush=True)
    if errors == 3:
        break
print("done", flush=True)
"""


def _line(child: subprocess.Popen, seconds: float) -> bytes:
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], seconds)
    assert ready, f"the reader said nothing for {seconds:.0f} s"
    return child.stdout.readline()


def test_reads_end_within_the_server_timeout_while_the_fileserver_is_frozen(
    cell: Cell, data: Data, mounted: Mount
) -> None:
    path = mounted.path / ".:mount" / f"{mounted.cell}:{data.volume}" / "data.bin"
    reads = 40
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(READER), str(path), str(reads)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert child.stdin is not None
    timings: list[tuple[float, int]] = []
    try:
        assert _line(child, 60) == b"ready\n"
        with frozen(cell):
            child.stdin.write(b"go\n")
            child.stdin.flush()
            while (line := _line(child, SERVER_TIMEOUT + MARGIN + 5)) != b"done\n":
                seconds, result = json.loads(line)
                timings.append((seconds, result))
        assert child.wait(timeout=10) == 0
    finally:
        child.kill()
        child.wait()
    print("reads while frozen (seconds, bytes or -errno):", timings)
    failed = [result for _, result in timings if result < 0]
    assert failed, "no read reached the frozen fileserver"
    assert set(failed) <= {-errno.ETIMEDOUT, -errno.EIO}, timings
    assert all(result in (MiB, *failed) for _, result in timings), timings
    slowest = max(seconds for seconds, _ in timings)
    assert slowest < SERVER_TIMEOUT + MARGIN, timings
    # Thawed, the whole file reads back right once the next probe finds the server.
    expected = hashlib.sha256(data.content).hexdigest()
    deadline = time.monotonic() + 30
    while (done := mounted.run("sha256sum", str(path), check=False, timeout=60)).returncode:
        assert time.monotonic() < deadline, done.stderr
        time.sleep(0.5)
    assert done.stdout.split()[0].decode() == expected
