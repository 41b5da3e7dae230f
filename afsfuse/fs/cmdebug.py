"""What OpenAFS's `cmdebug` is shown of this cache manager: its cache entries, locks, cells
and cache configuration, answered on the callback service (fs/cmservice.py).

Read-only: every answer comes from tables the cache manager keeps anyway; nothing is
fetched, looked up, created or changed for it.  Anyone who reaches the callback port may
ask for locks, cells and the cache configuration (as with OpenAFS).  Cache entries show
the fids, lengths and data versions of whatever the mount's users hold, whatever the
asker's rights to them, so only root and the mount's owner on this machine get them
(fs/cmservice.py asks who sent the request); never a name or a byte of data, and nothing
of tokens.

Cache entries (GetCE, GetCE64), one per vnode record holding a status (fs/vnode.py):

- addr: the entry's place in the listing, from 1.  OpenAFS gives its vcache's address,
  which only tells entries apart (and cmdebug takes a 0 for a process line).
- cell: the cell's number, which GetCellByNum names: CellServDB's cells from 1 in their
  order there, then cells DNS found, numbered when first listed.
- Length: as this mount sees the file (writes not yet stored included); DataVersion: its
  low 32 bits, as OpenAFS sends it.
- callback: the fileserver's IPv4 address while its callback promise is trusted, else 0
  (OpenAFS: its server record's address); cbExpires: until when the promise is trusted
  (Unix time), 0 once broken.
- refCount: the kernel's references to the inodes showing the file (FUSE lookups); opens
  and writers: open file handles, and those open for writing.
- mvstat: 0 file, 1 mount point (a symlink without execute bits, OpenAFS's own test),
  2 volume root (vnode 1), 3 directory and 4 symlink (the values of OpenAFS's Windows
  client, which cmdebug prints as such).
- states: 0x1 stat'd (the status is trusted: its callback holds), 0x2 backup and 0x4
  read-only volume (as the volume location cache knows it; a backup volume is both),
  0x20 dirty (written data the fileserver does not have yet).
- lock: the file's writer lock (fs/writer.py: writes, truncations and stores of a file go
  one at a time): write-locked while held, with the tasks waiting for it.  A reader never
  takes it, so an idle mount shows no locked entry.

Locks (GetLock): the daemon's shared locks.  "cache_writes" is held while a batch of
fetched data goes to the disk cache; "cache_threads" is the pool of worker threads the
disk cache runs in, each busy thread shown as a read lock and each call waiting for a
thread as a waiter.

Cells (GetCellServDB by index, GetCellByNum by number): the cells known, with their VL
servers' IPv4 addresses.  Server preferences (GetServerPrefs): each fileserver met, with
its rank (vl/rank.py).

Cache configuration (GetCacheConfig), OpenAFS's cm_initparams_v1: chunk files are how many
full chunks the cache size holds; stat caches how many vnode records are kept at most;
data caches the chunks its memory keeps at most; volume caches the VLDB entries held now
(afsfuse bounds them by age, not number); the chunk size; the cache size in KiB; a disk
cache that does not set the clock.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Sequence
from typing import Any

import trio

from afsfuse.cache.store import CacheStore
from afsfuse.fs.cell import Cell, CellDB
from afsfuse.fs.server import ServerTable
from afsfuse.fs.vnode import AfsFid, Vnode, VnodeTable
from afsfuse.fs.volume import VolumeCache
from afsfuse.fs.writer import Writer
from afsfuse.rx.interfaces.cb import (
    AFSMAXCELLHOSTS,
    AFSDBCacheEntry,
    AFSDBCacheEntry64,
    AFSDBLock,
    AFSDBLockDesc,
)
from afsfuse.rx.interfaces.fs import AFSFid
from afsfuse.rx.interfaces.vl import BACKVOL, ROVOL
from afsfuse.rx.packet import wrap_int32
from afsfuse.vl.cellservdb import cell_key

#: How the kernel holds a file: references to its inodes, open handles, writing handles.
Holders = Callable[[AfsFid], tuple[int, int, int]]
#: A lock the GetLock listing shows.
SharedLock = trio.Lock | trio.CapacityLimiter

# Lock modes (OpenAFS lock.h), entry kinds (mvstat) and states bits (afs.h).
READ_LOCK, WRITE_LOCK = 1, 2
FILE, MOUNT_POINT, VOLUME_ROOT, DIRECTORY, SYMLINK = range(5)
C_STATD, C_BACKUP, C_RO, C_DIRTY = 0x1, 0x2, 0x4, 0x20
#: A listing taken at index 0 serves the indexes after it for this long (seconds): cmdebug
#: asks for each entry by index, and one answer must not cost a walk of the whole table.
LISTING_AGE = 60.0
_SHORT = 0x7FFF


def _short(n: int) -> int:
    return min(n, _SHORT)


def no_holders(fid: AfsFid) -> tuple[int, int, int]:
    """Holders without a FUSE face (the cache manager alone): none."""
    return 0, 0, 0


def lock_desc(lock: SharedLock | None) -> Any:
    """An AFSDBLockDesc of a lock's state now; a trio lock has no pids to show."""
    if lock is None:
        return AFSDBLockDesc()
    if isinstance(lock, trio.CapacityLimiter):
        shared = lock.statistics()
        waiting = shared.tasks_waiting
        return AFSDBLockDesc(
            waitStates=READ_LOCK if waiting else 0,
            readersReading=_short(shared.borrowed_tokens),
            numWaiting=_short(waiting),
        )
    held = lock.statistics()
    waiting = held.tasks_waiting
    return AFSDBLockDesc(
        waitStates=WRITE_LOCK if waiting else 0,
        exclLocked=WRITE_LOCK if held.locked else 0,
        numWaiting=_short(waiting),
    )


def _ipv4(address: str | None) -> int:
    try:
        return int(ipaddress.IPv4Address(address or ""))
    except ValueError:
        return 0


class CacheView:
    """The cache manager's tables as cmdebug's RPCs list them."""

    def __init__(
        self,
        vnodes: VnodeTable,
        cells: CellDB,
        volumes: VolumeCache,
        servers: ServerTable,
        store: CacheStore,
        writer: Writer,
        *,
        chunk_memory: int,
        locks: Sequence[tuple[str, SharedLock]],
    ) -> None:
        self.vnodes = vnodes
        self.cells = cells
        self.volumes = volumes
        self.servers = servers
        self.store = store
        self.writer = writer
        self.chunk_memory = chunk_memory
        self.locks = list(locks)
        #: Set by the FUSE face (vfs/operations.py) once it exists.
        self.holders: Holders = no_holders
        #: Cell numbers by cell_key, and names by number.
        self._numbers: dict[str, int] = {}
        self._names: dict[int, str] = {}
        self._listing: list[Vnode] = []
        self._listed_at = float("-inf")

    # -- cells -------------------------------------------------------------------------

    def _known(self) -> list[Cell]:
        """The cells known, each given its number on first sight."""
        known = self.cells.known()
        for cell in known:
            self._number(cell.name)
        return known

    def _number(self, name: str) -> int:
        key = cell_key(name)
        number = self._numbers.get(key)
        if number is None:
            number = self._numbers[key] = len(self._numbers) + 1
            self._names[number] = name
        return number

    def cell_number(self, name: str) -> int:
        self._known()  # CellServDB's order first
        return self._number(name)

    def cell_by_index(self, index: int) -> tuple[str, tuple[int, ...]]:
        """Name and VL server addresses of the index-th cell; ("", ()) past the end."""
        known = self._known()
        return _cell_entry(known[index]) if 0 <= index < len(known) else ("", ())

    def cell_by_number(self, number: int) -> tuple[str, tuple[int, ...]]:
        """Name and VL server addresses of cell `number` (none if it is known no more);
        ("", ()) for no such number."""
        known = self._known()
        name = self._names.get(number)
        if name is None:
            return "", ()
        for cell in known:
            if cell_key(cell.name) == cell_key(name):
                return _cell_entry(cell)
        return name, ()

    def server_pref(self, index: int) -> tuple[int, int]:
        """Address and rank of the index-th fileserver; all ones past the end."""
        servers = self.servers.all()
        if not 0 <= index < len(servers):
            return 0xFFFFFFFF, -1
        return _ipv4(servers[index].addr), self.servers.rank(servers[index])

    # -- cache entries -----------------------------------------------------------------

    def cache_entry(self, index: int, wide: bool) -> Any | None:
        """The index-th cache entry (AFSDBCacheEntry64 if `wide`), None past the end."""
        now = trio.current_time()
        if index == 0 or now > self._listed_at + LISTING_AGE:
            self._listing = [v for v in self.vnodes.all() if v.status is not None]
            self._listed_at = now
        if not 0 <= index < len(self._listing):
            self._listing = []
            self._listed_at = float("-inf")
            return None
        return self._entry(index, self._listing[index], now, wide)

    def _entry(self, index: int, vnode: Vnode, now: float, wide: bool) -> Any:
        fid, status = vnode.fid, vnode.status
        assert status is not None
        dirty = self.store.dirty.get(fid)
        length = status.size if dirty is None else dirty.length
        valid = vnode.callback_valid(now)
        expires = 0
        if vnode.cb_expires > 0:
            expires = wrap_int32(int(time.time() + vnode.cb_expires - now))
        refs, opens, writers = self.holders(fid)
        entry = AFSDBCacheEntry64 if wide else AFSDBCacheEntry
        return entry(
            addr=index + 1,
            cell=self.cell_number(fid.cell),
            netFid=AFSFid(fid.volume, fid.vnode, fid.unique),
            Length=length if wide else wrap_int32(length & 0xFFFFFFFF),
            DataVersion=wrap_int32(status.data_version & 0xFFFFFFFF),
            lock=lock_desc(self.writer.file_lock(fid)),
            callback=wrap_int32(_ipv4(vnode.cb_server)) if valid else 0,
            cbExpires=expires,
            refCount=_short(refs),
            opens=_short(opens),
            writers=_short(writers),
            mvstat=_kind(vnode),
            states=self._states(vnode, valid, dirty is not None),
        )

    def _states(self, vnode: Vnode, valid: bool, dirty: bool) -> int:
        fid = vnode.fid
        states = (C_STATD if valid else 0) | (C_DIRTY if dirty else 0)
        location = self.volumes.cached(fid.cell, fid.volume)
        kind = None if location is None else location.type_of(fid.volume)
        if kind == ROVOL:
            states |= C_RO
        elif kind == BACKVOL:
            states |= C_RO | C_BACKUP
        return states

    # -- locks and configuration -------------------------------------------------------

    def lock(self, index: int) -> Any | None:
        """The index-th shared lock as an AFSDBLock, None past the end."""
        if not 0 <= index < len(self.locks):
            return None
        name, lock = self.locks[index]
        return AFSDBLock(name=name, lock=lock_desc(lock))

    def cache_config(self) -> tuple[int, ...]:
        """cm_initparams_v1's nine words (the module docstring says what each is here)."""
        chunk = self.store.chunk_size
        size = self.store.size_limit
        words = (
            size // chunk,
            self.vnodes.limit,
            self.chunk_memory // chunk,
            self.volumes.held(),
            chunk,
            chunk,
            size // 1024,
            0,
            0,
        )
        return tuple(min(w, 0xFFFFFFFF) for w in words)


def _cell_entry(cell: Cell) -> tuple[str, tuple[int, ...]]:
    hosts = [_ipv4(host) for host, _port in cell.vlservers]
    return cell.name, tuple(h for h in hosts if h)[:AFSMAXCELLHOSTS]


def _kind(vnode: Vnode) -> int:
    status = vnode.status
    assert status is not None
    if vnode.fid.vnode == 1:
        return VOLUME_ROOT
    if status.is_symlink:
        return SYMLINK if status.mode & 0o111 else MOUNT_POINT
    return DIRECTORY if status.is_dir else FILE
