"""Who a request's caller is: its uid (the kernel's word) and its PAG (pag.py), found from
its pid on every FUSE request.

Finding the PAG reads /proc (about 20 us a file here, more than the rest of a simple
request), so the answer is cached per process: a bounded table, least recently used out,
each entry holding a pidfd of its process in one epoll set.  A hit costs a dict look-up and
one epoll_wait(0) for all entries (about 1 us); that poll drops, before any look-up, every
entry whose process has ended, so a pid the kernel has handed to a new process is never
answered from the old one's entry.  An entry is read again after MAX_AGE (root may change a
process's groups in place), when the request's uid or gid differ from the entry's (su, sudo
and setuid programs), and all of them when a keeper comes or goes.  A thread that the kernel
gives no pidfd for (Linux before 6.9) is looked up afresh on each request.
"""

from __future__ import annotations

import os
import resource
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from afsfuse.keyring import procs
from afsfuse.keyring.pag import MAX_KEEPERS, Keeper, KeeperKeep, Pags, pag_in_groups
from afsfuse.keyring.store import Identity, TokenStore

#: Processes remembered at once (each entry holds a pidfd).
CAPACITY = 512
#: Seconds before a process's groups are read again.
MAX_AGE = 10.0
#: Ancestors looked through for a keeper, at most.
MAX_DEPTH = 64
#: Tries at a consistent ancestry when processes end during the walk.
_TRIES = 3


@dataclass
class _Entry:
    pidfd: int
    uid: int
    gid: int
    identity: Identity
    #: The keeper of the process's family, if it is in one (its ancestors never change,
    #: except when the keeper ends, which empties the table).
    keeper: Keeper | None
    checked: float


class Callers:
    """Identities of requesting processes."""

    def __init__(
        self,
        pags: Pags,
        watch: procs.ExitWatch,
        *,
        capacity: int = CAPACITY,
        max_age: float = MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
        proc: str = "/proc",
    ) -> None:
        self._pags = pags
        self._watch = watch
        self._capacity = capacity
        self._max_age = max_age
        self._clock = clock
        self._proc = proc
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._by_pidfd: dict[int, int] = {}
        self._plain: dict[int, Identity] = {}
        pags.on_change(self.forget)

    def identity(self, pid: int, uid: int, gid: int) -> Identity:
        """The identity of a FUSE request from pid (0: the kernel's own, or a process the
        daemon cannot see) acting as uid and gid.  ProcessLookupError if the caller has
        ended already."""
        if pid <= 0:
            return self._uid_only(uid)
        self._watch.poll()
        entry = self._entries.get(pid)
        if (
            entry is not None
            and entry.uid == uid
            and entry.gid == gid
            and self._clock() - entry.checked < self._max_age
        ):
            self._entries.move_to_end(pid)
            return entry.identity
        return self._look_up(pid, uid, gid, entry)

    def pag_of(self, pid: int) -> int | None:
        """The PAG of pid, read afresh (control and rmtsys requests, which are rare).
        ProcessLookupError if it has ended."""
        self._watch.poll()
        pidfd = procs.open_pidfd(pid)
        try:
            _, pag = self._read(pid)
            if pidfd is not None and procs.gone(pidfd):
                raise ProcessLookupError(pid)
            return pag
        finally:
            if pidfd is not None:
                os.close(pidfd)

    def forget(self) -> None:
        """Empty the table: who is in which PAG has changed."""
        for entry in self._entries.values():
            self._watch.remove(entry.pidfd)
        self._entries.clear()
        self._by_pidfd.clear()

    def __len__(self) -> int:
        return len(self._entries)

    # -- looking up ----------------------------------------------------------------------

    def _uid_only(self, uid: int) -> Identity:
        found = self._plain.get(uid)
        if found is None:
            if len(self._plain) >= self._capacity:
                self._plain.clear()
            found = self._plain[uid] = Identity(uid)
        return found

    def _look_up(self, pid: int, uid: int, gid: int, entry: _Entry | None) -> Identity:
        pidfd = entry.pidfd if entry is not None else procs.open_pidfd(pid)
        try:
            keeper, pag = self._read(pid)
            if pidfd is not None and procs.gone(pidfd):
                raise ProcessLookupError(pid)
        except BaseException:
            if entry is not None:
                self._evict(pid)
            elif pidfd is not None:
                os.close(pidfd)
            raise
        identity = self._uid_only(uid) if pag is None else Identity(uid, pag)
        if pidfd is None:
            return identity  # a thread without a pidfd: not cached
        if entry is None:
            while len(self._entries) >= self._capacity:
                self._evict(next(iter(self._entries)))
            self._watch.add(pidfd, self._ended)
            self._by_pidfd[pidfd] = pid
        self._entries[pid] = _Entry(pidfd, uid, gid, identity, keeper, self._clock())
        self._entries.move_to_end(pid)
        return identity

    def _read(self, pid: int) -> tuple[Keeper | None, int | None]:
        """The keeper of pid's family and pid's PAG, from /proc."""
        for _ in range(_TRIES):
            status = procs.read_status(pid, self._proc)
            try:
                keeper = self._keeper(pid, status.ppid)
            except _Moved:
                continue
            groups_pag = pag_in_groups(status.groups)
            if groups_pag is not None and (keeper is None or keeper.outer != groups_pag):
                return keeper, groups_pag
            return keeper, None if keeper is None else keeper.pag
        raise ProcessLookupError(pid)

    def _keeper(self, pid: int, ppid: int) -> Keeper | None:
        """The nearest live keeper among pid and its ancestors.

        Keepers and table entries are those alive at the last poll, and so still right for
        a child that names them as its parent.  An ancestor read from /proc is believed only
        if its child still names it afterwards: had it ended, the child would have a new
        parent, and its pid might already be another process's.  A process older than every
        keeper descends from none: the walk stops there.
        """
        live = self._pags.live
        if not live:
            return None
        found = live.get(pid)
        if found is not None:
            return found
        child, current = pid, ppid
        for _ in range(MAX_DEPTH):
            if current <= 1:
                return None
            found = live.get(current)
            if found is not None:
                return found
            entry = self._entries.get(current)
            if entry is not None:
                return entry.keeper
            try:
                parent, start = procs.read_stat(current, self._proc)
                if procs.read_stat(child, self._proc)[0] != current:
                    raise _Moved
            except ProcessLookupError:
                raise _Moved from None
            if start < self._pags.oldest_start:
                return None
            child, current = current, parent
        return None

    def _ended(self, pidfd: int) -> None:
        pid = self._by_pidfd.pop(pidfd)
        del self._entries[pid]

    def _evict(self, pid: int) -> None:
        entry = self._entries.pop(pid)
        del self._by_pidfd[entry.pidfd]
        self._watch.remove(entry.pidfd)


class _Moved(Exception):
    """A process on the ancestry walked has ended or been re-parented: walk again."""


def track_callers(store: TokenStore, keep: KeeperKeep | None) -> tuple[Pags, Callers]:
    """A daemon's PAGs and callers, one ExitWatch between them.  The soft limit on open
    files is raised to the hard one: every keeper and table entry holds a pidfd."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = CAPACITY + MAX_KEEPERS + 1024
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    watch = procs.ExitWatch()
    pags = Pags(store, watch, keep)
    return pags, Callers(pags, watch)
