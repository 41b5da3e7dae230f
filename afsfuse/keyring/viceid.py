"""A token's AFS id (viceid), from the cell's protection server.

Kerberos names the user; the fileserver names them by PT id.  The cache manager needs the
id only to show tokens the way OpenAFS does (`tokens`, `fs whoami`) and to tell users apart
in the rights it caches, so it asks the PT server once per token, as aklog does.
"""

from __future__ import annotations

import dataclasses

from afsfuse.keyring.token import Token
from afsfuse.rx.interfaces.pt import ANONYMOUSID, PR_MAXNAMELEN, PT
from afsfuse.rx.rpc import ConnectionLike


def pt_name(token: Token) -> str | None:
    """The PT name of the token's Kerberos client, or None if no PT name can spell it.

    A principal of the cell's own realm (the realm of its afs service principal) is known
    by its components joined with dots ("alice", "admin.root"); one from any other realm
    carries its realm in lower case ("alice@other.example"), which is how cross-realm users
    are registered.  The PT server folds names to lower case.
    """
    principal, _, realm = token.client.rpartition("@")
    name = principal.replace("/", ".")
    if realm != token.realm:
        name = f"{name}@{realm}"
    name = name.lower()
    # prname is char[64], NUL-terminated.
    if not name or len(name.encode()) >= PR_MAXNAMELEN:
        return None
    return name


async def with_viceid(token: Token, pt_conn: ConnectionLike) -> Token:
    """The token with viceid filled in by PT NameToID on `pt_conn` (a PT connection to the
    token's cell; any security class will do, the names are public).

    A name the PT server does not know leaves viceid None: the fileserver treats such a
    user as anonymous, and there is no id to show.  Rx failures propagate as RxAbort.
    """
    name = pt_name(token)
    if name is None:
        return token
    (viceid,) = await PT.NameToID(pt_conn, [name])
    if viceid == ANONYMOUSID:
        return token
    return dataclasses.replace(token, viceid=viceid)
