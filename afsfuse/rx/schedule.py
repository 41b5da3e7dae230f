"""The seam between calls and their endpoint: what the endpoint must do on their behalf.

A call never touches the endpoint (RxCore) itself.  It is handed a Schedule and through it
queues datagrams, asks to transmit or to send an ACK at the next flush, and reports that
its task should wake.  The endpoint, which owns the Schedule, drains it when the driver
flushes (RxCore.datagrams_to_send, RxCore.pop_events).

Per packet, a call appends to `outgoing` and adds itself to `transmits` or `acks`: the
containers themselves, not methods wrapping them, because on this path a wrapper's extra
call (or a bound method kept in an attribute, which CPython 3.11 cannot specialise)
costs a measurable share of the time per packet.  That is all a call may do to them; the
rest goes through methods.  This module imports nothing of the call or the endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Protocol, TypeAlias, TypeVar

from .peer import Address

#: A datagram to send: a DATA packet's is the buffer it was built in, never changed after.
Datagram: TypeAlias = bytes | bytearray


class Schedulable(Protocol):
    """What the schedule needs of a call."""

    #: An event for this call waits in the schedule (at most one until taken).
    event_pending: bool


C = TypeVar("C", bound=Schedulable)


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

    __slots__ = ("acks", "events", "live", "outgoing", "transmits")

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

    def started(self, call: C) -> None:
        self.live.add(call)

    def finished(self, call: C) -> None:
        """The call is over: no more timers, nothing left to transmit."""
        self.live.discard(call)
        self.transmits.discard(call)

    def notify(self, call: C) -> None:
        """Wake the call's task; the caller checked `event_pending` (one event is enough)."""
        call.event_pending = True
        self.events.append(CallChanged(call))

    def incoming(self, call: C) -> None:
        """Hand a new server call to a handler (which starts after this: no CallChanged)."""
        call.event_pending = True
        self.events.append(IncomingCall(call))
