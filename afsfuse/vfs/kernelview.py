"""What the kernel was shown of each file: the version and length of the attributes it was
last given, and where its page cache may hold zeros past an answer that ended short.

The kernel reads whole pages up to the length it was given and keeps them.  A READ answered
short is the end of the file to it: it fills the rest of the pages it asked for with zeros,
and cuts its length there only if the inode's attributes did not move while the read was
out (any push or reply with attributes moves them).  So the zeros are only ever harmless
past a length the kernel still has: `vfs/operations.py` answers reads at the version the
kernel was shown (`version`), and before it shows a longer length it drops the pages that
may hold such zeros (`zeros_below`), as otherwise a reader would be handed them inside the
new length.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from afsfuse.fs.api import Shown
from afsfuse.fs.vnode import AfsFid, Status

#: The length of a remembered version when the kernel's is this mount's writes'.
_WRITTEN = -1


class KernelView:
    """Per file, what the kernel believes; sans-I/O, kept by the FUSE operations."""

    def __init__(self) -> None:
        self._shown: dict[AfsFid, Shown] = {}
        #: The version shown before the current one, while it was longer (see `longer_before`).
        self._longer_before: dict[AfsFid, Shown] = {}
        #: The lowest end of a short answer the kernel may still hold pages of.
        self._short_ends: dict[AfsFid, int] = {}
        #: Files whose pages are being dropped before a longer length is shown.
        self._dropping: Counter[AfsFid] = Counter()

    def show(self, fid: AfsFid, status: Status) -> None:
        """The kernel now has these attributes.  A length with this mount's unstored writes
        is no version's: the version beside it is the one they went over, and serving that
        version up to that length, once they are stored, would come back short and leave
        zeros in the kernel's pages.  Nor is the kernel's length a version's once this mount
        writes: its writes set it."""
        if not status.is_file:
            return
        length = _WRITTEN if status.unstored else status.size
        before = self._shown.get(fid)
        if before is not None and before[0] != status.data_version:
            if before[1] > length >= 0:
                self._longer_before[fid] = before
            else:
                self._longer_before.pop(fid, None)
        self._shown[fid] = (status.data_version, length)

    def answered(self, fid: AfsFid, version: int, length: int) -> None:
        """A short answer at `version`, which ends at `length`, is to cut the kernel's length."""
        self._shown[fid] = (version, length)

    def written(self, fid: AfsFid) -> None:
        """This mount writes `fid`: the kernel's length is its writes', and the pages it
        writes are theirs (zeros past an old end included, as a file extended has)."""
        shown = self._shown.get(fid)
        if shown is not None:
            self._shown[fid] = (shown[0], _WRITTEN)
        self._short_ends.pop(fid, None)

    def resized(self, fid: AfsFid) -> None:
        """truncate(2) from this mount: the kernel cut or extended its own pages."""
        self._short_ends.pop(fid, None)

    def forget(self, fid: AfsFid) -> None:
        """The kernel dropped the inode, and its pages with it."""
        self._shown.pop(fid, None)
        self._longer_before.pop(fid, None)
        self._short_ends.pop(fid, None)

    def shown(self, fid: AfsFid) -> Shown | None:
        """The version and length last shown, the length -1 when this mount's writes set it."""
        return self._shown.get(fid)

    def version(self, fid: AfsFid) -> Shown | None:
        """The version and length the kernel has of `fid`, if its length is a version's."""
        shown = self._shown.get(fid)
        return None if shown is None or shown[1] == _WRITTEN else shown

    def longer_before(self, fid: AfsFid) -> Shown | None:
        """The longer version shown before the current one: the kernel may still size reads
        by it until the new length has cut its pages."""
        return self._longer_before.get(fid)

    def read_answered(self, fid: AfsFid, offset: int, size: int, got: int) -> None:
        """A read of `size` bytes at `offset` was answered with `got`: the kernel's pages
        there are this answer's now, and if it is short they hold zeros past its end."""
        end = self._short_ends.get(fid)
        if end is not None and offset <= end < offset + size:
            end = None  # the page it ended in was read again
        if got < size and (end is None or offset + got < end):
            end = offset + got
        if end is None:
            self._short_ends.pop(fid, None)
        else:
            self._short_ends[fid] = end

    def zeros_below(self, fid: AfsFid, status: Status) -> int | None:
        """Where the kernel's pages may hold zeros inside the length these attributes would
        give it (the end of an earlier short answer), or None when they cannot."""
        end = self._short_ends.get(fid)
        if end is None or not status.is_file or status.unstored or status.size <= end:
            return None
        return end

    @contextmanager
    def dropping(self, fid: AfsFid) -> Iterator[None]:
        """The kernel's pages of `fid` are being dropped: any answered meanwhile go too."""
        self._dropping[fid] += 1
        try:
            yield
        finally:
            self._dropping[fid] -= 1
            if not self._dropping[fid]:
                del self._dropping[fid]

    def is_dropping(self, fid: AfsFid) -> bool:
        return fid in self._dropping

    def dropped(self, fid: AfsFid, end: int) -> None:
        """The kernel's pages of `fid` were dropped after a short answer ending at `end`;
        a later one is kept."""
        if self._short_ends.get(fid) == end:
            del self._short_ends[fid]
