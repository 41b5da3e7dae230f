"""Control ops on the cache manager as a whole: its cells, its fileservers, its volume
location cache and its disk cache (`fs listcells`, `fs getcellstatus`, `fs checkservers`,
`fs checkvolumes`, `fs getserverprefs`, `fs setserverprefs`, `fs getcacheparms`)."""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any

from afsfuse.ctl.server import ControlError, Request, op
from afsfuse.fs.api import CacheManagerApi

#: Cell status bits as OpenAFS's VIOC_GETCELLSTATUS gives them.
CELL_NO_SETUID = 0x02
CELL_LINKED = 0x20
#: `fs checkservers -interval` takes at most ten minutes.
MAX_PROBE_INTERVAL = 600
#: Preferences set in one request, and the largest rank (an unsigned short in OpenAFS).
MAX_PREFS = 1024
MAX_RANK = 0xFFFF

#: The disk cache's size and what it holds, in KiB.
CacheUsage = Callable[[], Awaitable[tuple[int, int]]]


class CellOps:
    """listcells, getcellstatus, checkservers, checkvolumes, getserverprefs,
    setserverprefs, getcacheparms."""

    def __init__(self, manager: CacheManagerApi, this_cell: str, cache_usage: CacheUsage) -> None:
        self._manager = manager
        self._this_cell = this_cell
        self._cache_usage = cache_usage

    @op("listcells")
    async def listcells(self, request: Request) -> dict[str, Any]:
        """Every cell known and its database servers; with `index`, that one only (EDOM
        past the end, which is how `fs listcells` knows it has them all)."""
        names = self._manager.known_cells()
        index = request.args.get("index")
        if index is not None:
            if type(index) is not int:
                raise ControlError("EINVAL", "'index' must be a number")
            if not 0 <= index < len(names):
                raise ControlError("EDOM", f"no cell number {index}")
            names = [names[index]]
        cells = []
        for name in names:
            cell = await self._manager.cell(name)
            servers = [host for host, _ in cell.vlservers] if cell is not None else []
            cells.append({"name": name, "servers": servers})
        return {"cells": cells}

    @op("getcellstatus")
    async def getcellstatus(self, request: Request) -> dict[str, Any]:
        """Setuid programs are honoured in the home cell only, as afsd sets cells up."""
        name = request.text("cell", limit=64)
        cell = await self._manager.cell(name)
        if cell is None:
            raise ControlError("ENOENT", f"unknown cell {name}")
        flags = 0 if cell.name.lower() == self._this_cell.lower() else CELL_NO_SETUID
        if cell.linked_cell:
            flags |= CELL_LINKED
        return {"cell": cell.name, "flags": flags, "setuid": not flags & CELL_NO_SETUID}

    @op("checkservers")
    async def checkservers(self, request: Request) -> dict[str, Any]:
        """The fileservers that are down, asking each first unless `fast`.  With
        `interval`, the probe interval instead: 0 asks, more sets it (root only) and
        answers the old one.  Servers are not kept by cell: `cell` and `all` only check
        that the cell exists."""
        interval = request.args.get("interval")
        if interval is not None:
            if type(interval) is not int or not 0 <= interval <= MAX_PROBE_INTERVAL:
                raise ControlError("EINVAL", f"'interval' is 0 to {MAX_PROBE_INTERVAL} seconds")
            old = int(self._manager.probe_interval())
            if interval:
                if not request.from_root:
                    raise ControlError("EACCES", "only root may change the probe interval")
                self._manager.probe_interval(float(interval))
            return {"interval": old}
        cell = request.text("cell", None, limit=64)
        if cell is not None and await self._manager.cell(cell) is None:
            raise ControlError("ENOENT", f"unknown cell {cell}")
        down = await self._manager.check_servers(probe=not request.args.get("fast"))
        return {"down": down}

    @op("checkvolumes")
    async def checkvolumes(self, request: Request) -> dict[str, Any]:
        """Forget the volume locations, so each volume is looked up again at its next use;
        anyone may, as in OpenAFS: it costs a VL call per volume."""
        self._manager.forget_volume_locations()
        return {}

    @op("getserverprefs")
    async def getserverprefs(self, request: Request) -> dict[str, Any]:
        """[[address, rank], ...] of the fileservers met (or, with `vlservers`, of the
        known cells' VL servers); lower ranks are tried first."""
        ranks = await self._manager.server_ranks(vlservers=bool(request.args.get("vlservers")))
        return {"servers": [[address, rank] for address, rank in ranks]}

    @op("setserverprefs")
    async def setserverprefs(self, request: Request) -> dict[str, Any]:
        """`servers` [[address, rank], ...] for fileservers; root only.  VL servers are
        asked in the order the cell lists them: `vlservers` is refused."""
        request.require_root("set server preferences")
        if request.args.get("vlservers"):
            raise ControlError("EINVAL", "VL server preferences are not kept")
        servers = request.args.get("servers")
        if not isinstance(servers, list) or len(servers) > MAX_PREFS:
            raise ControlError("EINVAL", "'servers' must be a list of [address, rank] pairs")
        checked = []
        for entry in servers:
            try:
                address, rank = entry
                address = str(ipaddress.IPv4Address(address))
            except (TypeError, ValueError):
                raise ControlError("EINVAL", f"not [address, rank]: {entry!r}") from None
            if type(rank) is not int or not 0 <= rank <= MAX_RANK:
                raise ControlError("EINVAL", f"a rank is 0 to {MAX_RANK}: {entry!r}")
            checked.append((address, rank))
        for address, rank in checked:
            self._manager.set_server_rank(address, rank)
        return {"servers": [list(pair) for pair in checked]}

    @op("getcacheparms")
    async def getcacheparms(self, request: Request) -> dict[str, Any]:
        size, used = await self._cache_usage()
        return {"blocks": size, "used": used}
