"""The cells this cache manager knows: CellServDB, ThisCell and CellAlias, then DNS, and
what root adds at run time (`fs newcell`, `fs newalias`, `fs setcell`), kept only for the
daemon's life as in OpenAFS.

A name is looked up as given, then as an alias; a cell missing from CellServDB is asked of
DNS (SRV, then AFSDB) when a resolver is configured.  The resolver (afsfuse/vl/dns.py)
caches answers for their TTL and "no such cell" for a while; lookups that failed outright
(timeout, server failure) are remembered here for `negative_ttl`, so that `ls /afs/typo` in
a loop does not turn into a DNS query per call while DNS is unwell.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from afsfuse.rx.interfaces.vl import VL
from afsfuse.vl.cellservdb import CellEntry, cell_key
from afsfuse.vl.dns import CellLookupError, CellResolver

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cell:
    name: str
    #: VL servers as (address, port).
    vlservers: tuple[tuple[str, int], ...]
    source: str = "CellServDB"  # or "DNS", or "newcell" (added at run time)
    linked_cell: str | None = None


class CellDB:
    def __init__(
        self,
        cells: dict[str, CellEntry],
        this_cell: str,
        aliases: dict[str, str] | None = None,
        resolver: CellResolver | None = None,
        *,
        negative_ttl: float = 60.0,
    ) -> None:
        self._configured = {
            key: Cell(
                entry.name,
                tuple((s.address, s.port or VL.port) for s in entry.servers),
                linked_cell=entry.linked_cell,
            )
            for key, entry in cells.items()
            if entry.servers
        }
        self.this_cell = this_cell
        self._aliases = dict(aliases or {})
        self._resolver = resolver
        self.negative_ttl = negative_ttl
        #: Cells DNS told us about (listed by known_cells) and lookups that failed lately.
        self._found: dict[str, Cell] = {}
        self._failed: dict[str, float] = {}
        #: The cells whose setuid programs are honoured: the home cell, as afsd sets it up.
        self._setuid = {cell_key(this_cell)}

    def known(self) -> list[Cell]:
        """Every cell known now: CellServDB's in their order, then those DNS found.  No
        lookup is made."""
        return [*self._configured.values(), *self._found.values()]

    def known_cells(self) -> list[str]:
        return [c.name for c in self.known()]

    def aliases(self) -> dict[str, str]:
        """alias -> real cell name."""
        return dict(self._aliases)

    def configured(self, name: str) -> Cell | None:
        """A cell from the configuration files only (no DNS), by name or alias."""
        key = cell_key(name)
        cell = self._configured.get(key)
        if cell is None and name in self._aliases:
            cell = self._configured.get(cell_key(self._aliases[name]))
        return cell

    async def lookup(self, name: str) -> Cell | None:
        """The cell called `name` (or aliased so), or None when nobody knows it."""
        cell = self.configured(name)
        if cell is not None:
            return cell
        if self._resolver is None:
            return None
        key = cell_key(self._aliases.get(name, name))
        now = trio.current_time()
        if self._failed.get(key, -1.0) > now:
            return None
        try:
            # The resolver caches answers for their TTL and "no such cell" for a while.
            servers = await self._resolver.lookup(key)
        except CellLookupError as e:
            log.info("DNS lookup of cell %s failed: %s", key, e)
            self._failed[key] = now + self.negative_ttl
            return None
        if servers is None or not servers.addresses:
            self._found.pop(key, None)
            return None
        cell = Cell(key, tuple(servers.addresses), "DNS")
        self._found[key] = cell
        return cell

    def _taken(self, name: str) -> bool:
        key = cell_key(name)
        return key in self._configured or key in self._found or name in self._aliases

    def add_alias(self, alias: str, cell: str) -> None:
        """`alias` names `cell` from now on; as in OpenAFS the cell need not be known yet.
        ValueError when the name is already a cell's or an alias's."""
        if self._taken(alias):
            raise ValueError(f"{alias} is already the name of a cell or alias")
        self._aliases[alias] = cell

    def add_cell(
        self, name: str, vlservers: tuple[tuple[str, int], ...], linked_cell: str | None = None
    ) -> Cell:
        """A cell and its VL servers given at run time; a known cell's servers are replaced
        by these.  ValueError when the name is an alias's."""
        if name in self._aliases:
            raise ValueError(f"{name} is already an alias")
        key = cell_key(name)
        known = self._configured.get(key)
        cell = Cell(known.name if known else key, vlservers, "newcell", linked_cell)
        self._configured[key] = cell
        self._found.pop(key, None)
        self._failed.pop(key, None)
        return cell

    def setuid_allowed(self, name: str) -> bool:
        return cell_key(self._aliases.get(name, name)) in self._setuid

    def allow_setuid(self, name: str, allowed: bool) -> None:
        key = cell_key(self._aliases.get(name, name))
        if allowed:
            self._setuid.add(key)
        else:
            self._setuid.discard(key)
