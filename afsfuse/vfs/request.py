"""What every FUSE handler does with its request: act as its caller, and answer errors as
errnos.

pyfuse3 catches only FUSEError: any other exception escaping a handler would end the FUSE
session, so `guard` turns FsError into its errno and anything unexpected into a logged EIO.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import pyfuse3

from afsfuse.fs.errors import FsError
from afsfuse.keyring.callers import Callers
from afsfuse.keyring.store import Identity

log = logging.getLogger(__name__)

T = TypeVar("T")
P = ParamSpec("P")


def guard(method: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """FsError -> its errno; anything but FUSEError -> logged EIO (pyfuse3 would die)."""

    @functools.wraps(method)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except FsError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        except Exception:
            log.exception("%s failed", method.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return guarded


def fail(err: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(err)


#: Who a request acts for, from its context.
IdentityOf = Callable[[pyfuse3.RequestContext], Identity]


def identities(callers: Callers | None) -> IdentityOf:
    """How a request's identity is found: its uid and PAG (callers), or its uid alone."""
    if callers is None:
        return lambda ctx: _identity_of(ctx.uid)

    def identity(ctx: pyfuse3.RequestContext) -> Identity:
        try:
            return callers.identity(ctx.pid, ctx.uid, ctx.gid)
        except ProcessLookupError:
            raise pyfuse3.FUSEError(errno.ESRCH) from None  # it has ended: nobody waits

    return identity


@functools.lru_cache(maxsize=256)
def _identity_of(uid: int) -> Identity:
    """One Identity per uid, made once: almost every request asks."""
    return Identity(uid)
