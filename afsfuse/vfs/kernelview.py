"""What the kernel was shown of each file: the version and length of the attributes it was
last given, and which versions its page cache may hold pages of.

The kernel reads whole pages up to the length it was given and keeps them until it is told
to drop them, and reads are answered at the version it was shown (`version`), so that a
short answer is the end of a version it knows.  So its pages may be of a version older
than the one the cache manager has: a callback break pushes a drop, but a read asked at
the old version until the kernel has the new attributes brings such pages back.  Shown
another version while it may hold pages of one (`other_versions`), a reader would be
handed a page of the old version inside a file of the new one: the rest of a page the old
version ended in, which the kernel fills with zeros, or a whole page of it where the two
are the same length.  `vfs/operations.py` has the kernel drop them first.
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
        #: The versions the kernel may hold pages of, since they were last dropped.
        self._answered: dict[AfsFid, set[int]] = {}
        #: Files whose pages are being dropped before another version is shown.
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
        writes are theirs, and the rest are of the version they go over, which is what the
        version they make holds there."""
        shown = self._shown.get(fid)
        if shown is not None:
            self._shown[fid] = (shown[0], _WRITTEN)
        self._answered.pop(fid, None)

    def forget(self, fid: AfsFid) -> None:
        """The kernel dropped the inode, and its pages with it."""
        self._shown.pop(fid, None)
        self._longer_before.pop(fid, None)
        self._answered.pop(fid, None)

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

    def read_answered(self, fid: AfsFid, version: int) -> None:
        """The kernel was given pages of `version`."""
        versions = self._answered.get(fid)
        if versions is None:
            self._answered[fid] = {version}
        else:
            versions.add(version)

    def pushed(self, fid: AfsFid | None) -> None:
        """A drop of `fid`'s pages (None: every file's) is on its way to the kernel: what it
        held goes with it (forgotten before the drop is made, so what comes after is not)."""
        if fid is None:
            self._answered.clear()
        else:
            self._answered.pop(fid, None)

    def other_versions(self, fid: AfsFid, status: Status) -> set[int]:
        """The versions, other than the one in these attributes, the kernel may hold pages
        of (none to care about while this mount's writes set its length)."""
        versions = self._answered.get(fid)
        if not versions or not status.is_file or status.unstored:
            return set()
        return {v for v in versions if v != status.data_version}

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

    def dropped(self, fid: AfsFid, versions: set[int]) -> None:
        """The kernel dropped its pages of `fid`, those of `versions` among them."""
        held = self._answered.get(fid)
        if held is not None:
            held -= versions
