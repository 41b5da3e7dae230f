"""PAGs with real processes and the real /proc: a keeper's family and no one else, groups
PAGs in either OpenAFS encoding, the per-process table (no /proc read on a hit, nothing
kept for an ended process), PAGs ending with their processes, and keepers taken back after
a restart.  Needs root (setgroups) like the rest of the suite.

`afsfuse-ctl pagsh` itself, on a real mount and as other users, is in
tests/integration/test_pag.py.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
import trio

from afsfuse.keyring import procs
from afsfuse.keyring.callers import Callers
from afsfuse.keyring.kernel import KernelKeep, forget_keep
from afsfuse.keyring.pag import Pags, pag_in_groups
from afsfuse.keyring.store import Identity, TokenStore
from afsfuse.keyring.token import Token

UID, GID = os.getuid(), os.getgid()
PAG_A, PAG_B = 0x41000A0A, 0x41000B0B

#: A keeper as afsfuse-ctl pagsh makes one: child subreaper, then (once told) a shell
#: script, and it reaps until nothing is left.
#: Leaves a daemon (setsid -f) and a double-forked orphan behind.
SCATTER = "setsid -f sleep 300; (sleep 300 &); exec sleep 300"
KEEPER = r"""
import ctypes, os, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)
sys.stdout.write("ready\n"); sys.stdout.flush(); sys.stdin.readline()
if os.fork() == 0:
    os.execvp("sh", ["sh", "-c", sys.argv[1]])
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
"""


def two_groups(pag: int) -> list[int]:
    """The groups OpenAFS's libsys sets for a PAG (afs_get_groups_from_pag)."""
    g0 = (0x3FFF & (pag >> 14)) | ((pag & 0x7FFFFFFF) >> 28) // 3 << 14
    g1 = (0x3FFF & pag) | ((pag & 0x7FFFFFFF) >> 28) % 3 << 14
    return [g0 + 0x3F00, g1 + 0x3F00]


def token(cell: str = "example.org") -> Token:
    now = int(time.time())
    return Token(cell, cell.upper(), "alice@EXAMPLE.ORG", b"K" * 8, b"ticket", now, now + 3600)


def until(condition: Callable[[], object], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def descendants(pid: int) -> set[int]:
    found: set[int] = set()
    for other in procs.every_process():
        current = other
        try:
            while current > 1:
                current = procs.read_stat(current)[0]
                if current == pid:
                    found.add(other)
                    break
        except ProcessLookupError:
            continue
    return found


class World:
    def __init__(self, **options: float) -> None:
        self.store = TokenStore()
        self.watch = procs.ExitWatch()
        self.pags = Pags(self.store, self.watch, sweep_interval=options.get("sweep", 30.0))
        self.callers = Callers(self.pags, self.watch)

    def pag(self, pid: int) -> int | None:
        return self.callers.identity(pid, UID, GID).pag


@pytest.fixture
def started() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start processes; whatever is left of them and theirs is killed afterwards."""
    mine: list[subprocess.Popen[str]] = []

    def start(*argv: str, **options: object) -> subprocess.Popen[str]:
        process = subprocess.Popen(argv, text=True, **options)  # type: ignore[call-overload]
        mine.append(process)
        return process

    yield start
    for process in mine:
        # Its descendants first, so that a keeper reaps them (and then ends by itself).
        family = descendants(process.pid)
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(2 if family else 0)
        process.kill()
        process.wait()


def test_groups_carry_a_pag_in_one_group_or_two_in_either_order() -> None:
    assert pag_in_groups([0, 27, PAG_A]) == PAG_A
    assert pag_in_groups(sorted([0, 100, *two_groups(PAG_B)])) == PAG_B
    assert pag_in_groups(list(reversed(two_groups(PAG_B)))) == PAG_B
    assert pag_in_groups([0, 27, 1000, 0x3F00, 0x8000]) is None
    assert pag_in_groups([]) is None


def test_a_keepers_family_is_its_pag_and_only_its(started) -> None:
    world = World()
    keeper = started(
        sys.executable, "-c", KEEPER, SCATTER, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert keeper.stdout.readline() == "ready\n"
    outsider = started("sleep", "300")
    assert world.pag(keeper.pid) is None
    pag = world.pags.new_keeper(keeper.pid, UID).pag
    assert pag >> 24 == ord("A")
    keeper.stdin.write("go\n")
    keeper.stdin.flush()
    until(lambda: len(descendants(keeper.pid)) == 3)  # sh exec'd as sleep, a daemon, an orphan
    family = descendants(keeper.pid)
    # The daemon (its own session) and the orphan were handed to the keeper: still in it.
    orphans = [pid for pid in family if procs.read_stat(pid)[0] == keeper.pid]
    assert len(orphans) == 3
    for pid in [keeper.pid, *family]:
        assert world.pag(pid) == pag
    assert world.pag(outsider.pid) is None
    assert world.callers.identity(outsider.pid, UID, GID) == Identity(UID)

    # The PAG's token is its own; it goes once the last of its processes has.
    world.store.set(Identity(UID, pag), token())
    for pid in family:
        os.kill(pid, signal.SIGKILL)
    keeper.wait(10)
    until(lambda: (world.watch.poll(), not world.pags.live)[1])
    assert world.store.list(Identity(UID, pag)) == []
    assert len(world.callers) == 0


def test_a_groups_pag_in_either_encoding_and_the_newer_pag_wins(started) -> None:
    world = World()
    one = started("sleep", "300", extra_groups=[PAG_A])
    two = started("sleep", "300", extra_groups=[0, *two_groups(PAG_B)])
    assert world.pag(one.pid) == PAG_A
    assert world.pag(two.pid) == PAG_B
    # A keeper that carried a groups PAG: its family is in the keeper's PAG, unless root
    # gave one of them a groups PAG later, which is then the newer.
    script = f"setpriv --groups={PAG_B} sleep 300 & exec sleep 300"
    keeper = started(
        sys.executable, "-c", KEEPER, script, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        extra_groups=[PAG_A],
    )  # fmt: skip
    assert keeper.stdout.readline() == "ready\n"
    pag = world.pags.new_keeper(keeper.pid, UID).pag
    keeper.stdin.write("go\n")
    keeper.stdin.flush()
    until(lambda: len(descendants(keeper.pid)) == 2)
    found = {world.pag(pid) for pid in descendants(keeper.pid)}
    assert found == {pag, PAG_B}
    assert world.pag(keeper.pid) == pag


def test_a_hit_reads_nothing_and_an_ended_process_leaves_no_entry(
    started, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = World()
    reads = []
    real = procs.read_status
    monkeypatch.setattr(
        procs, "read_status", lambda pid, proc="/proc": reads.append(pid) or real(pid, proc)
    )
    process = started("sleep", "300", extra_groups=[PAG_A])
    for _ in range(1000):
        assert world.pag(process.pid) == PAG_A
    assert reads == [process.pid]
    # Another uid or gid for the same pid (setuid, su): read again.
    assert world.callers.identity(process.pid, UID + 1, GID) == Identity(UID + 1, PAG_A)
    assert len(reads) == 2
    # Once it ends its entry goes, pidfd and all: a new process with its pid is looked up.
    fds = len(os.listdir("/proc/self/fd"))
    process.kill()
    process.wait()
    world.watch.poll()
    assert len(world.callers) == 0
    assert len(os.listdir("/proc/self/fd")) == fds - 1
    with pytest.raises(ProcessLookupError):
        world.callers.identity(process.pid, UID, GID)


def test_the_table_is_bounded(started) -> None:
    world = World()
    world.callers = Callers(world.pags, world.watch, capacity=4)
    processes = [started("sleep", "300") for _ in range(10)]
    for process in processes:
        assert world.pag(process.pid) is None
    assert len(world.callers) == 4


async def test_a_groups_pag_goes_after_two_sweeps_find_it_in_no_process(started) -> None:
    world = World()
    process = started("sleep", "300", extra_groups=[PAG_A])
    world.store.set(Identity(0, PAG_A), token())
    world.store.set(Identity(0, PAG_B), token())  # nobody carries this one
    await world.pags.sweep()
    assert world.store.list(Identity(0, PAG_B))  # once is not enough
    await world.pags.sweep()
    assert world.store.pags() == [PAG_A]
    process.kill()
    process.wait()
    await world.pags.sweep()
    await world.pags.sweep()
    assert world.store.pags() == []


async def test_the_background_task_ends_a_pag_as_its_keeper_ends(started) -> None:
    world = World()
    keeper = started("sleep", "300")
    pag = world.pags.new_keeper(keeper.pid, UID).pag
    world.store.set(Identity(UID, pag), token())
    async with trio.open_nursery() as nursery:
        await nursery.start(world.pags.run)
        keeper.kill()
        with trio.fail_after(5):
            while world.store.pags():
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert world.pags.live == {}


def test_a_restarted_daemon_keeps_the_pags_whose_keepers_still_run(started) -> None:
    name = f"test-{secrets.token_hex(4)}"
    try:
        store = TokenStore(keep=KernelKeep(name))
        pags = Pags(store, procs.ExitWatch(), KernelKeep(name))
        alive, dead = started("sleep", "300"), started("sleep", "300")
        kept = pags.new_keeper(alive.pid, UID).pag
        lost = pags.new_keeper(dead.pid, UID).pag
        store.set(Identity(UID, kept), token())
        store.set(Identity(UID, lost), token())
        dead.kill()
        dead.wait()

        again = TokenStore(keep=KernelKeep(name))  # as the next daemon finds them
        assert sorted(again.pags()) == sorted([kept, lost])
        watch = procs.ExitWatch()
        restarted = Pags(again, watch, KernelKeep(name))
        assert [k.pag for k in restarted.live.values()] == [kept]
        assert again.pags() == [kept]
        assert Callers(restarted, watch).identity(alive.pid, UID, GID).pag == kept
    finally:
        forget_keep(name)


def test_a_keeper_is_one_process_once(started) -> None:
    world = World()
    keeper = started("sleep", "300")
    world.pags.new_keeper(keeper.pid, UID)
    with pytest.raises(Exception, match="EEXIST"):
        world.pags.new_keeper(keeper.pid, UID)
    keeper.kill()
    keeper.wait()
    with pytest.raises(Exception, match="ESRCH"):
        world.pags.new_keeper(keeper.pid, UID)


def test_a_process_with_children_cannot_start_a_pag(started) -> None:
    world = World()
    parent = started("sh", "-c", "sleep 300 & wait")
    until(lambda: descendants(parent.pid))
    with pytest.raises(Exception, match="EBUSY"):
        world.pags.new_keeper(parent.pid, UID)
