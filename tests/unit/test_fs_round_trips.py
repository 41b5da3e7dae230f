"""Fewer round trips in a row to a distant fileserver, against the in-memory fileserver
(memfs, each call made to take a while): a big listing's InlineBulkStatus calls go out
together, a directory's entries are fetched once and the refused ones named; the next small
files of a directory read file by file are fetched ahead, within their bounds, and only
those whose rights are known."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import trio
from memfs import CELL, CHUNK, ROOT, VOLUME, MemFileServer, mem_manager

from afsfuse.fs import siblings
from afsfuse.fs.errors import FsError
from afsfuse.fs.manager import CacheManager
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


async def settled(m: CacheManager) -> None:
    """Until the fetches ahead have ended."""
    with trio.fail_after(10):
        while m.reader.inflight or m.siblings.bytes_ahead:
            await trio.sleep(0.001)


def fetched(server: MemFileServer) -> list[int]:
    """The files whose data was fetched (the directory's own fetch left out)."""
    return [vnode for vnode, _, _ in server.fetches if vnode != ROOT.vnode]


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


# -- the next small files of a directory --------------------------------------------------


async def _listed(m: CacheManager, server: MemFileServer, names: list[str]) -> list[AfsFid]:
    """Files made in this order, listed and their status fetched, as a glob or `ls` leaves
    them."""
    fids = [server.add_file(name, small(i)) for i, name in enumerate(names)]
    await m.readdir(ROOT, ME)
    await m.bulk_status(fids, ME)
    server.latency = LATENCY
    return fids


@pytest.mark.parametrize("order", ["name", "directory"])
async def test_files_read_one_after_another_get_the_next_ones_fetched_ahead(
    tmp_path: Path, order: str
) -> None:
    async with mem_manager(tmp_path) as (m, server):
        # Made in reverse name order: the directory's order is not the names'.
        names = [f"f{i:02d}" for i in reversed(range(40))]
        fids = await _listed(m, server, names)
        reading = sorted(range(40), key=lambda i: names[i]) if order == "name" else range(40)
        sequence = [(fids[i], small(i)) for i in reading]
        for fid, data in sequence[:2]:
            assert await m.read(fid, 0, CHUNK, ME) == data
        await settled(m)
        ahead = 2 + siblings.AHEAD_FILES
        assert sorted(fetched(server)) == sorted(fid.vnode for fid, _ in sequence[:ahead])
        assert 1 < server.most_at_once <= siblings.CALLS + 1  # the reader's own call too
        for fid, data in sequence[2:]:
            assert await m.read(fid, 0, CHUNK, ME) == data
        await settled(m)
        assert sorted(fetched(server)) == sorted(fid.vnode for fid in fids)  # each once


async def test_files_read_out_of_order_get_nothing_fetched_ahead(tmp_path: Path) -> None:
    async with mem_manager(tmp_path) as (m, server):
        fids = await _listed(m, server, [f"f{i:02d}" for i in range(20)])
        for i in (5, 1, 12, 3):
            assert await m.read(fids[i], 0, CHUNK, ME) == small(i)
        await settled(m)
        assert fetched(server) == [fids[i].vnode for i in (5, 1, 12, 3)]


async def test_only_small_files_with_known_rights_are_fetched_ahead_within_the_bytes_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with mem_manager(tmp_path) as (m, server):
        names = [f"f{i:02d}" for i in range(12)]
        fids = [server.add_file(name, small(i)) for i, name in enumerate(names)]
        big = server.add_file("f02-big", b"b" * (CHUNK + 1))  # a chunk or more: not whole
        await m.readdir(ROOT, ME)
        await m.bulk_status([*fids, big], ME)
        m.vnodes.get(fids[3]).invalidate()  # a break: its rights are not known any more
        monkeypatch.setattr(siblings, "AHEAD_BYTES", 4 * 1010)  # four files at once
        server.latency = LATENCY
        for i in (0, 1):
            assert await m.read(fids[i], 0, CHUNK, ME) == small(i)
        await settled(m)
        assert big.vnode not in fetched(server) and fids[3].vnode not in fetched(server)
        # Ahead of f01: f02, then f04 to f06 (f03 skipped), up to the bound.
        assert sorted(fetched(server)) == [fids[i].vnode for i in (0, 1, 2, 4, 5, 6)]
