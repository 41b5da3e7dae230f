"""Conformance: our Rx, rxkad and RPC stubs against the real OpenAFS servers of the test cell.

Expected values come from OpenAFS's own tools (vos, pts) run in the cell, never from us.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from afsfuse.keyring import Token, with_viceid
from afsfuse.rx.driver import ClientConnection, Endpoint
from afsfuse.rx.errors import RXGEN_OPCODE, RxAbort
from afsfuse.rx.interfaces.fs import (
    FILE_DIRECTORY,
    FILE_FILE,
    FS,
    PRSFS_ADMINISTER,
    PRSFS_LOOKUP,
    PRSFS_READ,
    VICED_CAPABILITY_64BITFILES,
    AFSFid,
    AFSStoreStatus,
)
from afsfuse.rx.interfaces.pt import PT
from afsfuse.rx.interfaces.vl import (
    ROVOL,
    VL,
    VL_NOENT,
    VLADDR_UUID,
    VLF_ROEXISTS,
    VLF_RWEXISTS,
    VLSF_ROVOL,
    VLSF_RWVOL,
    VLSF_UUID,
    ListAddrByAttributes,
)
from afsfuse.rx.rxkad import Level, RxkadClient
from afsfuse.rx.security import RXNULL, ClientSecurity
from afsfuse.testing.cell import Cell

pytestmark = pytest.mark.cell

# Every test finishes in a few seconds; this only stops a hang from stalling the suite.
DEADLINE = 30
ALL_RIGHTS = 0x7F
READ_LOOKUP = PRSFS_READ | PRSFS_LOOKUP
# The fileserver translates errnos into the "uae" table for clients that advertise
# CLIENT_CAPABILITY_ERRORTRANS in TellMeAboutYourself, as our CB service does.
UAE_BASE = 49733376
UAEACCES = UAE_BASE + 12  # EACCES is 13, the table starts at EPERM 1
ROOT_VNODE = AFSFid(0, 1, 1)
TEN_MB = 10 * 1024 * 1024
FOUR_GB = 1 << 32
LEVELS = [pytest.param(level, id=level.name.lower()) for level in Level]


# -- what OpenAFS's own tools say --------------------------------------------------------


def vos_ids(cell: Cell, volume: str) -> tuple[int, int]:
    """(RW id, RO id) of a volume, from `vos examine`."""
    out = cell.exec("vos", "examine", volume, "-localauth")
    found = re.search(r"RWrite\s+(\d+)\s+ROnly\s+(\d+)", out)
    assert found, out
    return int(found[1]), int(found[2])


def pts_id(cell: Cell, name: str) -> int:
    out = cell.exec("pts", "examine", name, "-localauth")
    found = re.search(rf"Name: {re.escape(name)}, id: (-?\d+),", out)
    assert found, out
    return int(found[1])


@pytest.fixture(scope="module")
def root_cell_ids(cell: Cell) -> tuple[int, int]:
    return vos_ids(cell, "root.cell")


@pytest.fixture(scope="module")
def test_root(cell: Cell) -> AFSFid:
    """The root directory of the `test` volume (RW only, no quota)."""
    rw, _ = vos_ids(cell, "test")
    return ROOT_VNODE._replace(Volume=rw)


# -- connections ---------------------------------------------------------------------------


def rxkad(token: Token, level: Level) -> RxkadClient:
    return RxkadClient(token.session_key, token.ticket, token.kvno, level)


def fs_conn(cell: Cell, endpoint: Endpoint, security: ClientSecurity = RXNULL) -> ClientConnection:
    return endpoint.connect((cell.servers[0].addr, FS.port), FS.service_id, security)


@pytest.fixture
async def endpoint(cell: Cell, cm) -> AsyncIterator[Endpoint]:
    """A cache-manager endpoint that gives up its callbacks when done, as a cache manager
    that shuts down does: otherwise the fileserver's next break for the files it looked at
    waits for the closed port to time out."""
    yield cm.endpoint
    with trio.move_on_after(DEADLINE, shield=True):
        await FS.GiveUpAllCallBacks(fs_conn(cell, cm.endpoint))


def unique_name(what: str) -> str:
    return f"conf-{what}-{secrets.token_hex(4)}"


@asynccontextmanager
async def new_file(conn: ClientConnection, directory: AFSFid, name: str) -> AsyncIterator[AFSFid]:
    """A fresh empty file, removed afterwards even if the test fails."""
    created = await FS.CreateFile(conn, directory, name, AFSStoreStatus())
    try:
        yield created.OutFid
    finally:
        with trio.move_on_after(DEADLINE, shield=True):
            await FS.RemoveFile(conn, directory, name)


def acl_entries(text: bytes) -> dict[str, int]:
    """The positive entries of an ACL in FetchACL's text form (npos, nneg, then lines)."""
    lines = text.rstrip(b"\0").decode().splitlines()
    npos = int(lines[0])
    return {name: int(rights) for name, rights in (line.split() for line in lines[2 : 2 + npos])}


def acl_text(entries: dict[str, int]) -> bytes:
    """ACL text as StoreACL takes it: NUL-terminated (fileservers since the 2024 fixes
    refuse an ACL without its NUL)."""
    body = "".join(f"{name} {rights}\n" for name, rights in entries.items())
    return f"{len(entries)}\n0\n{body}\0".encode()


async def store_acl(conn: ClientConnection, fid: AFSFid, acl: bytes) -> None:
    """StoreACL, falling back to the old opcode on fileservers that predate it (1.8.9
    answers RXGEN_OPCODE to 164), as the OpenAFS cache manager does."""
    try:
        await FS.StoreACL(conn, fid, acl)
    except RxAbort as e:
        if e.code != RXGEN_OPCODE:
            raise
        await FS.OldStoreACL(conn, fid, acl)


# -- VL ------------------------------------------------------------------------------------


async def test_vl_entry_for_root_cell(cell: Cell, cm, root_cell_ids: tuple[int, int]) -> None:
    rw_id, ro_id = root_cell_ids
    fileserver = int(ipaddress.IPv4Address(cell.servers[0].addr))
    vl = cm.endpoint.connect((cell.db_server.addr, VL.port), VL.service_id)
    with trio.fail_after(DEADLINE):
        entry = await VL.GetEntryByNameU(vl, "root.cell")
        assert entry.name == "root.cell"
        assert entry.volumeId[:2] == (rw_id, ro_id)
        assert entry.flags & (VLF_RWEXISTS | VLF_ROEXISTS) == VLF_RWEXISTS | VLF_ROEXISTS
        assert entry.nServers == 2
        n = entry.nServers
        sites = list(
            zip(
                entry.serverNumber[:n],
                entry.serverFlags[:n],
                entry.serverPartition[:n],
                strict=True,
            )
        )
        roles = sorted(flags & (VLSF_RWVOL | VLSF_ROVOL) for _, flags, _ in sites)
        assert roles == [VLSF_ROVOL, VLSF_RWVOL]
        assert all(partition == 0 for _, _, partition in sites)  # /vicepa
        for server, flags, _ in sites:
            # Fileservers that register their addresses are named by UUID.
            assert flags & VLSF_UUID
            query = ListAddrByAttributes(Mask=VLADDR_UUID, uuid=server)
            addrs = await VL.GetAddrsU(vl, query)
            assert addrs.uuidp1 == server
            assert addrs.nentries == len(addrs.blkaddrs) >= 1
            assert fileserver in addrs.blkaddrs


async def test_vl_entry_by_ro_id(cell: Cell, cm, root_cell_ids: tuple[int, int]) -> None:
    rw_id, ro_id = root_cell_ids
    vl = cm.endpoint.connect((cell.db_server.addr, VL.port), VL.service_id)
    with trio.fail_after(DEADLINE):
        entry = await VL.GetEntryByID(vl, ro_id, ROVOL)
    assert entry.name == "root.cell"
    assert entry.volumeId[:2] == (rw_id, ro_id)
    sites = entry.serverFlags[: entry.nServers]
    assert any(flags & VLSF_ROVOL for flags in sites)


async def test_vl_unknown_volume_is_vl_noent(cell: Cell, cm) -> None:
    vl = cm.endpoint.connect((cell.db_server.addr, VL.port), VL.service_id)
    with trio.fail_after(DEADLINE), pytest.raises(RxAbort) as raised:
        await VL.GetEntryByNameU(vl, "no.such.volume")
    assert raised.value.code == VL_NOENT
    assert str(raised.value).startswith("VL_NOENT")


# -- PT ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def user_ids(cell: Cell) -> dict[str, int]:
    return {user: pts_id(cell, user) for user in ("alice", "bob", "admin")}


@pytest.mark.parametrize("identity", ["anonymous", "alice"])
async def test_pt_name_to_id_and_back(
    cell: Cell, cm, tokens: dict[str, Token], user_ids: dict[str, int], identity: str
) -> None:
    addr = (cell.db_server.addr, PT.port)
    if identity == "anonymous":
        pt = cm.endpoint.connect(addr, PT.service_id)
    else:
        pt = cm.endpoint.connect(addr, PT.service_id, rxkad(tokens[identity], Level.CRYPT))
    with trio.fail_after(DEADLINE):
        ids = await PT.NameToID(pt, ["alice", "bob"])
        assert list(ids) == [user_ids["alice"], user_ids["bob"]]
        names = await PT.IDToName(pt, list(ids))
    assert list(names) == ["alice", "bob"]


async def test_viceid_filled_from_pt(
    cell: Cell, cm, tokens: dict[str, Token], user_ids: dict[str, int]
) -> None:
    pt = cm.endpoint.connect((cell.db_server.addr, PT.port), PT.service_id)
    with trio.fail_after(DEADLINE):
        for user in ("alice", "admin"):
            token = tokens[user]
            assert token.viceid is None
            filled = await with_viceid(token, pt)
            assert filled.viceid == user_ids[user]
            assert filled.client == token.client
            assert filled.session_key == token.session_key


# -- FS as admin over rxkad, at every level -------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
async def test_fs_status_capabilities_and_volume(
    cell: Cell, endpoint: Endpoint, tokens: dict[str, Token], test_root: AFSFid, level: Level
) -> None:
    fs = fs_conn(cell, endpoint, rxkad(tokens["admin"], level))
    with trio.fail_after(DEADLINE):
        status = await FS.FetchStatus(fs, test_root)
        (capabilities, *_) = await FS.GetCapabilities(fs)
        volume = await FS.GetVolumeStatus(fs, test_root.Volume)
    assert status.OutStatus.FileType == FILE_DIRECTORY
    assert status.OutStatus.CallerAccess == ALL_RIGHTS  # admin is in system:administrators
    # A directory's ParentVnode/Unique name the directory itself.
    assert (status.OutStatus.ParentVnode, status.OutStatus.ParentUnique) == (1, 1)
    assert status.CallBack.ExpirationTime > 0
    assert capabilities & VICED_CAPABILITY_64BITFILES
    assert volume.Name == "test"
    assert volume.Volumestatus.Vid == test_root.Volume
    assert volume.Volumestatus.MaxQuota == 0
    assert volume.Volumestatus.Online and volume.Volumestatus.InService


@pytest.mark.parametrize("level", LEVELS)
async def test_fs_acl_grant_seen_by_alice_not_by_anonymous(
    cell: Cell, endpoint: Endpoint, tokens: dict[str, Token], test_root: AFSFid, level: Level
) -> None:
    """In a directory of its own (other tests open the shared volume root to anyone), an ACL
    that grants alice rl shows in her rights and leaves anonymous with none."""
    admin = fs_conn(cell, endpoint, rxkad(tokens["admin"], level))
    alice = fs_conn(cell, endpoint, rxkad(tokens["alice"], level))
    anonymous = fs_conn(cell, endpoint)
    dirname = unique_name(f"acl-{level.name}")
    with trio.fail_after(DEADLINE):
        made = await FS.MakeDir(admin, test_root, dirname, AFSStoreStatus())
        directory = made.OutFid
        try:
            original, _, _ = await FS.FetchACL(admin, directory)
            granted = {"system:administrators": ALL_RIGHTS, "alice": READ_LOOKUP}
            await store_acl(admin, directory, acl_text(granted))
            acl, _, _ = await FS.FetchACL(admin, directory)
            assert acl_entries(acl) == granted
            assert acl_entries(acl) != acl_entries(original)
            seen_by_alice = await FS.FetchStatus(alice, directory)
            assert seen_by_alice.OutStatus.CallerAccess == READ_LOOKUP
            assert seen_by_alice.OutStatus.AnonymousAccess == 0
            seen_by_anonymous = await FS.FetchStatus(anonymous, directory)
            assert seen_by_anonymous.OutStatus.CallerAccess == 0
            with pytest.raises(RxAbort) as raised:
                await FS.FetchData64(anonymous, directory, 0, 4096)
            assert raised.value.code == UAEACCES
            # alice may read the directory itself.
            listing, _ = await FS.FetchData64(alice, directory, 0, 1 << 16)
            assert len(listing) == seen_by_alice.OutStatus.Length
        finally:
            with trio.move_on_after(DEADLINE, shield=True):
                await FS.RemoveDir(admin, test_root, dirname)


@pytest.mark.parametrize("level", LEVELS)
async def test_fs_ten_megabytes_round_trip(
    cell: Cell, endpoint: Endpoint, tokens: dict[str, Token], test_root: AFSFid, level: Level
) -> None:
    fs = fs_conn(cell, endpoint, rxkad(tokens["admin"], level))
    data = os.urandom(TEN_MB)
    piece = 1 << 20
    with trio.fail_after(DEADLINE):
        async with new_file(fs, test_root, unique_name(level.name)) as fid:
            async with FS.StoreData64.stream(fs, fid, AFSStoreStatus(), 0, TEN_MB, TEN_MB) as s:
                for offset in range(0, TEN_MB, piece):
                    await s.send(data[offset : offset + piece])
            assert s.result.OutStatus.Length == TEN_MB
            received = bytearray(TEN_MB)
            view = memoryview(received)
            got = 0
            async with FS.FetchData64.stream(fs, fid, 0, TEN_MB) as fetch:
                assert fetch.length == TEN_MB
                while n := await fetch.recv_into(view[got:]):
                    got += n
            assert got == TEN_MB
            assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
            status = fetch.result.OutStatus
            assert status.FileType == FILE_FILE
            assert (status.Length_hi, status.Length) == (0, TEN_MB)


@pytest.mark.parametrize("level", LEVELS)
async def test_fs_sparse_file_beyond_four_gigabytes(
    cell: Cell, endpoint: Endpoint, tokens: dict[str, Token], test_root: AFSFid, level: Level
) -> None:
    fs = fs_conn(cell, endpoint, rxkad(tokens["admin"], level))
    block = os.urandom(8192)
    position = FOUR_GB + 12345
    end = position + len(block)
    with trio.fail_after(DEADLINE):
        async with new_file(fs, test_root, unique_name(f"sparse-{level.name}")) as fid:
            await FS.StoreData64(fs, fid, AFSStoreStatus(), position, len(block), end, data=block)
            status = (await FS.FetchStatus(fs, fid)).OutStatus
            assert (status.Length_hi, status.Length) == (end >> 32, end & 0xFFFFFFFF)
            assert status.Length_hi == 1
            body, result = await FS.FetchData64(fs, fid, position, len(block))
            assert body == block
            # Below the block, the file reads as zeros.
            hole, _ = await FS.FetchData64(fs, fid, FOUR_GB - 100, 100)
            assert hole == bytes(100)
            # Asking past the end gets what is there, not an error.
            tail, _ = await FS.FetchData64(fs, fid, end - 10, 1000)
            assert tail == block[-10:]
    assert result.OutStatus.Length_hi == 1


# -- FS as anonymous over rxnull ------------------------------------------------------------


async def test_fs_anonymous_reads_where_anyuser_may(
    cell: Cell, endpoint: Endpoint, tokens: dict[str, Token], test_root: AFSFid
) -> None:
    admin = fs_conn(cell, endpoint, rxkad(tokens["admin"], Level.CLEAR))
    anonymous = fs_conn(cell, endpoint)
    dirname = unique_name("anon")
    payload = os.urandom(100_000)
    with trio.fail_after(DEADLINE):
        made = await FS.MakeDir(admin, test_root, dirname, AFSStoreStatus())
        directory = made.OutFid
        try:
            acl = {"system:administrators": ALL_RIGHTS, "system:anyuser": READ_LOOKUP}
            await store_acl(admin, directory, acl_text(acl))
            async with new_file(admin, directory, "readable") as fid:
                await FS.StoreData64(
                    admin, fid, AFSStoreStatus(), 0, len(payload), len(payload), data=payload
                )
                dir_status = (await FS.FetchStatus(anonymous, directory)).OutStatus
                assert dir_status.FileType == FILE_DIRECTORY
                assert dir_status.CallerAccess == READ_LOOKUP
                assert dir_status.AnonymousAccess == READ_LOOKUP
                body, result = await FS.FetchData64(anonymous, fid, 0, len(payload))
                assert body == payload
                assert result.OutStatus.CallerAccess & PRSFS_ADMINISTER == 0
                seen_acl, _, _ = await FS.FetchACL(anonymous, directory)
                assert acl_entries(seen_acl) == acl
                (capabilities, *_) = await FS.GetCapabilities(anonymous)
                assert capabilities & VICED_CAPABILITY_64BITFILES
                with pytest.raises(RxAbort) as raised:
                    await FS.CreateFile(anonymous, directory, "not-allowed", AFSStoreStatus())
                assert raised.value.code == UAEACCES
        finally:
            with trio.move_on_after(DEADLINE, shield=True):
                await FS.RemoveDir(admin, test_root, dirname)
