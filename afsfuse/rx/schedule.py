"""The seam between calls and their endpoint: what the endpoint must do on their behalf.

A call never touches the endpoint (RxCore) itself.  It is handed a Schedule, where it
queues datagrams (`outgoing`), asks to transmit or to send an ACK at the next flush (it
adds itself to `transmits` or `acks`), posts the event that wakes its task (`events`),
counts what it sent and saw (`stats`, for rxdebug) and says it is over (`finished`).
The endpoint, which owns the Schedule, adds the calls it starts to `live` and drains the
rest when the driver flushes (RxCore.datagrams_to_send, RxCore.pop_events).

The containers themselves, not methods wrapping them: on the per-packet path a wrapper's
extra call (or a bound method kept in an attribute, which CPython 3.11 does not
specialise as it does list.append and set.add) costs a measurable share of the time per
packet.  This module imports nothing of the call or the endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeAlias, TypeVar

from .peer import Address
from .stats import RxStats

#: A datagram to send: a DATA packet's is the buffer it was built in, never changed after.
Datagram: TypeAlias = bytes | bytearray


#: The call type: the schedule never looks into a call.
C = TypeVar("C")


@dataclass(slots=True, frozen=True)
class IncomingCall(Generic[C]):
    """A server call passed its security checks and wants a handler."""

    call: C


@dataclass(slots=True, frozen=True)
class CallChanged(Generic[C]):
    """Something a waiting task may care about: data, send space, completion or error."""

    call: C


Event: TypeAlias = IncomingCall[C] | CallChanged[C]


class Schedule(Generic[C]):
    """Outgoing datagrams, calls wanting to transmit or ack, live calls and their events."""

    __slots__ = ("acks", "events", "live", "outgoing", "stats", "transmits")

    def __init__(self) -> None:
        #: Calls whose timers count: started and not yet finished.
        self.live: set[C] = set()
        #: What the endpoint's driver must act on: calls to start or to wake.
        self.events: list[Event[C]] = []
        #: Datagrams for the next flush.
        self.outgoing: list[tuple[Datagram, Address]] = []
        #: Calls with packets the windows may let out: transmit() runs at the next flush.
        self.transmits: set[C] = set()
        #: Calls owing an ACK: flush_ack() runs at the next flush, before the transmits.
        self.acks: set[C] = set()
        #: The endpoint's counters (rx/stats.py).
        self.stats = RxStats()

    def finished(self, call: C) -> None:
        """The call is over: no more timers, nothing left to transmit."""
        self.live.discard(call)
        self.transmits.discard(call)
