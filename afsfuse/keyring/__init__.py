"""Identities and tokens: rxkad tokens obtained from Kerberos credentials."""

from afsfuse.keyring.kerberos import (
    TicketCacheGone,
    TicketState,
    ticket_state,
    token_from_ccache,
    token_from_keytab,
)
from afsfuse.keyring.token import KVNO_KERBEROS_V5, Token, TokenError
from afsfuse.keyring.viceid import pt_name, with_viceid

__all__ = [
    "KVNO_KERBEROS_V5",
    "TicketCacheGone",
    "TicketState",
    "Token",
    "TokenError",
    "pt_name",
    "ticket_state",
    "token_from_ccache",
    "token_from_keytab",
    "with_viceid",
]
