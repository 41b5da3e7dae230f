"""The control ops a daemon can serve, in groups it registers with Handlers.

Each group takes what backs it (the token store, the sysname list's owner, a statistics
source), so a daemon registers only the groups it can actually back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, replace
from typing import Any

import trio

from afsfuse.cache.leftovers import Leftover, LeftoverStore
from afsfuse.ctl.protocol import token_from_wire, token_summary, token_to_wire
from afsfuse.ctl.server import ControlError, Request, WithFd, op
from afsfuse.fs.api import CacheManagerViews
from afsfuse.keyring.store import TokenStore
from afsfuse.keyring.token import Token

log = logging.getLogger(__name__)

#: Fills in a token's AFS id: afsfuse.keyring.with_viceid on a PT connection to its cell.
ViceidFiller = Callable[[Token], Awaitable[Token]]
#: How long settoken waits for the AFS id before storing the token without one.
VICEID_TIMEOUT = 10.0

#: OpenAFS's limits on the @sys list (MAXNUMSYSNAMES, MAXSYSNAME).
MAX_SYSNAMES = 32
MAX_SYSNAME_BYTES = 127


class TokenOps:
    """tokens, settoken, gettoken, unlog, getpag, wscell: each acts on the requester's own
    tokens only: its PAG's when it is in one, else its uid's (root's discard: pagops.py).

    Tokens are obtained in the caller's process, from the caller's Kerberos credentials, and
    handed over with settoken: the daemon never reads anyone's ticket cache.
    """

    def __init__(
        self,
        store: TokenStore,
        this_cell: str,
        fill_viceid: ViceidFiller | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._this_cell = this_cell
        self._fill_viceid = fill_viceid
        self._clock = clock

    @op("wscell")
    async def wscell(self, request: Request) -> dict[str, Any]:
        return {"cell": self._this_cell}

    @op("tokens")
    async def tokens(self, request: Request) -> dict[str, Any]:
        held = self._store.list(request.identity)
        return {
            "uid": request.uid,
            "pag": request.pag,
            "tokens": [token_summary(token) for token in held],
        }

    @op("tokens_all")
    async def tokens_all(self, request: Request) -> dict[str, Any]:
        """Whose tokens the daemon holds, for root: holder (uid or PAG, and the host for a
        remote host's user), cell, AFS id, validity."""
        request.require_root("list every user's tokens")
        listed = []
        for kind, number, token in self._store.all():
            host, _, kind = kind.rpartition("/")
            listed.append(
                {
                    "uid": number if kind == "uid" else None,
                    "pag": number if kind == "pag" else None,
                    #: A remote host's user (rmtsys), or None for this machine's.
                    "host": host or None,
                    "cell": token.cell,
                    "client": token.client,
                    "viceid": token.viceid,
                    "begin": token.begin,
                    "end": token.end,
                }
            )
        return {"tokens": listed}

    @op("settoken")
    async def settoken(self, request: Request) -> dict[str, Any]:
        """A token for its cell (the workstation's when it names none).  Its AFS id is the
        PT server's when the token names its Kerberos client; a token set by a pioctl
        names none, and keeps the id its setter gave, which only `tokens` shows."""
        data = request.args.get("token")
        if isinstance(data, dict) and "cell" not in data:
            data = {**data, "cell": self._this_cell}
        try:
            token = token_from_wire(data)
        except ValueError as error:
            raise ControlError("EINVAL", f"bad token: {error}") from None
        if token.end <= self._clock():
            raise ControlError("EINVAL", f"the token for {token.cell} has expired")
        if self._fill_viceid is not None and token.client:
            token = await self._with_viceid(replace(token, viceid=None))
        self._store.set(request.identity, token)
        log.info("uid %d set a token for %s (%s)", request.uid, token.cell, token.client)
        return {"token": token_summary(token)}

    @op("gettoken")
    async def gettoken(self, request: Request) -> dict[str, Any]:
        """One of the requester's own tokens, key and ticket included (as OpenAFS's GETTOK
        gives a token to its owner): the `index`th, or the one for `cell` (default: the
        workstation's).  EDOM when there is no such token, ENOTCONN when it has expired."""
        held = self._store.list(request.identity)
        index = request.args.get("index")
        if index is not None:
            if type(index) is not int:
                raise ControlError("EINVAL", "'index' must be a number")
            if not 0 <= index < len(held):
                raise ControlError("EDOM", f"no token number {index}")
            token = held[index]
        else:
            cell = (request.text("cell", "", limit=64) or self._this_cell).lower()
            found = [token for token in held if token.cell.lower() == cell]
            if not found:
                raise ControlError("EDOM", f"no token for {cell}")
            token = found[0]
        if token.end <= self._clock():
            raise ControlError("ENOTCONN", f"the token for {token.cell} has expired")
        return {
            "uid": request.uid,
            "token": token_to_wire(token),
            "primary": token.cell.lower() == self._this_cell.lower(),
        }

    @op("getpag")
    async def getpag(self, request: Request) -> dict[str, Any]:
        return {"pag": request.pag}

    @op("unlog")
    async def unlog(self, request: Request) -> dict[str, Any]:
        cell = request.text("cell", None, limit=64)
        held = {token.cell.lower() for token in self._store.list(request.identity)}
        if cell is not None and cell.lower() not in held:
            raise ControlError("ENOENT", f"no token for {cell}")
        self._store.remove(request.identity, cell)
        return {"removed": sorted(held) if cell is None else [cell.lower()]}

    async def _with_viceid(self, token: Token) -> Token:
        """The token with its AFS id when the PT server gives it in time, else as it was.

        The daemon asks, not the client: it has the cell's servers, and the id shown is
        then the PT server's, never one a client claimed.
        """
        assert self._fill_viceid is not None
        with trio.move_on_after(VICEID_TIMEOUT):
            try:
                return await self._fill_viceid(token)
            except Exception as error:
                # The token works without its id; only `tokens` shows the difference.
                log.warning("no AFS id for %s in %s: %s", token.client, token.cell, error)
        return token


class SysnameOps:
    """sysname: everyone may read the @sys list; only root may set it, as in OpenAFS."""

    def __init__(
        self, get_names: Callable[[], list[str]], set_names: Callable[[list[str]], None]
    ) -> None:
        self._get_names = get_names
        self._set_names = set_names

    @op("sysname")
    async def sysname(self, request: Request) -> dict[str, Any]:
        names = request.texts("names", MAX_SYSNAMES, limit=MAX_SYSNAME_BYTES)
        if names is not None:
            request.require_root("set the sysname list")
            self._set_names(_checked_sysnames(names))
        return {"names": list(self._get_names())}


def _checked_sysnames(names: list[str]) -> list[str]:
    if not names:
        raise ControlError("EINVAL", "the sysname list needs at least one name")
    for name in names:
        if not name or name in (".", "..") or "/" in name or len(name.encode()) > MAX_SYSNAME_BYTES:
            raise ControlError("EINVAL", f"{name!r} cannot be a sysname")
    return names


class StatsOps:
    """stats: whatever counters the daemon exposes, as one JSON object."""

    def __init__(self, snapshot: Callable[[], Mapping[str, Any]]) -> None:
        self._snapshot = snapshot

    @op("stats")
    async def stats(self, request: Request) -> dict[str, Any]:
        return {"stats": dict(self._snapshot())}


class ViewOps:
    """cells, servers, volumes, calls, peers, conns, cache, metrics: what the client is
    doing, for anyone (as rxdebug and kAFS's /proc files show it to anyone).  Built on
    demand; none holds a path, a token or anything per user beyond counts."""

    def __init__(self, manager: CacheManagerViews, metrics: Callable[[], Awaitable[str]]) -> None:
        self._manager = manager
        self._metrics = metrics

    @op("cells")
    async def cells(self, request: Request) -> dict[str, Any]:
        return {"cells": [asdict(view) for view in self._manager.cell_views()]}

    @op("servers")
    async def servers(self, request: Request) -> dict[str, Any]:
        return {"servers": [asdict(view) for view in self._manager.server_views()]}

    @op("volumes")
    async def volumes(self, request: Request) -> dict[str, Any]:
        return {"volumes": [asdict(view) for view in self._manager.volume_views()]}

    @op("calls")
    async def calls(self, request: Request) -> dict[str, Any]:
        return {"calls": [asdict(view) for view in self._manager.call_views()]}

    @op("peers")
    async def peers(self, request: Request) -> dict[str, Any]:
        return {"peers": [asdict(view) for view in self._manager.peer_views()]}

    @op("conns")
    async def conns(self, request: Request) -> dict[str, Any]:
        return {"conns": [asdict(view) for view in self._manager.conn_views()]}

    @op("cache")
    async def cache(self, request: Request) -> dict[str, Any]:
        return {"cache": asdict(await self._manager.cache_view())}

    @op("metrics")
    async def metrics(self, request: Request) -> dict[str, Any]:
        return {"text": await self._metrics()}


class LeftoverOps:
    """leftovers, leftover_open, leftover_discard: unsent data set aside because the file
    changed on the server (cache/leftovers.py).  Each writer sees and handles its own; root
    all of them."""

    def __init__(self, store: LeftoverStore) -> None:
        self._store = store

    @op("leftovers")
    async def leftovers(self, request: Request) -> dict[str, Any]:
        found = await trio.to_thread.run_sync(self._store.list)
        mine = [asdict(item) for item in found if self._may(request, item)]
        return {"leftovers": mine}

    @op("leftover_open")
    async def leftover_open(self, request: Request) -> WithFd:
        item = await self._mine(request)
        fd = await trio.to_thread.run_sync(self._store.open, item.id)
        return WithFd(asdict(item), fd)

    @op("leftover_discard")
    async def leftover_discard(self, request: Request) -> dict[str, Any]:
        item = await self._mine(request)
        await trio.to_thread.run_sync(self._store.discard, item.id)
        log.info("leftover %s discarded by uid %d", item.id, request.peer.uid)
        return {"discarded": item.id}

    async def _mine(self, request: Request) -> Leftover:
        ident = request.text("id", limit=64)
        try:
            item = await trio.to_thread.run_sync(self._store.get, ident)
        except KeyError:
            raise ControlError("ENOENT", f"no leftover {ident!r}") from None
        if not self._may(request, item):
            raise ControlError("EPERM", f"leftover {ident} was written by another user")
        return item

    @staticmethod
    def _may(request: Request, item: Leftover) -> bool:
        return request.from_root or (item.uid is not None and item.uid == request.peer.uid)
