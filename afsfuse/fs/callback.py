"""Callback promises held by this cache manager, and the breaks that end them.

A fileserver promises to tell us when a file changes; until the promise expires or is
broken, what we cached for that file may be served without asking again.  Breaks arrive
through the CB service (CallBack for some fids, InitCallBackState for everything a server
promised) and are pushed to listeners, which the cache manager uses to invalidate its caches.
Many breaks at once (a callback storm) are logged, once a minute at most.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

log = logging.getLogger(__name__)

#: More breaks than this in STORM_WINDOW seconds is a storm; it is logged at most once per
#: STORM_LOG_INTERVAL seconds.
STORM_BREAKS = 200
STORM_WINDOW = 1.0
STORM_LOG_INTERVAL = 60.0


class Fid(NamedTuple):
    """An AFS file identifier, within a cell."""

    volume: int
    vnode: int
    unique: int


@dataclass(frozen=True)
class Break:
    """One break: `fid` is None when every promise from `server` ended (InitCallBackState);
    a fid with vnode 0 stands for every file of its volume."""

    server: str
    fid: Fid | None


Listener = Callable[[Break], None]


@dataclass
class _Promise:
    server: str
    expires: float


class StormWatch:
    """Counts breaks per window of `window` seconds; the first window with more than
    `threshold` is logged, and then none for `interval` seconds: a storm is a rate, told
    once, not a line per break."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        threshold: int = STORM_BREAKS,
        window: float = STORM_WINDOW,
        interval: float = STORM_LOG_INTERVAL,
    ) -> None:
        self._clock = clock
        self.threshold = threshold
        self.window = window
        self.interval = interval
        self._window_start = -math.inf
        self._by_server: Counter[str] = Counter()
        self._logged_at = -math.inf
        #: Storm lines logged so far.
        self.storms = 0

    def count(self, server: str) -> None:
        now = self._clock()
        if now - self._window_start >= self.window:
            self._window_start = now
            self._by_server.clear()
        self._by_server[server] += 1
        if self._by_server.total() == self.threshold + 1 and now - self._logged_at >= self.interval:
            self._logged_at = now
            self.storms += 1
            top, from_top = self._by_server.most_common(1)[0]
            log.warning(
                "callback storm: more than %d callback breaks within %g s (%d from fileserver "
                "%s); the files they name are fetched again when next used",
                self.threshold, self.window, from_top, top,
            )  # fmt: skip


class CallbackRegistry:
    """Which fids we hold callbacks on, from which server, until when."""

    def __init__(self, storms: StormWatch | None = None) -> None:
        self._promises: dict[Fid, _Promise] = {}
        self._listeners: list[Listener] = []
        self.breaks_received = 0
        self.storms = storms or StormWatch()

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def promise(self, server: str, fid: Fid, expires: float) -> None:
        """Record a callback that `server` granted on `fid` until `expires` (our clock)."""
        self._promises[fid] = _Promise(server, expires)

    def forget(self, fid: Fid) -> None:
        """The client no longer keeps `fid`: its promise is no use to it.  (The fileserver
        keeps its side until the promise expires or it breaks it.)"""
        self._promises.pop(fid, None)

    def valid(self, fid: Fid, now: float) -> bool:
        promise = self._promises.get(fid)
        return promise is not None and promise.expires > now

    def held(self) -> dict[str, list[Fid]]:
        """Unexpired or not, the fids each server has promised us (for GiveUpAllCallBacks)."""
        by_server: dict[str, list[Fid]] = {}
        for fid, promise in self._promises.items():
            by_server.setdefault(promise.server, []).append(fid)
        return by_server

    def break_fids(self, server: str, fids: list[Fid]) -> None:
        for fid in fids:
            if fid.vnode == 0:
                for held in [f for f in self._promises if f.volume == fid.volume]:
                    del self._promises[held]
            else:
                self._promises.pop(fid, None)
            self._notify(Break(server, fid))

    def break_server(self, server: str) -> None:
        """The server forgot every promise it made us (it restarted, or asked us to reset)."""
        for fid in [f for f, p in self._promises.items() if p.server == server]:
            del self._promises[fid]
        self._notify(Break(server, None))

    def _notify(self, event: Break) -> None:
        self.breaks_received += 1
        self.storms.count(event.server)
        for listener in list(self._listeners):
            listener(event)
