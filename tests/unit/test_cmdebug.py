"""What cmdebug is shown of trio's locks, and of a callback service with no cache behind it
(a program such as afsfuse-io that only answers fileservers)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from afsfuse.fs.callback import CallbackRegistry
from afsfuse.fs.cmdebug import READ_LOCK, WRITE_LOCK, lock_desc
from afsfuse.fs.cmservice import CacheManagerService
from afsfuse.rx.errors import RxAbort


async def test_a_held_lock_with_a_waiter_shows_as_write_locked_and_waited_for() -> None:
    lock = trio.Lock()
    idle = lock_desc(lock)
    assert (idle.waitStates, idle.exclLocked, idle.readersReading, idle.numWaiting) == (0,) * 4
    async with lock, trio.open_nursery() as nursery:
        nursery.start_soon(lock.acquire)
        await trio.testing.wait_all_tasks_blocked()
        held = lock_desc(lock)
        assert (held.waitStates, held.exclLocked, held.numWaiting) == (WRITE_LOCK, WRITE_LOCK, 1)
        nursery.cancel_scope.cancel()
    assert lock_desc(lock).exclLocked == 0


async def test_busy_worker_threads_show_as_readers_and_callers_as_waiters() -> None:
    threads = trio.CapacityLimiter(2)
    release = trio.Event()

    async def borrow() -> None:
        async with threads:
            await release.wait()

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(borrow)
        await trio.testing.wait_all_tasks_blocked()
        busy = lock_desc(threads)
        assert (busy.waitStates, busy.exclLocked, busy.readersReading, busy.numWaiting) == (
            READ_LOCK,
            0,
            2,
            1,
        )
        release.set()
    assert lock_desc(threads).readersReading == 0


async def test_without_a_cache_the_listings_are_empty_and_the_cache_zero() -> None:
    service = CacheManagerService(CallbackRegistry(), local_cell="example.org")
    for listing in (service.GetCE64, service.GetCE, service.GetLock):
        with pytest.raises(RxAbort) as ended:
            await listing(None, 0)  # type: ignore[arg-type]
        assert ended.value.code == 1
    assert await service.GetCellServDB(None, 0) == ("", ())  # type: ignore[arg-type]
    assert await service.GetCacheConfig(None, 1) == (1, 36, (0,) * 9)  # type: ignore[arg-type]
    assert await service.GetLocalCell(None) == "example.org"  # type: ignore[arg-type]
