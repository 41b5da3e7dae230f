"""One deadline per request for waiting on fileservers.

A request (a FUSE read, a close that stores, a lookup...) may make several fileserver
calls in a row, and wait for chunks that a read-ahead task is fetching.  Each rotation alone
is bounded by the server timeout, but one after another, or a wait for a read-ahead and then
a fetch of its own, they could keep a program waiting several times as long.  So a request
carries one deadline: `timeout` seconds after it began, moved to `timeout` seconds after each
answer a fileserver gives it.  A request that keeps getting answers (a store of many
pieces) goes on; one that waits on a silent server ends `timeout` after its last answer.

The deadline belongs to the task that opened it.  Tasks started meanwhile (read-ahead)
inherit the context but not the deadline: theirs starts when they do.
"""

from __future__ import annotations

import errno
from contextvars import ContextVar, Token

import trio

from afsfuse.fs.errors import FsError


class RequestDeadline:
    __slots__ = ("at", "task", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.task = trio.lowlevel.current_task()
        self.at = trio.current_time() + timeout

    def answered(self) -> None:
        """A fileserver answered: the request may wait `timeout` again."""
        self.at = trio.current_time() + self.timeout


_current: ContextVar[RequestDeadline | None] = ContextVar("request_deadline", default=None)


def current() -> RequestDeadline | None:
    """The deadline of the request the current task serves, if it serves one."""
    deadline = _current.get()
    if deadline is not None and deadline.task is trio.lowlevel.current_task():
        return deadline
    return None


class Request:
    """Everything inside is one request; inside another request of the same task, the
    outer deadline stays.  A class, not a generator: every cache manager call enters one."""

    __slots__ = ("_timeout", "_token")

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._token: Token[RequestDeadline | None] | None = None

    def __enter__(self) -> None:
        if current() is None:
            self._token = _current.set(RequestDeadline(self._timeout))

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _current.reset(self._token)


def wait_until(timeout: float) -> float:
    """When a wait starting now must end: the request's deadline, or `timeout` from now
    outside a request."""
    deadline = current()
    return deadline.at if deadline is not None else trio.current_time() + timeout


async def wait_for(event: trio.Event, timeout: float, what: str) -> None:
    """Wait for `event` (another task's fetch) no longer than the request may wait."""
    with trio.move_on_at(wait_until(timeout)):
        await event.wait()
        return
    raise FsError(errno.ETIMEDOUT, f"{what}: no answer in time")
