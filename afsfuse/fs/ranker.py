"""Keeps server ranks (vl/rank.py) current from the round trips Rx measures.

Every round (the probe interval, `fs checkservers -interval`) it takes each met server's
smoothed round trip from its Rx peer into its rank.  Before that it asks the servers not
heard from for IDLE_ROUNDS rounds whether they are there (a fileserver FS.GetTime, a
database server VL.ProbeServer), at most MAX_IDLE_PROBES a round, the longest silent first:
a site nobody uses must still be measured, or a nearer one would never be found once
another was chosen.  Ranks are computed here, never per call.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable

import trio

from afsfuse.vl.rank import Address, Ranks

log = logging.getLogger(__name__)

#: A met server not heard from for this many rounds is probed for its round trip.
IDLE_ROUNDS = 10
#: Most such probes in one round, so a client that met many servers sends few at a time.
MAX_IDLE_PROBES = 4

#: (smoothed round trip, when last heard from) of an address, None before a round trip.
RoundTrip = Callable[[Address], tuple[float, float] | None]
Probe = Callable[[Address], Awaitable[None]]


class Ranker:
    def __init__(
        self,
        ranks: Ranks,
        round_trip: RoundTrip,
        probe: Probe,
        interval: Callable[[], float],
        probe_timeout: float,
    ) -> None:
        self.ranks = ranks
        self._round_trip = round_trip
        self._probe = probe
        #: Read every round; interval_changed() cuts the wait for the next one short.
        self._interval = interval
        self._probe_timeout = probe_timeout
        self._wake = trio.Event()

    def interval_changed(self) -> None:
        """`fs checkservers -interval` set a new interval: a round now, then at the new one
        (not after whatever was left of the old)."""
        self._wake.set()

    def refresh(self) -> int:
        """Take every met server's smoothed round trip into its rank; how many changed."""
        changed = 0
        for addr in self.ranks.met():
            measured = self._round_trip(addr)
            if measured is not None and self.ranks.measured(addr, measured[0]):
                changed += 1
                log.info(
                    "server %s:%d ranks %d (round trip %.1f ms)",
                    *addr, self.ranks.peek(addr), measured[0] * 1000,
                )  # fmt: skip
        return changed

    def idle(self, now: float) -> list[Address]:
        """The met servers to probe this round: silent for IDLE_ROUNDS rounds or never
        measured, the longest silent first, at most MAX_IDLE_PROBES."""
        quiet = IDLE_ROUNDS * self._interval()
        silent: list[tuple[float, Address]] = []
        for addr in self.ranks.met():
            measured = self._round_trip(addr)
            heard = -math.inf if measured is None else measured[1]
            if now - heard >= quiet:
                silent.append((heard, addr))
        silent.sort(key=lambda item: item[0])  # ties: in the order they were met
        return [addr for _, addr in silent[:MAX_IDLE_PROBES]]

    async def round(self) -> None:
        """Probe the idle servers (each bounded by twice the probe timeout), then re-rank."""
        async with trio.open_nursery() as nursery:
            for addr in self.idle(trio.current_time()):
                nursery.start_soon(self._probe_one, addr)
        self.refresh()

    async def _probe_one(self, addr: Address) -> None:
        with trio.move_on_after(self._probe_timeout * 2):
            await self._probe(addr)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background task: a round every interval, and one when the interval changes."""
        task_status.started()
        while True:
            with trio.move_on_after(self._interval()):
                await self._wake.wait()
            self._wake = trio.Event()
            await self.round()
