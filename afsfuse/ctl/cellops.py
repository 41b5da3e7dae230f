"""Control ops on the cache manager as a whole: its cells, its fileservers, its volume
location cache and its disk cache (`fs listcells`, `fs listaliases`, `fs newcell`, `fs
newalias`, `fs getcellstatus`, `fs setcell`, `fs checkservers`, `fs checkvolumes`, `fs
getserverprefs`, `fs setserverprefs`, `fs getcacheparms`).

What root adds or sets for cells is kept for the daemon's life only, as in OpenAFS (whose
cache manager forgets it at reboot): the configuration files are never written."""

from __future__ import annotations

import errno
import ipaddress
import os
from collections.abc import Awaitable, Callable
from typing import Any

from afsfuse.ctl.server import ControlError, Request, op
from afsfuse.fs.api import CacheManagerApi
from afsfuse.fs.errors import FsError
from afsfuse.rx.interfaces.vl import VL
from afsfuse.vl.rank import MAX_RANK

#: Cell status bits as OpenAFS's VIOC_GETCELLSTATUS gives them.
CELL_NO_SETUID = 0x02
CELL_LINKED = 0x20
#: `fs checkservers -interval` takes at most ten minutes.
MAX_PROBE_INTERVAL = 600
#: Preferences set in one request.
MAX_PREFS = 1024
#: The longest cell name (MAXCELLCHARS less its NUL), and the VL servers fs newcell sends.
MAX_CELL_NAME = 63
MAX_CELL_SERVERS = 8

#: The disk cache's size and what it holds, in KiB.
CacheUsage = Callable[[], Awaitable[tuple[int, int]]]


def _cell_name(request: Request, name: str) -> str:
    """A name that can be one in /afs: not empty, no '/' or blanks, not hidden."""
    text: str = request.text(name, limit=MAX_CELL_NAME)
    if not text or text.startswith(".") or any(c == "/" or c.isspace() for c in text):
        raise ControlError("EINVAL", f"not a cell name: {text!r}")
    return text


def _root_only(request: Request, what: str) -> None:
    """EACCES, as OpenAFS refuses its cell pioctls to anyone but root."""
    if not request.from_root:
        raise ControlError("EACCES", f"only root may {what}")


def _port(value: Any) -> int:
    if type(value) is not int or not 0 < value < 0x10000:
        raise ControlError("EINVAL", f"not a port: {value!r}")
    return value


class CellOps:
    """listcells, listaliases, newcell, newalias, getcellstatus, setcell, checkservers,
    checkvolumes, getserverprefs, setserverprefs, getcacheparms."""

    def __init__(self, manager: CacheManagerApi, cache_usage: CacheUsage) -> None:
        self._manager = manager
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

    @op("listaliases")
    async def listaliases(self, request: Request) -> dict[str, Any]:
        """Every alias (CellAlias's, then those added), or with `index` that one only (EDOM
        past the end, which ends `fs listaliases`)."""
        aliases = [[alias, cell] for alias, cell in self._manager.aliases().items()]
        index = request.args.get("index")
        if index is not None:
            if type(index) is not int:
                raise ControlError("EINVAL", "'index' must be a number")
            if not 0 <= index < len(aliases):
                raise ControlError("EDOM", f"no alias number {index}")
            aliases = [aliases[index]]
        return {"aliases": aliases}

    @op("newalias")
    async def newalias(self, request: Request) -> dict[str, Any]:
        """`alias` names `cell` from now on (root only): /afs shows it as a symbolic link to
        the cell.  EEXIST when the name is already a cell's or an alias's."""
        _root_only(request, "add a cell alias")
        alias, cell = _cell_name(request, "alias"), _cell_name(request, "cell")
        try:
            self._manager.add_alias(alias, cell)
        except FsError as e:
            raise ControlError("EEXIST", e.strerror or os.strerror(errno.EEXIST)) from None
        return {"alias": alias, "cell": cell}

    @op("newcell")
    async def newcell(self, request: Request) -> dict[str, Any]:
        """`cell` with its database `servers` (IPv4 addresses), VL on `vlport` (default
        7003), root only; a known cell's servers are replaced.  Usable under /afs at
        once; setuid is off in it, as `fs newcell` leaves it in OpenAFS."""
        _root_only(request, "add a cell")
        name = _cell_name(request, "cell")
        linked = request.args.get("linked_cell")
        if linked is not None:
            linked = _cell_name(request, "linked_cell")
        port = _port(request.args.get("vlport", VL.port))
        servers = request.args.get("servers")
        if not isinstance(servers, list) or not 0 < len(servers) <= MAX_CELL_SERVERS:
            raise ControlError("EINVAL", f"'servers' must list 1 to {MAX_CELL_SERVERS} addresses")
        try:
            addresses = [str(ipaddress.IPv4Address(server)) for server in servers]
        except (TypeError, ValueError) as e:
            raise ControlError("EINVAL", f"not an IPv4 address: {e}") from None
        try:
            cell = self._manager.add_cell(name, [(a, port) for a in addresses], linked)
        except FsError as e:
            raise ControlError("EEXIST", e.strerror or os.strerror(errno.EEXIST)) from None
        self._manager.allow_setuid(cell.name, False)
        return {"cell": cell.name, "servers": addresses, "linked_cell": linked}

    @op("getcellstatus")
    async def getcellstatus(self, request: Request) -> dict[str, Any]:
        """Whether setuid programs are honoured in a cell: the home cell only, as afsd sets
        cells up, unless root said otherwise (setcell).  The mount is nosuid whatever this
        says, so it is a record for the tools, never a way to run setuid from AFS."""
        name = request.text("cell", limit=64)
        cell = await self._manager.cell(name)
        if cell is None:
            raise ControlError("ENOENT", f"unknown cell {name}")
        flags = 0 if self._manager.setuid_allowed(cell.name) else CELL_NO_SETUID
        if cell.linked_cell:
            flags |= CELL_LINKED
        return {"cell": cell.name, "flags": flags, "setuid": not flags & CELL_NO_SETUID}

    @op("setcell")
    async def setcell(self, request: Request) -> dict[str, Any]:
        """Record whether setuid programs are honoured in `cell` (`setuid`), root only;
        getcellstatus answers it back.  Of OpenAFS's cell flags only this one can be set,
        as with its VIOC_SETCELLSTATUS."""
        _root_only(request, "set a cell's status")
        name = request.text("cell", limit=64)
        setuid = request.args.get("setuid")
        if type(setuid) is not bool:
            raise ControlError("EINVAL", "'setuid' must be true or false")
        cell = await self._manager.cell(name)
        if cell is None:
            raise ControlError("ENOENT", f"unknown cell {name}")
        self._manager.allow_setuid(cell.name, setuid)
        return {"cell": cell.name, "setuid": setuid}

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
        """`servers` [[address, rank], ...] for fileservers (with `vlservers`, for VL
        servers); root only.  A rank set here wins over distance and round trip."""
        request.require_root("set server preferences")
        vlservers = bool(request.args.get("vlservers"))
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
            self._manager.set_server_rank(address, rank, vlservers)
        return {"servers": [list(pair) for pair in checked]}

    @op("getcacheparms")
    async def getcacheparms(self, request: Request) -> dict[str, Any]:
        size, used = await self._cache_usage()
        return {"blocks": size, "used": used}
