"""Fewer round trips in a row to a distant fileserver, against the in-memory fileserver
(memfs, each call made to take a while): a big listing's InlineBulkStatus calls go out
together, a directory's entries are fetched once and the refused ones named."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from memfs import CELL, VOLUME, mem_manager

from afsfuse.fs.errors import FsError
from afsfuse.fs.status import BULK_CALLS
from afsfuse.fs.vnode import AfsFid, Status
from afsfuse.keyring.store import Identity
from afsfuse.rx.interfaces.fs import AFSCBMAX

ME = Identity(0)
#: Seconds each fetch takes at the fileserver: long enough for calls to overlap.
LATENCY = 0.02


def small(i: int) -> bytes:
    """A file's contents: its own bytes, below a chunk."""
    return bytes([65 + i % 26]) * (1000 + i)


# -- status of many entries -----------------------------------------------------------------


async def test_bulk_status_makes_a_big_listings_calls_together(tmp_path: Path) -> None:
    async with mem_manager(tmp_path) as (m, server):
        fids = [server.add_file(f"f{i:03d}", small(i)) for i in range(230)]
        server.latency = LATENCY
        statuses = await m.bulk_status(fids, ME)
        assert [s.size for s in statuses if isinstance(s, Status)] == [1000 + i for i in range(230)]
        assert sorted(len(call) for call in server.bulk_calls) == [30, 50, 50, 50, 50]
        assert server.most_at_once == BULK_CALLS
        # Known now, under callbacks: asking again costs no call.
        await m.bulk_status(fids, ME)
        assert len(server.bulk_calls) == 5


async def test_a_refused_bulk_status_call_fails_the_request_with_its_errno(
    tmp_path: Path,
) -> None:
    async with mem_manager(tmp_path) as (m, server):
        fids = [server.add_file(f"f{i:03d}", b"x") for i in range(3 * AFSCBMAX)]
        server.latency = LATENCY
        server.fail("InlineBulkStatus", errno.EACCES, skip=1)
        with pytest.raises(FsError) as caught:
            await m.bulk_status(fids, ME)
        assert caught.value.errno == errno.EACCES


async def test_prefetch_status_fetches_what_is_unknown_and_names_what_was_refused(
    tmp_path: Path,
) -> None:
    async with mem_manager(tmp_path) as (m, server):
        fids = [server.add_file(f"f{i:03d}", b"x") for i in range(60)]
        gone = AfsFid(CELL, VOLUME, 999, 999)
        await m.bulk_status(fids[:10], ME)
        refused = await m.prefetch_status([*fids, gone], ME)
        assert list(refused) == [gone] and refused[gone].errno == errno.ENOENT
        assert sorted(len(call) for call in server.bulk_calls) == [1, 10, 50]  # at once
        await m.bulk_status(fids, ME)  # all known: nothing more asked
        assert len(server.bulk_calls) == 3
