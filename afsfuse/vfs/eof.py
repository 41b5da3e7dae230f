"""Short reads the kernel must believe: what would make it doubt one waits.

A FUSE read answered with fewer bytes than asked means end of file.  The kernel fills the
rest of its pages with zeros and cuts the file's length where the answer ended, but only if
nothing moved the inode's attribute version between sending the read and taking the answer.
Every attribute invalidation pushed and every reply carrying the inode's attributes moves
it.  If one lands in between, the zero-filled pages stay inside the old, longer length and
the reader that asked copies them: bytes of no version.

An answer is short of the kernel's length only when the file changed under a reader to a
shorter version.  From the moment such an answer is due (a read failed with EIO, so the
kernel asks again a page at a time, or an answer went out short of the length the read was
sized by) pushes and attribute replies for that file wait until the kernel has had time to
take the answer: `SETTLE` after the last such answer, `RETRY` after an EIO, and never more
than `LONGEST` from the first, so every wait stays bounded however busy the file is.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from afsfuse.fs.vnode import AfsFid

#: After a short answer: the reader's thread wakes and takes it in well under this.
SETTLE = 0.1
#: After an EIO: the kernel asks again at once, from the reader's thread, if it wants the
#: page; a reader that stopped never asks.
RETRY = 0.25
#: The longest a file's pushes and attribute replies are held back in one go.
LONGEST = 1.0


@dataclass
class _Hold:
    began: float
    until: float


class EofHolds:
    """Per file: until when pushes and attribute replies wait (trio's clock)."""

    def __init__(self) -> None:
        self._holds: dict[AfsFid, _Hold] = {}

    def hold(self, fid: AfsFid, seconds: float) -> None:
        """A short answer (or the EIO that leads to one) for `fid` is on its way."""
        now = trio.current_time()
        held = self._holds.get(fid)
        if held is None or held.until <= now:
            self._holds[fid] = _Hold(now, min(now + seconds, now + LONGEST))
        else:
            held.until = min(max(held.until, now + seconds), held.began + LONGEST)

    def until(self, fid: AfsFid) -> float | None:
        """When `fid`'s hold ends, or None if it is not held."""
        held = self._holds.get(fid)
        if held is None:
            return None
        if held.until <= trio.current_time():
            del self._holds[fid]
            return None
        return held.until

    async def settled(self, fid: AfsFid) -> None:
        """Wait until `fid` is not held, at most LONGEST even if holds follow each other."""
        with trio.move_on_after(LONGEST):
            while (until := self.until(fid)) is not None:
                await trio.sleep_until(until)
