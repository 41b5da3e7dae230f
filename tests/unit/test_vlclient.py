from __future__ import annotations

import uuid

import pytest
import trio
from memrx import FakeConnection, FakeServerCall

from afsfuse.rx.errors import RX_CALL_DEAD, RxAbort
from afsfuse.rx.interfaces.vl import (
    BACKVOL,
    ROVOL,
    RWVOL,
    VL,
    VL_NOENT,
    VLF_BACKEXISTS,
    VLF_ROEXISTS,
    VLF_RWEXISTS,
    VLSF_DONTUSE,
    VLSF_NEWREPSITE,
    VLSF_ROVOL,
    VLSF_RWVOL,
    VLSF_UUID,
    nvldbentry,
    uvldbentry,
    vldbentry,
)
from afsfuse.rx.rpc import make_dispatcher
from afsfuse.vl.rank import Ranks
from afsfuse.vl.vlclient import VLClient

RW, RO, BK = 536870912, 536870913, 536870914
FS_UUID = uuid.UUID("7d1a3c58-1234-4d3e-9f00-0a0b0c0d0e0f")
OTHER_UUID = uuid.UUID("00000000-aaaa-4bbb-8ccc-000000000001")
IP_10_0_0_5 = 0x0A000005


def pad(values: tuple, n: int, fill: object = 0) -> tuple:
    return values + (fill,) * (n - len(values))


def u_entry(name: str = "root.cell") -> object:
    """RW on FS_UUID, RO on FS_UUID and on a plain-address server, plus a DONTUSE RO site."""
    numbers = (FS_UUID, FS_UUID, uuid.UUID(fields=(IP_10_0_0_5, 0, 0, 0, 0, 0)), OTHER_UUID)
    flags = (
        VLSF_RWVOL | VLSF_UUID,
        VLSF_ROVOL | VLSF_UUID,
        VLSF_ROVOL | VLSF_NEWREPSITE,
        VLSF_ROVOL | VLSF_UUID | VLSF_DONTUSE,
    )
    return uvldbentry(
        name=name,
        nServers=4,
        serverNumber=pad(numbers, 13, uuid.UUID(int=0)),
        serverUnique=pad((7, 7, 0, 9), 13),
        serverPartition=pad((0, 1, 0, 0), 13),
        serverFlags=pad(flags, 13),
        volumeId=(RW, RO, BK),
        flags=VLF_RWEXISTS | VLF_ROEXISTS | VLF_BACKEXISTS,
    )


class NewVL:
    def __init__(self) -> None:
        self.names: list[str] = []
        self.addr_queries = 0

    async def GetEntryByNameU(self, call: FakeServerCall, volumename: str) -> object:
        self.names.append(volumename)
        if volumename not in ("root.cell", str(RW), str(RO), str(BK)):
            raise RxAbort(VL_NOENT)
        return u_entry()

    async def GetAddrsU(self, call: FakeServerCall, inaddr: object) -> object:
        self.addr_queries += 1
        assert inaddr.Mask == 4
        if inaddr.uuid != FS_UUID:
            return VL.GetAddrsU.Result(inaddr.uuid, 0, 0, [])
        return VL.GetAddrsU.Result(FS_UUID, 7, 2, [0xC6120005, 0x0A000009])


class OldVL:
    """A VL server from before the N and U RPCs."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def _entry(self) -> object:
        return vldbentry(
            name="root.cell",
            nServers=2,
            serverNumber=pad((0xC6120005, IP_10_0_0_5), 8),
            serverPartition=pad((0, 0), 8),
            serverFlags=pad((VLSF_RWVOL, VLSF_ROVOL), 8),
            volumeId=(RW, RO, 0),
            flags=VLF_RWEXISTS | VLF_ROEXISTS,
        )

    async def GetEntryByNameO(self, call: FakeServerCall, volumename: str) -> object:
        self.calls.append(("NameO", volumename))
        return self._entry()

    async def GetEntryByID(self, call: FakeServerCall, Volid: int, voltype: int) -> object:
        self.calls.append(("ID", (Volid, voltype)))
        return self._entry()


class MiddleVL:
    """Knows the N RPCs but not the U ones."""

    async def GetEntryByNameN(self, call: FakeServerCall, volumename: str) -> object:
        return nvldbentry(
            name=volumename,
            nServers=1,
            serverNumber=pad((IP_10_0_0_5,), 13),
            serverPartition=pad((2,), 13),
            serverFlags=pad((VLSF_RWVOL,), 13),
            # The VLDB reserves RO and BK ids at creation; the flags say neither exists.
            volumeId=(RW, RW + 1, RW + 2),
            flags=VLF_RWEXISTS,
        )


def client(
    nursery: trio.Nursery, *impls: object, ranks: Ranks | None = None
) -> tuple[VLClient, list[tuple[str, int]]]:
    """A VLClient over one fake server per impl; also the list of addresses it connected to."""
    servers = [(f"192.0.2.{i + 1}", 7003) for i in range(len(impls))]
    by_addr = {addr: impl for addr, impl in zip(servers, impls, strict=True)}
    connected: list[tuple[str, int]] = []

    def connect(addr: tuple[str, int]) -> FakeConnection:
        connected.append(addr)
        impl = by_addr[addr]
        if isinstance(impl, RxAbort):
            code = impl.code

            async def failing(call: FakeServerCall) -> None:
                raise RxAbort(code)

            return FakeConnection(nursery, failing)
        return FakeConnection(nursery, make_dispatcher(VL, impl))

    return VLClient(servers, connect, ranks=ranks), connected


async def test_uuid_sites_resolve_and_split_by_type(nursery: trio.Nursery) -> None:
    server = NewVL()
    vl, _ = client(nursery, server)
    loc = await vl.locate("root.cell")
    assert loc.name == "root.cell"
    assert (loc.rw_id, loc.ro_id, loc.bk_id) == (RW, RO, BK)
    both = ("198.18.0.5", "10.0.0.9")
    assert [(s.addresses, s.partition, s.server_uuid) for s in loc.sites[RWVOL]] == [
        (both, 0, FS_UUID)
    ]
    assert [(s.addresses, s.partition) for s in loc.sites[ROVOL]] == [
        (both, 1),
        (("10.0.0.5",), 0),
    ]
    assert loc.sites[BACKVOL] == loc.sites[RWVOL]  # backups live with the RW
    assert loc.sites[ROVOL][1].server_uuid is None
    # One GetAddrsU for FS_UUID; the DONTUSE site's server is never asked about.
    assert server.addr_queries == 1
    await vl.locate("root.cell")
    assert server.addr_queries == 1  # same uniquifier: cached


async def test_numeric_id_goes_by_name_u_and_types_are_known(nursery: trio.Nursery) -> None:
    server = NewVL()
    vl, _ = client(nursery, server)
    loc = await vl.locate(RO)
    assert server.names == [str(RO)]
    assert loc.type_of(RO) == ROVOL
    assert loc.type_of(BK) == BACKVOL
    assert loc.type_of(12345) is None
    assert loc.sites_for(RO) == loc.sites[ROVOL]
    assert loc.sites_for(0) == ()
    await vl.locate(str(RW))  # a digit string is an id too
    assert server.names[-1] == str(RW)


async def test_old_server_falls_back_and_is_remembered(nursery: trio.Nursery) -> None:
    server = OldVL()
    vl, _ = client(nursery, server)
    loc = await vl.locate("root.cell")
    assert loc.sites[RWVOL][0].addresses == ("198.18.0.5",)
    assert loc.sites[ROVOL][0].addresses == ("10.0.0.5",)
    assert loc.sites[BACKVOL] == loc.sites[RWVOL]
    assert await vl.locate(RW) == loc
    assert server.calls == [("NameO", "root.cell"), ("ID", (RW, -1))]
    assert vl._generation[vl.servers[0]] == 2


async def test_n_generation(nursery: trio.Nursery) -> None:
    vl, _ = client(nursery, MiddleVL())
    loc = await vl.locate("test")
    assert loc.name == "test"
    assert [(s.addresses, s.partition) for s in loc.sites[RWVOL]] == [(("10.0.0.5",), 2)]
    assert loc.sites[ROVOL] == ()
    assert loc.volume_ids == (RW, 0, 0)  # reserved ids of volumes that do not exist


async def test_rotates_on_rx_and_ubik_errors_and_sticks(nursery: trio.Nursery) -> None:
    good = NewVL()
    vl, connected = client(nursery, RxAbort(RX_CALL_DEAD), RxAbort(5377), good)
    loc = await vl.locate("root.cell")
    assert loc.rw_id == RW
    assert connected == vl.servers
    await vl.locate("root.cell")
    assert good.names == ["root.cell", "root.cell"]  # the answering server is tried first


async def test_noent_is_final(nursery: trio.Nursery) -> None:
    second = NewVL()
    vl, connected = client(nursery, NewVL(), second)
    with pytest.raises(RxAbort) as info:
        await vl.locate("no.such.volume")
    assert info.value.code == VL_NOENT
    assert connected == vl.servers[:1]
    assert second.names == []


async def test_all_servers_down_raises_the_last_error(nursery: trio.Nursery) -> None:
    vl, _ = client(nursery, RxAbort(RX_CALL_DEAD), RxAbort(RX_CALL_DEAD))
    with pytest.raises(RxAbort) as info:
        await vl.locate("root.cell")
    assert info.value.code == RX_CALL_DEAD


async def test_bad_names_fail_locally(nursery: trio.Nursery) -> None:
    vl, connected = client(nursery, NewVL())
    for name in ("", "x" * 65):
        with pytest.raises(RxAbort):
            await vl.locate(name)
    assert connected == []


class FlakyVL(NewVL):
    """Fails at the Rx level while `down`."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True

    async def GetEntryByNameU(self, call: FakeServerCall, volumename: str) -> object:
        if self.down:
            raise RxAbort(RX_CALL_DEAD)
        return await super().GetEntryByNameU(call, volumename)

    async def ProbeServer(self, call: FakeServerCall) -> None:
        if self.down:
            raise RxAbort(RX_CALL_DEAD)


async def test_each_server_is_counted_and_its_fall_and_return_logged_once(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    flaky, good = FlakyVL(), NewVL()
    vl, _ = client(nursery, flaky, good)
    first, second = vl.servers
    await vl.locate("root.cell")
    assert vl.order() == [second, first]  # one that failed is asked last
    await vl.locate("root.cell")
    await vl.probe(first)  # fs/ranker.py asks it while it is not used
    down = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert len(down) == 1 and "192.0.2.1:7003" in down[0], down
    state = vl.states[first]
    assert (state.up, state.calls, state.failed) == (False, 1, 2)
    assert state.down_since is not None and "RX_CALL_DEAD" in state.last_error
    assert (vl.states[second].up, vl.states[second].calls) == (True, 2)
    flaky.down = False
    await vl.probe(first)
    assert vl.states[first].up and vl.states[first].down_since is None
    assert sum("answers again" in r.getMessage() for r in caplog.records) == 1
    assert vl.order() == [first, second]
    await vl.locate("root.cell")
    assert (vl.states[first].calls, flaky.names) == (2, ["root.cell"])


async def test_lookups_go_to_the_best_ranked_server_and_a_preference_wins(
    nursery: trio.Nursery,
) -> None:
    """Ranks shared with the fileservers' (vl/rank.py): the nearer by round trip is asked
    first, past the hysteresis the order turns, and a set preference wins over both."""
    near, far = NewVL(), NewVL()
    ranks = Ranks(lambda: [(0xC0000263, 0xFFFFFF00)])  # 192.0.2.99/24: both on our subnet
    vl, _ = client(nursery, far, near, ranks=ranks)
    far_addr, near_addr = vl.servers
    ranks.measured(far_addr, 0.030)
    ranks.measured(near_addr, 0.002)
    assert vl.order() == [near_addr, far_addr]
    await vl.locate("root.cell")
    assert (near.names, far.names) == (["root.cell"], [])
    ranks.measured(near_addr, 0.0021)  # noise: nothing moves
    assert ranks.rank(near_addr) == 20020
    ranks.measured(near_addr, 0.050)
    ranks.measured(far_addr, 0.003)
    assert vl.order() == [far_addr, near_addr]
    ranks.set_pref(near_addr, 100)
    assert vl.order() == [near_addr, far_addr]
    await vl.locate("root.cell")
    assert near.names == ["root.cell", "root.cell"] and far.names == []
