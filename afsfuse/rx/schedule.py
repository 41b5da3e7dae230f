"""The seam between calls and their endpoint: what the endpoint must do on their behalf.

A call never touches the endpoint (RxCore) itself.  It is handed a Schedule and through it
queues datagrams, asks to transmit or to send an ACK at the next flush, and reports that
its task should wake.  The endpoint drains the Schedule when the driver flushes.

`send`, `want_transmit` and `want_ack` are bound methods of the underlying list and sets,
rebound when a flush takes them: calling one costs what appending to the list did, with no
extra Python call per packet.  This module imports nothing of the call or the endpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeAlias, TypeVar

from .peer import Address

#: A datagram to send: a DATA packet's is the buffer it was built in, never changed after.
Datagram: TypeAlias = bytes | bytearray


class Schedulable(Protocol):
    """What the schedule needs of a call."""

    #: An event for this call waits in the schedule (at most one until taken).
    event_pending: bool

    def transmit(self, now: float) -> None: ...

    def flush_ack(self, now: float) -> None: ...


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

    __slots__ = (
        "_acks",
        "_events",
        "_out",
        "_transmits",
        "live",
        "send",
        "want_ack",
        "want_transmit",
    )

    def __init__(self) -> None:
        #: Calls whose timers count: started and not yet finished.
        self.live: set[C] = set()
        self._events: list[Event[C]] = []
        self._out: list[tuple[Datagram, Address]] = []
        self._transmits: set[C] = set()
        self._acks: set[C] = set()
        #: Queue a datagram for the next flush.
        self.send: Callable[[tuple[Datagram, Address]], None] = self._out.append
        #: The call has packets the windows may let out: transmit() runs at the next flush.
        self.want_transmit: Callable[[C], None] = self._transmits.add
        #: The call has an ACK owed: flush_ack() runs at the next flush, before transmits.
        self.want_ack: Callable[[C], None] = self._acks.add

    def started(self, call: C) -> None:
        self.live.add(call)

    def finished(self, call: C) -> None:
        """The call is over: no more timers, nothing left to transmit."""
        self.live.discard(call)
        self._transmits.discard(call)

    def notify(self, call: C) -> None:
        """Wake the call's task; the caller checked `event_pending` (one event is enough)."""
        call.event_pending = True
        self._events.append(CallChanged(call))

    def incoming(self, call: C) -> None:
        """Hand a new server call to a handler (which starts after this: no CallChanged)."""
        call.event_pending = True
        self._events.append(IncomingCall(call))

    def take_events(self) -> list[Event[C]]:
        events = self._events
        self._events = []
        for event in events:
            event.call.event_pending = False
        return events

    def flush(self, now: float) -> list[tuple[Datagram, Address]]:
        """Run the owed ACKs, then the transmissions, and take every datagram queued."""
        if self._acks:
            calls = self._acks
            self._acks = set()
            self.want_ack = self._acks.add
            for call in calls:
                call.flush_ack(now)
        if self._transmits:
            calls = self._transmits
            self._transmits = set()
            self.want_transmit = self._transmits.add
            for call in calls:
                call.transmit(now)
        out = self._out
        self._out = []
        self.send = self._out.append
        return out
