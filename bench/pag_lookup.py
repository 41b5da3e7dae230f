"""Microbenchmark: what finding a FUSE request's caller (uid and PAG) costs the daemon.

    .venv/bin/python bench/pag_lookup.py [--lookups 10000]

Times Callers.identity, which every FUSE request calls, against real processes and the
real /proc: a hit in the per-process table (the common case: no /proc read), a miss (a
process seen for the first time: a pidfd, /proc/PID/status, and the ancestry walk when
keepers exist), with no PAGs and with a keeper's family, and with a full table; beside it
the uid-only look-up it replaced.  Wall-clock microseconds per look-up, best of three
rounds.  Run as root (groups PAGs need setgroups).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from afsfuse.keyring import procs
from afsfuse.keyring.callers import CAPACITY, Callers
from afsfuse.keyring.pag import Pags
from afsfuse.keyring.store import TokenStore
from afsfuse.vfs.request import identities

UID, GID = os.getuid(), os.getgid()


def per_lookup_us(lookups: int, once: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(lookups):
            once()
        best = min(best, time.perf_counter() - started)
    return best / lookups * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lookups", type=int, default=10_000)
    args = parser.parse_args()
    n = args.lookups
    # A keeper (this process's child, a subreaper), a shell under it, and a sleep under that.
    keeper = subprocess.Popen(
        [sys.executable, "-c", "import ctypes,os,sys; ctypes.CDLL(None).prctl(36,1,0,0,0);"
         "sys.stdin.readline(); os.execvp('sh', ['sh', '-c', 'sh -c \\'sleep 300; :\\'; :'])"],
        stdin=subprocess.PIPE,
    )  # fmt: skip
    outsider = subprocess.Popen(["sleep", "300"])
    filler = [subprocess.Popen(["sleep", "300"]) for _ in range(CAPACITY - 2)]
    family: list[int] = []
    try:
        store = TokenStore()
        watch = procs.ExitWatch()
        pags = Pags(store, watch)
        callers = Callers(pags, watch)
        ctx = _Ctx(outsider.pid)
        rows = []
        plain = identities(None)
        rows.append(("uid only (before PAGs)", per_lookup_us(n, lambda: plain(ctx))))
        resolve = identities(callers)
        resolve(ctx)
        rows.append(("hit, no PAGs", per_lookup_us(n, lambda: resolve(ctx))))

        def miss() -> None:
            callers.forget()
            callers.identity(outsider.pid, UID, GID)

        rows.append(("miss, no PAGs", per_lookup_us(n // 10, miss)))
        assert keeper.stdin is not None
        pags.new_keeper(keeper.pid, UID)
        keeper.stdin.write(b"go\n")
        keeper.stdin.flush()
        time.sleep(0.3)
        family = [p for p in procs.every_process() if keeper.pid in _ancestry(p)[1:]]
        (sleeper,) = [p for p in family if _ancestry(p)[2:3] == [keeper.pid]]
        rows.append(("miss, outside a PAG, keepers exist", per_lookup_us(n // 10, miss)))

        def miss_member() -> None:
            callers.forget()
            callers.identity(sleeper, UID, GID)

        rows.append(("miss, in a PAG (2 levels down)", per_lookup_us(n // 10, miss_member)))
        callers.identity(sleeper, UID, GID)
        rows.append(
            ("hit, in a PAG", per_lookup_us(n, lambda: callers.identity(sleeper, UID, GID)))
        )
        for process in filler:
            callers.identity(process.pid, UID, GID)
        callers.identity(sleeper, UID, GID)
        rows.append((f"hit, table full ({len(callers)} pidfds)",
                     per_lookup_us(n, lambda: callers.identity(sleeper, UID, GID))))  # fmt: skip
        for name, us in rows:
            print(f"{name:<40} {us:8.2f} us")
    finally:
        for process in [outsider, *filler]:
            process.kill()
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        keeper.kill()
        for process in [keeper, outsider, *filler]:
            process.wait()


class _Ctx:
    """What pyfuse3's RequestContext gives."""

    def __init__(self, pid: int) -> None:
        self.pid, self.uid, self.gid = pid, UID, GID


def _ancestry(pid: int) -> list[int]:
    chain = [pid]
    with contextlib.suppress(ProcessLookupError):
        while chain[-1] > 1 and len(chain) < 4:
            chain.append(procs.read_stat(chain[-1])[0])
    return chain


if __name__ == "__main__":
    main()
