"""rxkad-k5 tokens from Kerberos: a user's ticket cache, or a service account's keytab.

No Kerberos protocol is written here; libkrb5 does all of it.  pykrb5 (package `krb5`)
reads credential caches and makes AS requests, but has no binding for krb5_get_credentials,
the TGS request that turns a TGT into a service ticket.  Initiating a GSS-API context
(package `gssapi`) to the afs principal makes libkrb5 make that request and store the ticket
in the same cache, where pykrb5 then reads its DER form and session key.

Every function here blocks (it may talk to a KDC): under trio, call it through
trio.to_thread.run_sync.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import gssapi
import krb5

# gssapi.exceptions.GSSError is this same class, re-exported there in a way that strict
# type checking does not see.
from gssapi.raw.misc import GSSError

from afsfuse.keyring.token import Token, TokenError
from afsfuse.rx.rxkad import MAX_TICKET_LEN, derive_des_key

# KRB5KDC_ERR_S_PRINCIPAL_UNKNOWN: libkrb5 returns it signed, GSS-API minor status unsigned.
_PRINCIPAL_UNKNOWN = -1765328377
_PRINCIPAL_UNKNOWN_MINOR = _PRINCIPAL_UNKNOWN & 0xFFFFFFFF
# KRB5_FCC_NOFILE: "No credentials cache found" (kdestroy, or never a kinit).
_NO_CACHE = -1765328189


class TicketCacheGone(TokenError):
    """The ticket cache does not exist (any more)."""


#: The ticket-granting tickets of a cache: its client, and per TGT its service, auth time,
#: start time and end time.  kinit -R changes the times, a new kinit the auth time too.
TicketState = tuple[str, tuple[tuple[str, int, int, int], ...]]


def ticket_state(ccache: str | None = None) -> TicketState:
    """What the ticket-granting tickets in a cache are now (None: the default cache), for
    telling when they were renewed or replaced.  TicketCacheGone when there is no cache."""
    context = krb5.init_context()
    try:
        cache = (
            krb5.cc_default(context)
            if ccache is None
            else krb5.cc_resolve(context, ccache.encode())
        )
        client = _name(krb5.cc_get_principal(context, cache))
        tgts = sorted(
            (_name(c.server), c.times.authtime, c.times.starttime, c.times.endtime)
            for c in cache
            if _name(c.server).startswith("krbtgt/")
        )
    except krb5.Krb5Error as error:
        where = ccache or "the default cache"
        if error.err_code == _NO_CACHE:
            raise TicketCacheGone(f"there is no ticket cache {where}") from error
        raise TokenError(f"cannot read the ticket cache {where}: {error}") from error
    return client, tuple(tgts)


class _UnknownService(Exception):
    """The KDC has no such service principal: try the next name."""


def afs_service_principals(cell: str, realm: str) -> list[str]:
    """The afs service principals for cell in realm, in the order to try them.

    afs/<cell> is the current form; plain afs is what cells set up before it still use.
    """
    return [f"afs/{cell}@{realm}", f"afs@{realm}"]


def token_from_ccache(cell: str, ccache: str | None = None, realm: str | None = None) -> Token:
    """A token for cell from a ticket cache that holds a TGT (what kinit leaves behind).

    ccache is a cache name such as "FILE:/tmp/krb5cc_1000" or "KEYRING:persistent:1000";
    None means the default one (KRB5CCNAME, else the configured default).  Without realm,
    the cell name upper-cased is tried, then the client's own realm.  The service ticket
    stays in the cache, so later calls reach the KDC only once it has expired.
    """
    context = krb5.init_context()
    try:
        cache = (
            krb5.cc_default(context)
            if ccache is None
            else krb5.cc_resolve(context, ccache.encode())
        )
        client_realm = krb5.cc_get_principal(context, cache).realm.decode()
        cache_name = (
            f"{krb5.cc_get_type(context, cache).decode()}:"
            f"{krb5.cc_get_name(context, cache).decode()}"
        )
        gss_creds = gssapi.Credentials(usage="initiate", store={b"ccache": cache_name.encode()})
    except (krb5.Krb5Error, GSSError) as error:
        raise TokenError(
            f"no usable Kerberos credentials in {ccache or 'the default cache'}: {error}"
        ) from error

    realms = [realm] if realm else list(dict.fromkeys([cell.upper(), client_realm]))
    services = [name for each in realms for name in afs_service_principals(cell, each)]

    def fetch(service: str) -> krb5.Creds:
        target = gssapi.Name(service, gssapi.NameType.kerberos_principal)
        try:
            gssapi.SecurityContext(name=target, creds=gss_creds, usage="initiate").step()
        except GSSError as error:
            if error.min_code == _PRINCIPAL_UNKNOWN_MINOR:
                raise _UnknownService from error
            raise TokenError(f"cannot get a ticket for {service}: {error}") from error
        return _newest_ticket(context, cache_name, service)

    return _token(cell, _first_known_service(services, fetch))


def token_from_keytab(
    cell: str, keytab: str | os.PathLike[str], principal: str, realm: str | None = None
) -> Token:
    """A token for cell for a service account, from its keytab.

    One AS request straight for the afs service principal: no TGT and no ticket cache.
    keytab is a path or a keytab name ("FILE:...", "MEMORY:...").  realm defaults to the
    principal's own realm, since an AS request cannot cross realms.
    """
    context = krb5.init_context()
    keytab_name = keytab if isinstance(keytab, str) else f"FILE:{os.fspath(keytab)}"
    try:
        client = krb5.parse_name_flags(context, principal.encode())
        table = krb5.kt_resolve(context, keytab_name.encode())
        options = krb5.get_init_creds_opt_alloc(context)
    except krb5.Krb5Error as error:
        raise TokenError(f"cannot use {principal} from {keytab_name}: {error}") from error
    services = afs_service_principals(cell, realm or client.realm.decode())

    def fetch(service: str) -> krb5.Creds:
        try:
            return krb5.get_init_creds_keytab(
                context, client, options, table, in_tkt_service=service.encode()
            )
        except krb5.Krb5Error as error:
            if error.err_code == _PRINCIPAL_UNKNOWN:
                raise _UnknownService from error
            raise TokenError(
                f"cannot get a ticket for {service} as {principal}: {error}"
            ) from error

    return _token(cell, _first_known_service(services, fetch))


def _first_known_service(services: list[str], fetch: Callable[[str], krb5.Creds]) -> krb5.Creds:
    for service in services:
        try:
            return fetch(service)
        except _UnknownService:
            continue
    raise TokenError(f"the KDC knows none of {', '.join(services)}")


def _newest_ticket(context: krb5.Context, cache_name: str, service: str) -> krb5.Creds:
    """The cached ticket for service that lasts longest (a cache may hold stale ones too)."""
    cache = krb5.cc_resolve(context, cache_name.encode())
    wanted = service.encode()
    tickets = [creds for creds in cache if creds.server.name == wanted]
    if not tickets:
        raise TokenError(f"libkrb5 got a ticket for {service} but did not keep it in {cache_name}")
    return max(tickets, key=lambda creds: creds.times.endtime)


def _name(principal: krb5.Principal) -> str:
    """A principal's full name (pykrb5 gives None only for a NULL principal)."""
    name = principal.name
    if name is None:
        raise TokenError("libkrb5 returned a ticket without a principal")
    return name.decode()


def _token(cell: str, creds: krb5.Creds) -> Token:
    service = _name(creds.server)
    if not creds.ticket.startswith(b"\x61"):
        raise TokenError(f"the ticket for {service} is not a DER Kerberos 5 Ticket")
    if len(creds.ticket) > MAX_TICKET_LEN:
        raise TokenError(
            f"the ticket for {service} is {len(creds.ticket)} bytes, rxkad takes {MAX_TICKET_LEN}"
        )
    times = creds.times
    if times.endtime <= time.time():
        raise TokenError(f"the ticket for {service} has expired")
    keyblock = creds.keyblock
    try:
        session_key = derive_des_key(keyblock.enctype, keyblock.data)
    except ValueError as error:
        raise TokenError(f"unusable session key for {service}: {error}") from error
    return Token(
        cell=cell,
        realm=creds.server.realm.decode(),
        client=_name(creds.client),
        session_key=session_key,
        ticket=creds.ticket,
        begin=times.starttime or times.authtime,
        end=times.endtime,
    )
