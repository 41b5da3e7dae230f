"""The bench's WAN profiles: every server of the cell some round trip away.

Each server gets a delay line (afsfuse.testing.delay) at zero delay, so the cell starts and
is filled at LAN speed; `go_far` then sets the profile's round trip before the first client
mounts.  A WAN round runs the workloads whose time a distant server dominates: a cold read
of the big file, a cold `ls -l` of 1000 entries, a cold cat of 1000 small files, and 200
creates (fewer than on the LAN: each costs round trips).
"""

from __future__ import annotations

from workloads import Workload, workloads

from afsfuse.testing.cell import Cell

#: Round trip in seconds added to every server, by profile name.
PROFILES = {"wan10": 0.010, "wan1": 0.001}
LISTING_SIZES = (1000,)
CREATES = 200
KEYS = ("cold-read", "create", "ls-l-1000", "cat-small")


def lines(fileservers: int) -> dict[int, float]:
    """A delay line for every server, at zero delay until `go_far`."""
    return {index: 0.0 for index in range(fileservers)}


def go_far(cell: Cell, profile: str) -> None:
    for index in range(len(cell.servers)):
        cell.set_delay(index, PROFILES[profile])


def plan() -> list[Workload]:
    return [w for w in workloads(LISTING_SIZES, creates=CREATES) if w.key in KEYS]
