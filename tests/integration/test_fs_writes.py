"""The cache manager's write path against the real cell, without FUSE: write-on-close with
read-your-writes, stores and their failures (quota, rights, a stopped fileserver), namespace
operations, ACLs and quotas."""

from __future__ import annotations

import errno
import secrets
from pathlib import Path

import pytest
import trio
from managers import ADMIN, ALICE, BOB, CHUNK, FAST, manager
from volumes import volume_root

from afsfuse.fs.acl import Acl
from afsfuse.fs.errors import FsError
from afsfuse.fs.manager import CacheManager
from afsfuse.fs.vnode import AfsFid
from afsfuse.keyring.store import Identity, TokenStore
from afsfuse.testing.cell import Cell

pytestmark = pytest.mark.cell

#: alice may do everything but administer; admins everything.
ALICE_WRITES = "2\n0\nsystem:administrators 127\nalice 63\n"


async def alice_dir(m: CacheManager, volume: str = "test") -> AfsFid:
    """A fresh directory where alice may write."""
    root = await volume_root(m, m.this_cell, volume, "rw")
    top, _ = await m.mkdir(root, "w-" + secrets.token_hex(4), 0o755, ADMIN)
    await m.set_acl(top, ALICE_WRITES, ADMIN)
    return top


async def errno_of(coroutine) -> int:
    with pytest.raises(FsError) as caught:
        await coroutine
    return caught.value.errno


def fetches(m: CacheManager) -> int:
    return m.stats.rpcs["FS.FetchData64"]


async def names(m: CacheManager, directory: AfsFid) -> set[str]:
    return {n for n, _ in await m.readdir(directory, ALICE)} - {".", ".."}


async def test_write_on_close_with_read_your_writes(
    cell: Cell, token_db: TokenStore, tmp_path: Path
) -> None:
    async with (
        manager(cell, tmp_path / "w", token_db) as w,
        manager(cell, tmp_path / "r", token_db) as r,
    ):
        top = await alice_dir(w)
        fid, status = await w.create(top, "f", 0o644, ALICE)
        assert (status.size, status.mode) == (0, 0o644)
        model = bytearray(secrets.token_bytes(3 * CHUNK + 500))
        assert await w.write(fid, 0, bytes(model), ALICE) == len(model)

        # Nothing is on the server before the store; the writer sees its data at once.
        assert (await r.getattr(fid, ALICE)).size == 0
        assert await w.read(fid, 0, len(model) + 10, ALICE) == model
        assert (await w.getattr(fid, ALICE)).size == len(model)
        told: list[AfsFid | None] = []
        w.on_invalidate(told.append)
        stored = await w.store_data(fid, ALICE)
        assert stored.size == len(model)
        assert w.store.dirty.get(fid) is None
        assert fid not in told  # our own store is no news: the kernel keeps what it wrote
        before = fetches(w)
        assert await w.read(fid, 0, len(model), ALICE) == model
        assert fetches(w) == before  # the stored data became the clean copy
        assert await r.read(fid, 0, len(model), ALICE) == model

        # Overwrite inside a chunk, append, cut short, grow with a hole.
        model[CHUNK - 3 : CHUNK + 3] = b"ABCDEF"
        await w.write(fid, CHUNK - 3, b"ABCDEF", ALICE)
        model += b"appended"
        await w.write(fid, len(model) - 8, b"appended", ALICE)
        assert await w.read(fid, 0, len(model), ALICE) == model
        await w.truncate(fid, CHUNK + 10, ALICE)
        del model[CHUNK + 10 :]
        await w.truncate(fid, 5 * CHUNK, ALICE)
        model += bytes(5 * CHUNK - len(model))
        await w.write(fid, 4 * CHUNK, b"end", ALICE)
        model[4 * CHUNK : 4 * CHUNK + 3] = b"end"
        assert await w.read(fid, 0, len(model), ALICE) == model
        broken = trio.Event()
        r.on_invalidate(lambda f: broken.set() if f == fid else None)
        status = await w.store_data(fid, ALICE)
        assert status.size == len(model)
        with trio.fail_after(10):
            await broken.wait()
        assert await r.read(fid, 0, len(model) + 1, ALICE) == model
        assert await w.read(fid, 0, len(model), ALICE) == model

        # Dirty data survives another client's store (and its callback break), and is read
        # over the version it was written over; but it is never stored over the other
        # client's newer data: the store fails and the data is set aside.
        await w.write(fid, 0, b"from w", ALICE)
        broken = trio.Event()
        w.on_invalidate(lambda f: broken.set() if f == fid else None)
        await r.write(fid, 0, b"from r", ALICE)
        await r.store_data(fid, ALICE)
        with trio.fail_after(10):
            await broken.wait()
        assert await w.read(fid, 0, 6, ALICE) == b"from w"
        with pytest.raises(FsError) as refused:
            await w.store_data(fid, ALICE)
        assert refused.value.errno == errno.EIO
        [leftover] = w.store.leftovers.list()
        assert (leftover.fid, leftover.size) == (fid, len(model))
        theirs = bytearray(model)
        theirs[:6] = b"from r"
        assert await r.read(fid, 0, len(model), ALICE) == theirs
        assert await w.read(fid, 0, len(model), ALICE) == theirs


async def test_sparse_file_beyond_4_gb(cell: Cell, token_db: TokenStore, tmp_path: Path) -> None:
    async with (
        manager(cell, tmp_path / "w", token_db) as w,
        manager(cell, tmp_path / "r", token_db) as r,
    ):
        top = await alice_dir(w)
        fid, _ = await w.create(top, "big", 0o644, ALICE)
        size = 5 << 30
        await w.write(fid, size - 4, b"tail", ALICE)
        await w.write(fid, 10, b"head", ALICE)
        assert await w.read(fid, (4 << 30) + 1, 8, ALICE) == bytes(8)
        await w.fsync(fid, ALICE)
        assert w.stats.bytes_stored == 2 * CHUNK
        assert (await r.getattr(fid, ALICE)).size == size
        assert await r.read(fid, size - 8, 100, ALICE) == b"\0\0\0\0tail"
        assert await r.read(fid, 8, 8, ALICE) == b"\0\0head\0\0"
        assert await r.read(fid, (4 << 30) + 1, 4, ALICE) == bytes(4)


async def test_concurrent_writers_and_a_store_that_blocks_nobody(
    cell: Cell, token_db: TokenStore, tmp_path: Path
) -> None:
    async with manager(cell, tmp_path / "w", token_db) as m:
        top = await alice_dir(m)
        fid, _ = await m.create(top, "shared", 0o644, ALICE)
        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(m.write, fid, i * 1000, bytes([65 + i]) * 1000, ALICE)
        expected = b"".join(bytes([65 + i]) * 1000 for i in range(8))
        assert await m.read(fid, 0, 9000, ALICE) == expected

        other, _ = await m.create(top, "other", 0o644, ALICE)
        await m.write(other, 0, b"small", ALICE)
        await m.store_data(other, ALICE)
        await m.flush_fid(other)
        big = secrets.token_bytes(16 << 20)
        await m.write(fid, 0, big, ALICE)
        stored = trio.Event()

        async def store() -> None:
            await m.store_data(fid, ALICE)
            stored.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(store)
            await trio.sleep(0.05)
            before = fetches(m)
            assert await m.read(other, 0, 10, ALICE) == b"small"
            assert fetches(m) == before + 1 and not stored.is_set()
        assert await m.read(fid, 0, len(big), ALICE) == big


async def test_a_new_directory_is_known_without_a_fetch(
    cell: Cell, token_db: TokenStore, tmp_path: Path
) -> None:
    async with manager(cell, tmp_path / "c", token_db) as m:
        top = await alice_dir(m)
        sub, _ = await m.mkdir(top, "fresh", 0o755, ALICE)
        before = fetches(m)
        await m.create(sub, "inside", 0o644, ALICE)  # edits the listing made at mkdir
        ours = sorted(await m.readdir(sub, ALICE))
        assert fetches(m) == before
    async with manager(cell, tmp_path / "other", token_db) as fresh:
        assert sorted(await fresh.readdir(sub, ALICE)) == ours
    assert [name for name, _ in ours] == [".", "..", "inside"]
    assert dict(ours)[".."] == top and dict(ours)["."] == sub


async def test_namespace_operations(cell: Cell, token_db: TokenStore, tmp_path: Path) -> None:
    async with manager(cell, tmp_path / "c", token_db) as m:
        top = await alice_dir(m)
        sub, sub_status = await m.mkdir(top, "sub", 0o755, ALICE)
        assert sub_status.is_dir
        a, _ = await m.create(top, "a", 0o600, ALICE)
        b, _ = await m.create(sub, "b", 0o644, ALICE)
        assert await errno_of(m.create(top, "a", 0o644, ALICE)) == errno.EEXIST
        assert await names(m, top) == {"sub", "a"}

        assert await errno_of(m.rmdir(top, "sub", ALICE)) == errno.ENOTEMPTY
        await m.write(a, 0, b"contents of a", ALICE)
        await m.store_data(a, ALICE)
        # Across directories, replacing an existing file.
        await m.rename(top, "a", sub, "b", ALICE)
        assert await names(m, top) == {"sub"}
        assert await names(m, sub) == {"b"}
        assert await m.lookup(sub, "b", ALICE) == a
        assert await errno_of(m.getattr(b, ALICE)) == errno.ENOENT
        await m.rename(sub, "b", sub, "c", ALICE)
        assert await names(m, sub) == {"c"}

        link, status = await m.symlink(top, "ln", "sub/c", ALICE)
        assert status.is_symlink and status.mode == 0o755
        assert await m.readlink(link, ALICE) == b"sub/c"
        # A mount point needs the administer right (viced Symlink), which alice lacks.
        text = f"#{cell.name}:root.cell."
        assert await errno_of(m.symlink(top, "mnt", text, ALICE)) == errno.EACCES
        mount, status = await m.symlink(top, "mnt", text, ADMIN)
        assert status.is_symlink and status.mode == 0o644
        assert await m.readlink(mount, ALICE) == f"#{cell.name}:root.cell.".encode()

        # Hard links: within one directory only.
        status = await m.link(sub, "hard", a, ALICE)
        assert status.nlink == 2
        assert await m.lookup(sub, "hard", ALICE) == a
        assert await errno_of(m.link(top, "elsewhere", a, ALICE)) in (errno.EXDEV, errno.EISDIR)
        await m.unlink(sub, "c", ALICE)
        assert (await m.getattr(a, ALICE)).nlink == 1
        assert await m.read(a, 0, 100, ALICE) == b"contents of a"

        status = await m.setattr(a, ALICE, mode=0o640, mtime=1_000_000_000)
        assert (status.mode, status.mtime) == (0o640, 1_000_000_000)
        await m.write(a, 0, b"CONTENTS", ALICE)
        status = await m.setattr(a, ALICE, size=4)
        assert status.size == 4 and m.store.dirty.get(a) is None
        assert await m.read(a, 0, 100, ALICE) == b"CONT"

        await m.unlink(sub, "hard", ALICE)
        await m.rmdir(top, "sub", ALICE)
        assert await names(m, top) == {"ln", "mnt"}
        assert await errno_of(m.unlink(top, "sub", ALICE)) == errno.ENOENT

        volume = "w" + secrets.token_hex(3)
        await trio.to_thread.run_sync(
            lambda: cell.exec("vos", "create", cell.servers[0].addr, "a", volume, "-localauth")
        )
        other_root = await volume_root(m, cell.name, volume, "rw")
        assert await errno_of(m.rename(top, "ln", other_root, "ln", ADMIN)) == errno.EXDEV
        assert await errno_of(m.link(other_root, "ln", link, ADMIN)) == errno.EXDEV


async def test_store_failures_keep_the_data_for_a_retry(
    cell: Cell, token_db: TokenStore, tmp_path: Path
) -> None:
    volume = "q" + secrets.token_hex(3)
    await trio.to_thread.run_sync(
        lambda: cell.exec(
            "vos", "create", cell.servers[0].addr, "a", volume, "-maxquota", "100", "-localauth"
        )
    )
    async with manager(cell, tmp_path / "c", token_db) as m:
        root = await volume_root(m, cell.name, volume, "rw")
        assert (await m.get_volume_status(root, ADMIN)).max_quota == 100
        fid, _ = await m.create(root, "big", 0o644, ADMIN)
        # The fileserver lets a store overrun the quota by 1 MB (its -spare default).
        data = secrets.token_bytes(2 << 20)
        await m.write(fid, 0, data, ADMIN)
        assert await errno_of(m.store_data(fid, ADMIN)) == errno.EDQUOT
        assert m.store.dirty.get(fid) is not None
        assert await m.read(fid, 0, len(data), ADMIN) == data
        assert (await m.getattr(fid, ADMIN)).size == len(data)

        await m.set_quota(root, 5000, ADMIN)
        assert (await m.store_data(fid, ADMIN)).size == len(data)
        assert m.store.dirty.get(fid) is None
        volume_status = await m.get_volume_status(root, ADMIN)
        assert volume_status.max_quota == 5000 and volume_status.blocks_in_use >= 2048
        assert await errno_of(m.set_quota(root, 100, ALICE)) == errno.EACCES

        # Rights: none at all, or taken away between the write and the store.
        top = await alice_dir(m)
        fid, _ = await m.create(top, "mine", 0o644, ALICE)
        assert await errno_of(m.write(fid, 0, b"bob", BOB)) == errno.EACCES
        await m.write(fid, 0, b"alice", ALICE)
        await m.set_acl(top, "2\n0\nsystem:administrators 127\nalice 9\n", ADMIN)
        assert await errno_of(m.store_data(fid, ALICE)) == errno.EACCES
        assert m.store.dirty.get(fid) is not None
        await m.set_acl(top, ALICE_WRITES, ADMIN)
        await m.store_data(fid, ALICE)
        assert await m.read(fid, 0, 10, ALICE) == b"alice"


async def test_store_while_the_fileserver_is_stopped(
    cell: Cell, token_db: TokenStore, tmp_path: Path
) -> None:
    async with manager(cell, tmp_path / "c", token_db) as m:
        top = await alice_dir(m)
        fid, _ = await m.create(top, "patient", 0o644, ALICE)
        await m.write(fid, 0, b"kept while the server is away", ALICE)
        try:
            await trio.to_thread.run_sync(cell.stop_fileserver, 0)
            started = trio.current_time()
            assert await errno_of(m.store_data(fid, ALICE)) == errno.ETIMEDOUT
            assert trio.current_time() - started <= FAST.rotation_timeout + 1
            assert m.store.dirty.get(fid) is not None
        finally:
            await trio.to_thread.run_sync(cell.start_fileserver, 0)
        with trio.fail_after(90):
            while True:
                try:
                    status = await m.store_data(fid, ALICE)
                    break
                except FsError:
                    await trio.sleep(1)
        assert status.size == 29 and m.store.dirty.get(fid) is None
        assert await m.read(fid, 0, 100, ALICE) == b"kept while the server is away"


async def test_acl_round_trip(cell: Cell, token_db: TokenStore, tmp_path: Path) -> None:
    async with manager(cell, tmp_path / "c", token_db) as m:
        top = await alice_dir(m)
        assert Acl.parse(await m.get_acl(top, ALICE)).positive == {
            "system:administrators": 127,
            "alice": 63,
        }
        acl = Acl({"system:administrators": 127, "alice": 0x7F, "bob": 9}, {"bob": 8})
        await m.set_acl(top, acl.format(), ADMIN)
        assert Acl.parse(await m.get_acl(top, ADMIN)) == acl
        server = m.servers.get(cell.servers[0].addr)
        assert server.no_store_acl  # 1.8 fileservers know StoreACL as opcode 134 only
        # bob's lookup right is taken away by the negative entry.
        assert await errno_of(m.readdir(top, BOB)) == errno.EACCES
        assert await errno_of(m.set_acl(top, "1\n0\n", ADMIN)) == errno.EINVAL
        assert await errno_of(m.set_acl(top, acl.format(), BOB)) == errno.EACCES


async def listing(m: CacheManager, directory: AfsFid, who: Identity = ALICE) -> dict[str, AfsFid]:
    return dict(await m.readdir(directory, who))


async def test_own_namespace_changes_edit_the_listing_without_fetching_it(
    cell: Cell, token_db: TokenStore, tmp_path: Path
) -> None:
    async with (
        manager(cell, tmp_path / "c1", token_db) as m,
        manager(cell, tmp_path / "c2", token_db) as other,
    ):
        top = await alice_dir(m)
        sub, _ = await m.mkdir(top, "sub", 0o755, ALICE)
        await listing(m, top)
        await listing(m, sub)
        before = fetches(m)
        files = [(await m.create(top, f"f{i}", 0o644, ALICE))[0] for i in range(30)]
        await m.mkdir(top, "d", 0o755, ALICE)
        await m.symlink(top, "ln", "f0", ALICE)
        await m.link(top, "hard", files[1], ALICE)
        await m.unlink(top, "f2", ALICE)
        await m.rmdir(top, "d", ALICE)
        await m.rename(top, "f3", top, "f4", ALICE)  # replaces f4
        await m.rename(top, "f5", sub, "moved", ALICE)
        mine_top, mine_sub = await listing(m, top), await listing(m, sub)
        assert fetches(m) == before  # every change made to the listing in memory
        assert mine_top["f4"] == files[3] and mine_sub["moved"] == files[5]
        assert "f2" not in mine_top and "d" not in mine_top
        # What the fileserver holds, seen by a client that fetches it.
        assert mine_top == await listing(other, top)
        assert mine_sub == await listing(other, sub)

        # Another client's change in between: our next change's version is 2 ahead of
        # our listing, so it is fetched again, with both changes.
        await other.create(top, "theirs", 0o644, ALICE)
        await m.create(top, "ours", 0o644, ALICE)
        after = await listing(m, top)
        assert {"theirs", "ours"} <= after.keys()
        assert fetches(m) == before + 1
        assert after == await listing(other, top)
