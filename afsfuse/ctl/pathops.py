"""Control ops on paths inside the mount: ACLs, quotas, mount points, flushes and where
things are (`fs listacl`, `fs setacl`, `fs listquota`, `fs setquota`, `fs mkmount`, `fs
lsmount`, `fs rmmount`, `fs flushmount`, `fs flush`, `fs flushvolume`, `fs flushall`, `fs
whichcell`, `fs getfid`, `fs whereis`).

The client sends an absolute path with every directory in it already resolved (it runs in
the caller's process, so symlinks are followed with the caller's rights); the daemon walks
the path through its own lookups, as the caller, and never makes a syscall on the mount it
serves.  Every op acts with the requester's token.
"""

from __future__ import annotations

import errno
import os
from typing import Any, Protocol

from afsfuse.ctl.server import ControlError, Request, op
from afsfuse.fs.acl import Acl, letters_to_rights, rights_to_letters
from afsfuse.fs.api import CacheManagerApi
from afsfuse.fs.errors import FsError
from afsfuse.fs.mntpt import MountPointError, is_mount_point, parse_mount_point
from afsfuse.fs.vnode import AfsFid
from afsfuse.keyring.store import Identity

#: At most this many `who rights` pairs in one setacl.
MAX_ACL_ENTRIES = 64
#: The largest quota SetVolumeStatus carries (a signed 32-bit count of KiB).
MAX_QUOTA_KB = 2**31 - 1
_NAME_LIMIT = 256
#: OpenAFS's limits: ACL text StoreACL is given, a volume's offline message.
_ACL_TEXT_LIMIT = 1023
_VOLUME_MESSAGE_LIMIT = 255


class PathResolver(Protocol):
    """What the FUSE face offers: paths inside the mount to AFS vnodes."""

    async def fid(self, path: str, who: Identity) -> AfsFid:
        """The vnode a path names (a mount point: its volume's root)."""
        ...

    async def parent(self, path: str, who: Identity) -> tuple[AfsFid, bytes]:
        """The directory holding a path's last name, and that name."""
        ...


def _refuse(error: FsError) -> ControlError:
    code = errno.errorcode.get(error.errno or errno.EIO, "EIO")
    return ControlError(code, error.strerror or os.strerror(error.errno or errno.EIO))


class PathOps:
    """listacl, setacl, listquota, setquota, mkmount, lsmount, rmmount, flush,
    flushvolume, flushall."""

    def __init__(self, manager: CacheManagerApi, paths: PathResolver) -> None:
        self._manager = manager
        self._paths = paths

    async def _fid(self, request: Request) -> AfsFid:
        return await self._paths.fid(request.text("path", limit=4096), request.identity)

    async def _parent(self, request: Request) -> tuple[AfsFid, bytes]:
        return await self._paths.parent(request.text("path", limit=4096), request.identity)

    @op("listacl")
    async def listacl(self, request: Request) -> dict[str, Any]:
        """The entries, and `text`: the whole list as StoreACL takes it (rights as numbers,
        nothing lost), which is what VIOCGETAL gives."""
        try:
            fid = await self._fid(request)
            acl = Acl.parse(await self._manager.get_acl(fid, request.identity))
            text = acl.format()
        except FsError as e:
            raise _refuse(e) from None
        except ValueError as e:
            raise ControlError("EIO", f"the fileserver sent an unreadable ACL: {e}") from None
        return {
            "positive": [[name, rights_to_letters(r)] for name, r in acl.positive.items()],
            "negative": [[name, rights_to_letters(r)] for name, r in acl.negative.items()],
            "text": text,
        }

    @op("setacl")
    async def setacl(self, request: Request) -> dict[str, Any]:
        """`entries` [[who, rights], ...] ("none" removes who); `clear` starts from an empty
        list, `negative` edits the negative entries.  Or `text`: a whole list, as listacl's
        `text` and VIOCSETAL give it, stored as it is (and not read back, since the new
        list may leave the requester unable to read it)."""
        text = request.text("text", None, limit=_ACL_TEXT_LIMIT)
        if text is not None:
            return await self._store_acl(request, text)
        entries = request.args.get("entries")
        if (
            not isinstance(entries, list)
            or not 0 < len(entries) <= MAX_ACL_ENTRIES
            or not all(
                isinstance(e, list)
                and len(e) == 2
                and all(isinstance(part, str) and 0 < len(part) <= _NAME_LIMIT for part in e)
                for e in entries
            )
        ):
            raise ControlError("EINVAL", "'entries' must be a list of [who, rights] pairs")
        try:
            changes = {who: letters_to_rights(rights) for who, rights in entries}
        except ValueError as e:
            raise ControlError("EINVAL", str(e)) from None
        try:
            fid = await self._fid(request)
            acl = (
                Acl()
                if request.args.get("clear")
                else Acl.parse(await self._manager.get_acl(fid, request.identity))
            )
            side = acl.negative if request.args.get("negative") else acl.positive
            side.update(changes)
            await self._manager.set_acl(fid, acl.format(), request.identity)
        except FsError as e:
            raise _refuse(e) from None
        except ValueError as e:
            raise ControlError("EINVAL", str(e)) from None
        return await self.listacl(request)

    async def _store_acl(self, request: Request, text: str) -> dict[str, Any]:
        try:
            stored = Acl.parse(text).format()
        except ValueError as e:
            raise ControlError("EINVAL", str(e)) from None
        try:
            await self._manager.set_acl(await self._fid(request), stored, request.identity)
        except FsError as e:
            raise _refuse(e) from None
        return {"text": stored}

    @op("listquota")
    async def listquota(self, request: Request) -> dict[str, Any]:
        """The volume's status as GetVolumeStatus gives it (`fs listquota`, `fs quota`,
        `fs examine`, `fs diskfree`)."""
        try:
            status = await self._manager.get_volume_status(
                await self._fid(request), request.identity
            )
        except FsError as e:
            raise _refuse(e) from None
        return {
            "volume": status.name,
            "quota": status.max_quota,
            "used": status.blocks_in_use,
            "partition_free": status.partition_blocks_available,
            "partition_size": status.partition_max_blocks,
            "volume_id": status.volume_id,
            "parent_id": status.parent_id,
            "online": status.online,
            "in_service": status.in_service,
            "blessed": status.blessed,
            "needs_salvage": status.needs_salvage,
            "type": status.type,
            "min_quota": status.min_quota,
            "offline_message": status.offline_message,
            "motd": status.motd,
        }

    @op("setquota")
    async def setquota(self, request: Request) -> dict[str, Any]:
        """`max` KiB for the volume (0: no limit), and or an `offline_message` (`fs
        setvol`); the fileserver allows it only to the cell's administrators.  Answers as
        listquota does, with the new figures."""
        limit = request.args.get("max")
        message = request.text("offline_message", None, limit=_VOLUME_MESSAGE_LIMIT)
        if limit is not None and (type(limit) is not int or not 0 <= limit <= MAX_QUOTA_KB):
            raise ControlError("EINVAL", f"'max' must be a quota in KiB, 0 to {MAX_QUOTA_KB}")
        if limit is None and message is None:
            raise ControlError("EINVAL", "setquota needs 'max' or 'offline_message'")
        try:
            await self._manager.set_quota(
                await self._fid(request), limit, request.identity, offline_message=message or ""
            )
        except FsError as e:
            raise _refuse(e) from None
        return await self.listquota(request)

    @op("flush")
    async def flush(self, request: Request) -> dict[str, Any]:
        """Forget the cached status and data of what a path names, so the next use fetches
        it again.  Anyone who can reach it may: it costs others nothing but a fetch, and
        unsent data is never part of what is forgotten."""
        try:
            await self._manager.flush_fid(await self._fid(request))
        except FsError as e:
            raise _refuse(e) from None
        return {}

    @op("flushvolume")
    async def flushvolume(self, request: Request) -> dict[str, Any]:
        """flush, for every file of the volume a path is in."""
        try:
            fid = await self._fid(request)
            await self._manager.flush(fid.volume, fid.cell)
        except FsError as e:
            raise _refuse(e) from None
        return {"cell": fid.cell, "volume": fid.volume}

    @op("flushmount")
    async def flushmount(self, request: Request) -> dict[str, Any]:
        """Forget what is cached of a mount point itself (its text), not of its volume."""
        try:
            fid, _, _, _ = await self._mount_point(request)
            await self._manager.flush_fid(fid)
        except FsError as e:
            raise _refuse(e) from None
        return {}

    @op("whichcell")
    async def whichcell(self, request: Request) -> dict[str, Any]:
        try:
            fid = await self._fid(request)
        except FsError as e:
            raise _refuse(e) from None
        return {"cell": fid.cell}

    @op("getfid")
    async def getfid(self, request: Request) -> dict[str, Any]:
        """The AFS fid; cell_number is the cell's place in the cache manager's list of
        cells, which is what a VenusFid carries.  With `literal`, the fid of the entry the
        path ends in (a mount point or symbolic link itself), not of where it leads."""
        try:
            if request.args.get("literal"):
                directory, name = await self._parent(request)
                fid = await self._manager.lookup(directory, name, request.identity)
            else:
                fid = await self._fid(request)
        except FsError as e:
            raise _refuse(e) from None
        known = [cell.lower() for cell in self._manager.known_cells()]
        number = known.index(fid.cell.lower()) + 1 if fid.cell.lower() in known else 0
        return {
            "cell": fid.cell, "cell_number": number, "volume": fid.volume,
            "vnode": fid.vnode, "unique": fid.unique,
        }  # fmt: skip

    @op("getcalleraccess")
    async def getcalleraccess(self, request: Request) -> dict[str, Any]:
        """The requester's rights on what a path names, and everyone's (anonymous)."""
        try:
            fid = await self._fid(request)
            status = await self._manager.getattr(fid, request.identity)
        except FsError as e:
            raise _refuse(e) from None
        return {
            "rights": status.caller_access,
            "anyone": status.anonymous_access,
            "volume_root": fid.vnode == 1 and fid.unique == 1,
        }

    @op("whereis")
    async def whereis(self, request: Request) -> dict[str, Any]:
        """The fileservers holding the volume a path is in (the first address of each)."""
        try:
            fid = await self._fid(request)
            location = await self._manager.volume_location(fid.cell, fid.volume)
        except FsError as e:
            raise _refuse(e) from None
        sites = location.sites_for(fid.volume)
        return {
            "cell": fid.cell,
            "volume": fid.volume,
            "servers": [site.addresses[0] for site in sites if site.addresses],
        }

    @op("flushall")
    async def flushall(self, request: Request) -> dict[str, Any]:
        """flush, for everything cached of every cell, volume locations too; root only,
        since every user of the mount pays for it."""
        request.require_root("flush everything")
        try:
            await self._manager.flush()
        except FsError as e:
            raise _refuse(e) from None
        return {}

    @op("mkmount")
    async def mkmount(self, request: Request) -> dict[str, Any]:
        """A mount point for `volume` (in `cell`, default the directory's own): `#`, or `%`
        with `rw`; needs the administer right on the directory, as in OpenAFS."""
        volume = request.text("volume", limit=_NAME_LIMIT)
        cell = request.text("cell", None, limit=64)
        text = f"{'%' if request.args.get('rw') else '#'}{cell + ':' if cell else ''}{volume}."
        try:
            parse_mount_point(text.encode())
        except (MountPointError, UnicodeEncodeError) as e:
            raise ControlError("EINVAL", f"not a volume name: {volume!r}: {e}") from None
        try:
            if cell is not None and await self._manager.cell(cell) is None:
                raise FsError(errno.ENOENT, f"unknown cell {cell}")
            directory, name = await self._parent(request)
            await self._manager.symlink(directory, name, text, request.identity)
        except FsError as e:
            raise _refuse(e) from None
        return {"mountpoint": text[:-1]}

    async def _mount_point(self, request: Request) -> tuple[AfsFid, AfsFid, bytes, str]:
        """The mount point's own vnode, its directory and name, and its text."""
        directory, name = await self._parent(request)
        fid = await self._manager.lookup(directory, name, request.identity)
        status = await self._manager.getattr(fid, request.identity)
        contents = b""
        if status.is_symlink:
            contents = await self._manager.readlink(fid, request.identity)
        if not is_mount_point(status.mode, contents):
            raise ControlError("EINVAL", "not a mount point")
        return fid, directory, name, contents.decode("utf-8", "replace").removesuffix(".")

    @op("lsmount")
    async def lsmount(self, request: Request) -> dict[str, Any]:
        try:
            _, _, _, text = await self._mount_point(request)
        except FsError as e:
            raise _refuse(e) from None
        return {"mountpoint": text}

    @op("rmmount")
    async def rmmount(self, request: Request) -> dict[str, Any]:
        try:
            _, directory, name, text = await self._mount_point(request)
            await self._manager.unlink(directory, name, request.identity)
        except FsError as e:
            raise _refuse(e) from None
        return {"removed": text}
