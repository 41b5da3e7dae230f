"""Read-ahead across a directory: the next small files of a directory read file by file.

`cat dir/*`, `grep pattern dir/*` or a build reading headers open many small files of one
directory one after another.  Each costs a FetchData64, and a fileserver starts every reply
at one packet per round trip (a few KiB: two round trips), so on a distant server the reader
waits that long for every file.  When a token reads (from offset 0) two files of a directory
that follow each other in the directory's order or in name order (a shell glob's), the next
AHEAD_FILES files of that order are fetched in the background, whole, each in one call: at
most CALLS calls at a time (an Rx connection carries four; one stays free for readers) and
AHEAD_BYTES in flight.

Only a file whose status is held under a callback, whose length is below a chunk, and which
that token may surely read (`Vnode.allows`, as the read path requires before it serves
cached data) is fetched, with that token.  What is fetched is only a cached chunk under its
data version: every reader still passes the read path's own rights check before it is
served, so another user's rights never show anything.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

import trio

from afsfuse.fs.dir_edit import Listing
from afsfuse.fs.directories import DirectoryCache
from afsfuse.fs.reader import ChunkReader
from afsfuse.fs.vnode import AfsFid, Vnode, VnodeTable
from afsfuse.keyring.token import Token
from afsfuse.rx.interfaces.fs import PRSFS_READ

#: Files fetched ahead of a reader going through a directory.
AHEAD_FILES = 16
#: Bytes of those being fetched at once, at most.
AHEAD_BYTES = 4 << 20
#: Calls fetching ahead at once (all readers together).
CALLS = 3
#: Directories whose reading orders are kept, and readers (directory, token) followed.
DIRECTORIES = 8
READERS = 64


class Orders(NamedTuple):
    """A listing's files in directory order and in name order, with each fid's place."""

    version: int
    sequences: tuple[list[AfsFid], list[AfsFid]]
    places: tuple[dict[AfsFid, int], dict[AfsFid, int]]


class Reader(NamedTuple):
    """Where a token reads in a directory: its last file, and how far ahead was fetched
    (the order and place, or -1 before it was)."""

    last: AfsFid
    order: int
    upto: int


class SiblingReadAhead:
    """`read(fid, vnode, token)` is told of every read from offset 0; `nursery()` is where
    the fetches run (None: not running, nothing fetched ahead)."""

    def __init__(
        self,
        vnodes: VnodeTable,
        dirs: DirectoryCache,
        reader: ChunkReader,
        *,
        nursery: Callable[[], trio.Nursery | None],
    ) -> None:
        self.vnodes = vnodes
        self.dirs = dirs
        self.reader = reader
        self._nursery = nursery
        self._orders: OrderedDict[AfsFid, Orders] = OrderedDict()
        self._readers: OrderedDict[tuple[AfsFid, Token | None], Reader] = OrderedDict()
        self._calls = trio.Semaphore(CALLS)
        self.bytes_ahead = 0

    def read(self, fid: AfsFid, vnode: Vnode, token: Token | None) -> None:
        status = vnode.status
        if status is None or not status.is_file:
            return
        dir_fid = AfsFid(fid.cell, fid.volume, status.parent_vnode, status.parent_unique)
        key = (dir_fid, token)
        readers = self._readers
        previous = readers.pop(key, None)
        readers[key] = Reader(fid, -1, -1)
        if len(readers) > READERS:
            del readers[next(iter(readers))]
        if previous is None or previous.last == fid:
            return
        held = self.dirs.held.get(dir_fid)
        nursery = self._nursery()
        if held is None or nursery is None:
            return
        orders = self._orders_of(dir_fid, *held)
        for order, (sequence, places) in enumerate(zip(*orders[1:], strict=True)):
            place = places.get(fid)
            if place is None or places.get(previous.last) != place - 1:
                continue
            start = (
                previous.upto if previous.order == order and previous.upto > place else place + 1
            )
            end = min(place + 1 + AHEAD_FILES, len(sequence))
            upto = self._ahead(nursery, sequence[start:end], token, start)
            readers[key] = Reader(fid, order, upto)
            return

    def _orders_of(self, dir_fid: AfsFid, version: int, listing: Listing) -> Orders:
        orders = self._orders.get(dir_fid)
        if orders is not None and orders.version == version:
            self._orders.move_to_end(dir_fid)
            return orders
        entries = [
            (name, AfsFid(dir_fid.cell, dir_fid.volume, e.vnode, e.unique))
            for name, e in listing.items()
            if name not in (b".", b"..")
        ]
        by_dir = [fid for _, fid in entries]
        by_name = [fid for _, fid in sorted(entries)]
        orders = Orders(
            version,
            (by_dir, by_name),
            ({f: i for i, f in enumerate(by_dir)}, {f: i for i, f in enumerate(by_name)}),
        )
        self._orders[dir_fid] = orders
        if len(self._orders) > DIRECTORIES:
            del self._orders[next(iter(self._orders))]
        return orders

    def _ahead(
        self, nursery: trio.Nursery, fids: list[AfsFid], token: Token | None, start: int
    ) -> int:
        """Start fetching those of `fids` (from place `start` of their order) that qualify;
        the place up to which the order was gone through."""
        now = trio.current_time()
        reader = self.reader
        for offset, fid in enumerate(fids):
            vnode = self.vnodes.peek(fid)
            if vnode is None or not vnode.allows(token, PRSFS_READ, now):
                continue
            status = vnode.status
            assert status is not None
            size = status.size
            if not status.is_file or not 0 < size < reader.chunk_size or not status.mode & 0o400:
                continue
            key = (fid, status.data_version, 0)
            if key in reader.memory or key in reader.inflight:
                continue
            if self.bytes_ahead + size > AHEAD_BYTES:
                return start + offset
            claimed = {0: trio.Event()}
            reader.inflight[key] = claimed[0]
            self.bytes_ahead += size
            nursery.start_soon(self._fetch, fid, vnode, token, status.data_version, size, claimed)
        return start + len(fids)

    async def _fetch(
        self,
        fid: AfsFid,
        vnode: Vnode,
        token: Token | None,
        version: int,
        size: int,
        claimed: dict[int, trio.Event],
    ) -> None:
        try:
            async with self._calls:
                await self.reader.prefetch(fid, vnode, token, version, claimed)
        finally:
            self.bytes_ahead -= size
            self.reader.settle(fid, version, claimed)  # cancelled before it started
