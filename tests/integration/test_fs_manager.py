"""The cache manager core against the real cell, without FUSE: reads through the disk cache,
directories, callbacks, per-user rights, restart re-validation, errors and fail-over."""

from __future__ import annotations

import errno
import secrets
from pathlib import Path

import pytest
import trio
from admin_rpcs import admin, afs, fid_of, make_file, write
from logins import admin_token
from managers import ADMIN, ALICE, BOB, CHUNK, FAST, manager
from volumes import volume_root

from afsfuse.fs.errors import FsError
from afsfuse.fs.manager import CacheManager
from afsfuse.fs.vnode import AfsFid, Status
from afsfuse.keyring.store import Identity, TokenStore
from afsfuse.rx.interfaces.fs import AFS_SETMODE, FS, AFSStoreStatus
from afsfuse.testing.cell import Cell

pytestmark = pytest.mark.cell

ANON = Identity(65534)


async def make_dir(m: CacheManager, parent: AfsFid, acl: str) -> AfsFid:
    """A fresh directory under `parent` with the given ACL lines (besides the admins')."""
    name = "t-" + secrets.token_hex(4)
    reply = await admin(m, parent, FS.MakeDir, afs(parent), name, AFSStoreStatus())
    new = fid_of(parent, reply.OutFid)
    lines = ["system:administrators 127", *acl.split(",")] if acl else ["system:administrators 127"]
    text = f"{len(lines)}\n0\n" + "".join(f"{line}\n" for line in lines)
    await admin(m, new, FS.OldStoreACL, afs(new), text.encode() + b"\0")
    return new


async def scratch_volume(m: CacheManager) -> AfsFid:
    return await volume_root(m, m.this_cell, "test", "rw")


def fetches(m: CacheManager, rpc: str = "FS.FetchData64") -> int:
    return m.stats.rpcs[rpc]


async def wait_for(event: trio.Event, seconds: float = 10.0) -> None:
    with trio.fail_after(seconds):
        await event.wait()


async def test_read_through_cache_callbacks_and_revalidation(
    cell: Cell, token_db: TokenStore, tmp_path: Path
) -> None:
    async with (
        manager(cell, tmp_path / "w", token_db) as writer,
        manager(cell, tmp_path / "r", token_db) as reader,
    ):
        top = await make_dir(writer, await scratch_volume(writer), "alice 9")
        content = secrets.token_bytes(5 * CHUNK + 123)
        fid = await make_file(writer, top, "data", content)

        assert await reader.read(fid, 0, len(content) + 10, ALICE) == content
        assert fetches(reader) == 6
        status_calls = fetches(reader, "FS.FetchStatus")
        # Served from the cache while the callback holds: not one RPC more.
        assert await reader.read(fid, CHUNK - 5, 10, ALICE) == content[CHUNK - 5 : CHUNK + 5]
        assert (await reader.getattr(fid, ALICE)).size == len(content)
        assert fetches(reader) == 6
        assert fetches(reader, "FS.FetchStatus") == status_calls

        broken = trio.Event()
        reader.on_invalidate(lambda f: broken.set() if f == fid else None)
        # A status change breaks the callback without changing the data version...
        await admin(
            writer,
            fid,
            FS.StoreStatus,
            afs(fid),
            AFSStoreStatus(Mask=AFS_SETMODE, UnixModeBits=0o640),
        )
        await wait_for(broken)
        assert reader.stats.callbacks_received >= 1
        assert await reader.read(fid, 0, len(content), ALICE) == content
        assert fetches(reader, "FS.FetchStatus") == status_calls + 1
        assert fetches(reader) == 6  # ...so the cached chunks were served again

        # A data change: the next read gets the new bytes.
        broken = trio.Event()
        new = secrets.token_bytes(CHUNK + 7)
        await write(writer, fid, new)
        await wait_for(broken)
        assert await reader.read(fid, 0, 2 * CHUNK, ALICE) == new
        status = await reader.getattr(fid, ALICE)
        assert (status.size, status.mode) == (len(new), 0o640)


async def test_sequential_reader_gets_read_ahead(
    cell: Cell, token_db: TokenStore, tmp_path: Path
) -> None:
    async with manager(cell, tmp_path / "c", token_db) as m:
        top = await make_dir(m, await scratch_volume(m), "alice 9")
        content = secrets.token_bytes(8 * CHUNK)
        fid = await make_file(m, top, "seq", content)
        before = fetches(m)

        assert await m.read(fid, 0, 4096, ALICE) == content[:4096]
        with trio.fail_after(10):
            while m.reader.inflight:
                await trio.sleep(0.05)
        # The other seven chunks came in calls of several chunks each.
        assert fetches(m) == before + 1 + -(-7 // FAST.readahead_call_chunks)
        misses = m.stats.data_misses
        # Reading them waits for no fetch of its own.
        assert await m.read(fid, 4096, 7 * CHUNK, ALICE) == content[4096 : 4096 + 7 * CHUNK]
        assert m.stats.data_misses == misses
        assert await m.read(fid, 0, len(content), ALICE) == content


async def test_directories_lookup_and_bulk_status(
    cell: Cell, token_db: TokenStore, tmp_path: Path
) -> None:
    async with manager(cell, tmp_path / "c", token_db) as m:
        top = await make_dir(m, await scratch_volume(m), "alice 9")
        names = [f"f{i:02d}" for i in range(60)]
        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(make_file, m, top, name, name.encode())
        await m.flush_fid(top)

        entries = dict(await m.readdir(top, ALICE))
        assert set(entries) == {".", "..", *names}
        assert entries["."] == top
        assert await m.lookup(top, "f07", ALICE) == entries["f07"]
        with pytest.raises(FsError) as missing:
            await m.lookup(top, "nothing-here", ALICE)
        assert missing.value.errno == errno.ENOENT

        bogus = AfsFid(top.cell, top.volume, 999_999, 1)
        fids = [entries[n] for n in names] + [bogus]
        before = m.stats.rpcs["FS.InlineBulkStatus"]
        results = await m.bulk_status(fids, ALICE)
        assert m.stats.rpcs["FS.InlineBulkStatus"] - before == 2  # 61 fids: 50 + 11
        assert all(isinstance(r, Status) and r.is_file and r.size == 3 for r in results[:60])
        assert isinstance(results[60], FsError)
        # Now known: a second round costs nothing.
        again = await m.bulk_status(fids[:60], ALICE)
        assert m.stats.rpcs["FS.InlineBulkStatus"] - before == 2
        assert [s.data_version for s in again] == [s.data_version for s in results[:60]]


async def test_rights_are_per_identity(cell: Cell, token_db: TokenStore, tmp_path: Path) -> None:
    async with manager(cell, tmp_path / "c", token_db) as m:
        top = await make_dir(m, await scratch_volume(m), "alice 9")
        fid = await make_file(m, top, "secret", b"for alice only")
        assert await m.read(fid, 0, 100, ALICE) == b"for alice only"
        assert "alice" in str(token_db.get(ALICE, cell.name).client)

        # Bob's rights are his own: his request goes to the server with his token.
        statuses = fetches(m, "FS.FetchStatus")
        for who in (BOB, ANON):
            with pytest.raises(FsError) as denied:
                await m.read(fid, 0, 100, who)
            assert denied.value.errno == errno.EACCES
            with pytest.raises(FsError) as denied:
                await m.readdir(top, who)
            assert denied.value.errno == errno.EACCES
        assert fetches(m, "FS.FetchStatus") > statuses
        # Alice is still served from the cache.
        data = fetches(m)
        assert await m.read(fid, 0, 100, ALICE) == b"for alice only"
        assert fetches(m) == data
        assert (await m.getattr(top, ALICE)).caller_access & 0x8


async def test_restart_revalidates_with_one_fetch_status(
    cell: Cell, token_db: TokenStore, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    async with manager(cell, cache, token_db) as m:
        top = await make_dir(m, await scratch_volume(m), "alice 9")
        content = secrets.token_bytes(3 * CHUNK)
        fid = await make_file(m, top, "kept", content)
        assert await m.read(fid, 0, len(content), ALICE) == content

    async with manager(cell, cache, token_db) as again:
        assert await again.read(fid, 0, len(content), ALICE) == content
        assert again.stats.rpcs == {"FS.FetchStatus": 1, "VL.GetEntryByNameU": 1}
        assert again.stats.data_hits == 3


async def test_large_file_offsets(cell: Cell, token_db: TokenStore, tmp_path: Path) -> None:
    async with manager(cell, tmp_path / "c", token_db) as m:
        top = await make_dir(m, await scratch_volume(m), "alice 9")
        size = 5 << 30
        fid = await make_file(m, top, "big", b"")
        await write(m, fid, b"the end", pos=size - 7, length=size)

        assert (await m.getattr(fid, ALICE)).size == size
        assert await m.read(fid, size - 7, 100, ALICE) == b"the end"
        assert await m.read(fid, (4 << 30) + 1, 4, ALICE) == b"\0" * 4
        assert fetches(m) == 2  # one chunk each, nothing else of the 5 GB


async def test_errors_are_errnos(cell: Cell, token_db: TokenStore, tmp_path: Path) -> None:
    async with manager(cell, tmp_path / "c", token_db) as m:
        root = await scratch_volume(m)
        expected = [
            (volume_root(m, cell.name, "no.such.volume", "auto"), errno.ENOENT),
            (volume_root(m, "no.such.cell", "root.cell", "auto"), errno.ENOENT),
            (m.read(root, 0, 10, ADMIN), errno.EISDIR),
            (m.getattr(AfsFid(root.cell, root.volume, 777_777, 5), ADMIN), errno.ENOENT),
        ]
        for coroutine, err in expected:
            with pytest.raises(FsError) as caught:
                await coroutine
            assert caught.value.errno == err
        fid = await make_file(m, root, "plain-" + secrets.token_hex(3), b"x")
        with pytest.raises(FsError) as caught:
            await m.readdir(fid, ADMIN)
        assert caught.value.errno == errno.ENOTDIR
        volume = await m.statfs(root, ADMIN)
        assert volume.name == "test" and volume.online


async def test_read_only_volume_fails_over(
    cell2: Cell, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_db = TokenStore()
    token_db.set(ADMIN, admin_token(cell2, tmp_path / "cc", monkeypatch))
    async with manager(cell2, tmp_path / "c", token_db) as m:
        root = await volume_root(m, cell2.name, "root.cell", "auto")
        location = m.volumes.cached(cell2.name, root.volume)
        assert location is not None and root.volume == location.ro_id
        assert {n for n, _ in await m.readdir(root, ADMIN)} >= {".", ".."}
        used = m.vnodes.get(root).cb_server
        index = next(i for i, s in enumerate(cell2.servers) if s.addr == used)
        other = 1 - index
        try:
            await trio.to_thread.run_sync(cell2.stop_fileserver, index)
            await m.flush()
            assert {n for n, _ in await m.readdir(root, ADMIN)} >= {".", ".."}
            assert m.vnodes.get(root).cb_server == cell2.servers[other].addr

            await trio.to_thread.run_sync(cell2.stop_fileserver, other)
            await m.flush()
            started = trio.current_time()
            with pytest.raises(FsError) as caught:
                await m.getattr(root, ADMIN)
            assert caught.value.errno == errno.ETIMEDOUT
            assert trio.current_time() - started <= FAST.rotation_timeout + 1
        finally:
            for i in (index, other):
                await trio.to_thread.run_sync(cell2.start_fileserver, i)
        with trio.fail_after(90):
            while True:
                try:
                    status = await m.getattr(root, ADMIN)
                    break
                except FsError:
                    await trio.sleep(1)
        assert status.is_dir
