"""Per-file records: the last status a fileserver gave us, the callback promise that lets us
trust it, and what each token may do with the file.

Rights are per token: a status or data fetched with one user's token is only handed to
another user once that user's own rights are known (from a FetchStatus made with their own
token), or when the anonymous rights already allow it.  A callback break forgets every
token's rights along with the promise, because an ACL change breaks callbacks too.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from afsfuse.cache.base import FidKey
from afsfuse.keyring.token import Token
from afsfuse.rx.interfaces.fs import FILE_DIRECTORY, FILE_FILE, FILE_SYMLINK

#: A file in a cell: (cell, volume, vnode, unique), the key of everything cached about it.
AfsFid = FidKey

#: Whose rights: the token a request used, or None for anonymous (rxnull).
RightsKey = Token | None

#: Vnode records kept (each about a kilobyte with its promise and rights): as many files
#: as a big build tree, while a daemon that meets millions of files over its life stays
#: within about a hundred megabytes for them.
DEFAULT_VNODE_LIMIT = 100_000


@dataclass(frozen=True)
class Status:
    """An AFSFetchStatus in the terms a filesystem needs; caller_access is for the identity
    the Status was returned to."""

    file_type: int
    mode: int
    nlink: int
    size: int
    data_version: int
    author: int
    owner: int
    group: int
    mtime: int
    server_mtime: int
    caller_access: int
    anonymous_access: int
    parent_vnode: int
    parent_unique: int
    lock_count: int = 0
    #: The size and mtime are this mount's, with writes the fileserver has not got yet:
    #: `data_version` is the version they were written over, which is shorter or longer.
    unstored: bool = field(default=False, compare=False)

    @classmethod
    def from_afs(cls, fs: Any) -> Status:
        lock = fs.lockCount
        return cls(
            file_type=fs.FileType,
            mode=fs.UnixModeBits & 0o7777,
            nlink=fs.LinkCount,
            size=(fs.Length_hi << 32) | fs.Length,
            data_version=(fs.dataVersionHigh << 32) | fs.DataVersion,
            author=fs.Author,
            owner=fs.Owner,
            group=fs.Group,
            mtime=fs.ClientModTime,
            server_mtime=fs.ServerModTime,
            caller_access=fs.CallerAccess,
            anonymous_access=fs.AnonymousAccess,
            parent_vnode=fs.ParentVnode,
            parent_unique=fs.ParentUnique,
            lock_count=lock - (1 << 32) if lock & 0x80000000 else lock,
        )

    @property
    def is_dir(self) -> bool:
        return self.file_type == FILE_DIRECTORY

    @property
    def is_file(self) -> bool:
        return self.file_type == FILE_FILE

    @property
    def is_symlink(self) -> bool:
        """A symlink or a mount point (a mount point has no execute bits)."""
        return self.file_type == FILE_SYMLINK

    def with_access(self, rights: int) -> Status:
        return self if rights == self.caller_access else replace(self, caller_access=rights)


@dataclass(eq=False)
class Vnode:
    """What is known about one fid."""

    fid: AfsFid
    status: Status | None = None
    #: When `status` came (trio clock): a reply to a request sent before then may be older.
    status_taken: float = 0.0
    #: Fileserver address that promised the callback, and until when (trio clock).
    cb_server: str | None = None
    cb_expires: float = 0.0
    #: Bumped by every break; a reply that raced with a break does not get to set a promise.
    breaks: int = 0
    #: Rights per token, known while the callback holds.
    access: dict[RightsKey, int] = field(default_factory=dict)

    def callback_valid(self, now: float) -> bool:
        return self.status is not None and self.cb_expires > now

    def rights(self, key: RightsKey, now: float) -> int | None:
        """The rights of `key`, if known under a valid callback; anonymous rights count for
        everyone."""
        if not self.callback_valid(now):
            return None
        assert self.status is not None
        known = self.access.get(key)
        if known is None:
            return None
        return known | self.status.anonymous_access

    def allows(self, key: RightsKey, wanted: int, now: float) -> bool:
        """True when `key` surely has `wanted` under a valid callback (False: ask the server)."""
        if not self.callback_valid(now):
            return False
        assert self.status is not None
        rights = self.access.get(key, 0) | self.status.anonymous_access
        return rights & wanted == wanted

    def invalidate(self) -> None:
        """The callback was broken: status and rights must be fetched again (the status is
        kept to compare data versions)."""
        self.breaks += 1
        self.cb_server = None
        self.cb_expires = 0.0
        self.access.clear()


class VnodeTable:
    """Vnode records by fid, at most `limit` of them: the least recently used go first.

    A record is a cache like any other (a status, a promise, rights): one that goes is
    fetched again when next wanted.  `evicted(fid)` is told, so the promise goes too.  An
    operation still holding an evicted record commits into it harmlessly: nothing looks it
    up any more, and the fid's next record starts with no status and no promise.
    """

    def __init__(
        self, limit: int = DEFAULT_VNODE_LIMIT, evicted: Callable[[AfsFid], None] | None = None
    ) -> None:
        self.limit = limit
        self._evicted = evicted
        self._vnodes: OrderedDict[AfsFid, Vnode] = OrderedDict()
        #: The fids of each volume number (any cell): a callback break names a volume.
        self._by_volume: dict[int, set[AfsFid]] = {}

    def __len__(self) -> int:
        return len(self._vnodes)

    def get(self, fid: AfsFid) -> Vnode:
        vnode = self._vnodes.get(fid)
        if vnode is not None:
            self._vnodes.move_to_end(fid)
            return vnode
        vnode = self._vnodes[fid] = Vnode(fid)
        self._by_volume.setdefault(fid.volume, set()).add(fid)
        while len(self._vnodes) > self.limit:
            oldest, _ = self._vnodes.popitem(last=False)
            self._unindex(oldest)
            if self._evicted is not None:
                self._evicted(oldest)
        return vnode

    def peek(self, fid: AfsFid) -> Vnode | None:
        return self._vnodes.get(fid)

    def matching(
        self, volume: int, vnode: int | None = None, unique: int | None = None
    ) -> Iterator[Vnode]:
        """Records of a volume (any cell), optionally of one vnode."""
        for fid in list(self._by_volume.get(volume, ())):
            if vnode is not None and (fid.vnode != vnode or fid.unique != unique):
                continue
            record = self._vnodes.get(fid)
            if record is not None:
                yield record

    def all(self) -> list[Vnode]:
        return list(self._vnodes.values())

    def drop(self, fid: AfsFid) -> None:
        if self._vnodes.pop(fid, None) is not None:
            self._unindex(fid)

    def drop_volume(self, cell: str, volume: int) -> None:
        for fid in [f for f in self._by_volume.get(volume, ()) if f.cell == cell]:
            self.drop(fid)

    def clear(self) -> None:
        self._vnodes.clear()
        self._by_volume.clear()

    def _unindex(self, fid: AfsFid) -> None:
        fids = self._by_volume[fid.volume]
        fids.discard(fid)
        if not fids:
            del self._by_volume[fid.volume]
