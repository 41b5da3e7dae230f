"""PAGs (process authentication groups): the processes that share a set of tokens apart from
their uid's.

A PAG is either of:

- **a keeper's family.**  `afsfuse-ctl pagsh` forks a keeper process, which makes itself the
  child subreaper of everything it starts (prctl PR_SET_CHILD_SUBREAPER) and tells the daemon
  (control op `setpag`); the daemon holds a pidfd for it.  The PAG is the keeper and all its
  descendants: membership comes with fork and stays across exec, setsid, daemonising and
  uid changes (an orphan is handed to the keeper, never to an outsider), and no other
  process can become a descendant.  It ends when the keeper does, which it does once it
  has no descendant left; its tokens go then.
- **an OpenAFS PAG in the groups** (one group 0x41xxxxxx, or the old two-group encoding),
  which only root can set: OpenAFS's pagsh over rmtsys (SetPag) gets its number here and
  sets the groups itself.  Such a PAG's tokens go once two sweeps of /proc, SWEEP_INTERVAL
  apart, find no process carrying it.

A process in both is in whichever is newer: its groups' PAG, unless the keeper already
carried it.  Every PAG number has 'A' in its top byte, as OpenAFS's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from afsfuse.keyring import procs
from afsfuse.keyring.store import Identity, TokenStore

log = logging.getLogger(__name__)

PAG_TAG = ord("A")
#: Keepers at once, per uid and in all (each holds a pidfd in the daemon).
MAX_KEEPERS_PER_UID = 256
MAX_KEEPERS = 4096
#: PAG numbers handed out for groups and not yet seen in use, at most.
MAX_ISSUED = 4096
#: How often processes' groups are looked through, while some groups PAG holds tokens.
SWEEP_INTERVAL = 30.0


def pag_from_group_pair(group0: int, group1: int) -> int | None:
    """The PAG that two groups encode the old way (OpenAFS's afs_get_pag_from_groups), or
    None."""
    g0, g1 = (group0 & 0xFFFFFFFF) - 0x3F00, (group1 & 0xFFFFFFFF) - 0x3F00
    if not (0 <= g0 < 0xC000 and 0 <= g1 < 0xC000):
        return None
    low = ((g0 & 0x3FFF) << 14) | (g1 & 0x3FFF)
    high = (g1 >> 14) + 3 * (g0 >> 14)
    pag = ((high << 28) | low) & 0xFFFFFFFF
    return pag if pag >> 24 == PAG_TAG else None


def pag_in_groups(groups: Sequence[int]) -> int | None:
    """The PAG a process's groups carry: one group that is the PAG itself (OpenAFS on Linux),
    or two groups in the old encoding.  The kernel sorts the groups, so the two may be
    anywhere in the list and in either order."""
    for group in groups:
        if group >> 24 == PAG_TAG:
            return group
    pair = [group for group in groups if 0x3F00 <= group < 0xFF00][:64]
    for i, first in enumerate(pair):
        for j, second in enumerate(pair):
            if i != j and (pag := pag_from_group_pair(first, second)) is not None:
                return pag
    return None


@dataclass(frozen=True)
class Keeper:
    """The process whose family is a PAG."""

    pag: int
    pid: int
    #: Its start time (clock ticks after boot): with pid, it names the process for good.
    start: int
    uid: int
    #: The groups PAG the keeper was in itself: its family carries it too, but is in the
    #: keeper's PAG, the newer one.
    outer: int | None


class PagRefused(Exception):
    """A PAG that cannot be made: code is an errno name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class KeeperKeep(Protocol):
    """Keeps the keepers beyond the daemon (beside their tokens), so that a restarted daemon
    knows their PAGs again."""

    def save_keeper(self, keeper: Keeper) -> None: ...
    def drop_keeper(self, pag: int) -> None: ...
    def load_keepers(self) -> Iterable[Keeper]: ...


class Pags:
    """The PAGs this daemon knows: live keepers (watched through pidfds), and numbers handed
    out for groups; ends them and drops their tokens."""

    def __init__(
        self,
        store: TokenStore,
        watch: procs.ExitWatch,
        keep: KeeperKeep | None = None,
        *,
        proc: str = "/proc",
        sweep_interval: float = SWEEP_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._watch = watch
        self._keep = keep
        self._proc = proc
        self._sweep_interval = sweep_interval
        self._clock = clock
        self._keepers: dict[int, Keeper] = {}  # by pid
        self._pidfds: dict[int, int] = {}  # pidfd -> keeper pid
        #: Groups PAG numbers handed out or holding tokens -> sweeps in a row that missed it.
        self._missed: dict[int, int] = {}
        self._issued: dict[int, None] = {}
        self._listeners: list[Callable[[], None]] = []
        self.oldest_start = 0
        if keep is not None:
            self._take_back(keep)

    @property
    def live(self) -> Mapping[int, Keeper]:
        """The live keepers, by pid (after ExitWatch.poll has run)."""
        return self._keepers

    def on_change(self, listener: Callable[[], None]) -> None:
        """`listener()` whenever a keeper comes or goes (who is in which PAG changes)."""
        self._listeners.append(listener)

    # -- making PAGs ---------------------------------------------------------------------

    def new_keeper(self, pid: int, uid: int) -> Keeper:
        """Make process pid (of uid, as the kernel said) the keeper of a new PAG."""
        self._watch.poll()
        if pid in self._keepers:
            raise PagRefused("EEXIST", "this process keeps a PAG already")
        if len(self._keepers) >= MAX_KEEPERS or (
            sum(k.uid == uid for k in self._keepers.values()) >= MAX_KEEPERS_PER_UID
        ):
            raise PagRefused("EAGAIN", "too many PAGs at once")
        try:
            pidfd = procs.open_pidfd(pid)
            if pidfd is None:
                raise PagRefused("EINVAL", "a thread cannot keep a PAG")
            try:
                _, start = procs.read_stat(pid, self._proc)
                groups = procs.read_status(pid, self._proc).groups
                if procs.has_children(pid, self._proc):
                    # They would change PAG under it: a PAG starts with its keeper alone.
                    raise PagRefused("EBUSY", "a process with children cannot keep a PAG")
                if procs.gone(pidfd):
                    raise ProcessLookupError(pid)
            except BaseException:
                os.close(pidfd)
                raise
        except ProcessLookupError:
            raise PagRefused("ESRCH", "the process has gone") from None
        keeper = Keeper(self._new_number(), pid, start, uid, pag_in_groups(groups))
        self._add(keeper, pidfd)
        if self._keep is not None:
            self._keep.save_keeper(keeper)
        log.info("PAG %#x: kept by pid %d of uid %d", keeper.pag, pid, uid)
        return keeper

    def issue(self) -> int:
        """A number for a PAG its caller puts in its groups itself (rmtsys SetPag)."""
        pag = self._new_number()
        self._issued[pag] = None
        while len(self._issued) > MAX_ISSUED:
            del self._issued[next(iter(self._issued))]
        return pag

    def _new_number(self) -> int:
        taken = {k.pag for k in self._keepers.values()} | set(self._issued) | set(self._missed)
        taken.update(self._store.pags())
        while True:
            pag = PAG_TAG << 24 | secrets.randbelow(1 << 24)
            if pag not in taken:
                return pag

    def _add(self, keeper: Keeper, pidfd: int) -> None:
        self._keepers[keeper.pid] = keeper
        self._pidfds[pidfd] = keeper.pid
        self._watch.add(pidfd, self._ended)
        self.oldest_start = min(k.start for k in self._keepers.values())
        self._changed()

    # -- ending them -----------------------------------------------------------------------

    def _ended(self, pidfd: int) -> None:
        keeper = self._keepers.pop(self._pidfds.pop(pidfd))
        self.oldest_start = min((k.start for k in self._keepers.values()), default=0)
        self._drop(keeper.pag, "its keeper has ended")
        self._changed()

    def _drop(self, pag: int, why: str) -> None:
        held = len(self._store.list(Identity(0, pag)))
        self._store.remove(Identity(0, pag))
        if self._keep is not None:
            self._keep.drop_keeper(pag)
        log.info("PAG %#x: %s%s", pag, why, f"; its {held} token(s) dropped" if held else "")

    def discard(self, pag: int) -> bool:
        """Drop a PAG's tokens (root's `discard --pag`); whether it had any.  Its processes
        stay in it, without tokens."""
        held = bool(self._store.list(Identity(0, pag)))
        self._store.remove(Identity(0, pag))
        return held

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    def describe(self) -> list[dict[str, object]]:
        """Every PAG known: its number, keeper (or None: a groups PAG) and token cells."""
        self._watch.poll()
        found: dict[int, dict[str, object]] = {}
        for keeper in self._keepers.values():
            found[keeper.pag] = {"pag": keeper.pag, "pid": keeper.pid, "uid": keeper.uid}
        for pag in [*self._issued, *self._store.pags()]:
            found.setdefault(pag, {"pag": pag, "pid": None, "uid": None})
        for pag, entry in found.items():
            entry["cells"] = [token.cell for token in self._store.list(Identity(0, pag))]
        return [found[pag] for pag in sorted(found)]

    # -- the background task -----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Until cancelled: end PAGs whose keeper ends, as it ends; sweep groups PAGs."""
        task_status.started()
        next_sweep = self._clock() + self._sweep_interval
        while True:
            with trio.move_on_after(max(0.0, next_sweep - self._clock())):
                await trio.lowlevel.wait_readable(self._watch.fileno())
                self._watch.poll()
                continue
            await self.sweep()
            next_sweep = self._clock() + self._sweep_interval

    async def sweep(self) -> None:
        """Forget groups PAGs that two sweeps in a row found no process in."""
        keepers = {k.pag for k in self._keepers.values()}
        candidates = (set(self._store.pags()) | set(self._issued) | set(self._missed)) - keepers
        if not candidates:
            self._missed.clear()
            return
        in_use = await trio.to_thread.run_sync(self._groups_in_use)
        for pag in candidates:
            if pag in in_use:
                self._missed.pop(pag, None)
                self._issued.pop(pag, None)
                continue
            self._missed[pag] = self._missed.get(pag, 0) + 1
            if self._missed[pag] >= 2:
                del self._missed[pag]
                self._issued.pop(pag, None)
                if pag not in {k.pag for k in self._keepers.values()}:
                    self._drop(pag, "no process carries it any longer")

    def _groups_in_use(self) -> set[int]:
        """Every PAG some process's groups carry (a worker thread: it reads all of /proc)."""
        found = set()
        for pid in procs.every_process(self._proc):
            with contextlib.suppress(ProcessLookupError, OSError, ValueError):
                status = procs.read_status(pid, self._proc)
                pag = pag_in_groups(status.groups)
                if pag is not None and not status.zombie:
                    found.add(pag)
        return found

    # -- after a restart ---------------------------------------------------------------------

    def _take_back(self, keep: KeeperKeep) -> None:
        """The keepers a previous daemon kept: those still running (same pid, same start
        time) keep their PAG and tokens; the others' tokens go."""
        for kept in keep.load_keepers():
            pidfd = None
            with contextlib.suppress(ProcessLookupError, OSError, ValueError):
                pidfd = procs.open_pidfd(kept.pid)
                if pidfd is not None and procs.read_stat(kept.pid, self._proc)[1] != kept.start:
                    pidfd = self._close(pidfd)
                if pidfd is not None and procs.gone(pidfd):
                    pidfd = self._close(pidfd)
            if pidfd is None:
                self._drop(kept.pag, "its keeper ended while the daemon was away")
                continue
            self._add(kept, pidfd)
            log.info("PAG %#x: kept by pid %d again", kept.pag, kept.pid)

    @staticmethod
    def _close(pidfd: int) -> None:
        os.close(pidfd)
        return None
