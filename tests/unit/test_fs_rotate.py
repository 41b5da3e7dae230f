"""Rotation over a volume's sites, with scripted servers and no network."""

from __future__ import annotations

import errno
import logging

import pytest
import trio

from afsfuse.fs import deadline
from afsfuse.fs.errors import FsError
from afsfuse.fs.ranker import Ranker
from afsfuse.fs.rotate import RotationConfig, Rotator
from afsfuse.fs.server import FileServer, ServerConfig, ServerTable
from afsfuse.fs.stats import Stats
from afsfuse.fs.volume import VolumeCache
from afsfuse.rx.errors import RX_CALL_DEAD, RX_CALL_TIMEOUT, RxAbort, RxTimeout
from afsfuse.rx.interfaces import fs as fsint
from afsfuse.rx.interfaces.vl import VL_NOENT, VLSF_ROVOL, VLSF_RWVOL
from afsfuse.vl.rank import Ranks
from afsfuse.vl.vlclient import VolumeLocation, VolumeSite

RW, RO = 100, 101


def location(*ro_servers: str, rw_server: str = "10.0.0.9") -> VolumeLocation:
    ro = tuple(VolumeSite((addr,), 0, VLSF_ROVOL) for addr in ro_servers)
    rw = (VolumeSite((rw_server,), 0, VLSF_RWVOL),)
    return VolumeLocation("vol", (RW, RO, 0), 0, (rw, ro, rw))


class FakeConnection:
    def __init__(self, server: FileServer, table: FakeServers) -> None:
        self.server = server
        self.table = table

    @property
    def last_heard(self) -> float:
        return self.table.heard.get(self.server.addr, float("-inf"))


class FakeServers(ServerTable):
    """Connections know only when their server was last heard from (`heard`); probes
    answer from `alive`, at most one per probe_min_gap as the real ones."""

    def __init__(self, alive: set[str]) -> None:
        super().__init__(endpoint=None, config=ServerConfig())  # type: ignore[arg-type]
        self.alive = alive
        self.discarded: list[str] = []
        self.heard: dict[str, float] = {}

    def connection(self, server: FileServer, token):  # type: ignore[override]
        return FakeConnection(server, self)

    def discard(self, server: FileServer, conn) -> None:  # type: ignore[override]
        self.discarded.append(server.addr)

    async def probe(self, server: FileServer) -> bool:
        if trio.current_time() - server.last_probe < self.config.probe_min_gap:
            return server.up
        server.last_probe = trio.current_time()
        server.probes += 1
        if server.addr in self.alive:
            self.mark_up(server)
            return True
        self.mark_down(server, "probe failed")
        return False


def rotator(locations: list[VolumeLocation], alive: set[str], **config) -> tuple[Rotator, list]:
    looked_up: list = []

    async def locate(cell, volume):
        looked_up.append(volume)
        entry = locations[min(len(looked_up), len(locations)) - 1]
        if entry is None:
            raise RxAbort(VL_NOENT)
        return entry

    servers = FakeServers(alive)
    cfg = RotationConfig(**{"timeout": 30.0, "busy_wait": 1.0, **config})
    return Rotator(servers, VolumeCache(locate), cfg, Stats()), looked_up


def scripted(outcomes: dict[str, list]):
    """An operation whose outcome per server address is taken from a list, in order."""
    calls: list[str] = []

    async def op(conn: FakeConnection, server: FileServer):
        calls.append(server.addr)
        outcome = outcomes[server.addr].pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return op, calls


async def test_first_site_answers() -> None:
    r, _ = rotator([location("10.0.0.1", "10.0.0.2")], set())
    op, calls = scripted({"10.0.0.1": ["ok"]})
    assert await r.call("c", RO, None, "FS.X", op) == "ok"
    assert calls == ["10.0.0.1"]
    assert r.stats.rpcs["FS.X"] == 1


async def test_rw_volume_uses_rw_site() -> None:
    r, _ = rotator([location("10.0.0.1")], set())
    op, calls = scripted({"10.0.0.9": ["rw"]})
    assert await r.call("c", RW, None, "FS.X", op) == "rw"
    assert calls == ["10.0.0.9"]


async def test_dead_server_is_marked_down_and_skipped(autojump_clock) -> None:
    r, _ = rotator([location("10.0.0.1", "10.0.0.2")], {"10.0.0.2"})
    op, calls = scripted({"10.0.0.1": [RxTimeout(RX_CALL_DEAD)], "10.0.0.2": ["a", "b"]})
    assert await r.call("c", RO, None, "FS.X", op) == "a"
    assert not r.servers.get("10.0.0.1").up
    # Next call goes straight to the live server.
    assert await r.call("c", RO, None, "FS.X", op) == "b"
    assert calls == ["10.0.0.1", "10.0.0.2", "10.0.0.2"]
    assert r.stats.failovers == 1


async def test_call_timeout_skips_server_without_marking_it_down() -> None:
    r, _ = rotator([location("10.0.0.1", "10.0.0.2")], set())
    op, _ = scripted({"10.0.0.1": [RxTimeout(RX_CALL_TIMEOUT)], "10.0.0.2": ["ok"]})
    assert await r.call("c", RO, None, "FS.X", op) == "ok"
    assert r.servers.get("10.0.0.1").up
    assert r.servers.discarded == ["10.0.0.1"]


async def test_all_down_is_etimedout_within_the_bound(autojump_clock) -> None:
    r, _ = rotator([location("10.0.0.1", "10.0.0.2")], set(), timeout=20.0)
    dead = [RxTimeout(RX_CALL_DEAD)]
    op, _ = scripted({"10.0.0.1": list(dead), "10.0.0.2": list(dead)})
    with pytest.raises(FsError) as caught:
        await r.call("c", RO, None, "FS.X", op)
    assert caught.value.errno == errno.ETIMEDOUT
    # Both are down now: the next call probes them once each and fails fast.
    start = trio.current_time()
    with pytest.raises(FsError) as caught:
        await r.call("c", RO, None, "FS.X", op)
    assert caught.value.errno == errno.ETIMEDOUT
    assert trio.current_time() - start < 1
    assert [r.servers.get(a).probes for a in ("10.0.0.1", "10.0.0.2")] == [1, 1]


async def test_down_server_that_answers_a_probe_is_used_again() -> None:
    r, _ = rotator([location("10.0.0.1")], {"10.0.0.1"})
    r.servers.mark_down(r.servers.get("10.0.0.1"), "earlier failure")
    op, _ = scripted({"10.0.0.1": ["back"]})
    assert await r.call("c", RO, None, "FS.X", op) == "back"
    assert r.servers.get("10.0.0.1").up


async def test_a_rotation_that_hangs_is_cut_at_the_bound(autojump_clock) -> None:
    r, _ = rotator([location("10.0.0.1")], set(), timeout=7.0)

    async def hang(conn, server):
        await trio.sleep_forever()

    start = trio.current_time()
    with pytest.raises(FsError) as caught:
        await r.call("c", RO, None, "FS.X", hang)
    assert caught.value.errno == errno.ETIMEDOUT
    assert trio.current_time() - start == pytest.approx(7.0)


async def test_busy_waits_and_retries_the_same_server(autojump_clock) -> None:
    r, _ = rotator([location("10.0.0.1", "10.0.0.2")], set(), busy_wait=2.0)
    op, calls = scripted({"10.0.0.1": [RxAbort(fsint.VBUSY), RxAbort(fsint.VRESTARTING), "done"]})
    start = trio.current_time()
    assert await r.call("c", RO, None, "FS.X", op) == "done"
    assert calls == ["10.0.0.1"] * 3
    assert trio.current_time() - start == pytest.approx(4.0)
    assert r.stats.busy_waits == 2


async def test_busy_forever_is_ewouldblock(autojump_clock) -> None:
    r, _ = rotator([location("10.0.0.1")], set(), max_busy_waits=3)
    op, _ = scripted({"10.0.0.1": [RxAbort(fsint.VBUSY)] * 10})
    with pytest.raises(FsError) as caught:
        await r.call("c", RO, None, "FS.X", op)
    assert caught.value.errno == errno.EWOULDBLOCK


async def test_moved_volume_refreshes_location_and_moves_on() -> None:
    before = location("10.0.0.1")
    after = location("10.0.0.1", "10.0.0.3")
    r, looked_up = rotator([before, after], set())
    op, calls = scripted({"10.0.0.1": [RxAbort(fsint.VMOVED)], "10.0.0.3": ["moved"]})
    assert await r.call("c", RO, None, "FS.X", op) == "moved"
    assert calls == ["10.0.0.1", "10.0.0.3"]
    assert looked_up == [RO, RO]
    assert r.stats.vldb_refreshes == 1


async def test_a_move_is_logged_once_and_each_server_counts_its_calls(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    before = location("10.0.0.1")
    after = location("10.0.0.3")
    r, _ = rotator([before, after], set())
    op, _ = scripted({"10.0.0.1": [RxAbort(fsint.VMOVED)], "10.0.0.3": ["moved", "again"]})
    assert await r.call("c", RO, None, "FS.X", op) == "moved"
    assert await r.call("c", RO, None, "FS.X", op) == "again"
    moved = [rec.getMessage() for rec in caplog.records if "moved:" in rec.getMessage()]
    assert moved == [
        "volume vol (100) in cell c moved: it was on 10.0.0.9 /vicepa, 10.0.0.1 /vicepa, "
        "now on 10.0.0.9 /vicepa, 10.0.0.3 /vicepa"
    ]
    old, new = r.servers.find("10.0.0.1"), r.servers.find("10.0.0.3")
    assert old is not None and new is not None
    assert (old.calls, old.errors, new.calls, new.errors) == (1, 1, 2, 0)
    assert "FS.X" in old.last_error and new.last_error == ""


@pytest.mark.parametrize("code", [fsint.VNOVOL, fsint.VOFFLINE, fsint.VSALVAGE])
async def test_volume_gone_everywhere_is_enodev_after_bounded_rounds(
    code: int, autojump_clock
) -> None:
    r, looked_up = rotator([location("10.0.0.1", "10.0.0.2")], set(), max_missing_rounds=3)
    op, calls = scripted({"10.0.0.1": [RxAbort(code)] * 4, "10.0.0.2": [RxAbort(code)] * 4})
    started = trio.current_time()
    with pytest.raises(FsError) as caught:
        await r.call("c", RO, None, "FS.X", op)
    assert caught.value.errno == errno.ENODEV
    assert calls == ["10.0.0.1", "10.0.0.2"] * 4
    assert trio.current_time() - started == pytest.approx(3 * r.config.missing_wait)
    assert len(looked_up) == 1 + 1 + 3  # the first look, one refresh, one per round


@pytest.mark.parametrize("code", [fsint.VNOVOL, fsint.VOFFLINE])
async def test_volume_missing_for_a_moment_is_waited_for(code: int, autojump_clock) -> None:
    """Just after `vos create` or `vos release` (or a fileserver restart) the only site may
    answer VNOVOL or VOFFLINE for a moment: that is a pause and a fresh VLDB entry, not ENODEV."""
    r, _ = rotator([location("10.0.0.1")], set())
    op, calls = scripted({"10.0.0.1": [RxAbort(code), RxAbort(code), "attached"]})
    started = trio.current_time()
    assert await r.call("c", RO, None, "FS.X", op) == "attached"
    assert calls == ["10.0.0.1"] * 3
    assert trio.current_time() - started == pytest.approx(2 * r.config.missing_wait)
    assert r.stats.vldb_refreshes == 3


async def test_ordinary_errors_are_final() -> None:
    r, _ = rotator([location("10.0.0.1", "10.0.0.2")], set())
    op, calls = scripted({"10.0.0.1": [RxAbort(13)]})
    with pytest.raises(FsError) as caught:
        await r.call("c", RO, None, "FS.X", op)
    assert caught.value.errno == errno.EACCES
    assert calls == ["10.0.0.1"]


async def test_token_dead_gets_one_fresh_connection() -> None:
    r, _ = rotator([location("10.0.0.1")], set())
    op, calls = scripted({"10.0.0.1": [RxAbort(fsint.VICETOKENDEAD), RxAbort(fsint.VICETOKENDEAD)]})
    with pytest.raises(FsError) as caught:
        await r.call("c", RO, None, "FS.X", op)
    assert caught.value.errno == errno.EKEYEXPIRED
    assert calls == ["10.0.0.1", "10.0.0.1"]
    assert r.servers.discarded == ["10.0.0.1", "10.0.0.1"]


async def test_unknown_volume_is_enoent() -> None:
    r, _ = rotator([None], set())  # type: ignore[list-item]
    op, _ = scripted({})
    with pytest.raises(FsError) as caught:
        await r.call("c", RO, None, "FS.X", op)
    assert caught.value.errno == errno.ENOENT


# ----- one deadline per request -------------------------------------------------------------


async def hang(conn: FakeConnection, server: FileServer) -> None:
    await trio.sleep_forever()


async def test_a_request_waits_for_silent_servers_once_not_per_rotation(autojump_clock) -> None:
    r, _ = rotator([location("10.0.0.1")], set(), timeout=7.0)
    start = trio.current_time()
    with deadline.Request(7.0):
        for _ in range(3):
            with pytest.raises(FsError) as caught:
                await r.call("c", RO, None, "FS.X", hang)
            assert caught.value.errno == errno.ETIMEDOUT
    assert trio.current_time() - start == pytest.approx(7.0)


async def test_each_answer_gives_the_request_the_whole_timeout_again(autojump_clock) -> None:
    r, _ = rotator([location("10.0.0.1")], set(), timeout=7.0)

    async def slow(conn: FakeConnection, server: FileServer) -> str:
        await trio.sleep(5.0)
        return "slow"

    async def refused(conn: FakeConnection, server: FileServer) -> None:
        await trio.sleep(5.0)
        raise RxAbort(fsint.VNOVNODE)

    start = trio.current_time()
    with deadline.Request(7.0):
        assert await r.call("c", RO, None, "FS.X", slow) == "slow"
        with pytest.raises(FsError):
            await r.call("c", RO, None, "FS.X", refused)
        with pytest.raises(FsError):
            await r.call("c", RO, None, "FS.X", hang)
    assert trio.current_time() - start == pytest.approx(17.0)


async def test_waiting_for_another_tasks_fetch_counts_against_the_request(autojump_clock) -> None:
    r, _ = rotator([location("10.0.0.1")], set(), timeout=7.0)
    never = trio.Event()
    start = trio.current_time()
    with deadline.Request(7.0):
        with pytest.raises(FsError) as caught:
            await deadline.wait_for(never, 7.0, "read-ahead")
        assert caught.value.errno == errno.ETIMEDOUT
        with pytest.raises(FsError):
            await r.call("c", RO, None, "FS.X", hang)
    assert trio.current_time() - start == pytest.approx(7.0)
    # Outside a request, a wait gets the timeout from when it starts.
    with pytest.raises(FsError):
        await deadline.wait_for(never, 3.0, "read-ahead")
    assert trio.current_time() - start == pytest.approx(10.0)


async def test_tasks_started_by_a_request_have_deadlines_of_their_own(autojump_clock) -> None:
    r, _ = rotator([location("10.0.0.1")], set(), timeout=7.0)
    ended: list[float] = []
    start = trio.current_time()

    async def background() -> None:
        assert deadline.current() is None
        await trio.sleep(5.0)
        with pytest.raises(FsError):
            await r.call("c", RO, None, "FS.X", hang)
        ended.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        with deadline.Request(7.0):
            nursery.start_soon(background)
            await trio.sleep(1.0)
    assert ended == [pytest.approx(start + 12.0)]


# ----- a server silent for a whole wait is down ---------------------------------------------


async def test_a_silent_server_is_down_and_the_next_request_fails_at_once(autojump_clock) -> None:
    r, _ = rotator([location("10.0.0.1")], set(), timeout=7.0)
    with pytest.raises(FsError):
        await r.call("c", RO, None, "FS.X", hang)
    server = r.servers.get("10.0.0.1")
    assert not server.up and server.probes == 0
    start = trio.current_time()
    with deadline.Request(7.0), pytest.raises(FsError) as caught:
        await r.call("c", RO, None, "FS.X", hang)
    assert caught.value.errno == errno.ETIMEDOUT
    assert trio.current_time() == start
    # Once the probe gap has passed, the server is probed again.
    await trio.sleep(r.servers.config.probe_min_gap)
    r.servers.alive.add("10.0.0.1")
    op, _ = scripted({"10.0.0.1": ["back"]})
    assert await r.call("c", RO, None, "FS.X", op) == "back"
    assert server.up and server.probes == 1


async def test_a_server_heard_from_while_waiting_is_not_marked_down(autojump_clock) -> None:
    r, _ = rotator([location("10.0.0.1")], set(), timeout=7.0)

    async def pinged(conn: FakeConnection, server: FileServer) -> None:
        while True:  # a busy server answers our keepalive pings
            await trio.sleep(2.0)
            r.servers.heard[server.addr] = trio.current_time()

    with pytest.raises(FsError):
        await r.call("c", RO, None, "FS.X", pinged)
    assert r.servers.get("10.0.0.1").up


async def test_a_server_that_went_quiet_during_the_call_is_down(autojump_clock) -> None:
    r, _ = rotator([location("10.0.0.1")], set(), timeout=7.0)

    async def frozen_later(conn: FakeConnection, server: FileServer) -> None:
        await trio.sleep(1.0)
        r.servers.heard[server.addr] = trio.current_time()
        await trio.sleep_forever()

    with pytest.raises(FsError):
        await r.call("c", RO, None, "FS.X", frozen_later)
    assert not r.servers.get("10.0.0.1").up


async def test_a_wait_too_short_to_judge_marks_nothing(autojump_clock) -> None:
    r, _ = rotator([location("10.0.0.1")], set(), timeout=7.0)
    with deadline.Request(7.0):
        await trio.sleep(6.0)
        with pytest.raises(FsError):
            await r.call("c", RO, None, "FS.X", hang)
    assert r.servers.get("10.0.0.1").up


def ranked(r: Rotator, round_trips: dict[str, float]) -> Ranker:
    """A ranker over `r`'s servers whose Rx peers measured `round_trips` (changed in place);
    every server is on our subnet, so only the round trip tells them apart."""
    r.servers.ranks = Ranks(lambda: [(0x0A000063, 0xFFFFFF00)])  # 10.0.0.99/24

    def round_trip(addr: tuple[str, int]) -> tuple[float, float] | None:
        rtt = round_trips.get(addr[0])
        return None if rtt is None else (rtt, trio.current_time())

    async def probe(addr: tuple[str, int]) -> None:
        raise AssertionError("every server was heard from just now")

    return Ranker(r.servers.ranks, round_trip, probe, lambda: 30.0, 3.0)


async def test_the_nearer_ro_site_is_tried_first_and_the_order_turns_past_hysteresis() -> None:
    r, _ = rotator([location("10.0.0.1", "10.0.0.2")], set())
    round_trips = {"10.0.0.1": 0.040, "10.0.0.2": 0.004}
    ranker = ranked(r, round_trips)
    op, calls = scripted({"10.0.0.1": ["far"] * 3, "10.0.0.2": ["near"] * 3})
    assert await r.call("c", RO, None, "FS.X", op) == "far"  # nothing measured yet: VLDB order
    assert ranker.refresh() == 2
    assert await r.call("c", RO, None, "FS.X", op) == "near"
    # The far site comes nearer, but not past the hysteresis (a fifth of 4 ms is 0.8 ms).
    round_trips["10.0.0.1"] = 0.0045
    ranker.refresh()
    round_trips["10.0.0.2"] = 0.0047
    assert ranker.refresh() == 0
    assert await r.call("c", RO, None, "FS.X", op) == "near"
    # Past it: the sites swap.
    round_trips["10.0.0.2"] = 0.012
    assert ranker.refresh() == 1
    assert await r.call("c", RO, None, "FS.X", op) == "far"
    assert calls == ["10.0.0.1", "10.0.0.2", "10.0.0.2", "10.0.0.1"]
    assert [r.servers.rank(r.servers.get(a)) for a in ("10.0.0.1", "10.0.0.2")] == [20045, 20120]


async def test_a_set_preference_wins_over_round_trips() -> None:
    r, _ = rotator([location("10.0.0.1", "10.0.0.2")], set())
    ranker = ranked(r, {"10.0.0.1": 0.040, "10.0.0.2": 0.004})
    ranker.refresh()
    r.servers.set_rank("10.0.0.1", 20000)
    op, calls = scripted({"10.0.0.1": ["far", "far"]})
    assert await r.call("c", RO, None, "FS.X", op) == "far"
    ranker.refresh()  # no later round trip undoes it
    assert await r.call("c", RO, None, "FS.X", op) == "far"
    assert calls == ["10.0.0.1", "10.0.0.1"]
