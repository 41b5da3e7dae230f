"""`afsfuse-ctl aklog --renew`: hand over fresh tokens whenever the Kerberos ticket changes,
so that a long job outlives its first token.

A token lasts no longer than the ticket it was made from, and renewing the ticket (kinit -R,
or krenew, or a new kinit) does nothing to tokens already handed over.  This stays with the
user, in the foreground, and looks at the ticket cache every `interval` seconds: when its
ticket-granting tickets differ from the ones last used, each cell's token is made again
from the cache and handed to the daemon.  Polling, not inotify, since KEYRING and KCM caches
have no file to watch; a poll is one read of the cache.

The waits are sigtimedwait on SIGTERM, SIGINT and SIGHUP (blocked meanwhile): a signal ends
the loop at once and cleanly, and nothing spins.  When the ticket cache is destroyed
(kdestroy) it says so and ends: there is nothing left to renew from, and a later kinit is a
new login that runs its own aklog.  A hand-over that failed (the daemon restarting, the KDC
away) is tried again at the next look.  Token bytes are never printed.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable

from afsfuse.keyring import TicketCacheGone, TicketState, TokenError, ticket_state

#: Seconds between looks at the ticket cache.
DEFAULT_INTERVAL = 60.0
#: A cache seen missing is looked at once more this much later before it counts as
#: destroyed (kinit may replace a cache file while we look).
RECHECK = 1.0
SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def watch(
    hand_over: Callable[[], bool],
    *,
    interval: float = DEFAULT_INTERVAL,
    ccache: str | None = None,
    prog: str = "afsfuse-ctl",
) -> int:
    """Run until a signal or the end of the ticket cache; hand_over() makes and hands over
    every cell's token, saying what failed, and answers whether all of it was done."""
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    print(f"{prog}: aklog: renewing: the ticket cache is looked at every {interval:g} s",
          flush=True)  # fmt: skip
    try:
        last: TicketState | None = ticket_state(ccache)
    except TokenError:
        last = None  # the tokens were just made from it: any state is news
    told_expired = False
    while signal.sigtimedwait(SIGNALS, interval) is None:
        try:
            now = _state(ccache)
        except TicketCacheGone:
            print(
                f"{prog}: aklog: the Kerberos ticket cache is gone (kdestroy?): no more "
                "renewals; tokens already handed over last until they expire",
                file=sys.stderr,
            )
            return 0
        except TokenError as error:
            print(f"{prog}: aklog: {error}; looking again in {interval:g} s", file=sys.stderr)
            continue
        if now is None:
            return 0  # a signal came while looking again
        ends = [end for _server, _auth, _start, end in now[1]]
        if ends and max(ends) <= time.time():
            # Nothing to make tokens from until a kinit: said once, not at every look.
            if not told_expired:
                print(
                    f"{prog}: aklog: the Kerberos ticket has expired; tokens follow once it "
                    "is renewed (kinit -R) or replaced (kinit)",
                    file=sys.stderr,
                )
            told_expired = True
            continue
        told_expired = False
        if now != last and hand_over():
            last = now
    return 0


def _state(ccache: str | None) -> TicketState | None:
    """The cache's state; a missing cache is looked at once more before it counts as gone.
    None: a signal came meanwhile."""
    try:
        return ticket_state(ccache)
    except TicketCacheGone:
        if signal.sigtimedwait(SIGNALS, RECHECK) is not None:
            return None
        return ticket_state(ccache)
