"""Unsent data in the background: kept on disk, and stored once the fileserver takes it.

Two jobs, one task:
- a small file kept in memory while dirty goes to disk once it has been dirty for
  `memory_age` seconds, so a crash of the daemon loses at most the writes of that moment
  (their program was never told they were stored: its close had not returned);
- a file whose store failed (quota, server down, no rights yet), or that a run before this
  one left behind, is stored again every `interval` seconds, doubling up to `max_interval`
  for a file that keeps failing.  Whether it is stored or set aside (the fileserver's copy
  changed meanwhile) is the cache manager's call: `store(fid)` makes it.

`store(fid)` raises what the store raised; the file then stays unsent and waits its turn.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from afsfuse.cache.aio import AsyncDirtyStore
from afsfuse.cache.base import FidKey
from afsfuse.fs.errors import FsError

log = logging.getLogger(__name__)


class UnsentData:
    def __init__(
        self,
        dirty: AsyncDirtyStore,
        store: Callable[[FidKey], Awaitable[None]],
        *,
        interval: float,
        memory_age: float,
        max_interval: float,
    ) -> None:
        self._dirty = dirty
        self._store = store
        self.interval = interval
        self.memory_age = memory_age
        self.max_interval = max(max_interval, interval)
        #: fid -> (next attempt, current back-off), for files that failed here before.
        self._next: dict[FidKey, tuple[float, float]] = {}
        self._wake = trio.Event()

    def poke(self) -> None:
        """Look again now (a file was found to need it)."""
        self._wake.set()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self.pass_once(trio.current_time())
            with trio.move_on_after(min(self.interval, self.memory_age)):
                await self._wake.wait()
            self._wake = trio.Event()

    async def pass_once(self, now: float) -> None:
        """One look at every dirty file (never raises).  `now` is trio's clock, for the
        retries; the dirty store dates files by time.monotonic, which runs in its threads."""
        old = time.monotonic() - self.memory_age
        for fid in self._dirty.sync_store.held_in_memory_since(old):
            try:
                await self._dirty.persist(fid)
            except KeyError:
                pass  # stored meanwhile
            except OSError as e:
                log.error("unsent data of %s could not be put on disk: %s", _name(fid), e)
        unsent = {d.fid for d in self._dirty.list() if d.unsent}
        for fid in list(self._next):
            if fid not in unsent:
                del self._next[fid]
        for fid in unsent:
            due, backoff = self._next.get(fid, (now, self.interval / 2))
            if due > now:
                continue
            try:
                await self._store(fid)
            except FsError as e:
                backoff = min(backoff * 2, self.max_interval)
                self._next[fid] = (now + backoff, backoff)
                log.info(
                    "unsent data of %s: store failed again (%s); next try in %.0f s",
                    _name(fid), e.strerror or e, backoff,
                )  # fmt: skip
            except Exception:
                log.exception("unsent data of %s: store failed", _name(fid))
                self._next[fid] = (now + self.max_interval, self.max_interval)
            else:
                self._next.pop(fid, None)


def _name(fid: FidKey) -> str:
    return f"{fid.cell} fid {fid.volume}.{fid.vnode}.{fid.unique}"
