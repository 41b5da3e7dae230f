"""One fileserver RPC on some vnodes: what was known before it, where and when it went.

Every RPC the cache manager makes on a vnode is an `FsOperation` (as kAFS's
`afs_operation`).  It is made before the call, and records each vnode's callback-break
count then; `run(call)` sends `call(connection, server)` through the one rotation path
(fs/rotate.py) and records the server and send time of the attempt that answered; `commit`
then hands a returned status (and callback) to the status keeper (fs/status.py) with those
facts (a `ReplyOrigin`), so no caller carries them around by hand.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

import trio

from afsfuse.fs.rotate import Rotator
from afsfuse.fs.server import FileServer
from afsfuse.fs.vnode import AfsFid, Status, Vnode
from afsfuse.keyring.token import Token
from afsfuse.rx.driver import ClientConnection
from afsfuse.rx.interfaces.fs import CALLBACK_VERSION, CB_DROPPED, AFSCallBack

if TYPE_CHECKING:
    from afsfuse.rx.interfaces.fs import AFSFetchStatus

T = TypeVar("T")

#: What a reply without a callback promise (StoreData, StoreStatus, Symlink...) stands with.
NO_CALLBACK = AFSCallBack(CALLBACK_VERSION, 0, CB_DROPPED)


class ReplyOrigin(NamedTuple):
    """Where a status in a reply came from, for one vnode: the call was made with `token`,
    `server` answered the attempt sent at `sent`, and the vnode's callback-break count was
    `breaks` before the call."""

    token: Token | None
    server: FileServer
    sent: float
    breaks: int


class Committer(Protocol):
    """The status keeper's side of an operation (fs/status.py)."""

    def commit(
        self,
        vnode: Vnode,
        afs_status: AFSFetchStatus,
        callback: Any,
        origin: ReplyOrigin,
        ours: int | None = None,
    ) -> Status: ...

    def commit_fetched(
        self, vnode: Vnode, afs_status: AFSFetchStatus, callback: Any, origin: ReplyOrigin
    ) -> Status: ...


class FsOperation:
    """An RPC on the volume of `vnodes` (the first one's, unless `volume` is given), made
    with `token`; `name` ("FS.FetchStatus") is for counters and messages."""

    __slots__ = ("before", "cell", "keeper", "name", "rotator", "sent", "server", "token", "volume")

    def __init__(
        self,
        rotator: Rotator,
        keeper: Committer,
        token: Token | None,
        name: str,
        *vnodes: Vnode,
        cell: str | None = None,
        volume: int | None = None,
    ) -> None:
        self.rotator = rotator
        self.keeper = keeper
        self.token = token
        self.name = name
        first = vnodes[0].fid if vnodes else None
        self.cell = cell if cell is not None else (first.cell if first else "")
        self.volume = volume if volume is not None else (first.volume if first else 0)
        #: Each vnode's callback-break count before the call: a break that comes while it
        #: is under way means the promise its reply brings may already be gone.
        self.before: dict[AfsFid, int] = {v.fid: v.breaks for v in vnodes}
        #: The server that answered, and when the attempt it answered was sent.
        self.server: FileServer | None = None
        self.sent = 0.0

    async def run(self, call: Callable[[ClientConnection, FileServer], Awaitable[T]]) -> T:
        """`call(connection, server)` through the rotation, until a site answers."""

        async def attempt(conn: ClientConnection, server: FileServer) -> T:
            sent = trio.current_time()
            result = await call(conn, server)
            self.server, self.sent = server, sent
            return result

        return await self.rotator.call(self.cell, self.volume, self.token, self.name, attempt)

    def _origin(self, vnode: Vnode) -> ReplyOrigin:
        assert self.server is not None, "commit before the call answered"
        # A vnode the call made (a new file) had nothing before it: its count now.
        breaks = self.before.get(vnode.fid, vnode.breaks)
        return ReplyOrigin(self.token, self.server, self.sent, breaks)

    def commit(
        self,
        vnode: Vnode,
        afs_status: AFSFetchStatus,
        callback: Any = NO_CALLBACK,
        *,
        ours: int | None = None,
    ) -> Status:
        """Take `vnode`'s status (and callback) from the reply; `ours` is a data version
        this operation made itself (fs/status.py)."""
        return self.keeper.commit(vnode, afs_status, callback, self._origin(vnode), ours)

    def commit_fetched(
        self, vnode: Vnode, afs_status: AFSFetchStatus, callback: Any = NO_CALLBACK
    ) -> Status:
        """`commit` for a status the server was asked for (fs/status.py)."""
        return self.keeper.commit_fetched(vnode, afs_status, callback, self._origin(vnode))
