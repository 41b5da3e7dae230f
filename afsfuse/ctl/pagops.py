"""Control ops for PAGs and for discarding credentials: setpag, pags, discard.

setpag serves `afsfuse-ctl pagsh` (the sender becomes a keeper: keyring/pag.py) and rmtsys
SetPag from OpenAFS's pagsh (a number the caller, root, puts in its groups).  discard is
root's, from `afsfuse-ctl discard` and from `fs nukenfscreds` over rmtsys alike.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from typing import Any

from afsfuse.ctl.server import ControlError, Request, op
from afsfuse.keyring.pag import PagRefused, Pags
from afsfuse.keyring.store import Identity, TokenStore

log = logging.getLogger(__name__)

#: Whose tokens discard drops: a uid's ("user"), a PAG's, a remote host's, or all.
_SELECTORS = ("user", "pag", "host", "all")


class PagOps:
    def __init__(self, store: TokenStore, pags: Pags, forget: Callable[[], None]) -> None:
        """forget(): what the daemon remembers of processes' PAGs may be stale."""
        self._store = store
        self._pags = pags
        self._forget = forget

    @op("setpag")
    async def setpag(self, request: Request) -> dict[str, Any]:
        """A new PAG.  With `groups`, a number for the caller to put in its groups (root
        only: no one else may set groups); else the sender itself becomes its keeper."""
        if request.uid != request.peer.uid:
            raise ControlError("EINVAL", "a PAG is the sender's own, never another uid's")
        if request.args.get("groups") is True:
            if request.host is None:
                request.require_root("put a PAG in its groups (afsfuse-ctl pagsh needs no root)")
                self._forget()  # the caller's groups are about to change
            return {"pag": self._pags.issue()}
        if request.host is not None:
            raise ControlError("EINVAL", "a remote host's PAGs live in its groups")
        try:
            keeper = self._pags.new_keeper(request.peer.pid, request.peer.uid)
        except PagRefused as e:
            raise ControlError(e.code, e.message) from None
        return {"pag": keeper.pag}

    @op("pags")
    async def pags(self, request: Request) -> dict[str, Any]:
        """The PAGs known: all of them for root, else those the sender started or is in."""
        found = self._pags.describe()
        if not request.from_root:
            found = [
                entry
                for entry in found
                if entry["uid"] == request.peer.uid or entry["pag"] == request.pag
            ]
        return {"pags": found}

    @op("discard")
    async def discard(self, request: Request) -> dict[str, Any]:
        """Drop tokens (root): of a uid (outside PAGs, and in the PAGs its processes keep),
        of a PAG, of a remote host's users, or all of them."""
        request.require_root("discard others' tokens")
        given = [name for name in _SELECTORS if request.args.get(name) not in (None, False)]
        if len(given) != 1:
            raise ControlError("EINVAL", "discard needs one of user, pag, host or all")
        holders = self._discard(request, given[0])
        log.info("root discarded the tokens of %s %s", given[0], request.args[given[0]])
        return {given[0]: request.args[given[0]], "holders": holders}

    def _discard(self, request: Request, selector: str) -> int:
        if selector == "all":
            return self._store.remove_all()
        if selector == "host":
            host = request.text("host", limit=64)
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ControlError("EINVAL", f"{host!r} is not an IPv4 address") from None
            return self._store.remove_host(host)
        number = request.args[selector]
        if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number < 2**32:
            raise ControlError("EINVAL", f"{selector!r} must be a number")
        if selector == "pag":
            return int(self._pags.discard(number))
        held = bool(self._store.list(Identity(number)))
        self._store.remove(Identity(number))
        kept = [k.pag for k in self._pags.live.values() if k.uid == number]
        return held + sum(self._pags.discard(pag) for pag in kept)
