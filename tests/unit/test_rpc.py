"""Client stubs against server dispatch, both made from the same declarations, joined by an
in-memory call pair (memrx)."""

from __future__ import annotations

import os
import struct
import uuid

import pytest
import trio
from memrx import FakeConnection, FakeServerCall

from afsfuse.rx import xdr
from afsfuse.rx.errors import (
    RXGEN_CC_MARSHAL,
    RXGEN_CC_UNMARSHAL,
    RXGEN_OPCODE,
    RXGEN_SS_MARSHAL,
    RXGEN_SS_UNMARSHAL,
    RxAbort,
)
from afsfuse.rx.interfaces.cb import CB
from afsfuse.rx.interfaces.fs import (
    FS,
    AFSCallBack,
    AFSFetchStatus,
    AFSFid,
    AFSStoreStatus,
    AFSVolSync,
)
from afsfuse.rx.interfaces.rmtsys import RMTSYS, clientcred
from afsfuse.rx.interfaces.vl import VL, VL_NOENT, uvldbentry
from afsfuse.rx.rpc import IN, OUT, FetchSplit, Interface, Rpc, StoreSplit, make_dispatcher

FID = AFSFid(536870915, 12, 345)
STATUS = AFSFetchStatus(InterfaceVersion=1, FileType=1, Length=3_000_000, DataVersion=7)
CALLBACK = AFSCallBack(1, 7200, 1)
SYNC = AFSVolSync(spare1=1_700_000_000)
BIG = os.urandom(3 * 1024 * 1024)


class FakeVolumeLocation:
    async def GetEntryByNameU(self, call: FakeServerCall, volumename: str) -> object:
        if volumename != "root.cell":
            raise RxAbort(VL_NOENT)
        return uvldbentry(
            name="root.cell",
            nServers=1,
            serverNumber=(uuid.UUID(int=0x1234),) + (uuid.UUID(int=0),) * 12,
            serverFlags=(0x14,) + (0,) * 12,
            volumeId=(536870912, 536870913, 0),
            flags=0x3000,
        )


class FakeFileServer:
    def __init__(self) -> None:
        self.stored = b""
        self.store_args: dict = {}

    async def FetchStatus(self, call: FakeServerCall, Fid: object) -> object:
        assert Fid == FID
        return FS.FetchStatus.Result(STATUS, CALLBACK, SYNC)

    async def GetTime(self, call: FakeServerCall) -> tuple[int, int]:
        return (1_700_000_000, 250_000)

    async def GiveUpAllCallBacks(self, call: FakeServerCall) -> None:
        return None

    async def FetchData64(self, call: FakeServerCall, stream, Fid, Pos, Length) -> object:
        data = BIG[Pos : Pos + Length]
        await stream.start(len(data))
        for at in range(0, len(data), 100_000):
            await stream.send(data[at : at + 100_000])
        return FS.FetchData64.Result(STATUS, CALLBACK, SYNC)

    async def StoreData64(self, call: FakeServerCall, stream, **args) -> object:
        self.store_args = args
        buf = bytearray(args["Length"])
        view = memoryview(buf)
        got = 0
        while n := await stream.recv_into(view[got : got + 65536]):
            got += n
        self.stored = bytes(buf[:got])
        return FS.StoreData64.Result(STATUS._replace(Length=got), SYNC)

    async def GetRootVolume(self, call: FakeServerCall) -> object:
        return 12345  # not a string: the reply cannot be marshalled


class FakeRmtsys:
    async def Pioctl(self, call, cred, path, cmd, follow, InData, OutData) -> object:
        self.seen = (cred, path, cmd, follow, InData, len(OutData))
        return RMTSYS.Pioctl.Result(OutData=b"cell.example\x00", errornumber=0)


def serve(nursery: trio.Nursery, interface: Interface, impl: object) -> FakeConnection:
    return FakeConnection(nursery, make_dispatcher(interface, impl))


def vl_conn(nursery: trio.Nursery) -> FakeConnection:
    return serve(nursery, VL, FakeVolumeLocation())


async def test_single_out_returns_that_value(nursery: trio.Nursery) -> None:
    entry = await VL.GetEntryByNameU(vl_conn(nursery), "root.cell")
    assert entry.name == "root.cell"
    assert entry.volumeId == (536870912, 536870913, 0)
    assert entry.serverNumber[0] == uuid.UUID(int=0x1234)


async def test_server_abort_reaches_client_with_its_name(nursery: trio.Nursery) -> None:
    with pytest.raises(RxAbort) as info:
        await VL.GetEntryByNameU(vl_conn(nursery), "no.such.volume")
    assert info.value.code == VL_NOENT
    assert "VL_NOENT" in str(info.value)


async def test_several_outs_return_a_result_and_none_returns_none(nursery: trio.Nursery) -> None:
    conn = serve(nursery, FS, FakeFileServer())
    result = await FS.FetchStatus(conn, FID)
    assert result == (STATUS, CALLBACK, SYNC)
    assert result.CallBack.ExpirationTime == 7200
    assert await FS.GetTime(conn) == (1_700_000_000, 250_000)
    assert await FS.GiveUpAllCallBacks(conn) is None


def test_request_bytes_are_opcode_then_args() -> None:
    assert VL.GetEntryByNameU.encode_request("root.cell") == (
        struct.pack(">II", 527, 9) + b"root.cell\x00\x00\x00"
    )
    wire = FS.FetchData64.encode_request(FID, 1 << 33, 65536)
    assert wire == struct.pack(">I3Iqq", 65537, *FID, 1 << 33, 65536)


async def test_inout_is_marshalled_both_ways(nursery: trio.Nursery) -> None:
    impl = FakeRmtsys()
    conn = serve(nursery, RMTSYS, impl)
    cred = clientcred(1000, 0, 0)
    request = RMTSYS.Pioctl.encode_request(cred, "/afs", 0x401856_1E, 1, b"", bytes(16384))
    assert len(request) == 4 + 12 + (4 + 4) + 4 + 4 + 4 + (4 + 16384)
    result = await RMTSYS.Pioctl(conn, cred, "/afs", 0x4018561E, 1, b"", bytes(16384))
    assert impl.seen == (cred, "/afs", 0x4018561E, 1, b"", 16384)
    assert result.OutData == b"cell.example\x00"
    assert result.errornumber == 0


async def test_fetch_data64_streams_a_3_mb_body_then_out_args(nursery: trio.Nursery) -> None:
    conn = serve(nursery, FS, FakeFileServer())
    buf = bytearray(len(BIG))
    view = memoryview(buf)
    got = 0
    async with FS.FetchData64.stream(conn, FID, 0, len(BIG)) as fetch:
        assert fetch.length == len(BIG)
        while n := await fetch.recv_into(view[got : got + 70_000]):
            got += n
    assert got == len(BIG)
    assert buf == BIG
    assert fetch.result == (STATUS, CALLBACK, SYNC)


async def test_fetch_plain_call_and_unread_data_is_skipped(nursery: trio.Nursery) -> None:
    conn = serve(nursery, FS, FakeFileServer())
    data, result = await FS.FetchData64(conn, FID, 1000, 5000)
    assert data == BIG[1000:6000]
    assert result.OutStatus == STATUS
    async with FS.FetchData64.stream(conn, FID, 0, 300_000) as fetch:
        assert await fetch.read(10) == BIG[:10]
    assert fetch.result.Sync == SYNC


async def test_store_data64_streams_the_callers_bytes(nursery: trio.Nursery) -> None:
    impl = FakeFileServer()
    conn = serve(nursery, FS, impl)
    store_status = AFSStoreStatus(Mask=1, ClientModTime=1_700_000_000)
    async with FS.StoreData64.stream(conn, FID, store_status, 0, len(BIG), len(BIG)) as store:
        for at in range(0, len(BIG), 1 << 20):
            await store.send(memoryview(BIG)[at : at + (1 << 20)])
    assert impl.stored == BIG
    assert impl.store_args["InStatus"] == store_status
    assert store.result.OutStatus.Length == len(BIG)
    result = await FS.StoreData64(conn, FID, store_status, 4096, 3, 4099, data=b"abc")
    assert impl.stored == b"abc"
    assert impl.store_args["Pos"] == 4096
    assert result.Sync == SYNC


async def test_store_with_the_wrong_amount_of_data_fails_locally(nursery: trio.Nursery) -> None:
    conn = serve(nursery, FS, FakeFileServer())
    with pytest.raises(RxAbort) as info:
        await FS.StoreData64(conn, FID, AFSStoreStatus(), 0, 10, 10, data=b"short")
    assert info.value.code == RXGEN_CC_MARSHAL
    with pytest.raises(RxAbort) as info:
        await FS.StoreData64(conn, FID, AFSStoreStatus(), 0, 2, 2, data=b"too long")
    assert info.value.code == RXGEN_CC_MARSHAL


async def test_unknown_opcode_and_unimplemented_rpc_answer_rxgen_opcode(
    nursery: trio.Nursery,
) -> None:
    conn = serve(nursery, FS, FakeFileServer())
    with pytest.raises(RxAbort) as info:
        await conn.rpc(struct.pack(">I", 99999))
    assert info.value.code == RXGEN_OPCODE
    with pytest.raises(RxAbort) as info:
        await FS.FetchACL(conn, FID)  # declared, but FakeFileServer lacks it
    assert info.value.code == RXGEN_OPCODE


async def test_truncated_reply_is_cc_unmarshal(nursery: trio.Nursery) -> None:
    full = xdr.encode(FS.FetchStatus.Result, (STATUS, CALLBACK, SYNC))

    async def short_reply(call: FakeServerCall) -> None:
        await call.recv_rest()
        await call.send(full[:-4])

    with pytest.raises(RxAbort) as info:
        await FS.FetchStatus(FakeConnection(nursery, short_reply), FID)
    assert info.value.code == RXGEN_CC_UNMARSHAL
    assert "FS.FetchStatus" in str(info.value)


async def test_truncated_or_oversized_fetch_is_cc_unmarshal(nursery: trio.Nursery) -> None:
    async def fetch_reply(length: int, body: bytes) -> FakeConnection:
        async def handler(call: FakeServerCall) -> None:
            await call.recv_rest()
            await call.send(struct.pack(">q", length) + body)

        return FakeConnection(nursery, handler)

    with pytest.raises(RxAbort) as info:
        await FS.FetchData64(await fetch_reply(100, b"x" * 50), FID, 0, 100)
    assert info.value.code == RXGEN_CC_UNMARSHAL
    with pytest.raises(RxAbort) as info:
        await FS.FetchData64(await fetch_reply(200, b"x" * 200), FID, 0, 100)
    assert info.value.code == RXGEN_CC_UNMARSHAL
    with pytest.raises(RxAbort) as info:  # the data is complete, the OUT args are not
        await FS.FetchData64(await fetch_reply(4, b"abcd" + b"\x00" * 8), FID, 0, 4)
    assert info.value.code == RXGEN_CC_UNMARSHAL


async def test_bad_request_is_ss_unmarshal(nursery: trio.Nursery) -> None:
    conn = vl_conn(nursery)
    with pytest.raises(RxAbort) as info:  # a 66-byte name: over VL_MAXNAMELEN
        await conn.rpc(struct.pack(">II", 527, 66) + b"v" * 66 + b"\x00\x00")
    assert info.value.code == RXGEN_SS_UNMARSHAL
    with pytest.raises(RxAbort) as info:
        await conn.rpc(b"\x00\x00")
    assert info.value.code == RXGEN_SS_UNMARSHAL


async def test_unmarshallable_result_is_ss_marshal(nursery: trio.Nursery) -> None:
    conn = serve(nursery, FS, FakeFileServer())
    with pytest.raises(RxAbort) as info:
        await FS.GetRootVolume(conn)
    assert info.value.code == RXGEN_SS_MARSHAL


async def test_bad_argument_is_cc_marshal(nursery: trio.Nursery) -> None:
    with pytest.raises(RxAbort) as info:
        await VL.GetEntryByNameU(vl_conn(nursery), "v" * 66)
    assert info.value.code == RXGEN_CC_MARSHAL
    with pytest.raises(TypeError):
        await VL.GetEntryByNameU(vl_conn(nursery))


async def test_cb_uuid_probe_and_no_out_rpcs(nursery: trio.Nursery) -> None:
    mine = uuid.uuid4()

    class CacheManager:
        async def ProbeUuid(self, call: FakeServerCall, clientUuid: uuid.UUID) -> None:
            if clientUuid != mine:
                raise RxAbort(1)

        async def TellMeAboutYourself(self, call: FakeServerCall) -> object:
            return CB.TellMeAboutYourself.Result(
                addr=CB.TellMeAboutYourself.Result._field_defaults["addr"]._replace(uuid=mine),
                capabilities=(1,),
            )

    conn = serve(nursery, CB, CacheManager())
    assert await CB.ProbeUuid(conn, mine) is None
    with pytest.raises(RxAbort) as info:
        await CB.ProbeUuid(conn, uuid.uuid4())
    assert info.value.code == 1
    about = await CB.TellMeAboutYourself(conn)
    assert about.addr.uuid == mine
    assert about.capabilities == (1,)


def test_declarations_are_checked() -> None:
    with pytest.raises(ValueError):
        Rpc("Bad", 1, IN(data=xdr.int32))
    with pytest.raises(ValueError):
        Rpc("Bad", 1, IN(name=xdr.string()), OUT(), split=StoreSplit("name"))
    with pytest.raises(ValueError):
        Rpc("Bad", 1, IN(n=xdr.int32), split=FetchSplit(xdr.int32, "Length"))
    with pytest.raises(AttributeError):
        _ = VL.GetEntryByNameZ
    assert VL.GetEntryByName is VL.GetEntryByNameO


async def test_over_the_real_transport_on_loopback() -> None:
    """The same stubs and dispatcher over afsfuse.rx.driver on 127.0.0.1."""
    from afsfuse.rx.driver import open_endpoint

    impl = FakeFileServer()
    with trio.fail_after(30):
        async with open_endpoint("127.0.0.1") as server, open_endpoint("127.0.0.1") as client:
            server.serve(FS.service_id, make_dispatcher(FS, impl))
            server.serve(VL.service_id, make_dispatcher(VL, FakeVolumeLocation()))
            vl = client.connect(("127.0.0.1", server.port), VL.service_id)
            fs = client.connect(("127.0.0.1", server.port), FS.service_id)
            assert (await VL.GetEntryByNameU(vl, "root.cell")).name == "root.cell"
            with pytest.raises(RxAbort) as info:
                await VL.GetEntryByNameU(vl, "no.such.volume")
            assert info.value.code == VL_NOENT
            with pytest.raises(RxAbort) as info:
                await FS.FetchACL(fs, FID)
            assert info.value.code == RXGEN_OPCODE
            data, result = await FS.FetchData64(fs, FID, 0, len(BIG))
            assert data == BIG
            assert result.OutStatus == STATUS
            await FS.StoreData64(fs, FID, AFSStoreStatus(), 0, 100_000, 100_000, data=BIG[:100_000])
            assert impl.stored == BIG[:100_000]
