"""What the FUSE face (afsfuse/vfs) and the control socket (afsfuse/ctl) may ask of the
cache manager: its public methods, typed.

`CacheManager` (fs/manager.py) is the implementation; the unit tests' fake manager is
another.  Callers hold a `CacheManagerApi`, never the manager's internals (its volume
cache, its disk cache, its vnode table): what they need of those is a method here.

The coroutine methods are declared as returning Awaitable (an `async def` returns a
Coroutine, which is one): the manager's are wrapped by its request boundary.  Each raises
FsError and nothing else for what can go wrong with AFS.  `who` is
the identity a request acts for; its token (or none: anonymous) is used for every RPC.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from afsfuse.fs.cell import Cell
from afsfuse.fs.errors import FsError
from afsfuse.fs.reader import FileData, Shown
from afsfuse.fs.views import (
    CacheView,
    CallView,
    CellView,
    ConnView,
    PeerView,
    ServerView,
    VolumeView,
)
from afsfuse.fs.vnode import AfsFid, Status
from afsfuse.fs.volume import VolumeStatus
from afsfuse.keyring.store import Identity
from afsfuse.vl.vlclient import VolumeLocation

__all__ = ["CacheManagerApi", "CacheManagerViews", "FileData", "InvalidationListener", "Shown"]

#: Told of a callback break or a data-version change of a fid; None: everything dropped.
InvalidationListener = Callable[[AfsFid | None], None]


class CacheManagerApi(Protocol):
    # -- cells, volumes, invalidation ------------------------------------------------

    def on_invalidate(self, callback: InvalidationListener) -> None: ...
    def known_cells(self) -> list[str]: ...
    def aliases(self) -> dict[str, str]: ...
    def cell(self, name: str) -> Awaitable[Cell | None]: ...
    def add_alias(self, alias: str, cell: str) -> None:
        """Another name for a cell from now on; FsError EEXIST when the name is taken."""
        ...

    def add_cell(
        self, name: str, vlservers: Sequence[tuple[str, int]], linked_cell: str | None = None
    ) -> Cell:
        """A cell and its VL servers, for the daemon's life (a known one's are replaced)."""
        ...

    def setuid_allowed(self, cell: str) -> bool: ...
    def allow_setuid(self, cell: str, allowed: bool) -> None: ...

    def cached_volume(self, fid: AfsFid) -> VolumeLocation | None:
        """The VLDB entry of `fid`'s volume if it is at hand (no RPC)."""
        ...

    def volume_location(self, cell: str, volume: str | int) -> Awaitable[VolumeLocation]:
        """The VLDB entry of a volume named or numbered `volume` in `cell`."""
        ...

    def statfs(self, fid: AfsFid, who: Identity) -> Awaitable[VolumeStatus]: ...
    def get_volume_status(self, fid: AfsFid, who: Identity) -> Awaitable[VolumeStatus]: ...
    def set_quota(
        self, fid: AfsFid, max_quota_kb: int | None, who: Identity, *, offline_message: str = ""
    ) -> Awaitable[None]: ...

    def check_servers(self, probe: bool) -> Awaitable[list[str]]:
        """Addresses of the fileservers that are down; with probe, each is asked first."""
        ...

    def probe_interval(self, seconds: float | None = None) -> float: ...
    def server_ranks(self, vlservers: bool = False) -> Awaitable[list[tuple[str, int]]]: ...
    def set_server_rank(self, addr: str, rank: int, vlservers: bool = False) -> None: ...
    def forget_volume_locations(self) -> None: ...

    def flush_fid(self, fid: AfsFid) -> Awaitable[None]:
        """Forget what is cached of one file; unsent data stays."""
        ...

    def flush(self, volume: int | None = None, cell: str | None = None) -> Awaitable[None]:
        """Forget what is cached of a volume's files, or of everything; unsent data stays."""
        ...

    # -- status and directories --------------------------------------------------------

    def getattr(self, fid: AfsFid, who: Identity) -> Awaitable[Status]: ...
    def bulk_status(
        self, fids: Sequence[AfsFid], who: Identity
    ) -> Awaitable[list[Status | FsError]]: ...
    def prefetch_status(
        self, fids: Sequence[AfsFid], who: Identity
    ) -> Awaitable[dict[AfsFid, FsError]]: ...
    def lookup(self, dir_fid: AfsFid, name: str | bytes, who: Identity) -> Awaitable[AfsFid]: ...
    def readdir(self, dir_fid: AfsFid, who: Identity) -> Awaitable[list[tuple[str, AfsFid]]]: ...
    def readlink(self, fid: AfsFid, who: Identity) -> Awaitable[bytes]: ...

    # -- file data -----------------------------------------------------------------------

    def read_shown(
        self,
        fid: AfsFid,
        offset: int,
        size: int,
        who: Identity,
        shown: Shown | None,
        *,
        clean: bool = False,
    ) -> Awaitable[FileData]: ...
    def open(self, fid: AfsFid, who: Identity, *, write: bool) -> Awaitable[Status]: ...
    def write(self, fid: AfsFid, offset: int, data: bytes, who: Identity) -> Awaitable[int]: ...
    def truncate(self, fid: AfsFid, length: int, who: Identity) -> Awaitable[None]: ...
    def unstored(self, fid: AfsFid) -> bool: ...
    def store_data(self, fid: AfsFid, who: Identity) -> Awaitable[Status]: ...
    def fsync(self, fid: AfsFid, who: Identity) -> Awaitable[Status]: ...
    def setattr(
        self,
        fid: AfsFid,
        who: Identity,
        *,
        mode: int | None = None,
        mtime: int | None = None,
        owner: int | None = None,
        group: int | None = None,
        size: int | None = None,
    ) -> Awaitable[Status]: ...

    # -- names ---------------------------------------------------------------------------

    def create(
        self, dir_fid: AfsFid, name: str | bytes, mode: int, who: Identity
    ) -> Awaitable[tuple[AfsFid, Status]]: ...
    def mkdir(
        self, dir_fid: AfsFid, name: str | bytes, mode: int, who: Identity
    ) -> Awaitable[tuple[AfsFid, Status]]: ...
    def symlink(
        self, dir_fid: AfsFid, name: str | bytes, target: str | bytes, who: Identity
    ) -> Awaitable[tuple[AfsFid, Status]]: ...
    def link(
        self, dir_fid: AfsFid, name: str | bytes, target: AfsFid, who: Identity
    ) -> Awaitable[Status]: ...
    def unlink(self, dir_fid: AfsFid, name: str | bytes, who: Identity) -> Awaitable[None]: ...
    def rmdir(self, dir_fid: AfsFid, name: str | bytes, who: Identity) -> Awaitable[None]: ...
    def rename(
        self,
        src_dir: AfsFid,
        name: str | bytes,
        dst_dir: AfsFid,
        new_name: str | bytes,
        who: Identity,
    ) -> Awaitable[None]: ...

    # -- access control lists ----------------------------------------------------------

    def get_acl(self, fid: AfsFid, who: Identity) -> Awaitable[str]: ...
    def set_acl(self, fid: AfsFid, text: str | bytes, who: Identity) -> Awaitable[None]: ...


class CacheManagerViews(Protocol):
    """What `afsfuse-ctl` views and the metrics export read: snapshots built on demand
    (fs/views.py), read-only."""

    def cell_views(self) -> list[CellView]: ...
    def server_views(self) -> list[ServerView]: ...
    def volume_views(self) -> list[VolumeView]: ...
    def call_views(self) -> list[CallView]: ...
    def peer_views(self) -> list[PeerView]: ...
    def conn_views(self) -> list[ConnView]: ...
    def cache_view(self) -> Awaitable[CacheView]: ...


if TYPE_CHECKING:
    from afsfuse.fs.manager import CacheManager

    def _the_manager_is_one(manager: CacheManager) -> CacheManagerApi:
        return manager

    def _the_manager_has_views(manager: CacheManager) -> CacheManagerViews:
        return manager
