"""The renewal loop of `afsfuse-ctl aklog --renew`, with the ticket cache's states given:
a change is handed over (again at the next look when that failed), an unchanged cache is
left alone, an expired ticket is told once and not handed over, a destroyed cache ends the
loop."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest

from afsfuse.ctl import renew
from afsfuse.keyring import TicketCacheGone, TokenError


@pytest.fixture(autouse=True)
def unblock_signals() -> Iterator[None]:
    """watch() blocks SIGTERM, SIGINT and SIGHUP for good; pytest's process gets them back."""
    yield
    signal.pthread_sigmask(signal.SIG_UNBLOCK, renew.SIGNALS)


def test_changes_are_handed_over_and_a_failed_hand_over_is_tried_again(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    later, past = time.time() + 600, time.time() - 1
    fresh = ("alice@R", (("krbtgt/R@R", 1, 1, int(later)),))
    renewed = ("alice@R", (("krbtgt/R@R", 1, 2, int(later) + 1),))
    expired = ("alice@R", (("krbtgt/R@R", 1, 2, int(past)),))
    looks: list[object] = [
        fresh,  # at the start
        fresh, renewed, renewed, renewed, expired, expired, expired,
        TokenError("cannot read the ticket cache"), TicketCacheGone("gone"),
        TicketCacheGone("gone"),
    ]  # fmt: skip

    def ticket_state(ccache: str | None = None) -> object:
        look = looks.pop(0)
        if isinstance(look, Exception):
            raise look
        return look

    monkeypatch.setattr(renew, "ticket_state", ticket_state)
    monkeypatch.setattr(renew, "RECHECK", 0.01)
    outcomes = [False, True]  # the first hand-over fails (the daemon restarting)
    calls = []

    def hand_over() -> bool:
        calls.append(looks[0] if looks else None)
        return outcomes.pop(0)

    assert renew.watch(hand_over, interval=0.01) == 0
    assert looks == []
    # renewed: failed, then done at the next look; expired: nothing to hand over.
    assert len(calls) == 2
    err = capsys.readouterr().err
    assert err.count("the Kerberos ticket has expired") == 1  # told once, not at each look
    assert "cannot read the ticket cache; looking again in 0.01 s" in err
    assert "the Kerberos ticket cache is gone (kdestroy?)" in err
