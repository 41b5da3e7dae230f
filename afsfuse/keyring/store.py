"""Who is asking, and which token (if any) their requests use.

Tokens live in this process's memory, and with a keep (the kernel keyring, keyring/kernel.py)
also in the kernel's, so that a restarted daemon has them back: never on disk, never in a
log line (Token's repr leaves out the key and the ticket).  A process in a PAG uses the PAG's tokens and nothing
else, as in OpenAFS: leaving a PAG's tokens empty makes its processes anonymous even when
their uid has tokens.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from afsfuse.keyring.token import Token

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Identity:
    """Who asks; decides which token (if any) a request uses.

    host is None for this machine's users; a remote rmtsys client's users are other people
    than the local users of the same uid, so their tokens are kept apart by host.
    """

    uid: int
    pag: int | None = None
    host: str | None = None


#: The holder of a set of tokens: ("uid", n) or ("pag", n), prefixed "<host>/" for a remote
#: host's.  A PAG is shared by every process in it whatever their uid, so it is keyed by its
#: number alone.
_Holder = tuple[str, int]


def _holder(who: Identity) -> _Holder:
    kind, number = ("uid", who.uid) if who.pag is None else ("pag", who.pag)
    return (kind if who.host is None else f"{who.host}/{kind}", number)


class Keep(Protocol):
    """Keeps tokens beyond this process."""

    def save(self, holder: _Holder, token: Token) -> None: ...
    def drop(self, holder: _Holder, cells: list[str]) -> None: ...
    def load(self) -> Iterable[tuple[_Holder, Token]]: ...


class TokenStore:
    """Tokens per uid (or per PAG), one per cell.

    Every method is synchronous and never awaits, so under trio each call is atomic.
    clock gives the time against which expiry is judged (a fake one in tests).
    """

    def __init__(self, clock: Callable[[], float] = time.time, keep: Keep | None = None) -> None:
        self._clock = clock
        self._keep = keep
        self._tokens: dict[_Holder, dict[str, Token]] = {}
        # Kept after the tokens go, so a holder's generation never repeats.
        self._generations: dict[_Holder, int] = {}
        self._forget_listeners: list[Callable[[Token], None]] = []
        #: Expired tokens already logged as such, so that each is told once.
        self._told_expired: set[tuple[_Holder, str, int]] = set()
        if keep is not None:
            for holder, token in keep.load():
                self._tokens.setdefault(holder, {})[token.cell.lower()] = token
                self._bump(holder)

    def on_forget(self, listener: Callable[[Token], None]) -> None:
        """`listener(token)` once a token is replaced or removed (its connections go)."""
        self._forget_listeners.append(listener)

    def _forgotten(self, tokens: Iterable[Token]) -> None:
        for token in tokens:
            for listener in self._forget_listeners:
                listener(token)

    def holders(self) -> int:
        """How many uids and PAGs hold tokens (for a log line that shows no token)."""
        return len(self._tokens)

    def get(self, who: Identity, cell: str) -> Token | None:
        """The token for cell, or None for anonymous access (none held, or it has expired)."""
        token = self._tokens.get(_holder(who), {}).get(cell.lower())
        if token is None:
            return None
        if token.end <= self._clock():
            self._expired(_holder(who), token)
            return None
        return token

    def _expired(self, holder: _Holder, token: Token) -> None:
        """Say once that a token in use has expired (its holder is anonymous from now)."""
        key = (holder, token.cell, token.end)
        if key in self._told_expired:
            return
        self._told_expired.add(key)
        host, _, kind = holder[0].rpartition("/")
        log.warning(
            "the token of %s %d%s for cell %s (%s) expired at %s; its requests are anonymous "
            "until a new one is handed over (afsfuse-ctl aklog)",
            kind, holder[1], f" of host {host}" if host else "", token.cell, token.client,
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(token.end)),
        )  # fmt: skip

    def set(self, who: Identity, token: Token) -> None:
        """Hold token for its cell, replacing any earlier token for that cell."""
        holder = _holder(who)
        held = self._tokens.setdefault(holder, {})
        replaced = held.get(token.cell.lower())
        held[token.cell.lower()] = token
        self._bump(holder)
        if replaced is not None and replaced != token:
            self._forgotten([replaced])
        if self._keep is not None:
            self._keep.save(holder, token)

    def remove(self, who: Identity, cell: str | None = None) -> None:
        """Forget the token for cell, or every token of who when cell is None."""
        self._remove(_holder(who), cell)

    def remove_host(self, host: str) -> int:
        """Forget every token the users of a remote host set; how many holders had some."""
        prefix = f"{host}/"
        holders = [holder for holder in self._tokens if holder[0].startswith(prefix)]
        for holder in holders:
            self._remove(holder, None)
        return len(holders)

    def remove_all(self) -> int:
        """Forget every token of every holder; how many holders had some."""
        holders = list(self._tokens)
        for holder in holders:
            self._remove(holder, None)
        return len(holders)

    def pags(self) -> list[int]:
        """The PAGs of this machine that hold tokens."""
        return [number for kind, number in self._tokens if kind == "pag"]

    def _remove(self, holder: _Holder, cell: str | None) -> None:
        held = self._tokens.get(holder)
        if not held:
            return
        if cell is None:
            gone = list(held.values())
            del self._tokens[holder]
        else:
            removed = held.pop(cell.lower(), None)
            if removed is None:
                return
            gone = [removed]
            if not held:
                del self._tokens[holder]
        self._bump(holder)
        self._forgotten(gone)
        if self._keep is not None:
            self._keep.drop(holder, [token.cell for token in gone])

    def all(self) -> list[tuple[str, int, Token]]:
        """Every token held, as (holder kind: "uid" or "pag", "<host>/uid" or "<host>/pag"
        for a remote host's; its number; the token)."""
        return [
            (kind, number, held[cell])
            for (kind, number), held in sorted(self._tokens.items())
            for cell in sorted(held)
        ]

    def list(self, who: Identity) -> list[Token]:
        """Every token of who, expired ones included (`tokens` shows them as expired)."""
        held = self._tokens.get(_holder(who), {})
        return [held[cell] for cell in sorted(held)]

    def changed(self, who: Identity) -> int:
        """A number that changes whenever who's tokens do: part of per-identity cache keys."""
        return self._generations.get(_holder(who), 0)

    def _bump(self, holder: _Holder) -> None:
        self._generations[holder] = self._generations.get(holder, 0) + 1
        if self._told_expired:
            self._told_expired = {key for key in self._told_expired if key[0] != holder}
