"""The FUSE face: pyfuse3 Operations over the cache manager (fs/api.py).

About 900 lines, on purpose: this is the pyfuse3.Operations subclass, some 30 handlers and the
state they share (the inode table, open handles, what the kernel was shown, statfs hints).
Each handler is kept short; what is not about FUSE requests lives beside it:

| module | what it holds |
|---|---|
| `request.py` | the identity a request acts for; FsError to errno (`guard`) |
| `attrs.py` | the attributes the kernel gets, their timeouts, access(2) and statfs(2) |
| `xattrs.py` | the `afs.*` extended attributes, a table of {name: handler} |
| `invalidate.py` | callback breaks pushed to the kernel by a worker thread, in batches |
| `kernelview.py` | what the kernel was shown of each file, and which versions its pages hold |
| `silly.py` | open files, and unlink of an open file (hidden names, removed at release) |
| `mounts.py`, `dynroot.py`, `inodes.py` | mount points, /afs, the inode table |

Every request acts as its caller: the uid in the request context picks the identity, and the
identity picks the token (or none: anonymous).  Per-user isolation rests on what the kernel
is allowed to cache (attrs.py), because it answers cached lookups and stats without asking:
open, opendir, access and getxattr are always sent by the kernel, and check the caller's
rights here (not `default_permissions`: AFS rights are ACLs the kernel cannot see).

* Names found through @sys always get timeouts of 0, so @sys follows a changed sysname
  list at once.  Mount points get attribute timeouts of 0, so a stat (df's first step)
  reaches us and statfs learns which volume a process is looking at (see `statfs`); their
  names are cached like any other, because `ls -l dir` walks the whole path again for each
  entry (its statx, and xattr calls for the first), and a lookup per mount point per walk
  made it ten times slower.

Writing follows AFS close semantics: writes land in the cache manager's local copy, and the
FUSE flush of each close(2) stores them (fsync(2) too), so close and fsync return only once
the fileserver has the data, or with the errno of the failed store (EDQUOT, ENOSPC, EACCES,
ETIMEDOUT...).  Only flush can fail a close: release errors reach no one, so release merely
stores what an mmap or a failed flush left, and logs.  A file unlinked while open is renamed
to a hidden name first and removed at its last release (silly.py).

Reads agree with the attributes the kernel was given (see `read`).
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyfuse3

from afsfuse.fs.api import CacheManagerApi, FileData
from afsfuse.fs.errors import FsError
from afsfuse.fs.sysname import check_sysnames, sysname_candidates
from afsfuse.fs.vnode import AfsFid, Status
from afsfuse.keyring.callers import Callers
from afsfuse.keyring.store import Identity
from afsfuse.vfs.attrs import (
    SHARED_TIMEOUT,
    allows,
    anyone_may_look_up,
    dot_attrs,
    file_attrs,
    mount_attrs,
    placeholder,
    statvfs,
    synthetic_attrs,
)
from afsfuse.vfs.dynroot import DynRoot, Entry
from afsfuse.vfs.inodes import (
    FileNode,
    InodeTable,
    LinkNode,
    MountDirNode,
    MountNode,
    Node,
    RootNode,
)
from afsfuse.vfs.invalidate import Invalidator
from afsfuse.vfs.kernelview import KernelView
from afsfuse.vfs.mounts import afs_mount, mount_root
from afsfuse.vfs.request import fail, guard, identities, log
from afsfuse.vfs.silly import OpenFiles
from afsfuse.vfs.xattrs import TABLE as XATTRS
from afsfuse.vfs.xattrs import Xattrs, absent

__all__ = ["SHARED_TIMEOUT", "AfsOperations", "Invalidator"]

#: The kernel's page: it reads ahead in whole pages, up to the one its length ends in.
_PAGE = mmap.PAGESIZE
#: How long a reply that shows another version of a file waits for the kernel to drop its
#: pages of the others (kernelview.py); the kernel waits for reads of them in progress.
DROP_WAIT = 10.0
#: Directory entries made ready for the kernel in one readdir step.
READDIR_BATCH = 100
#: Directory entries whose status is fetched together (`_children`): eight InlineBulkStatus
#: calls, two rounds of bulk_status's four at once.
STATUS_WINDOW = 400
#: How long statfs trusts "the last node this process touched" (see statfs).
STATFS_HINT_SECONDS = 10.0
_STATFS_HINTS = 1024


@dataclass
class _Child:
    """A name about to be handed to the kernel: how to find its node and its attributes.
    Interning the node and replying happen together, with no await in between, so a
    forget cannot slip in and drop a node the reply is about to name."""

    name: bytes
    key: object
    make: Callable[[int], Node]
    attrs: pyfuse3.EntryAttributes
    entry_timeout: float
    #: The vnode's status, which the kernel believes once it has the reply (see `read`).
    shown: tuple[AfsFid, Status] | None = None


@dataclass
class _FileHandle:
    fid: AfsFid
    inode: int
    who: Identity
    writable: bool = False
    #: Opened with O_DIRECT: its reads skip the kernel's cache and may go past the end.
    direct: bool = False
    #: Opened with O_TRUNC, and the kernel may not have cut its length yet (see `open`).
    truncating: bool = False


@dataclass
class _DirHandle:
    node: Node
    who: Identity
    dir_fid: AfsFid | None
    entries: list[Any]
    #: The STATUS_WINDOW-entry windows of `entries` whose status was fetched, and the
    #: entries the fileserver refused to `who` then (not asked again through this handle).
    windows: set[int] = field(default_factory=set)
    refused: dict[AfsFid, FsError] = field(default_factory=dict)


class AfsOperations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    #: Not FUSE_POSIX_ACL: it turns on default_permissions (the kernel checks mode bits, not
    #: AFS rights, and refused writes AFS allows) and made `ls -l` ask for ACLs more often.
    enable_acl = False

    def __init__(
        self,
        manager: CacheManagerApi,
        sysnames: Sequence[bytes],
        *,
        shared_timeout: float = SHARED_TIMEOUT,
        make_invalidator: Callable[[InodeTable], Invalidator] | None = None,
        xattrs: bool = True,
        callers: Callers | None = None,
    ) -> None:
        super().__init__()
        self.manager = manager
        #: Who a request acts for: its uid, and its PAG when callers are told apart by PAG.
        self.identity = identities(callers)
        self.xattrs = Xattrs(manager, xattrs)
        self.inodes = InodeTable()
        self.dynroot = DynRoot(manager)
        self._sysnames = check_sysnames(list(sysnames))
        self.shared_timeout = shared_timeout
        self._handles: dict[int, _FileHandle | _DirHandle] = {}
        self._files = OpenFiles(manager)
        self._next_handle = 1
        self._statfs_hints: OrderedDict[int, tuple[float, Node]] = OrderedDict()
        #: What the kernel was given of each file, which bounds what it reads and keeps.
        self._view = KernelView()
        #: Clean files an O_TRUNC open has cut here and not yet in the kernel (see `open`).
        self._truncating: Counter[AfsFid] = Counter()
        self.invalidator = (make_invalidator or Invalidator)(self.inodes)
        manager.on_invalidate(self._broken)

    def _broken(self, fid: AfsFid | None) -> None:
        """A callback break: the kernel is to drop what it holds of `fid` (None: of all)."""
        self._view.pushed(fid)
        self.invalidator.queue(fid)

    # -- @sys ------------------------------------------------------------------------

    @property
    def sysnames(self) -> list[bytes]:
        return list(self._sysnames)

    @sysnames.setter
    def sysnames(self, names: Sequence[bytes]) -> None:
        # Names found through @sys are never cached by the kernel (entry timeout 0), so a
        # new list takes effect at the next path walk with nothing to invalidate.
        self._sysnames = check_sysnames(list(names))

    def holders(self, fid: AfsFid) -> tuple[int, int, int]:
        """How the kernel holds `fid` (for cmdebug): references to the inodes showing it,
        open handles, and those open for writing."""
        refs = sum(node.lookups for node in self.inodes.for_fid(fid))
        return (refs, *self._files.counts(fid))

    # -- nodes -----------------------------------------------------------------------

    def _node(self, inode: int) -> Node:
        node = self.inodes.get(inode)
        if node is None:
            raise fail(errno.ESTALE)
        return node

    def _touched(self, ctx: pyfuse3.RequestContext, node: Node) -> None:
        self._statfs_hints[ctx.pid] = (time.monotonic(), node)
        self._statfs_hints.move_to_end(ctx.pid)
        while len(self._statfs_hints) > _STATFS_HINTS:
            self._statfs_hints.popitem(last=False)

    def _reply(self, child: _Child, parent: Node) -> pyfuse3.EntryAttributes:
        """Intern the child's node, count the kernel's reference, fill in the inode."""
        node = self.inodes.intern(child.key, child.make)
        self.inodes.referenced(node)
        node.parent = parent.inode
        child.attrs.st_ino = node.inode
        child.attrs.entry_timeout = child.entry_timeout
        if child.entry_timeout > 0:
            self.inodes.note_cached_name(parent.inode, child.name)
        self._showing(child)
        return child.attrs

    async def _dir_fid(self, node: Node, who: Identity) -> AfsFid:
        if isinstance(node, MountNode):
            return await mount_root(self.manager, node)
        if isinstance(node, FileNode):
            return node.fid
        raise fail(errno.ENOTDIR)

    def _voltype(self, fid: AfsFid) -> int | None:
        location = self.manager.cached_volume(fid)
        return None if location is None else location.type_of(fid.volume)

    async def _afs_child(
        self, name: bytes, fid: AfsFid, status: Status | FsError, who: Identity, timeout: float
    ) -> _Child:
        """The child for an AFS directory entry; mount points become mount nodes."""
        if isinstance(status, FsError):
            # Listed but not statable by this caller: show the name, cache nothing.
            return _Child(name, ("fid", fid), lambda i: FileNode(i, fid=fid), placeholder(fid), 0.0)
        if status.is_symlink and not status.mode & 0o111:
            try:
                text = await self.manager.readlink(fid, who)
            except FsError:
                text = b""
            spec = afs_mount(text, status.mode, fid, self._voltype(fid))
            if spec is not None:
                return _Child(
                    name,
                    ("mount", fid),
                    lambda i: MountNode(i, spec=spec, source=fid),
                    mount_attrs(status),
                    timeout,
                )
        attrs = file_attrs(status, self.shared_timeout)
        return _Child(
            name, ("fid", fid), lambda i: FileNode(i, fid=fid), attrs, timeout, (fid, status)
        )

    def _showing(self, child: _Child) -> None:
        if child.shown is not None:
            self._view.show(*child.shown)

    async def _before_showing(self, shown: tuple[AfsFid, Status] | None) -> None:
        """Before a reply gives the kernel a file's version, have it drop any pages it may
        hold of another (kernelview.py).  The version is shown first, so reads asked from
        now on are answered at it; those asked before are answered as they are, and their
        pages go with the drop, which waits for them.  The reply waits for the drop: the
        kernel takes the attributes the moment it has the reply."""
        if shown is None:
            return
        fid, status = shown
        if not self._view.other_versions(fid, status):
            return
        self._view.show(fid, status)
        inodes = [node.inode for node in self.inodes.for_fid(fid)]
        with self._view.dropping(fid):
            for _ in range(2):  # again if a read asked before was answered meanwhile
                versions = self._view.other_versions(fid, status)
                if not versions or not await self.invalidator.pages_now(inodes, DROP_WAIT):
                    return
                self._view.dropped(fid, versions)

    def _dyn_child(self, entry: Entry, timeout: float) -> _Child:
        probe = entry.make(0)
        attrs = synthetic_attrs(probe)
        if not isinstance(probe, MountNode):
            attrs.attr_timeout = self.shared_timeout
        return _Child(os.fsencode(entry.name), entry.key, entry.make, attrs, timeout)

    # -- lookup and attributes -------------------------------------------------------

    @guard
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        who = self.identity(ctx)
        text = os.fsdecode(name)
        if isinstance(parent, RootNode):
            entry = await self.dynroot.lookup(text)
            if entry is None:
                raise fail(errno.ENOENT)
            child = self._dyn_child(entry, self.shared_timeout)
        elif isinstance(parent, MountDirNode):
            entry = await self.dynroot.lookup_volume(text)
            if entry is None:
                raise fail(errno.ENOENT)
            child = self._dyn_child(entry, self.shared_timeout)
        else:
            child = await self._lookup_afs(parent, text, who)
            await self._before_showing(child.shown)
        attrs = self._reply(child, parent)
        self._touched(ctx, self.inodes.get(attrs.st_ino) or parent)
        return attrs

    async def _lookup_afs(self, parent: Node, name: str, who: Identity) -> _Child:
        dir_fid = await self._dir_fid(parent, who)
        wanted = os.fsencode(name)
        for candidate in sysname_candidates(wanted, self._sysnames):
            try:
                fid = await self.manager.lookup(dir_fid, candidate, who)
                break
            except FsError as e:
                if e.errno != errno.ENOENT:
                    raise
        else:
            raise fail(errno.ENOENT)
        dir_status = await self.manager.getattr(dir_fid, who)
        status = await self.manager.getattr(fid, who)
        shared = anyone_may_look_up(dir_status) and candidate == wanted
        timeout = self.shared_timeout if shared else 0.0
        return await self._afs_child(wanted, fid, status, who, timeout)

    @guard
    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            node = self.inodes.get(inode)
            self.inodes.forget(inode, count)
            if isinstance(node, FileNode) and self.inodes.get(inode) is None:
                self._view.forget(node.fid)

    @guard
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        who = self.identity(ctx)
        if not isinstance(node, RootNode):
            # df stats the root of the mount after its argument, to find the mount point:
            # that must not become the node its statfs is about.
            self._touched(ctx, node)
        if isinstance(node, FileNode):
            status = await self.manager.getattr(node.fid, who)
            await self._before_showing((node.fid, status))
            self._view.show(node.fid, status)
            attrs = file_attrs(status, self.shared_timeout)
        elif isinstance(node, MountNode) and node.source is not None:
            attrs = mount_attrs(await self.manager.getattr(node.source, who))
        else:
            attrs = synthetic_attrs(node)
            if not isinstance(node, MountNode):
                attrs.attr_timeout = self.shared_timeout
        attrs.st_ino = inode
        return attrs

    @guard
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self._node(inode)
        if isinstance(node, LinkNode):
            return node.target
        if not isinstance(node, FileNode):
            raise fail(errno.EINVAL)
        return await self.manager.readlink(node.fid, self.identity(ctx))

    @guard
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        node = self._node(inode)
        who = self.identity(ctx)
        if isinstance(node, FileNode):
            status = await self.manager.getattr(node.fid, who)
        elif isinstance(node, MountNode):
            status = await self.manager.getattr(await mount_root(self.manager, node), who)
        else:
            return not mode & os.W_OK
        return allows(status, mode)

    # -- files -----------------------------------------------------------------------

    @guard
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if not isinstance(node, FileNode):
            raise fail(errno.EISDIR if not isinstance(node, LinkNode) else errno.ELOOP)
        who = self.identity(ctx)
        write = _writes(flags)
        status = await self.manager.open(node.fid, who, write=write)
        if status.is_dir:
            raise fail(errno.EISDIR)
        if not allows(status, os.W_OK if write else os.R_OK):
            raise fail(errno.EACCES)
        truncating = bool(flags & os.O_TRUNC) and not self.manager.unstored(node.fid)
        if flags & os.O_TRUNC:
            # Stored at close, like any write.  The kernel cuts its length and pages only
            # once it has this reply: until then it may read on at the old length, and an
            # empty answer from the cut copy would be pages of zeros a reader copies.  Those
            # reads get the server's copy, the length they were sized by (`read`).
            if truncating:
                self._truncating[node.fid] += 1
            try:
                await self.manager.truncate(node.fid, 0, who)
            except BaseException:
                if truncating:
                    self._truncate_seen(node.fid)
                raise
        self._touched(ctx, node)
        shown = self._view.shown(node.fid)
        fresh = shown is None or shown[0] == status.data_version
        if not fresh:
            # The kernel's pages and length may be an older version's, and the push of the
            # change may still be on its way: drop them now (the pages with this open).  It
            # asks for the attributes before it reads again, and gets this version's.
            self.invalidator.attributes_now(inode)
            self._view.show(node.fid, status)
        if flags & os.O_TRUNC:
            self._view.written(node.fid)
        direct = bool(flags & os.O_DIRECT)
        fh = self._open_file(node.fid, inode, who, write, direct=direct, truncating=truncating)
        return pyfuse3.FileInfo(fh=fh, keep_cache=fresh)

    @guard
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        who = self.identity(ctx)
        parent, dir_fid = await self._target_dir(parent_inode, who)
        try:
            fid, status = await self.manager.create(dir_fid, name, _mode(mode, ctx), who)
        except FsError as e:
            if e.errno != errno.EEXIST or flags & os.O_EXCL:
                raise
            # Made meanwhile by someone else: open(2) without O_EXCL opens what is there.
            fid = await self.manager.lookup(dir_fid, name, who)
            status = await self.manager.open(fid, who, write=True)
            if status.is_dir:
                raise fail(errno.EISDIR) from None
            if flags & os.O_TRUNC:
                await self.manager.truncate(fid, 0, who)
        attrs = await self._new_entry(parent, dir_fid, name, fid, status, who)
        self._touched(ctx, parent)
        fh = self._open_file(fid, attrs.st_ino, who, True)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True), attrs

    def _open_file(
        self,
        fid: AfsFid,
        inode: int,
        who: Identity,
        writable: bool,
        *,
        direct: bool = False,
        truncating: bool = False,
    ) -> int:
        self._files.opened(fid, writable)
        return self._new_handle(_FileHandle(fid, inode, who, writable, direct, truncating))

    def _file_handle(self, fh: int, *, writing: bool = False) -> _FileHandle:
        """The open file `fh`.  A request that uses it comes after its open(2) returned:
        the kernel has cut the length of a file that open truncated."""
        handle = self._handles.get(fh)
        if not isinstance(handle, _FileHandle) or (writing and not handle.writable):
            raise fail(errno.EBADF)
        if handle.truncating:
            handle.truncating = False
            self._truncate_seen(handle.fid)
        return handle

    def _truncate_seen(self, fid: AfsFid) -> None:
        self._truncating[fid] -= 1
        if self._truncating[fid] <= 0:
            del self._truncating[fid]

    @guard
    async def read(self, fh: int, off: int, size: int) -> bytes:
        """The kernel reads pages up to the length it was given, and keeps them: data is
        served at the version of that length while it is at hand (manager.read_shown).
        When it is not, the kernel must ask for the length again before a reader can take
        the old one for the end of the file."""
        handle = self._file_handle(fh)
        fid = handle.fid
        if fid in self._truncating:
            # Sized by the length from before an O_TRUNC open this mount is still answering.
            got = await self.manager.read_shown(fid, off, size, handle.who, None, clean=True)
            return self._answer(handle, got)
        asked = self._view.version(fid)
        longer = self._view.longer_before(fid)
        if asked is not None and longer is not None and asked[1] <= off < longer[1]:
            # Past the end of the version just shown, inside a longer one shown before: the
            # kernel sized this read by that one.  Its pages, while at hand, keep the kernel
            # from taking the end of the file for anywhere short of where the new length
            # will cut it (an empty answer here, cut or not, is a page of zeros).
            asked = longer
        got = await self.manager.read_shown(fid, off, size, handle.who, asked)
        if longer is not None and asked is longer and got.version == longer[0]:
            return self._answer(handle, got)
        shown = self._view.version(fid)  # now: the kernel may have been given more meanwhile
        if got.version is None or shown is None:
            return self._answer(handle, got)
        if got.version == shown[0]:
            if size > _PAGE and len(got.data) <= size - _PAGE and not handle.direct:
                # The kernel reads ahead no further than the page its length ends in: it
                # sized this read with a longer file than this version, a length it was
                # given and we have replaced since.  Short, it would keep zeros.
                self.invalidator.attributes_now(handle.inode)
                raise fail(errno.EIO)
            return self._answer(handle, got)
        if got.version < shown[0] and self._view.is_dropping(fid):
            return self._answer(handle, got)  # its pages are being dropped
        self.invalidator.attributes_now(handle.inode)
        # A failed read is made again by the kernel, a page at a time, unseen by the reader.
        if got.version < shown[0]:
            # The kernel has moved past this version since it asked: its pages would outlive
            # the change.
            raise fail(errno.EIO)
        if off + len(got.data) < min(off + size, shown[1]):
            # Short of the length the kernel has: it would fill the rest of its pages with
            # zeros, and keep them at that length when its attributes changed since it
            # asked.  Asked again, the short answer at this version cuts the length there.
            self._view.answered(fid, got.version, got.length)
            raise fail(errno.EIO)
        return self._answer(handle, got)

    def _answer(self, handle: _FileHandle, got: FileData) -> bytes:
        """The reply to a read: the kernel keeps its pages (but with O_DIRECT)."""
        if got.version is not None and not handle.direct:
            self._view.read_answered(handle.fid, got.version)
        return got.data

    @guard
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._file_handle(fh, writing=True)
        self._view.written(handle.fid)
        return await self.manager.write(handle.fid, off, bytes(buf), handle.who)

    @guard
    async def flush(self, fh: int) -> None:
        """Every close(2) of a descriptor (dup'ed ones included) sends a flush, and its
        error is close's: store here what any descriptor of the file wrote."""
        handle = self._file_handle(fh)
        if handle.writable and self.manager.unstored(handle.fid):
            await self._store(handle)

    @guard
    async def fsync(self, fh: int, datasync: bool) -> None:
        handle = self._file_handle(fh)
        if self.manager.unstored(handle.fid):
            await self.manager.fsync(handle.fid, handle.who)

    async def _store(self, handle: _FileHandle) -> None:
        try:
            await self.manager.store_data(handle.fid, handle.who)
        except FsError as e:
            # Removed (by us at unlink, or by another client): its data has nowhere to go,
            # and a local filesystem would not complain at close either.
            if e.errno != errno.ENOENT:
                raise

    @guard
    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if not isinstance(handle, _FileHandle):
            return
        fid = handle.fid
        if handle.truncating:
            self._truncate_seen(fid)
        last_writer = self._files.released(fid, handle.writable)
        if last_writer and self.manager.unstored(fid) and not self._files.hidden(fid):
            try:
                await self._store(handle)  # what mmap wrote after the last flush
            except FsError as e:
                log.warning("%s: data not stored at release: %s", fid, e)
        hidden = self._files.take_hidden(fid)
        if hidden is not None:
            try:
                await self.manager.unlink(*hidden, handle.who)
            except FsError as e:
                log.warning("%s: could not remove %r: %s", fid, hidden[1], e)

    def _new_handle(self, handle: _FileHandle | _DirHandle) -> int:
        fh = self._next_handle
        self._next_handle += 1
        self._handles[fh] = handle
        return fh

    @guard
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        """chmod, chown, utimes and truncate.  A size change through a descriptor open for
        writing waits for close like a write; truncate(2) of a path is stored now."""
        node = self._node(inode)
        who = self.identity(ctx)
        if isinstance(node, MountNode):
            fid = await mount_root(self.manager, node)  # as OpenAFS: the volume's root
        elif isinstance(node, FileNode):
            fid = node.fid
        else:
            raise fail(errno.EPERM)
        changes: dict[str, int] = {}
        if fields.update_mode:
            changes["mode"] = attr.st_mode & 0o7777
        if fields.update_mtime:
            changes["mtime"] = attr.st_mtime_ns // 10**9
        if fields.update_uid:
            changes["owner"] = attr.st_uid
        if fields.update_gid:
            changes["group"] = attr.st_gid
        if fields.update_size:
            self._view.written(fid)
            handle = self._handles.get(fh) if fh is not None else None
            if isinstance(handle, _FileHandle) and handle.writable and handle.fid == fid:
                await self.manager.truncate(fid, attr.st_size, handle.who)
            else:
                changes["size"] = attr.st_size
        if changes:
            status = await self.manager.setattr(fid, who, **changes)
        else:
            status = await self.manager.getattr(fid, who)  # atime alone: AFS keeps none
        if isinstance(node, MountNode):
            return await self.getattr(inode, ctx)  # shown through the mount point's vnode
        self._view.show(fid, status)
        attrs = file_attrs(status, self.shared_timeout)
        attrs.st_ino = inode
        return attrs

    # -- directories -----------------------------------------------------------------

    @guard
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self._node(inode)
        who = self.identity(ctx)
        self._touched(ctx, node)
        entries: list[Any]
        dir_fid = None
        if isinstance(node, RootNode):
            entries = self.dynroot.listing()
        elif isinstance(node, MountDirNode):
            entries = []
        else:
            dir_fid = await self._dir_fid(node, who)
            listed = await self.manager.readdir(dir_fid, who)
            entries = [(name, fid) for name, fid in listed if name not in (".", "..")]
        return self._new_handle(_DirHandle(node, who, dir_fid, entries))

    @guard
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self._handles.get(fh)
        if not isinstance(handle, _DirHandle):
            raise fail(errno.EBADF)
        directory = handle.node
        dots = ((b".", directory.inode), (b"..", directory.parent or directory.inode))
        # Positions 0 and 1 are the dots; entry i is at position i + 2.
        position = start_id
        for name, inode in dots[position:]:
            if not pyfuse3.readdir_reply(token, name, dot_attrs(inode), position + 1):
                return
            position += 1  # no lookup to count: the kernel takes none for the dots
        while position - len(dots) < len(handle.entries):
            first = position - len(dots)
            children = await self._children(handle, first)
            for child in children:
                await self._before_showing(child.shown)
            for child in children:
                node = self.inodes.intern(child.key, child.make)
                child.attrs.st_ino = node.inode
                child.attrs.entry_timeout = child.entry_timeout
                if not pyfuse3.readdir_reply(token, child.name, child.attrs, position + 1):
                    return
                self.inodes.referenced(node)
                node.parent = directory.inode
                self._showing(child)
                if child.entry_timeout > 0:
                    self.inodes.note_cached_name(directory.inode, child.name)
                position += 1

    async def _children(self, handle: _DirHandle, first: int) -> list[_Child]:
        """The entries from `first` on, READDIR_BATCH of them.  The status of the
        STATUS_WINDOW entries around them is fetched first, in one go (bulk_status makes its
        calls at once): the kernel takes a few dozen entries per readdir, and a fetch per
        readdir would wait a round trip each; a status fetched for the window reaches
        bulk_status through the vnode it went to, so each is this moment's."""
        batch = handle.entries[first : first + READDIR_BATCH]
        if handle.dir_fid is None:
            return [self._dyn_child(entry, self.shared_timeout) for entry in batch]
        who = handle.who
        dir_status = await self.manager.getattr(handle.dir_fid, who)
        timeout = self.shared_timeout if anyone_may_look_up(dir_status) else 0.0
        windows = range(first // STATUS_WINDOW, (first + len(batch) - 1) // STATUS_WINDOW + 1)
        new = [w for w in windows if w not in handle.windows]
        if new:
            handle.windows.update(new)
            ahead = [
                fid
                for w in new
                for _, fid in handle.entries[w * STATUS_WINDOW : (w + 1) * STATUS_WINDOW]
            ]
            handle.refused.update(await self.manager.prefetch_status(ahead, who))
        refused = handle.refused
        asked = [fid for _, fid in batch if fid not in refused]
        statuses = iter(await self.manager.bulk_status(asked, who)) if asked else iter(())
        return [
            await self._afs_child(
                os.fsencode(name),
                fid,
                refused[fid] if fid in refused else next(statuses),
                who,
                timeout,
            )
            for name, fid in batch
        ]

    @guard
    async def releasedir(self, fh: int) -> None:
        self._handles.pop(fh, None)

    # -- names -----------------------------------------------------------------------

    async def _target_dir(self, parent_inode: int, who: Identity) -> tuple[Node, AfsFid]:
        """The AFS directory a name is made in or removed from; the dynamic root is made
        from the cell list, not stored, so nothing can be changed there."""
        parent = self._node(parent_inode)
        if isinstance(parent, (RootNode, MountDirNode, LinkNode)):
            raise fail(errno.EACCES)
        return parent, await self._dir_fid(parent, who)

    async def _new_entry(
        self,
        parent: Node,
        dir_fid: AfsFid,
        name: bytes,
        fid: AfsFid,
        status: Status,
        who: Identity,
    ) -> pyfuse3.EntryAttributes:
        """The entry reply for a name just made, cached by the kernel as lookup would."""
        dir_status = await self.manager.getattr(dir_fid, who)
        timeout = self.shared_timeout if anyone_may_look_up(dir_status) else 0.0
        if status.is_symlink:
            # The kernel wants a symlink back even for a mount point made by symlink(2);
            # its next lookup (timeout 0) shows it as the directory it leads to.
            if afs_mount(await self.manager.readlink(fid, who), status.mode, fid, None):
                timeout = 0.0
            attrs = file_attrs(status, self.shared_timeout)
            child = _Child(name, ("fid", fid), lambda i: FileNode(i, fid=fid), attrs, timeout)
        else:
            child = await self._afs_child(name, fid, status, who, timeout)
        return self._reply(child, parent)

    @guard
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        who = self.identity(ctx)
        parent, dir_fid = await self._target_dir(parent_inode, who)
        fid, status = await self.manager.mkdir(dir_fid, name, _mode(mode, ctx), who)
        return await self._new_entry(parent, dir_fid, name, fid, status, who)

    @guard
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        """Regular files only: AFS stores no devices, fifos or sockets."""
        if not stat.S_ISREG(mode):
            raise fail(errno.EPERM)
        who = self.identity(ctx)
        parent, dir_fid = await self._target_dir(parent_inode, who)
        fid, status = await self.manager.create(dir_fid, name, _mode(mode, ctx), who)
        return await self._new_entry(parent, dir_fid, name, fid, status, who)

    @guard
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        who = self.identity(ctx)
        parent, dir_fid = await self._target_dir(parent_inode, who)
        fid, status = await self.manager.symlink(dir_fid, name, target, who)
        return await self._new_entry(parent, dir_fid, name, fid, status, who)

    @guard
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        if not isinstance(node, FileNode):
            raise fail(errno.EPERM)  # mount points and the dynamic root are no files
        who = self.identity(ctx)
        parent, dir_fid = await self._target_dir(new_parent_inode, who)
        status = await self.manager.link(dir_fid, new_name, node.fid, who)
        return await self._new_entry(parent, dir_fid, new_name, node.fid, status, who)

    @guard
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        who = self.identity(ctx)
        _, dir_fid = await self._target_dir(parent_inode, who)
        fid = await self.manager.lookup(dir_fid, name, who)
        if self._files.must_hide(fid):
            # Still open here: keep the vnode under a hidden name until the last release,
            # so reads, writes and the close's store keep working.
            await self._files.hide(dir_fid, name, fid, who)
            return
        await self.manager.unlink(dir_fid, name, who)

    @guard
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        """A mount point looks like a directory, so rmdir removes it (as `fs rmmount`)."""
        who = self.identity(ctx)
        _, dir_fid = await self._target_dir(parent_inode, who)
        fid = await self.manager.lookup(dir_fid, name, who)
        if (await self.manager.getattr(fid, who)).is_symlink:
            await self.manager.unlink(dir_fid, name, who)
        else:
            await self.manager.rmdir(dir_fid, name, who)

    @guard
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        """Within a volume; EXDEV across volumes makes mv copy instead."""
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise fail(errno.EINVAL)  # the fileserver has no exchange
        who = self.identity(ctx)
        _, src_dir = await self._target_dir(parent_inode_old, who)
        _, dst_dir = await self._target_dir(parent_inode_new, who)
        if flags & pyfuse3.RENAME_NOREPLACE:
            try:
                await self.manager.lookup(dst_dir, name_new, who)
            except FsError as e:
                if e.errno != errno.ENOENT:
                    raise
            else:
                raise fail(errno.EEXIST)
        await self.manager.rename(src_dir, name_old, dst_dir, name_new, who)

    # -- paths, for the control socket -------------------------------------------------

    async def walk(self, names: Sequence[bytes], who: Identity) -> Node:
        """The node a path inside the mount names, found as lookups would find it but
        without handing anything to the kernel (the node is not kept in the table)."""
        node: Node = self.inodes.root
        for name in names:
            text = os.fsdecode(name)
            if isinstance(node, RootNode):
                entry = await self.dynroot.lookup(text)
            elif isinstance(node, MountDirNode):
                entry = await self.dynroot.lookup_volume(text)
            elif isinstance(node, LinkNode):
                raise fail(errno.ENOTDIR)
            else:
                node = (await self._lookup_afs(node, text, who)).make(0)
                continue
            if entry is None:
                raise fail(errno.ENOENT)
            node = entry.make(0)
        return node

    async def fid_of(self, node: Node, who: Identity) -> AfsFid:
        """The AFS vnode a node shows: a mount point's is its volume's root."""
        if isinstance(node, FileNode):
            return node.fid
        if isinstance(node, MountNode):
            return await mount_root(self.manager, node)
        raise FsError(errno.EINVAL, "part of the dynamic root, not of a volume")

    # -- file system -----------------------------------------------------------------

    @guard
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        """Space of the volume the caller is looking at.

        pyfuse3 does not pass the inode of a statfs request, so the volume is inferred from
        the last node the same process touched (df stats its argument first, and every path
        walk crosses a mount point with a lookup that reaches us).  Without that: the
        dynamic root's figures, as OpenAFS gives for /afs.
        """
        hint = self._statfs_hints.get(ctx.pid)
        fid = None
        if hint is not None and time.monotonic() - hint[0] < STATFS_HINT_SECONDS:
            node = hint[1]
            if isinstance(node, FileNode):
                fid = node.fid
            elif isinstance(node, MountNode):
                fid = await mount_root(self.manager, node)
        if fid is None:
            return statvfs(None)
        return statvfs(await self.manager.statfs(fid, self.identity(ctx)))

    # -- extended attributes (vfs/xattrs.py) ------------------------------------------

    @guard
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        self.xattrs.check()
        return self.xattrs.names(self._node(inode))

    @guard
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        # The table looked up inline: each write(2) asks for security.capability, refused
        # at once (ls -l stops asking for a label and an ACL after one refusal, xattrs.py).
        if not self.xattrs.enabled:
            raise fail(errno.ENOSYS)  # the kernel stops asking, for the mount's lifetime
        xattr = XATTRS.get(name)
        if xattr is None:
            raise fail(absent(name))
        return await self.xattrs.get(xattr, self._node(inode), self.identity(ctx))

    @guard
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        set_value = self.xattrs.setter(name)
        who = self.identity(ctx)
        fid = await self.fid_of(self._node(inode), who)
        await set_value(self.xattrs, fid, value, who)

    @guard
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.xattrs.remove(name)


def _writes(flags: int) -> bool:
    return flags & os.O_ACCMODE != os.O_RDONLY or bool(flags & os.O_TRUNC)


def _mode(mode: int, ctx: pyfuse3.RequestContext) -> int:
    """The permission bits a new file or directory gets (the caller's umask applied)."""
    return mode & ~ctx.umask & 0o7777
