"""What /proc tells about a process, and pidfds that say when it is gone.

The kernel gives a FUSE daemon only the uid, gid and pid of a request's caller.  Everything
else the daemon believes about the caller (its groups, its parent) is read here, and a pid is
only ever trusted together with a pidfd: a pid names whichever process has it now, and one
can come back within a second or two (pid_max is 32768 on many machines), but a pidfd stays
with the process it was opened for and turns readable when that process ends.
"""

from __future__ import annotations

import contextlib
import os
import select
from collections.abc import Callable, Iterator
from dataclasses import dataclass

#: pidfd_open flag for a thread that is not its process's first (Linux 6.9; Python has no
#: name for it): the pidfd then ends with the thread.
PIDFD_THREAD = os.O_EXCL


@dataclass(frozen=True)
class Status:
    """The lines of /proc/PID/status that say who a process is and where it comes from."""

    ppid: int
    groups: tuple[int, ...]
    #: Ended, and not yet reaped by its parent.
    zombie: bool


def read_status(pid: int, proc: str = "/proc") -> Status:
    """PPid, Groups and State of pid (a thread id works too).  ProcessLookupError once it
    has been reaped."""
    data = _read(f"{proc}/{pid}/status")
    ppid = _field(data, b"\nPPid:")
    groups = _field(data, b"\nGroups:")
    state = _field(data, b"\nState:")
    if ppid is None or groups is None or state is None:
        raise ProcessLookupError(pid)
    return Status(int(ppid), tuple(int(g) for g in groups.split()), state.strip()[:1] == b"Z")


def read_stat(pid: int, proc: str = "/proc") -> tuple[int, int]:
    """(parent pid, start time in clock ticks after boot) of pid, from /proc/PID/stat."""
    data = _read(f"{proc}/{pid}/stat")
    # The command name, in parentheses, may hold anything: fields start after the last ')'.
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[1]), int(fields[19])


def has_children(pid: int, proc: str = "/proc") -> bool:
    """Whether pid has a child: from /proc/PID/task/TID/children where the kernel has them
    (CONFIG_PROC_CHILDREN), else from every process's parent."""
    try:
        threads = os.listdir(f"{proc}/{pid}/task")
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None
    try:
        return any(_read(f"{proc}/{pid}/task/{tid}/children").strip() for tid in threads)
    except ProcessLookupError:
        pass
    for other in every_process(proc):
        with contextlib.suppress(ProcessLookupError, ValueError, IndexError):
            if read_stat(other, proc)[0] == pid:
                return True
    return False


def _read(path: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ProcessLookupError(path) from None
    try:
        return os.read(fd, 8192)
    except ProcessLookupError:
        raise
    except OSError as e:  # ESRCH while it exits
        raise ProcessLookupError(path) from e
    finally:
        os.close(fd)


def _field(data: bytes, name: bytes) -> bytes | None:
    start = data.find(name)
    if start < 0:
        return None
    start += len(name)
    end = data.find(b"\n", start)
    return data[start : end if end >= 0 else len(data)]


def open_pidfd(pid: int) -> int | None:
    """A pidfd for pid (process or thread), or None where the kernel cannot give one (a
    thread before Linux 6.9).  ProcessLookupError when pid is not there."""
    for flags in (0, PIDFD_THREAD):
        try:
            return os.pidfd_open(pid, flags)
        except ProcessLookupError:
            raise
        except OSError:  # EINVAL: a thread, and no PIDFD_THREAD here
            continue
    return None


def gone(pidfd: int) -> bool:
    """Whether the process a pidfd was opened for has ended."""
    return bool(select.select([pidfd], [], [], 0)[0])


def every_process(proc: str = "/proc") -> Iterator[int]:
    for entry in os.scandir(proc):
        if entry.name.isdigit():
            yield int(entry.name)


class ExitWatch:
    """One epoll set of pidfds: whoever added a pidfd is told, through its callback, when
    the process ends.  poll() never blocks; its fd turns readable when something ended, so a
    trio task can wait on it."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._callbacks: dict[int, Callable[[int], None]] = {}

    def fileno(self) -> int:
        return self._epoll.fileno()

    def add(self, pidfd: int, ended: Callable[[int], None]) -> None:
        self._epoll.register(pidfd, select.EPOLLIN)
        self._callbacks[pidfd] = ended

    def remove(self, pidfd: int) -> None:
        """Stop watching pidfd and close it."""
        if self._callbacks.pop(pidfd, None) is not None:
            with contextlib.suppress(OSError):
                self._epoll.unregister(pidfd)
        os.close(pidfd)

    def poll(self) -> None:
        """Tell each owner whose process has ended (then the pidfd is closed)."""
        if not self._callbacks:
            return
        for pidfd, _ in self._epoll.poll(0):
            ended = self._callbacks.get(pidfd)
            if ended is not None:
                self.remove(pidfd)
                ended(pidfd)

    def close(self) -> None:
        for pidfd in list(self._callbacks):
            self.remove(pidfd)
        self._epoll.close()
