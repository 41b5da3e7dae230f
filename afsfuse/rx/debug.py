"""rxdebug's side of the endpoint: its rate limit and the entries it lists.

OpenAFS lays out connections and peers in these replies; listings page by index and end
with the entry rxdebug stops at, so one request costs the same however many there are.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import TypeVar

from . import packet as P
from .call import Call, CallState
from .connection import Connection
from .peer import Peer

T = TypeVar("T")

#: rxdebug requests answered per second, and at once: rxdebug sends one per entry it lists.
DEBUG_RATE = 100.0
DEBUG_BURST = 600
#: Entries a listing shows at most, so that one request costs little however many there are.
DEBUG_MAX_ENTRIES = 256
#: Our call states as rxdebug names them: state, mode.
_DEBUG_CALL_STATES = {
    CallState.PRECALL: (P.RX_STATE_PRECALL, 0),
    CallState.HOLD: (P.RX_STATE_HOLD, P.RX_MODE_SENDING),
    CallState.DALLY: (P.RX_STATE_DALLY, P.RX_MODE_EOF),
    CallState.ERROR: (P.RX_STATE_DALLY, P.RX_MODE_ERROR),
}


class DebugAllowance:
    """A token bucket: rxdebug requests cost the same whoever sends them, and anyone may."""

    __slots__ = ("_allowance", "_at")

    def __init__(self) -> None:
        self._allowance = float(DEBUG_BURST)
        self._at = float("-inf")

    def take(self, now: float) -> bool:
        """Spend one request's worth; False when the rate is exceeded."""
        self._allowance = min(DEBUG_BURST, self._allowance + max(0.0, now - self._at) * DEBUG_RATE)
        self._at = now
        if self._allowance < 1:
            return False
        self._allowance -= 1
        return True


def nth(entries: Iterator[T], index: int) -> T | None:
    """Entry `index` of a listing, or None past its end (a negative index counts as 0, as
    in OpenAFS)."""
    return next(itertools.islice(entries, max(index, 0), None), None)


def first_entries(entries: Iterator[T]) -> Iterator[T]:
    """The entries a listing may show."""
    return itertools.islice(entries, DEBUG_MAX_ENTRIES)


def conn_entry(conn: Connection[Call]) -> P.DebugConn:
    numbers = conn.call_numbers
    states = bytearray(4)
    modes = bytearray(4)
    for channel, call in enumerate(conn.calls):
        if call is None:
            continue
        if call.state == CallState.ACTIVE:
            sending = conn.is_client and not call.tx_closed
            states[channel] = P.RX_STATE_ACTIVE
            modes[channel] = P.RX_MODE_SENDING if sending else P.RX_MODE_RECEIVING
        else:
            states[channel], modes[channel] = _DEBUG_CALL_STATES[call.state]
    return P.DebugConn(
        conn.peer.addr,
        conn.epoch,
        conn.cid,
        conn.serial,
        (numbers[0], numbers[1], numbers[2], numbers[3]),
        conn.error or 0,
        not conn.is_client,
        conn.security_index,
        bytes(states),
        bytes(modes),
        conn.peer.max_packet,
    )


def peer_entry(peer: Peer) -> P.DebugPeer:
    return P.DebugPeer(
        peer.addr,
        peer.srtt * 1000,
        peer.rttvar * 1000,
        peer.if_mtu,
        peer.max_packet,
        peer.data_sent + peer.resends,
        peer.resends,
        peer.bytes_sent,
        peer.bytes_received,
    )


def packets_held(calls: Iterable[Call]) -> int:
    """Packets the calls hold now: queued to send or resend, or received and not yet read.
    (rxdebug shows them as its packet total, none of them free: rx/stats.py.)"""
    return sum(len(c.tx) + len(c.rx_ready) + len(c.rx_ooo) for c in calls)
