"""The rxkad token: what the cache manager needs to authenticate one user to one cell."""

from __future__ import annotations

from dataclasses import dataclass, field

#: rxkad's kvno for a ticket that is a complete DER Kerberos 5 Ticket (rxkad-k5).
KVNO_KERBEROS_V5 = 256


class TokenError(Exception):
    """No token could be obtained; the message says what was tried and why it failed."""


@dataclass(frozen=True)
class Token:
    """An rxkad token for one cell.

    The ticket stays opaque to us: the fileserver decrypts it with the cell key and learns
    the client's name from it.  The session key is already the 8-byte rxkad key (rxkad-kdf
    applied to stronger Kerberos session keys), ready for the rxkad security class.

    viceid is the user's AFS id, which only the protection server knows (PT NameToID).
    Acquisition leaves it None; whoever holds a PT client fills it in later with
    dataclasses.replace(token, viceid=...).
    """

    cell: str
    realm: str
    #: Kerberos client principal, e.g. "alice@TEST.EXAMPLE".
    client: str
    session_key: bytes = field(repr=False)
    ticket: bytes = field(repr=False)
    #: Validity as Unix times (seconds).
    begin: int
    end: int
    viceid: int | None = None
    kvno: int = KVNO_KERBEROS_V5
