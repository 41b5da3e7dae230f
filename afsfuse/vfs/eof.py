"""Short reads the kernel must believe: what would make it doubt one waits.

A FUSE read answered with fewer bytes than asked means end of file.  The kernel fills the
rest of its pages with zeros and cuts the file's length where the answer ended, but only if
nothing moved the inode's attribute version between sending the read and taking the answer;
every attribute invalidation pushed and every reply carrying the inode's attributes moves
it.  Two ways a reader then copies zeros, bytes of no version:

- the answer was short of the length the kernel has (the file was replaced by a shorter
  version under the reader) and something moved the attribute version: the cut is skipped
  and the zero-filled pages stay inside the old length.  From the moment such an answer is
  due (a read failed with EIO, so the kernel asks again a page at a time, or an answer went
  out short of that length) pushes and attribute replies for the file wait (`hold`);
- any short answer, even at the very end of the length the kernel has, while a reply with a
  longer length (the file grew) lands: the zero-filled end of the last page is inside the
  new length.  Attributes that lengthen a file wait a while after its last short answer
  (`answered_short`, `before_longer`).

Waits last until the kernel has had time to take the answer: `SETTLE` after the last short
answer, `RETRY` after an EIO, and never more than `LONGEST` in all, so every wait stays
bounded however busy the file is.
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
#: Files whose last short answer is remembered; past this, those settled are forgotten.
_SHORT_ANSWERS = 4096


@dataclass
class _Hold:
    began: float
    until: float


class EofHolds:
    """Per file: until when pushes and attribute replies wait (trio's clock)."""

    def __init__(self) -> None:
        self._holds: dict[AfsFid, _Hold] = {}
        #: When each file's last short answer has surely been taken in.
        self._short: dict[AfsFid, float] = {}

    def hold(self, fid: AfsFid, seconds: float) -> None:
        """An answer short of the kernel's length (or the EIO that leads to one) is on its
        way for `fid`: everything that moves its attributes waits."""
        now = trio.current_time()
        held = self._holds.get(fid)
        if held is None or held.until <= now:
            self._holds[fid] = _Hold(now, now + min(seconds, LONGEST))
        else:
            held.until = min(max(held.until, now + seconds), held.began + LONGEST)

    def answered_short(self, fid: AfsFid) -> None:
        """A read of `fid` ended before the pages it asked for did (the file's end)."""
        now = trio.current_time()
        short = self._short
        short[fid] = now + SETTLE
        if len(short) > _SHORT_ANSWERS:
            self._short = {f: until for f, until in short.items() if until > now}

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

    async def before_longer(self, fid: AfsFid) -> None:
        """Wait until attributes that lengthen `fid` cannot meet a short answer of it."""
        until = self._short.get(fid)
        if until is not None:
            await trio.sleep_until(min(until, trio.current_time() + SETTLE))
        await self.settled(fid)
