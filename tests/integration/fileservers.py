"""What tests do to the cell's fileserver process: find it, and freeze it with SIGSTOP, so
that packets reach it and nothing comes back (neither an answer nor a refusal)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

from afsfuse.testing.cell import Cell


def fileserver_pid(cell: Cell) -> int:
    """The pid of the cell's (first) fileserver process, found in its network namespace."""
    pids = subprocess.run(
        ["ip", "netns", "pids", cell.servers[0].netns], capture_output=True, text=True, check=True
    ).stdout.split()
    for pid in pids:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() in ("fileserver", "dafileserver"):
                return int(pid)
    raise AssertionError(f"no fileserver among {pids}")


@contextlib.contextmanager
def frozen(cell: Cell) -> Iterator[None]:
    """The fileserver stopped with SIGSTOP: packets reach it, nothing comes back."""
    pid = fileserver_pid(cell)
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)
