"""Volume location cache: VLDB entries by cell and by volume id or name.

Entries are kept for `ttl` seconds; rotation asks for a fresh one (`refresh`) when a
fileserver says the volume moved, went offline or is not there.  Concurrent lookups of the
same volume share one VL call.  A fresh entry whose sites differ from the one it replaces
is logged: that is how a volume move shows from here.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from afsfuse.vl.vlclient import VolumeLocation, VolumeSite

log = logging.getLogger(__name__)

Locate = Callable[[str, str | int], Awaitable[VolumeLocation]]


@dataclass(frozen=True)
class VolumeStatus:
    """GetVolumeStatus, for statfs and `fs quota`/`fs listquota`: sizes in KiB blocks;
    max_quota 0 means no quota."""

    volume_id: int
    name: str
    online: bool
    in_service: bool
    needs_salvage: bool
    type: int
    min_quota: int
    max_quota: int
    blocks_in_use: int
    partition_blocks_available: int
    partition_max_blocks: int
    offline_message: str
    motd: str
    parent_id: int = 0
    blessed: bool = True

    @classmethod
    def from_afs(cls, reply: Any) -> VolumeStatus:
        s = reply.Volumestatus
        return cls(
            volume_id=s.Vid & 0xFFFFFFFF,
            name=reply.Name,
            online=bool(s.Online),
            in_service=bool(s.InService),
            needs_salvage=bool(s.NeedsSalvage),
            type=s.Type,
            min_quota=s.MinQuota,
            max_quota=s.MaxQuota,
            blocks_in_use=s.BlocksInUse,
            partition_blocks_available=s.PartBlocksAvail,
            partition_max_blocks=s.PartMaxBlocks,
            offline_message=reply.OfflineMsg,
            motd=reply.Motd,
            parent_id=s.ParentId & 0xFFFFFFFF,
            blessed=bool(s.Blessed),
        )


class VolumeCache:
    """VLDB entries per cell, looked up through `locate(cell, name_or_id)`."""

    def __init__(self, locate: Locate, ttl: float = 600.0) -> None:
        self._locate = locate
        self.ttl = ttl
        self._entries: dict[tuple[str, str | int], tuple[float, VolumeLocation]] = {}
        self._pending: dict[tuple[str, str | int], trio.Event] = {}

    async def location(
        self, cell: str, volume: str | int, *, fresh: bool = False
    ) -> VolumeLocation:
        """The entry for a volume id or name.  Raises what `locate` raises (RxAbort VL_NOENT
        for an unknown volume)."""
        key = (cell, volume)
        while True:
            cached = self._entries.get(key)
            if cached is not None and not fresh and cached[0] > trio.current_time():
                return cached[1]
            pending = self._pending.get(key)
            if pending is None:
                break
            await pending.wait()
            fresh = False  # the lookup we waited for is fresh enough
        self._pending[key] = done = trio.Event()
        try:
            entry = await self._locate(cell, volume)
        finally:
            del self._pending[key]
            done.set()
        self._remember(cell, entry)
        if isinstance(volume, str):
            self._entries[key] = (trio.current_time() + self.ttl, entry)
        return entry

    async def refresh(self, cell: str, volume: int) -> VolumeLocation:
        return await self.location(cell, volume, fresh=True)

    def _remember(self, cell: str, entry: VolumeLocation) -> None:
        """File the entry under each of its ids, so any of them finds it."""
        expires = trio.current_time() + self.ttl
        old = self._entries.get((cell, entry.rw_id or entry.ro_id))
        if old is not None and site_names(old[1]) != site_names(entry):
            log.info(
                "volume %s (%d) in cell %s moved: it was on %s, now on %s",
                entry.name, entry.rw_id or entry.ro_id, cell,
                ", ".join(site_names(old[1])) or "no site", ", ".join(site_names(entry)) or "no site",
            )  # fmt: skip
        for volume_id in entry.volume_ids:
            if volume_id:
                self._entries[(cell, volume_id)] = (expires, entry)

    def held(self) -> int:
        """How many VLDB entries are held (each is filed under its ids and maybe a name)."""
        return len({id(entry) for _, entry in self._entries.values()})

    def cached(self, cell: str, volume: int) -> VolumeLocation | None:
        found = self._entries.get((cell, volume))
        return None if found is None else found[1]

    def entries(self) -> list[tuple[str, float, VolumeLocation]]:
        """Each cached volume once (its newest entry), with its cell and when it will be
        looked up again."""
        newest: dict[tuple[str, tuple[int, int, int]], tuple[str, float, VolumeLocation]] = {}
        for (cell, _), (expires, entry) in self._entries.items():
            key = (cell, entry.volume_ids)
            if key not in newest or newest[key][1] < expires:
                newest[key] = (cell, expires, entry)
        return list(newest.values())

    def forget(self, cell: str | None = None) -> None:
        if cell is None:
            self._entries.clear()
        else:
            for key in [k for k in self._entries if k[0] == cell]:
                del self._entries[key]


def partition_name(number: int) -> str:
    """`/vicepa` for 0, as OpenAFS names partitions (`/vicepaa` from 26 on)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    if number < 26:
        return f"/vicep{letters[number]}"
    return f"/vicep{letters[number // 26 - 1]}{letters[number % 26]}"


def site_name(site: VolumeSite) -> str:
    return f"{site.addresses[0]} {partition_name(site.partition)}"


def site_names(entry: VolumeLocation) -> list[str]:
    """Where a volume's copies are (every type), for messages and views."""
    return list(dict.fromkeys(site_name(site) for sites in entry.sites for site in sites))
