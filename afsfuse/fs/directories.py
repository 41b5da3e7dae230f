"""The directory cache: listings by data version, fetched whole, parsed, kept in memory.

A listing is fetched with one FetchData64 of the whole directory, kept in the disk cache
under its data version and parsed into memory (the most recently used `limit` of them).
Our own changes are applied to the listing held (`edit_dir`, fs/dir_edit.py), so a listing
in memory may be ahead of the disk cache.
"""

from __future__ import annotations

import errno
from collections import OrderedDict
from typing import Any

import trio

from afsfuse.cache.aio import AsyncCacheStore, CleanWriter
from afsfuse.cache.store import CleanItem
from afsfuse.fs import dir as afsdir
from afsfuse.fs.dir_edit import Listing, ListingEdit
from afsfuse.fs.errors import FsError
from afsfuse.fs.operation import FsOperation
from afsfuse.fs.stats import Stats
from afsfuse.fs.status import StatusKeeper, afs_fid
from afsfuse.fs.vnode import AfsFid, Status, Vnode
from afsfuse.keyring.token import Token
from afsfuse.rx.interfaces.fs import FS, PRSFS_LOOKUP

#: A directory blob is at most this big (1023 pages of 2 KiB).
MAX_DIRECTORY = afsdir.MAX_PAGES * afsdir.PAGE_SIZE


class DirectoryCache:
    def __init__(
        self,
        status: StatusKeeper,
        cache: AsyncCacheStore,
        clean_writer: CleanWriter,
        stats: Stats,
        *,
        limit: int,
    ) -> None:
        self.status = status
        self.cache = cache
        self.clean_writer = clean_writer
        self.stats = stats
        self.limit = limit
        #: Parsed directories by fid: (data version, entries), least recently used first.
        self.held: OrderedDict[AfsFid, tuple[int, Listing]] = OrderedDict()

    def drop(self, fid: AfsFid) -> None:
        self.held.pop(fid, None)

    def clear(self) -> None:
        self.held.clear()

    async def listing(self, fid: AfsFid, token: Token | None) -> Listing:
        """The entries of directory `fid` for `token`, by data version (fetched whole)."""
        vnode, trusted = await self.status.status_for(fid, token, PRSFS_LOOKUP)
        assert vnode.status is not None
        if not vnode.status.is_dir:
            raise FsError(errno.ENOTDIR)
        if not trusted:
            rights = vnode.rights(token, trio.current_time())
            if rights is not None:
                # A directory's CallerAccess is its ACL for this caller: the server's word.
                raise FsError(errno.EACCES)
        for _ in range(3):
            version = vnode.status.data_version
            held = self.held.get(fid)
            if trusted and held is not None and held[0] == version:
                self.held.move_to_end(fid)
                self.stats.data_hits += 1
                return held[1]
            blob = None
            if trusted:
                blob = await self.cache.get_dir(fid, version)
            if blob is not None:
                self.stats.data_hits += 1
            else:
                self.stats.data_misses += 1
                fetched_version, blob = await self.fetch_whole(fid, token, vnode)
                if fetched_version != version:
                    continue  # changed under us: go again with the new version
                await self.clean_writer.put(CleanItem(fid, version, None, blob))
            parsed = afsdir.parse_directory(blob)
            self.keep(fid, version, parsed)
            return parsed
        raise FsError(errno.EIO, "directory keeps changing while being read")

    def keep(self, fid: AfsFid, version: int, entries: Listing) -> None:
        self.held[fid] = (version, entries)
        self.held.move_to_end(fid)
        while len(self.held) > self.limit:
            self.held.popitem(last=False)

    async def fetch_whole(
        self, fid: AfsFid, token: Token | None, vnode: Vnode
    ) -> tuple[int, bytes]:
        """The whole contents of a (small) vnode: directory or symlink."""
        op = self.status.operation(token, "FS.FetchData64", vnode)
        data, reply = await op.run(
            lambda conn, server: FS.FetchData64(conn, afs_fid(fid), 0, MAX_DIRECTORY)
        )
        self.stats.bytes_fetched += len(data)
        status = op.commit(vnode, reply.OutStatus, reply.CallBack)
        return status.data_version, data

    def edit_dir(
        self, op: FsOperation, vnode: Vnode, afs_status: Any, edit: ListingEdit | None
    ) -> None:
        """The new status of a directory we changed.  When its data version is exactly one
        past the listing we hold, the fileserver made our change and nothing else: the same
        edit to our listing gives its new contents, where fetching it again would make n
        creates in one directory cost n whole-directory fetches (OpenAFS edits its cached
        copy on the same condition).  The edited listing lives in memory only: writing the
        whole blob back to the disk cache would cost as much as the fetch it saves.  Any
        other version means someone else changed the directory too: the listing is dropped
        and fetched when next needed."""
        held = self.held.get(vnode.fid)
        version = Status.from_afs(afs_status).data_version
        ours = None
        if edit is not None and held is not None and held[0] == version - 1:
            try:
                edit(held[1])
            except KeyError:
                pass  # the listing lacks what the server changed: fetch it again
            else:
                self.keep(vnode.fid, version, held[1])
                ours = version
        op.commit(vnode, afs_status, ours=ours)
