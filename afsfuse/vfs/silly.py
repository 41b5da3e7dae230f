"""Unlink of a file still open: the vnode lives on under a hidden name until its last
release, so the open descriptors keep reading, writing and storing at close (the OpenAFS
cache manager does the same; NFS clients call it a silly rename).

`OpenFiles` counts the open handles and writers per fid, which the FUSE handlers keep up to
date, and remembers which files were hidden and where.
"""

from __future__ import annotations

import errno
from collections import Counter

from afsfuse.fs.api import CacheManagerApi
from afsfuse.fs.errors import FsError
from afsfuse.fs.vnode import AfsFid
from afsfuse.keyring.store import Identity

#: Prefix of the names unlinked files keep while still open (OpenAFS uses the same).
HIDDEN_PREFIX = ".__afs"
#: Hidden names tried for one file before giving up.
_ATTEMPTS = 100


class OpenFiles:
    def __init__(self, manager: CacheManagerApi) -> None:
        self._manager = manager
        #: Open file handles per fid, and how many of them write.
        self._open: Counter[AfsFid] = Counter()
        self._writers: Counter[AfsFid] = Counter()
        #: Files unlinked while open: fid -> (directory, hidden name) to remove at last release.
        self._hidden: dict[AfsFid, tuple[AfsFid, bytes]] = {}

    def opened(self, fid: AfsFid, writable: bool) -> None:
        self._open[fid] += 1
        if writable:
            self._writers[fid] += 1

    def released(self, fid: AfsFid, writable: bool) -> bool:
        """One handle of `fid` is released: was it the file's last writing handle?"""
        self._open[fid] -= 1
        if not writable:
            return False
        self._writers[fid] -= 1
        if self._writers[fid]:
            return False
        del self._writers[fid]
        return True

    def counts(self, fid: AfsFid) -> tuple[int, int]:
        """Open handles of `fid`, and how many of them write."""
        return self._open.get(fid, 0), self._writers.get(fid, 0)

    def hidden(self, fid: AfsFid) -> bool:
        return fid in self._hidden

    def take_hidden(self, fid: AfsFid) -> tuple[AfsFid, bytes] | None:
        """When no handle of `fid` is left: the hidden name to remove now, if it was
        unlinked while open."""
        if self._open[fid]:
            return None
        self._open.pop(fid, None)
        return self._hidden.pop(fid, None)

    def must_hide(self, fid: AfsFid) -> bool:
        """Should an unlink of `fid` keep it under a hidden name?  (Open here, and not
        hidden already.)"""
        return fid in self._open and fid not in self._hidden

    async def hide(self, dir_fid: AfsFid, name: bytes, fid: AfsFid, who: Identity) -> None:
        """Rename `name` in `dir_fid` to a free hidden name, removed at the last release."""
        hidden = await self._free_hidden_name(dir_fid, fid, who)
        await self._manager.rename(dir_fid, name, dir_fid, hidden, who)
        self._hidden[fid] = (dir_fid, hidden)

    async def _free_hidden_name(self, dir_fid: AfsFid, fid: AfsFid, who: Identity) -> bytes:
        """`.__afs<vnode>.<unique>`, with a count after it if that is taken: the rename must
        never replace another file (two fids, or a name someone chose)."""
        base = f"{HIDDEN_PREFIX}{fid.vnode:x}.{fid.unique:x}"
        for n in range(_ATTEMPTS):
            hidden = (base if n == 0 else f"{base}.{n}").encode()
            try:
                await self._manager.lookup(dir_fid, hidden, who)
            except FsError as e:
                if e.errno == errno.ENOENT:
                    return hidden
                raise
        raise FsError(errno.EBUSY, "no free hidden name for an open file's unlink")
