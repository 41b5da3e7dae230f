"""The FUSE face without FUSE: inode table, dynamic root, mount points, caching policy and
invalidation, against a small fake cache manager."""

from __future__ import annotations

import errno
import os
import stat
import threading
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pyfuse3
import pytest
import trio
import trio.testing

from afsfuse.fs.api import CacheManagerApi, FileData
from afsfuse.fs.cell import Cell
from afsfuse.fs.errors import FsError
from afsfuse.fs.mntpt import VolumeType
from afsfuse.fs.vnode import AfsFid, Status
from afsfuse.fs.volume import VolumeStatus
from afsfuse.keyring.store import Identity
from afsfuse.rx.interfaces.fs import FILE_DIRECTORY, FILE_FILE, FILE_SYMLINK
from afsfuse.vfs.inodes import ROOT_INODE, FileNode, InodeTable, MountNode
from afsfuse.vfs.mounts import afs_mount, cell_mount, volume_mount
from afsfuse.vfs.operations import DROP_WAIT, AfsOperations, Invalidator
from afsfuse.vfs.paths import MountPaths
from afsfuse.vl.vlclient import VolumeLocation

CELL = "example.test"
RL = 9  # read + lookup


def status(kind: int, mode: int, anonymous: int, caller: int | None = None, size: int = 0):
    return Status(
        file_type=kind, mode=mode, nlink=1, size=size, data_version=1, author=0, owner=0,
        group=0, mtime=1, server_mtime=1, caller_access=anonymous if caller is None else caller,
        anonymous_access=anonymous, parent_vnode=1, parent_unique=1,
    )  # fmt: skip


def location(name: str, ids: tuple[int, int, int]) -> VolumeLocation:
    return VolumeLocation(name, ids, 0, ((), (), ()))


class FakeManager:
    """Files by fid; rights per uid (uid 1001 "alice" sees the private directory)."""

    def __init__(self) -> None:
        self.volumes = {"root.cell": location("root.cell", (10, 11, 0))}
        self.volumes["test"] = location("test", (20, 0, 0))
        self.listeners = []
        root = AfsFid(CELL, 11, 1, 1)
        private = AfsFid(CELL, 11, 3, 5)
        self.files = {
            root: status(FILE_DIRECTORY, 0o755, RL),
            AfsFid(CELL, 11, 2, 2): status(FILE_FILE, 0o644, RL, size=5),
            private: status(FILE_DIRECTORY, 0o755, 0),
            AfsFid(CELL, 11, 4, 6): status(FILE_FILE, 0o644, 0),
            AfsFid(CELL, 11, 6, 7): status(FILE_SYMLINK, 0o644, RL),
            AfsFid(CELL, 11, 8, 8): status(FILE_DIRECTORY, 0o755, RL),
            AfsFid(CELL, 20, 1, 1): status(FILE_DIRECTORY, 0o755, RL),
        }
        self.dirs = {
            root: {"pub": AfsFid(CELL, 11, 2, 2), "private": private,
                   "mnt": AfsFid(CELL, 11, 6, 7), "amd64": AfsFid(CELL, 11, 8, 8)},
            private: {"secret": AfsFid(CELL, 11, 4, 6)},
            AfsFid(CELL, 20, 1, 1): {},
        }  # fmt: skip
        self.links = {AfsFid(CELL, 11, 6, 7): b"#test."}
        self.private = {private, AfsFid(CELL, 11, 4, 6)}
        self.dirty: dict[AfsFid, bytearray] = {}
        self.stored: dict[AfsFid, bytes] = {}
        self.stores: list[AfsFid] = []
        self.store_error: int | None = None
        self.contents: dict[AfsFid, bytes] = {}
        self.shown_reads: list = []
        self.kept: dict[tuple[AfsFid, int], bytes] = {}
        self.during_read = None
        self.during_truncate = None

    def on_invalidate(self, callback) -> None:
        self.listeners.append(callback)

    def known_cells(self) -> list[str]:
        return [CELL]

    def aliases(self) -> dict[str, str]:
        return {"ex": CELL}

    async def cell(self, name: str) -> Cell | None:
        return Cell(CELL, ()) if name.lower() in (CELL, "ex") else None

    def cached_volume(self, fid: AfsFid) -> VolumeLocation | None:
        return next((e for e in self.volumes.values() if fid.volume in e.volume_ids), None)

    async def volume_location(self, cell: str, volume: str | int) -> VolumeLocation:
        for entry in self.volumes.values():
            if volume == entry.name or volume in entry.volume_ids:
                return entry
        raise FsError(errno.ENOENT)

    async def getattr(self, fid, who) -> Status:
        found = self.files.get(fid)
        if found is None:
            raise FsError(errno.ENOENT)
        if fid in self.private:
            if who.uid != 1001:
                raise FsError(errno.EACCES)
            return replace(found, caller_access=RL)
        return found

    async def bulk_status(self, fids, who):
        out = []
        for fid in fids:
            try:
                out.append(await self.getattr(fid, who))
            except FsError as e:
                out.append(e)
        return out

    async def prefetch_status(self, fids, who):
        return {
            fid: s
            for fid, s in zip(fids, await self.bulk_status(fids, who), strict=True)
            if isinstance(s, FsError)
        }

    async def lookup(self, dir_fid, name, who) -> AfsFid:
        await self.getattr(dir_fid, who)
        key = name.decode() if isinstance(name, bytes) else name
        try:
            return self.dirs[dir_fid][key]
        except KeyError:
            raise FsError(errno.ENOENT) from None

    async def readdir(self, dir_fid, who):
        await self.getattr(dir_fid, who)
        return [(".", dir_fid), *self.dirs[dir_fid].items()]

    async def readlink(self, fid, who) -> bytes:
        return self.links[fid]

    async def read_shown(self, fid, offset, size, who, shown, *, clean=False) -> FileData:
        """The file's current contents, or the version shown while it is `kept` (as the
        real one serves a version whose chunks are in memory), or this mount's unstored
        changes but when `clean`; remembers what was shown."""
        self.shown_reads.append(shown)
        if fid in self.dirty and not clean:
            data = bytes(self.dirty[fid])
            return FileData(data[offset : offset + size], None, len(data))
        data = self.contents.get(fid, b"")
        version = self.files[fid].data_version
        if shown is not None and (fid, shown[0]) in self.kept:
            version, data = shown[0], self.kept[(fid, shown[0])]
        if self.during_read is not None:
            await self.during_read()
        return FileData(data[offset : offset + size], version, len(data))

    # A write path that records what reached the "fileserver".

    async def open(self, fid, who, *, write: bool) -> Status:
        return await self.getattr(fid, who)

    def unstored(self, fid) -> bool:
        return fid in self.dirty

    async def write(self, fid, offset, data, who) -> int:
        self.dirty.setdefault(fid, bytearray(self.stored.get(fid, b"")))
        buf = self.dirty[fid]
        buf[len(buf) : offset] = bytes(max(0, offset - len(buf)))
        buf[offset : offset + len(data)] = data
        return len(data)

    async def truncate(self, fid, length, who) -> None:
        buf = self.dirty.setdefault(fid, bytearray(self.stored.get(fid, b"")))
        del buf[length:]
        buf.extend(bytes(length - len(buf)))
        if self.during_truncate is not None:
            await self.during_truncate()

    async def store_data(self, fid, who) -> Status:
        self.stores.append(fid)
        if self.store_error is not None:
            raise FsError(self.store_error)
        if fid not in self.files:
            raise FsError(errno.ENOENT)
        self.stored[fid] = bytes(self.dirty.pop(fid))
        return self.files[fid]

    async def create(self, dir_fid, name, mode, who):
        fid = AfsFid(CELL, 11, 100 + len(self.files), 1)
        self.files[fid] = status(FILE_FILE, mode, RL)
        self.dirs[dir_fid][name.decode()] = fid
        return fid, self.files[fid]

    async def rename(self, src, name, dst, new_name, who) -> None:
        self.dirs[dst][new_name.decode()] = self.dirs[src].pop(name.decode())

    async def unlink(self, dir_fid, name, who) -> None:
        fid = self.dirs[dir_fid].pop(name.decode())
        del self.files[fid]
        self.dirty.pop(fid, None)

    # The rest of the cache manager's API: not used by these tests.

    async def statfs(self, fid: AfsFid, who: Identity) -> VolumeStatus:
        raise FsError(errno.ENOSYS)

    async def get_volume_status(self, fid: AfsFid, who: Identity) -> VolumeStatus:
        raise FsError(errno.ENOSYS)

    async def fsync(self, fid: AfsFid, who: Identity) -> Status:
        return await self.store_data(fid, who)

    async def setattr(self, fid: AfsFid, who: Identity, **changes: int | None) -> Status:
        raise FsError(errno.EROFS)

    async def mkdir(self, dir_fid, name, mode, who) -> tuple[AfsFid, Status]:
        raise FsError(errno.EROFS)

    async def symlink(self, dir_fid, name, target, who) -> tuple[AfsFid, Status]:
        raise FsError(errno.EROFS)

    async def link(self, dir_fid, name, target, who) -> Status:
        raise FsError(errno.EROFS)

    async def rmdir(self, dir_fid, name, who) -> None:
        raise FsError(errno.EROFS)

    async def get_acl(self, fid: AfsFid, who: Identity) -> str:
        raise FsError(errno.ENOSYS)

    async def set_acl(self, fid: AfsFid, text: str | bytes, who: Identity) -> None:
        raise FsError(errno.EROFS)


def ctx(uid: int = 0, pid: int = 100) -> Any:
    """A request context (pyfuse3's own cannot be filled in from Python)."""
    return SimpleNamespace(uid=uid, gid=uid, pid=pid, umask=0o022)


@pytest.fixture
def ops() -> AfsOperations:
    calls = []

    def recording(inodes: InodeTable) -> Invalidator:
        return Invalidator(
            inodes,
            lambda inode, attr_only: calls.append(("inode", inode)),
            lambda parent, name: calls.append(("entry", parent, name)),
        )

    manager: CacheManagerApi = FakeManager()  # mypy checks the fake against the real API
    operations = AfsOperations(manager, [b"amd64"], make_invalidator=recording)
    operations.calls = calls  # type: ignore[attr-defined]
    return operations


def test_inode_table_counts_lookups_and_forgets() -> None:
    table = InodeTable()
    fid = AfsFid(CELL, 1, 2, 3)
    node = table.intern(("fid", fid), lambda i: FileNode(i, fid=fid))
    assert table.intern(("fid", fid), lambda i: FileNode(i, fid=fid)) is node
    table.referenced(node)
    table.referenced(node)
    table.forget(node.inode, 1)
    assert table.get(node.inode) is node
    table.forget(node.inode, 1)
    assert table.get(node.inode) is None
    again = table.intern(("fid", fid), lambda i: FileNode(i, fid=fid))
    assert again is not node and again.inode == node.inode  # a fid keeps its number
    other = AfsFid(CELL, 1, 2, 4)
    assert table.intern(("fid", other), lambda i: FileNode(i, fid=other)).inode != node.inode
    table.forget(ROOT_INODE, 5)
    assert table.get(ROOT_INODE) is table.root


def test_mount_specs_follow_the_volume_rules() -> None:
    holder = AfsFid(CELL, 11, 6, 7)
    spec = afs_mount(b"#test.", 0o644, holder, VolumeType.RO)
    assert spec is not None and spec.cell == CELL and spec.same_cell and spec.text == "#test"
    assert afs_mount(b"#test.", 0o755, holder, VolumeType.RW) is None  # an ordinary symlink
    assert afs_mount(b"../x", 0o644, holder, VolumeType.RW) is None
    assert cell_mount(CELL, rw=True).target.forced_rw
    assert not cell_mount(CELL, rw=False).same_cell  # crossing from dynroot: RO preferred
    spec = volume_mount(f"{CELL}:536870918")
    assert spec is not None and spec.target.volume_id == 536870918
    assert volume_mount("nocolon") is None


async def test_dynamic_root_lists_cells_rw_paths_aliases_and_mount_dir(ops) -> None:
    handle = await ops.opendir(ROOT_INODE, ctx())
    names = [entry.name for entry in ops._handles[handle].entries]
    assert names == [".:mount", CELL, "." + CELL, "ex", ".ex"]
    link = await ops.lookup(ROOT_INODE, b"ex", ctx())
    assert stat.S_ISLNK(link.st_mode)
    assert await ops.readlink(link.st_ino, ctx()) == CELL.encode()
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.lookup(ROOT_INODE, b"nodots", ctx())
    assert e.value.errno == errno.ENOENT


async def test_cell_is_a_mount_to_root_cell_readonly_with_fakestat(ops) -> None:
    entry = await ops.lookup(ROOT_INODE, CELL.encode(), ctx())
    assert stat.S_ISDIR(entry.st_mode) and entry.entry_timeout > 0 and entry.attr_timeout == 0
    node = ops.inodes.get(entry.st_ino)
    assert isinstance(node, MountNode) and node.root is None  # not resolved by lookup
    inside = await ops.lookup(entry.st_ino, b"pub", ctx())
    assert node.root == AfsFid(CELL, 11, 1, 1)
    assert inside.entry_timeout > 0 and inside.attr_timeout > 0
    rw = await ops.lookup(ROOT_INODE, ("." + CELL).encode(), ctx())
    with pytest.raises(pyfuse3.FUSEError):  # the RW root (10) has no files in the fake
        await ops.lookup(rw.st_ino, b"pub", ctx())
    assert ops.inodes.get(rw.st_ino).root == AfsFid(CELL, 10, 1, 1)


async def test_afs_mount_point_is_a_directory_and_is_traversed(ops) -> None:
    top = await ops.lookup(ROOT_INODE, CELL.encode(), ctx())
    mnt = await ops.lookup(top.st_ino, b"mnt", ctx())
    assert stat.S_ISDIR(mnt.st_mode) and mnt.entry_timeout > 0 and mnt.attr_timeout == 0
    assert await ops.getxattr(mnt.st_ino, b"afs.mountpoint", ctx()) == b"#test"
    node = ops.inodes.get(mnt.st_ino)
    assert node.root is None  # stat and getxattr of the mount point left the target alone
    assert await ops.getxattr(mnt.st_ino, b"afs.volume", ctx()) == b"test"
    assert node.root == AfsFid(CELL, 20, 1, 1)


async def test_at_sys_is_expanded_and_never_cached(ops) -> None:
    top = await ops.lookup(ROOT_INODE, CELL.encode(), ctx())
    found = await ops.lookup(top.st_ino, b"@sys", ctx())
    assert ops.inodes.get(found.st_ino).fid == AfsFid(CELL, 11, 8, 8)
    assert found.entry_timeout == 0
    ops.sysnames = [b"other"]
    with pytest.raises(pyfuse3.FUSEError):
        await ops.lookup(top.st_ino, b"@sys", ctx())


async def test_private_entries_are_never_cached_and_checked_per_caller(ops) -> None:
    top = await ops.lookup(ROOT_INODE, CELL.encode(), ctx())
    alice, bob = ctx(1001), ctx(1002)
    private = await ops.lookup(top.st_ino, b"private", alice)
    assert private.attr_timeout == 0  # only alice may stat it
    secret = await ops.lookup(private.st_ino, b"secret", alice)
    assert secret.entry_timeout == 0 and secret.attr_timeout == 0
    for call in (
        ops.getattr(secret.st_ino, bob),
        ops.lookup(private.st_ino, b"secret", bob),
        ops.opendir(private.st_ino, bob),
        ops.open(secret.st_ino, 0, bob),
        ops.getxattr(secret.st_ino, b"afs.fid", bob),
    ):
        with pytest.raises(pyfuse3.FUSEError) as e:
            await call
        assert e.value.errno == errno.EACCES
    assert await ops.access(private.st_ino, os.R_OK | os.X_OK, alice)
    assert not await ops.access(private.st_ino, os.W_OK, alice)


async def test_unexpected_errors_become_eio(ops) -> None:
    async def broken(*args):
        raise RuntimeError("bug")

    ops.manager.getattr = broken
    top = await ops.lookup(ROOT_INODE, CELL.encode(), ctx())
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.lookup(top.st_ino, b"pub", ctx())
    assert e.value.errno == errno.EIO


async def test_breaks_invalidate_inodes_and_cached_names(ops) -> None:
    top = await ops.lookup(ROOT_INODE, CELL.encode(), ctx())
    pub = await ops.lookup(top.st_ino, b"pub", ctx())
    async with trio.open_nursery() as nursery:
        await nursery.start(ops.invalidator.run)
        for listener in ops.manager.listeners:
            listener(AfsFid(CELL, 11, 1, 1))  # the directory (the mount's root) changed
            listener(AfsFid(CELL, 11, 2, 2))
        with trio.fail_after(5):
            while len(ops.calls) < 3:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert ("inode", pub.st_ino) in ops.calls
    assert ("inode", top.st_ino) in ops.calls
    assert ("entry", top.st_ino, b"pub") in ops.calls


async def test_close_stores_once_and_fails_with_the_store_error(ops) -> None:
    top = await ops.lookup(ROOT_INODE, CELL.encode(), ctx())
    info, attrs = await ops.create(top.st_ino, b"new", 0o666, os.O_WRONLY | os.O_CREAT, ctx())
    fid = ops.inodes.get(attrs.st_ino).fid
    assert ops.manager.files[fid].mode == 0o644  # the umask applied
    assert await ops.write(info.fh, 0, b"hello") == 5
    await ops.flush(info.fh)  # close(2) of a dup: stored now
    await ops.flush(info.fh)  # the next close: nothing left, no second store
    assert ops.manager.stored[fid] == b"hello" and ops.manager.stores == [fid]

    await ops.write(info.fh, 5, b" world")
    ops.manager.store_error = errno.EDQUOT
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.flush(info.fh)
    assert e.value.errno == errno.EDQUOT
    assert ops.manager.unstored(fid)  # kept for a retry, not reported as stored
    ops.manager.store_error = None
    await ops.release(info.fh)  # the last writer goes: one more try
    assert ops.manager.stored[fid] == b"hello world" and not ops.manager.unstored(fid)


async def test_open_for_writing_truncates_and_needs_write_access(ops) -> None:
    top = await ops.lookup(ROOT_INODE, CELL.encode(), ctx())
    pub = await ops.lookup(top.st_ino, b"pub", ctx())
    fid = ops.inodes.get(pub.st_ino).fid
    with pytest.raises(pyfuse3.FUSEError) as e:  # the fake grants rl only
        await ops.open(pub.st_ino, os.O_WRONLY, ctx())
    assert e.value.errno == errno.EACCES
    ops.manager.files[fid] = status(FILE_FILE, 0o644, 0x7F)
    ops.manager.stored[fid] = b"12345"
    info = await ops.open(pub.st_ino, os.O_WRONLY | os.O_TRUNC, ctx())
    await ops.release(info.fh)
    assert ops.manager.stored[fid] == b""
    with pytest.raises(pyfuse3.FUSEError) as e:  # a read-only descriptor cannot write
        await ops.write((await ops.open(pub.st_ino, os.O_RDONLY, ctx())).fh, 0, b"x")
    assert e.value.errno == errno.EBADF


async def test_unlink_of_an_open_file_hides_it_until_the_last_release(ops) -> None:
    top = await ops.lookup(ROOT_INODE, CELL.encode(), ctx())
    root = AfsFid(CELL, 11, 1, 1)
    info, attrs = await ops.create(top.st_ino, b"tmp", 0o600, os.O_RDWR | os.O_CREAT, ctx())
    fid = ops.inodes.get(attrs.st_ino).fid
    await ops.unlink(top.st_ino, b"tmp", ctx())
    hidden = [n for n in ops.manager.dirs[root] if n.startswith(".__afs")]
    assert "tmp" not in ops.manager.dirs[root] and len(hidden) == 1
    await ops.write(info.fh, 0, b"scratch")
    await ops.flush(info.fh)
    assert ops.manager.stored[fid] == b"scratch"
    await ops.release(info.fh)
    assert not [n for n in ops.manager.dirs[root] if n.startswith(".__afs")]
    assert fid not in ops.manager.files


async def test_nothing_can_be_made_in_the_dynamic_root(ops) -> None:
    for call in (
        ops.mkdir(ROOT_INODE, b"x", 0o755, ctx()),
        ops.create(ROOT_INODE, b"x", 0o644, os.O_WRONLY, ctx()),
        ops.unlink(ROOT_INODE, CELL.encode(), ctx()),
    ):
        with pytest.raises(pyfuse3.FUSEError) as e:
            await call
        assert e.value.errno == errno.EACCES


async def test_control_paths_are_walked_like_lookups(ops) -> None:
    paths = MountPaths(ops, "/nonexistent-afs")
    root = AfsFid(CELL, 11, 1, 1)
    assert await paths.fid(f"/nonexistent-afs/{CELL}/pub", Identity(0)) == AfsFid(CELL, 11, 2, 2)
    assert await paths.fid(f"/nonexistent-afs/{CELL}", Identity(0)) == root  # the volume root
    assert await paths.parent(f"/nonexistent-afs/{CELL}/new", Identity(0)) == (root, b"new")
    assert await paths.fid(f"/nonexistent-afs/{CELL}/mnt", Identity(0)) == AfsFid(CELL, 20, 1, 1)
    for path, err in (
        ("/elsewhere/x", errno.EINVAL),
        ("relative", errno.EINVAL),
        ("/nonexistent-afs", errno.EINVAL),  # the dynamic root is no AFS vnode
        (f"/nonexistent-afs/{CELL}/private/secret", errno.EACCES),
        (f"/nonexistent-afs/{CELL}/nothing/x", errno.ENOENT),
    ):
        with pytest.raises((FsError, pyfuse3.FUSEError)) as e:
            await paths.fid(path, Identity(1002))
        assert e.value.errno == err, path
    assert len(ops.inodes) == 1  # nothing was handed to the kernel, so nothing was kept


async def test_pioctl_paths_are_resolved_as_the_kernel_walks_them(ops) -> None:
    """rmtsys sends paths as tools were given them: `..` and symbolic links, in the mount
    read as the caller, are resolved by the daemon (a link with exec bits is no mount)."""
    manager = ops.manager
    root = AfsFid(CELL, 11, 1, 1)
    links = {"rel": b"../ex/pub", "abs": b"/nonexistent-afs/ex/private", "loop": b"loop"}
    for n, (name, target) in enumerate(links.items()):
        fid = AfsFid(CELL, 11, 30 + n, 30 + n)
        manager.files[fid] = status(FILE_SYMLINK, 0o755, RL)
        manager.dirs[root][name] = fid
        manager.links[fid] = target
    paths = MountPaths(ops, "/nonexistent-afs")
    alice = Identity(1001)
    # The alias `ex` in the dynamic root is itself a link, to the cell.
    assert await paths.canonical("/nonexistent-afs/ex/rel", alice) == f"/nonexistent-afs/{CELL}/pub"
    assert await paths.canonical("/nonexistent-afs/ex/abs/secret", alice) == (
        f"/nonexistent-afs/{CELL}/private/secret"
    )
    assert await paths.canonical("/nonexistent-afs/ex/./pub/../rel", alice, follow=False) == (
        f"/nonexistent-afs/{CELL}/rel"
    )
    assert await paths.canonical("/nonexistent-afs/../nonexistent-afs/ex", alice) == (
        f"/nonexistent-afs/{CELL}"
    )
    for path, err in (
        (f"/nonexistent-afs/{CELL}/loop", errno.ELOOP),
        (f"/nonexistent-afs/{CELL}/nothing/x", errno.ENOENT),
        ("relative/path", errno.EINVAL),
    ):
        with pytest.raises((FsError, pyfuse3.FUSEError)) as e:
            await paths.canonical(path, alice)
        assert e.value.errno == err, path
    # Bob may not look into the private directory, so a link through it stops there.
    with pytest.raises(FsError) as e:
        await paths.canonical(f"/nonexistent-afs/{CELL}/abs/secret", Identity(1002))
    assert e.value.errno == errno.EACCES


async def test_without_xattrs_the_kernel_is_told_to_stop_asking() -> None:
    ops = AfsOperations(FakeManager(), [b"amd64"], xattrs=False)
    top = await ops.lookup(ROOT_INODE, CELL.encode(), ctx())
    for asking in (
        ops.getxattr(top.st_ino, b"afs.volume", ctx()),
        ops.getxattr(top.st_ino, b"security.capability", ctx()),
        ops.listxattr(top.st_ino, ctx()),
        ops.setxattr(top.st_ino, b"afs.acl", b"", ctx()),
        ops.removexattr(top.st_ino, b"afs.acl", ctx()),
    ):
        with pytest.raises(pyfuse3.FUSEError) as caught:
            await asking
        assert caught.value.errno == errno.ENOSYS


async def test_names_outside_afs_are_not_supported_and_afs_names_absent_are_no_data(ops) -> None:
    """A label or a POSIX ACL is refused as unsupported (ls -l then stops asking for it);
    an afs.* name a node lacks is merely absent."""
    top = await ops.lookup(ROOT_INODE, CELL.encode(), ctx())
    mnt = await ops.lookup(top.st_ino, b"mnt", ctx())
    answers = {}
    for name in (b"security.selinux", b"system.posix_acl_access", b"user.x", b"afs.nothing"):
        with pytest.raises(pyfuse3.FUSEError) as caught:
            await ops.getxattr(top.st_ino, name, ctx())
        answers[name] = caught.value.errno
    pub = await ops.lookup(top.st_ino, b"pub", ctx())
    with pytest.raises(pyfuse3.FUSEError) as caught:
        await ops.getxattr(pub.st_ino, b"afs.mountpoint", ctx())  # not a mount point
    answers[b"afs.mountpoint"] = caught.value.errno
    for name in (b"system.posix_acl_default", b"afs.nothing"):
        with pytest.raises(pyfuse3.FUSEError) as caught:
            await ops.removexattr(top.st_ino, name, ctx())
        answers[b"remove " + name] = caught.value.errno
    with pytest.raises(pyfuse3.FUSEError) as caught:
        await ops.setxattr(top.st_ino, b"system.posix_acl_access", b"\2\0\0\0", ctx())
    answers[b"set system.posix_acl_access"] = caught.value.errno
    assert answers == {
        b"security.selinux": errno.EOPNOTSUPP,
        b"system.posix_acl_access": errno.EOPNOTSUPP,
        b"user.x": errno.EOPNOTSUPP,
        b"afs.nothing": errno.ENODATA,
        b"afs.mountpoint": errno.ENODATA,
        b"remove system.posix_acl_default": errno.EOPNOTSUPP,
        b"remove afs.nothing": errno.ENODATA,
        b"set system.posix_acl_access": errno.EOPNOTSUPP,
    }
    assert await ops.getxattr(mnt.st_ino, b"afs.mountpoint", ctx()) == b"#test"  # still served


async def test_open_files_unlinked_in_one_directory_never_share_a_hidden_name(ops) -> None:
    """(vnode 0x1, unique 0x23) and (0x12, 0x3) once both hid as '.__afs123': the second
    unlink replaced the first hidden file, still open.  A name someone else chose is never
    taken either."""
    top = await ops.lookup(ROOT_INODE, CELL.encode(), ctx())
    root = AfsFid(CELL, 11, 1, 1)
    handles = []
    for name, fid in ((b"one", AfsFid(CELL, 11, 0x1, 0x23)), (b"two", AfsFid(CELL, 11, 0x12, 0x3))):
        ops.manager.files[fid] = status(FILE_FILE, 0o644, 0x7F)
        ops.manager.dirs[root][name.decode()] = fid
        attrs = await ops.lookup(top.st_ino, name, ctx())
        handles.append(((await ops.open(attrs.st_ino, os.O_RDWR, ctx())).fh, fid))
    squatter = AfsFid(CELL, 11, 0x77, 0x1)
    ops.manager.files[squatter] = status(FILE_FILE, 0o644, RL)
    ops.manager.dirs[root][".__afs1.23"] = squatter
    await ops.unlink(top.st_ino, b"one", ctx())
    await ops.unlink(top.st_ino, b"two", ctx())
    hidden = {n: f for n, f in ops.manager.dirs[root].items() if n.startswith(".__afs")}
    assert sorted(hidden.values()) == sorted([squatter, handles[0][1], handles[1][1]])
    for fh, fid in handles:
        await ops.write(fh, 0, b"still here")
        await ops.flush(fh)
        assert ops.manager.stored[fid] == b"still here"


async def test_reads_tell_the_manager_what_the_kernel_believes_and_fix_its_length() -> None:
    calls = []

    def recording(inodes: InodeTable) -> Invalidator:
        return Invalidator(
            inodes,
            lambda inode, attr_only: calls.append(("attrs" if attr_only else "all", inode)),
            lambda parent, name: None,
        )

    ops = AfsOperations(FakeManager(), [b"amd64"], make_invalidator=recording)
    manager = ops.manager
    fid = AfsFid(CELL, 11, 2, 2)
    manager.contents[fid] = b"hello"  # version 1, as the kernel is told by the lookup
    top = await ops.lookup(ROOT_INODE, CELL.encode(), ctx())
    pub = await ops.lookup(top.st_ino, b"pub", ctx())
    info = await ops.open(pub.st_ino, os.O_RDONLY, ctx())
    assert info.keep_cache and await ops.read(info.fh, 0, 4096) == b"hello"
    assert manager.shown_reads == [(1, 5)] and not calls

    def change(version: int, data: bytes) -> None:
        manager.files[fid] = replace(manager.files[fid], data_version=version, size=len(data))
        manager.contents[fid] = data

    # Longer now: the kernel, which stops at 5 bytes, must ask for the length again.
    change(2, b"hello world")
    assert await ops.read(info.fh, 0, 4096) == b"hello world"
    assert calls == [("attrs", pub.st_ino)]
    # An open after the change drops the kernel's pages of version 1 and its length.
    again = await ops.open(pub.st_ino, os.O_RDONLY, ctx())
    assert not again.keep_cache and calls == [("attrs", pub.st_ino)] * 2
    # Given the new attributes only once its pages of version 1 are dropped.
    assert (await ops.getattr(pub.st_ino, ctx())).st_size == 11
    assert calls[2:] == [("all", pub.st_ino)]
    assert (await ops.open(pub.st_ino, os.O_RDONLY, ctx())).keep_cache
    calls.remove(("all", pub.st_ino))

    # Shorter: a short answer must not meet the old length, so the read fails once (the
    # kernel reads again), and the next one is answered at the new length.
    change(3, b"hi")
    with pytest.raises(pyfuse3.FUSEError):
        await ops.read(info.fh, 0, 4096)
    assert calls == [("attrs", pub.st_ino)] * 3
    assert await ops.read(info.fh, 0, 4096) == b"hi"
    assert manager.shown_reads[-2:] == [(2, 11), (3, 2)] and len(calls) == 3

    # Answered at version 3 while the kernel was given version 4 meanwhile: short of its
    # new length, so failed, and the kernel keeps what it was given.
    async def newer_meanwhile() -> None:
        manager.during_read = None
        change(4, b"hello there")
        await ops.getattr(pub.st_ino, ctx())

    manager.during_read = newer_meanwhile
    with pytest.raises(pyfuse3.FUSEError):
        await ops.read(info.fh, 0, 4096)
    assert await ops.read(info.fh, 0, 4096) == b"hello there"
    assert manager.shown_reads[-1] == (4, 11)

    # Read ahead over pages past this version's end: the kernel was sized by a longer one.
    with pytest.raises(pyfuse3.FUSEError):
        await ops.read(info.fh, 0, 3 * 4096)
    # Not so for O_DIRECT, whose reads go past the end as asked.
    direct = await ops.open(pub.st_ino, os.O_RDONLY | os.O_DIRECT, ctx())
    assert await ops.read(direct.fh, 0, 3 * 4096) == b"hello there"


async def test_reads_while_an_o_trunc_open_is_answered_get_the_length_the_kernel_still_has(
    ops,
) -> None:
    """The kernel cuts a file's length and pages only once it has the reply to an O_TRUNC
    open: a read it sends meanwhile was sized by the old length, and an empty answer from
    the cut copy would be pages of zeros that a reader copies."""
    manager = ops.manager
    fid = AfsFid(CELL, 11, 2, 2)
    manager.files[fid] = status(FILE_FILE, 0o644, 0x7F, size=5)
    manager.contents[fid] = manager.stored[fid] = b"hello"
    top = await ops.lookup(ROOT_INODE, CELL.encode(), ctx())
    pub = await ops.lookup(top.st_ino, b"pub", ctx())
    reader = await ops.open(pub.st_ino, os.O_RDONLY, ctx())
    during: list[bytes] = []

    async def read_meanwhile() -> None:
        during.append(await ops.read(reader.fh, 0, 4096))

    manager.during_truncate = read_meanwhile
    writer = await ops.open(pub.st_ino, os.O_WRONLY | os.O_TRUNC, ctx())
    assert during == [b"hello"] and manager.dirty[fid] == b""
    # Until a request on the new descriptor shows that its open(2) has returned.
    assert await ops.read(reader.fh, 0, 4096) == b"hello"
    await ops.write(writer.fh, 0, b"bye")
    assert await ops.read(reader.fh, 0, 4096) == b"bye"
    await ops.release(writer.fh)
    manager.contents[fid] = manager.stored[fid]

    # A descriptor released unused says the same.
    unused = await ops.open(pub.st_ino, os.O_WRONLY | os.O_TRUNC, ctx())
    assert during[-1] == b"bye" and await ops.read(reader.fh, 0, 4096) == b"bye"
    await ops.release(unused.fh)
    manager.during_truncate = None
    other = await ops.open(pub.st_ino, os.O_WRONLY, ctx())
    await ops.write(other.fh, 0, b"xy")
    assert await ops.read(reader.fh, 0, 4096) == b"xy"
    # A file with unstored changes here was showing them: they are what is cut.
    manager.during_truncate = read_meanwhile
    again = await ops.open(pub.st_ino, os.O_WRONLY | os.O_TRUNC, ctx())
    assert during[-1] == b"" and await ops.read(reader.fh, 0, 4096) == b""
    await ops.release(again.fh)
    await ops.release(other.fh)


async def test_a_read_past_a_new_shorter_end_gets_the_longer_version_the_kernel_sized_it_by(
    ops,
) -> None:
    """The kernel reads past the end of a version it was just given, by the longer one it had
    before: an empty answer there would be a page of zeros inside a length not yet cut."""
    manager = ops.manager
    fid = AfsFid(CELL, 11, 2, 2)
    manager.contents[fid] = b"a" * 12000
    manager.files[fid] = replace(manager.files[fid], size=12000)
    top = await ops.lookup(ROOT_INODE, CELL.encode(), ctx())
    pub = await ops.lookup(top.st_ino, b"pub", ctx())
    info = await ops.open(pub.st_ino, os.O_RDONLY, ctx())
    manager.kept[(fid, 1)] = b"a" * 12000  # version 1's chunks still in memory
    manager.files[fid] = replace(manager.files[fid], data_version=2, size=10)
    manager.contents[fid] = b"b" * 10
    assert (await ops.getattr(pub.st_ino, ctx())).st_size == 10  # given to the kernel...
    # ...while a read it sized by version 1 is on its way
    assert await ops.read(info.fh, 8192, 4096) == b"a" * (12000 - 8192)
    assert manager.shown_reads[-1] == (1, 12000)
    # Inside the new length, only the new version: the kernel has cut its pages there.
    assert await ops.read(info.fh, 0, 4096) == b"b" * 10
    del manager.kept[(fid, 1)]  # gone from memory: the end of the file, as before
    assert await ops.read(info.fh, 8192, 4096) == b""
    assert manager.shown_reads[-1] == (1, 12000)


async def test_a_version_reaches_the_kernel_only_after_its_pages_of_others_are_dropped(
    ops,
) -> None:
    """Given a version while it keeps pages of another, the kernel would hand a reader those
    pages inside the new one: the zeros past where a shorter version ended, or whole pages
    of a version of the same length."""
    manager = ops.manager
    fid = AfsFid(CELL, 11, 2, 2)
    manager.contents[fid] = b"a" * 5000
    manager.files[fid] = replace(manager.files[fid], size=5000, caller_access=0x7F)
    top = await ops.lookup(ROOT_INODE, CELL.encode(), ctx())
    pub = await ops.lookup(top.st_ino, b"pub", ctx())
    info = await ops.open(pub.st_ino, os.O_RDONLY, ctx())
    assert await ops.read(info.fh, 4096, 4096) == b"a" * 904  # short: zeros from 5000 on
    ops.calls.clear()

    def change(version: int, size: int) -> None:
        manager.files[fid] = replace(manager.files[fid], data_version=version, size=size)
        manager.contents[fid] = bytes([96 + version]) * size

    change(2, 9000)
    # A read the kernel sized by the old length, answered while the new one is shown: it
    # gets the new version, whole, so no new zeros land below the new end.
    seen = []

    async def read_meanwhile() -> None:
        manager.during_read = None
        seen.append(await ops.read(info.fh, 4096, 4096))

    async def drop(inodes: list[int], wait: float) -> bool:
        ops.calls.append(("dropped", inodes))
        await read_meanwhile()
        return True

    ops.invalidator.pages_now = drop
    assert (await ops.getattr(pub.st_ino, ctx())).st_size == 9000
    assert ops.calls == [("dropped", [pub.st_ino])]
    assert seen == [b"b" * 4096]
    assert (await ops.lookup(top.st_ino, b"pub", ctx())).st_size == 9000
    assert len(ops.calls) == 1  # the same version again: nothing to drop
    # A callback break pushes a drop of its own: nothing held from before it.
    change(3, 9000)
    manager.listeners[0](fid)
    assert (await ops.getattr(pub.st_ino, ctx())).st_size == 9000
    assert len(ops.calls) == 1
    # Pages read at a version, then another of the same length shown before the break.
    assert await ops.read(info.fh, 0, 4096) == b"c" * 4096
    change(4, 9000)
    assert (await ops.lookup(top.st_ino, b"pub", ctx())).st_size == 9000
    assert ops.calls[1:] == [("dropped", [pub.st_ino])]
    # This mount's own writes set its pages, over the version they were written on.
    assert await ops.read(info.fh, 8192, 4096) == b"d" * 808
    writer = await ops.open(pub.st_ino, os.O_WRONLY, ctx())
    await ops.write(writer.fh, 9000, b"more")
    await ops.flush(writer.fh)
    change(5, 9004)
    assert (await ops.getattr(pub.st_ino, ctx())).st_size == 9004
    assert len(ops.calls) == 2


async def _opened_and_read(ops, data: bytes) -> tuple[AfsFid, Any, pyfuse3.FileInfo]:
    """`pub` holding `data`, looked up, opened and read: the kernel has pages of it."""
    fid = AfsFid(CELL, 11, 2, 2)
    ops.manager.contents[fid] = data
    top = await ops.lookup(ROOT_INODE, CELL.encode(), ctx())
    pub = await ops.lookup(top.st_ino, b"pub", ctx())
    info = await ops.open(pub.st_ino, os.O_RDONLY, ctx())
    assert await ops.read(info.fh, 0, 4096) == data
    return fid, pub, info


async def test_a_drop_the_kernel_does_not_finish_holds_the_reply_no_longer_than_its_bound(
    ops, autojump_clock
) -> None:
    """The kernel drops pages only once reads of them are answered; a reply waits for that
    a bounded time."""
    manager = ops.manager
    fid, pub, _ = await _opened_and_read(ops, b"a" * 5)
    manager.files[fid] = replace(manager.files[fid], data_version=2, size=50)
    stuck = threading.Event()
    ops.invalidator._invalidate_inode = lambda inode, attr_only: stuck.wait(60)
    try:
        began = trio.current_time()
        assert (await ops.getattr(pub.st_ino, ctx())).st_size == 50
        assert trio.current_time() - began == pytest.approx(DROP_WAIT)
    finally:
        stuck.set()


async def test_a_read_asked_before_a_longer_version_was_shown_is_answered_while_its_pages_drop(
    ops,
) -> None:
    """Failed, it would be made again page by page, and fail again at the next version: the
    drop takes its pages anyway, before the kernel has the new length."""
    manager = ops.manager
    fid, pub, info = await _opened_and_read(ops, b"a" * 5)
    go, answered = trio.Event(), trio.Event()

    async def held() -> None:
        manager.during_read = None
        await go.wait()

    async def drop(inodes: list[int], wait: float) -> bool:
        go.set()
        await answered.wait()
        return True

    ops.invalidator.pages_now = drop
    got = []

    async def reader() -> None:
        got.append(await ops.read(info.fh, 0, 4096))
        answered.set()

    manager.during_read = held
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        manager.files[fid] = replace(manager.files[fid], data_version=2, size=11)
        manager.contents[fid] = b"b" * 11
        assert (await ops.getattr(pub.st_ino, ctx())).st_size == 11
    assert got == [b"a" * 5]
    assert await ops.read(info.fh, 0, 4096) == b"b" * 11
