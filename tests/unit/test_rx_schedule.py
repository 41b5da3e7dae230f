"""The seam between calls and their endpoint, and the rx package's import graph."""

from __future__ import annotations

import ast
from pathlib import Path

from afsfuse.rx import packet as P
from afsfuse.rx.call import Call
from afsfuse.rx.connection import Connection
from afsfuse.rx.core import RxCore
from afsfuse.rx.peer import Peer
from afsfuse.rx.schedule import CallChanged, IncomingCall, Schedule
from afsfuse.rx.security import RXNULL

ADDR = ("10.0.0.1", 7000)


class FakeCall:
    """Records what the schedule asks of a call."""

    def __init__(self, log: list[str], name: str) -> None:
        self.event_pending = False
        self._log = log
        self._name = name

    def transmit(self, now: float) -> None:
        self._log.append(f"transmit {self._name} at {now}")

    def flush_ack(self, now: float) -> None:
        self._log.append(f"ack {self._name} at {now}")


def test_a_flush_sends_owed_acks_before_transmissions_and_each_call_once() -> None:
    log: list[str] = []
    schedule: Schedule[FakeCall] = Schedule()
    a, b = FakeCall(log, "a"), FakeCall(log, "b")
    schedule.send((b"first", ADDR))
    schedule.want_transmit(a)
    schedule.want_transmit(a)
    schedule.want_ack(b)
    assert schedule.flush(1.5) == [(b"first", ADDR)]
    assert log == ["ack b at 1.5", "transmit a at 1.5"]
    log.clear()
    assert schedule.flush(2.0) == [] and log == []


def test_wants_and_sends_after_a_flush_land_in_the_next_one() -> None:
    """The bound methods a flush replaces still reach the schedule afterwards."""
    log: list[str] = []
    schedule: Schedule[FakeCall] = Schedule()
    call = FakeCall(log, "c")
    schedule.flush(0.0)
    schedule.want_transmit(call)
    schedule.send((b"later", ADDR))
    assert schedule.flush(1.0) == [(b"later", ADDR)]
    assert log == ["transmit c at 1.0"]


def test_a_finished_call_is_no_longer_live_nor_transmitted() -> None:
    log: list[str] = []
    schedule: Schedule[FakeCall] = Schedule()
    call = FakeCall(log, "c")
    schedule.started(call)
    schedule.want_transmit(call)
    schedule.finished(call)
    assert not schedule.live
    schedule.flush(1.0)
    assert log == []


def test_events_come_out_in_order_and_clear_the_pending_mark() -> None:
    schedule: Schedule[FakeCall] = Schedule()
    served, changed = FakeCall([], "s"), FakeCall([], "c")
    schedule.incoming(served)
    schedule.notify(changed)
    assert served.event_pending and changed.event_pending
    assert schedule.take_events() == [IncomingCall(served), CallChanged(changed)]
    assert not served.event_pending and not changed.event_pending
    assert schedule.take_events() == []


def test_a_call_reaches_its_endpoint_only_through_the_schedule() -> None:
    """A call built on a bare connection and schedule (no RxCore) queues its DATA there."""
    schedule: Schedule[Call] = Schedule()
    conn: Connection[Call] = Connection(
        schedule, Peer(ADDR), 0x80000001, 4, 1, RXNULL.new_connection(0x80000001, 4), True
    )
    call = Call(conn, 0, 1, True, 0.0)
    conn.calls[0] = call
    call.write(b"request", 0.0)
    call.close_send(0.0)
    ((datagram, addr),) = schedule.flush(0.0)
    header = P.decode_header(datagram)
    assert addr == ADDR and header.type == P.DATA and datagram[P.HEADER_SIZE :] == b"request"
    assert header.flags & P.LAST_PACKET
    assert not hasattr(call, "core")


def test_the_sans_io_core_has_no_import_cycle() -> None:
    """Every import between rx modules, those made only for type checking included."""
    package = Path(RxCore.__module__.replace(".", "/")).parent
    root = Path(__file__).resolve().parents[2]
    graph: dict[str, set[str]] = {}
    for path in (root / package).glob("*.py"):
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1 and node.module:
                    imported.add(node.module.split(".")[0])
                elif node.level == 1:
                    imported.update(alias.name for alias in node.names)
                elif node.module and node.module.startswith("afsfuse.rx."):
                    imported.add(node.module.split(".")[2])
        graph[path.stem] = imported & {p.stem for p in (root / package).glob("*.py")}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for name in graph.get(start, ()):
            if name == goal or (name not in seen and reaches(name, goal, seen | {name})):
                return True
        return False

    cyclic = sorted(name for name in graph if reaches(name, name, set()))
    assert cyclic == []
    # The layering the issue asks for: calls and connections know nothing of the endpoint.
    for low in ("peer", "schedule", "connection", "call"):
        assert "core" not in graph[low] and "driver" not in graph[low]
    assert graph["schedule"] <= {"peer"}
