"""Callback breaks pushed to the kernel: the invalidation worker and its batches."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

import pyfuse3
import trio

from afsfuse.fs.vnode import AfsFid
from afsfuse.vfs.inodes import InodeTable, RootNode

log = logging.getLogger(__name__)

#: What the kernel is told to drop: inodes, and (parent inode, name) entries.
_Batch = tuple[list[int], list[tuple[int, bytes]]]


class Invalidator:
    """Pushes callback breaks to the kernel: drop the attributes and cached pages of every
    inode that shows a broken fid, and the cached names of broken directories.

    The cache manager reports breaks synchronously on the trio thread (`queue`); the kernel
    calls can block until a related request finishes, so a thread of their own makes them,
    a batch at a time, fed through a queue.  The hand-off costs microseconds where a
    `trio.to_thread` round trip costs ~100 us of CPU, and another client writing many files
    means a batch for each.
    """

    def __init__(
        self,
        inodes: InodeTable,
        invalidate_inode: Callable[[int, bool], None] = pyfuse3.invalidate_inode,
        invalidate_entry: Callable[[int, bytes], None] = pyfuse3.invalidate_entry,
    ) -> None:
        self._inodes = inodes
        self._invalidate_inode = invalidate_inode
        self._invalidate_entry = invalidate_entry
        self._fids: set[AfsFid] = set()
        self._everything = False
        self._wakeup = trio.Event()
        #: Batches for the pushing thread; None tells it to stop.
        self._batches: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()

    def queue(self, fid: AfsFid | None) -> None:
        if fid is None:
            self._everything = True
        else:
            self._fids.add(fid)
        self._wakeup.set()

    def attributes_now(self, inode: int) -> None:
        """Make the kernel ask for `inode`'s attributes again before it next uses them.
        Pages are left alone, so this never waits on a request in progress and may be
        called while handling one."""
        try:
            self._invalidate_inode(inode, True)
        except OSError as e:
            log.debug("invalidate_inode(%d, attributes): %s", inode, e)

    async def pages_now(self, inodes: list[int], wait: float) -> bool:
        """Drop the kernel's attributes and pages of `inodes`, and return once it has (True),
        or after `wait` seconds (False).  The kernel waits for every read of those pages in
        progress to be answered first, so a request may await this, but not while holding
        anything such a read needs."""
        with trio.move_on_after(wait):
            await trio.to_thread.run_sync(self._push, inodes, [], abandon_on_cancel=True)
            return True
        log.debug("pages of %s still not dropped after %.1f s", inodes, wait)
        return False

    def _take(self) -> _Batch:
        if self._everything:
            nodes = [n for n in self._inodes.nodes() if not isinstance(n, RootNode)]
        else:
            nodes = [node for fid in self._fids for node in self._inodes.for_fid(fid)]
        self._fids.clear()
        self._everything = False
        entries = [
            (n.inode, name) for n in nodes for name in self._inodes.take_cached_names(n.inode)
        ]
        return [n.inode for n in nodes], entries

    def _push(self, inodes: list[int], entries: list[tuple[int, bytes]]) -> None:
        for inode in inodes:
            try:
                self._invalidate_inode(inode, False)
            except OSError as e:  # the kernel already forgot it, or the mount is gone
                log.debug("invalidate_inode(%d): %s", inode, e)
        for parent, name in entries:
            try:
                self._invalidate_entry(parent, name)
            except OSError as e:
                log.debug("invalidate_entry(%d, %r): %s", parent, name, e)

    def _pusher(self) -> None:
        while (batch := self._batches.get()) is not None:
            self._push(*batch)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # A daemon thread: a kernel call stuck at unmount must not keep the process alive.
        threading.Thread(target=self._pusher, name="afsfuse-invalidate", daemon=True).start()
        task_status.started()
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                inodes, entries = self._take()
                if inodes or entries:
                    self._batches.put((inodes, entries))
        finally:
            self._batches.put(None)
