"""The dynamic root: /afs as built from the cells this cache manager knows.

`/afs/<cell>` is a regular mount of the cell's root.cell (RO when it has one), `/afs/.<cell>`
the RW one; each cell alias is a symlink (`<alias>` -> `<cell>`, `.<alias>` -> `.<cell>`);
`/afs/.:mount` lists nothing, and `.:mount/<cell>:<volume>` is that volume's root
(`%`-style: the named volume, RW unless .readonly/.backup or a numeric id says otherwise).
A name that is not yet a known cell is looked up as a cell (CellServDB, alias, then DNS)
before the answer is "no such file".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from afsfuse.fs.cell import Cell
from afsfuse.vfs.inodes import LinkNode, MountDirNode, MountNode, Node
from afsfuse.vfs.mounts import cell_mount, volume_mount

MOUNT_DIR = ".:mount"


@dataclass(frozen=True)
class Entry:
    """A name in the dynamic tree and how to make (or find) its node."""

    name: str
    key: object
    make: Callable[[int], Node]


def cell_entry(name: str, cell: str, rw: bool) -> Entry:
    spec = cell_mount(cell, rw)
    return Entry(name, ("mount", spec), lambda inode: MountNode(inode, spec=spec))


def link_entry(name: str, target: str) -> Entry:
    data = target.encode()
    return Entry(name, ("link", name), lambda inode: LinkNode(inode, name=name, target=data))


MOUNT_DIR_ENTRY = Entry(MOUNT_DIR, ("mountdir",), lambda inode: MountDirNode(inode))


class CellSource(Protocol):
    """What the dynamic root needs of the cache manager."""

    def known_cells(self) -> list[str]: ...
    def aliases(self) -> dict[str, str]: ...
    def cell(self, name: str) -> Awaitable[Cell | None]: ...


class DynRoot:
    def __init__(self, cells: CellSource) -> None:
        self._cells = cells

    def listing(self) -> list[Entry]:
        """Every name /afs shows: each cell and its RW path, aliases, `.:mount`."""
        entries = [MOUNT_DIR_ENTRY]
        for cell in sorted(self._cells.known_cells(), key=str.lower):
            entries += [cell_entry(cell, cell, False), cell_entry("." + cell, cell, True)]
        for alias, cell in sorted(self._cells.aliases().items()):
            entries += [link_entry(alias, cell), link_entry("." + alias, "." + cell)]
        return entries

    async def lookup(self, name: str) -> Entry | None:
        """The entry called `name` in /afs, asking about unknown cells (DNS included)."""
        for entry in self.listing():
            if entry.name == name:
                return entry
        rw = name.startswith(".")
        bare = name[1:] if rw else name
        # A cell name is a DNS-style name: one label alone is never asked of DNS, so
        # programs probing /afs for dotfiles or single words cost nothing.
        if "." not in bare or bare.startswith(".") or "/" in bare:
            return None
        cell = await self._cells.cell(bare)
        if cell is None:
            return None
        real = cell.name
        if real.lower() != bare.lower():
            # Reached through an alias DNS or CellAlias knows: show it as the alias it is.
            return link_entry(name, ("." if rw else "") + real)
        return cell_entry(name, real, rw)

    async def lookup_volume(self, name: str) -> Entry | None:
        """`<cell>:<volume>` under `.:mount`; the volume itself is checked on traversal."""
        spec = volume_mount(name)
        if spec is None or await self._cells.cell(spec.cell) is None:
            return None
        return Entry(name, ("mount", spec), lambda inode: MountNode(inode, spec=spec))
