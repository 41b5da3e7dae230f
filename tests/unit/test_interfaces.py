"""The declared AFS interfaces against afs-protocol-facts.md: sizes, field order, opcodes,
service ids and error names."""

from __future__ import annotations

import struct
import uuid

import pytest

from afsfuse.rx import xdr
from afsfuse.rx.errors import RxAbort, error_name
from afsfuse.rx.interfaces import cb, fs, pt, rmtsys, vl


@pytest.mark.parametrize(
    ("t", "size"),
    [
        (vl.vldbentry, 384),
        (vl.nvldbentry, 476),
        (vl.uvldbentry, 1048),
        (vl.ListAddrByAttributes, 60),
        (xdr.afsUUID, 44),
        (fs.AFSFid, 12),
        (fs.AFSCallBack, 12),
        (fs.AFSVolSync, 24),
        (fs.AFSFetchStatus, 21 * 4),
        (fs.AFSStoreStatus, 24),
        (fs.AFSFetchVolumeStatus, 12 * 4),
        (cb.interfaceAddr, 432),
        (pt.prname, 256),
        (rmtsys.clientcred, 12),
    ],
)
def test_fixed_sizes_match_the_facts(t: xdr.XdrType, size: int) -> None:
    assert xdr.codec(t).fixed_size == size
    assert len(xdr.encode(t, xdr.codec(t).default)) == size


def test_vldbentry_layout_byte_exact() -> None:
    entry = vl.vldbentry(
        name="root.cell",
        nServers=2,
        serverNumber=(0x0A000001, 0xC0A80102) + (0,) * 6,
        serverPartition=(0, 1) + (0,) * 6,
        serverFlags=(vl.VLSF_RWVOL, vl.VLSF_ROVOL) + (0,) * 6,
        volumeId=(536870912, 536870913, 536870914),
        flags=vl.VLF_RWEXISTS | vl.VLF_ROEXISTS,
    )
    wire = xdr.encode(vl.vldbentry, entry)
    words = struct.unpack(">96i", wire)
    assert words[:10] == (*b"root.cell", 0)
    assert words[65:68] == (0, 2, 0x0A000001)  # spares3, nServers, serverNumber[0]
    assert wire[272:276] == bytes([192, 168, 1, 2])  # IPv4 in natural octet order
    assert words[91:96] == (536870912, 536870913, 536870914, 0, 0x3000)
    assert xdr.decode(vl.vldbentry, wire) == entry


def test_uvldbentry_site_uuid_and_tail() -> None:
    site = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")
    entry = vl.uvldbentry(
        name="x",
        nServers=1,
        serverNumber=(site,) + (uuid.UUID(int=0),) * 12,
        serverUnique=(5,) + (0,) * 12,
        flags=0x1000,
    )
    wire = xdr.encode(vl.uvldbentry, entry)
    assert wire[260:264] == b"\x00\x00\x00\x01"  # nServers right after 65 char words
    assert wire[264:268] == bytes.fromhex("00112233")  # serverNumber[0].time_low
    assert wire[264 + 13 * 44 : 264 + 13 * 44 + 4] == b"\x00\x00\x00\x05"  # serverUnique[0]
    assert xdr.decode(vl.uvldbentry, wire).serverNumber[0] == site


def test_fetch_status_field_order() -> None:
    words = list(range(1, 22))
    status = xdr.decode(fs.AFSFetchStatus, struct.pack(">21I", *words))
    assert status.InterfaceVersion == 1
    assert status.Length == 4 and status.DataVersion == 5
    assert status.CallerAccess == 8 and status.AnonymousAccess == 9
    assert status.ParentVnode == 11 and status.ServerModTime == 15
    assert status.dataVersionHigh == 18 and status.Length_hi == 20 and status.errorCode == 21


def test_get_addrs_u_reply() -> None:
    server = uuid.uuid4()
    reply = (
        xdr.encode(xdr.afsUUID, server)
        + struct.pack(">iiI", 3, 2, 2)
        + bytes([10, 0, 0, 1, 10, 0, 0, 2])
    )
    result = vl.VL.GetAddrsU.decode_reply(reply)
    assert result.uuidp1 == server
    assert (result.uniquifier, result.nentries) == (3, 2)
    assert result.blkaddrs == (0x0A000001, 0x0A000002)
    request = vl.VL.GetAddrsU.encode_request(
        vl.ListAddrByAttributes(Mask=vl.VLADDR_UUID, uuid=server)
    )
    assert request[:8] == struct.pack(">Ii", 533, vl.VLADDR_UUID)
    assert len(request) == 4 + 60


def test_pt_names_cost_256_bytes_each() -> None:
    request = pt.PT.NameToID.encode_request(["alice", "bob"])
    assert len(request) == 4 + 4 + 2 * 256
    assert pt.PT.NameToID.decode_reply(struct.pack(">Iii", 2, 1000, pt.ANONYMOUSID)) == (
        1000,
        32766,
    )


def test_store_data64_request_is_fixed_size() -> None:
    request = fs.FS.StoreData64.encode_request(fs.AFSFid(1, 2, 3), fs.AFSStoreStatus(), 0, 5, 5)
    assert len(request) == 4 + 12 + 24 + 3 * 8


@pytest.mark.parametrize(
    ("interface", "service_id", "port", "opcodes"),
    [
        (vl.VL, 52, 7003, {"GetEntryByID": 503, "GetEntryByNameO": 504, "ProbeServer": 514,
                           "GetEntryByNameN": 519, "GetEntryByNameU": 527, "GetAddrsU": 533}),
        (fs.FS, 1, 7000, {"FetchData": 130, "FetchStatus": 132, "StoreData": 133,
                          "RemoveFile": 136, "MakeDir": 141, "GiveUpCallBacks": 147,
                          "GetTime": 153, "BulkStatus": 155, "ReleaseLock": 158,
                          "StoreACL": 164, "InlineBulkStatus": 65536, "FetchData64": 65537,
                          "StoreData64": 65538, "GiveUpAllCallBacks": 65539,
                          "GetCapabilities": 65540}),
        (cb.CB, 1, 7001, {"CallBack": 204, "InitCallBackState": 205, "Probe": 206,
                          "WhoAreYou": 212, "InitCallBackState3": 213, "ProbeUuid": 214,
                          "GetCacheConfig": 218, "TellMeAboutYourself": 65538}),
        (pt.PT, 73, 7002, {"NameToID": 504, "IDToName": 505, "GetCPS": 508, "GetCPS2": 518}),
        (rmtsys.RMTSYS, 4, 7009, {"SetPag": 1, "Pioctl": 2}),
    ],
)  # fmt: skip
def test_service_ids_ports_and_opcodes(interface, service_id, port, opcodes) -> None:
    assert (interface.service_id, interface.port) == (service_id, port)
    for name, opcode in opcodes.items():
        assert getattr(interface, name).opcode == opcode
        assert interface.by_opcode[opcode].name == name


def test_error_tables_are_registered() -> None:
    assert str(RxAbort(vl.VL_NOENT)).startswith("VL_NOENT")
    assert vl.VL_NOENT == 363524 and vl.VL_BADNAME == 363527
    assert error_name(363552).startswith("VL_DBBAD")
    assert error_name(fs.VOFFLINE).startswith("VOFFLINE")
    assert error_name(fs.VBUSY).startswith("VBUSY")
    assert error_name(-100).startswith("RX_RESTARTING")
    assert error_name(pt.PRNOENT).startswith("PRNOENT") and pt.PRNOENT == 267268
