"""The seam between calls and their endpoint, and the rx package's import graph."""

from __future__ import annotations

import ast
import random
from pathlib import Path

from afsfuse.rx import packet as P
from afsfuse.rx.call import Call
from afsfuse.rx.connection import Connection
from afsfuse.rx.core import RxCore
from afsfuse.rx.peer import Peer
from afsfuse.rx.schedule import CallChanged, Schedule
from afsfuse.rx.security import RXNULL

ADDR = ("10.0.0.1", 7000)


def test_a_finished_call_is_no_longer_live_nor_transmitted() -> None:
    schedule: Schedule[str] = Schedule()
    schedule.live.add("call")
    schedule.transmits.add("call")
    schedule.finished("call")
    assert not schedule.live and not schedule.transmits


def client_call(core: RxCore) -> Call:
    conn = core.connect(ADDR, 1, RXNULL)
    call = core.new_call(conn, 0.0)
    assert call is not None
    return call


def test_the_endpoint_sends_owed_acks_before_transmissions_and_empties_the_schedule() -> None:
    core = RxCore(rng=random.Random(1))
    call = client_call(core)
    call.conn.peer.rtt_sample(0.001, 0.0)  # measured just now: the request brings no ping
    call.write(b"request", 0.0)
    call.close_send(0.0)
    assert core.schedule.transmits == {call}
    call.ack_reason = P.ACK_IDLE  # as on_data leaves it, owing the peer an ACK
    core.schedule.acks.add(call)
    order = [P.decode_header(d).type for d, _ in core.datagrams_to_send(0.0)]
    assert order == [P.ACK, P.DATA]
    schedule = core.schedule
    assert not schedule.acks and not schedule.transmits and not schedule.outgoing
    assert core.packets_sent == 2 and core.datagrams_to_send(0.1) == []


def test_a_call_posts_one_event_until_the_endpoint_pops_it() -> None:
    core = RxCore(rng=random.Random(1))
    call = client_call(core)
    call.abort(1, 0.0)
    assert call.event_pending and core.schedule.events == [CallChanged(call)]
    assert core.pop_events() == [CallChanged(call)]
    assert not call.event_pending and core.pop_events() == []


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
    assert schedule.transmits == {call}
    call.transmit(0.0)
    (datagram, addr), (ping, _) = schedule.outgoing  # a peer never measured: a ping follows
    header = P.decode_header(datagram)
    assert addr == ADDR and header.type == P.DATA and datagram[P.HEADER_SIZE :] == b"request"
    assert header.flags & P.LAST_PACKET
    assert P.decode_ack(ping[P.HEADER_SIZE :]).reason == P.ACK_PING
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
    assert graph["schedule"] <= {"peer", "stats"}
