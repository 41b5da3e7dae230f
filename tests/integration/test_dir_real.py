"""The directory parser and builder against directories the real OpenAFS fileserver wrote."""

from __future__ import annotations

import secrets

import pytest

from afsfuse.fs.dir import NAME_MAX, PAGE_SIZE, DirectoryBuilder, DirEntry, lookup, parse_directory
from afsfuse.keyring import Token
from afsfuse.rx.interfaces.fs import FS, AFSFid, AFSStoreStatus
from afsfuse.rx.interfaces.vl import VL
from afsfuse.rx.rxkad import Level, RxkadClient
from afsfuse.testing.cell import Cell

pytestmark = pytest.mark.cell


def names(count: int) -> list[bytes]:
    """Short, long (up to the limit) and non-ASCII names, each distinct."""
    result = []
    for i in range(count):
        stem = b"f%d-" % i
        length = (i * 37) % (NAME_MAX + 1)
        filler = bytes(0x20 + (i + k) % 0xDF for k in range(length)).replace(b"/", b"_")
        result.append((stem + filler)[: max(len(stem), length)])
    return result


@pytest.fixture
async def admin_fs(cell: Cell, cm, tokens: dict[str, Token]):
    """A fileserver connection with the admin token, and the root fid of the `test` volume."""
    admin = tokens["admin"]
    vl = cm.endpoint.connect((cell.db_server.addr, 7003), 52)
    volume = (await VL.GetEntryByNameU(vl, "test")).volumeId[0]
    fs = cm.endpoint.connect(
        (cell.servers[0].addr, 7000),
        1,
        RxkadClient(admin.session_key, admin.ticket, admin.kvno, Level.CLEAR),
    )
    return fs, AFSFid(volume, 1, 1)


async def make_dir(fs, root: AFSFid) -> tuple[AFSFid, DirectoryBuilder]:
    made = await FS.MakeDir(fs, root, b"dir-" + secrets.token_hex(4).encode(), AFSStoreStatus())
    directory = made.OutFid
    return directory, DirectoryBuilder(DirEntry(directory.Vnode, directory.Unique), DirEntry(1, 1))


async def test_created_files_read_back_byte_for_byte(admin_fs):
    fs, root = admin_fs
    directory, builder = await make_dir(fs, root)
    expected: dict[bytes, DirEntry] = {
        b".": DirEntry(directory.Vnode, directory.Unique),
        b"..": DirEntry(1, 1),
    }
    created = names(300)
    for name in created:
        out = (await FS.CreateFile(fs, directory, name, AFSStoreStatus())).OutFid
        builder.add(name, out.Vnode, out.Unique)
        expected[name] = DirEntry(out.Vnode, out.Unique)
    # Holes of every size, then new entries that may fill them.
    for name in created[::4]:
        await FS.RemoveFile(fs, directory, name)
        builder.remove(name)
        del expected[name]
    for i in range(30):
        name = b"refill-%d" % i
        out = (await FS.CreateFile(fs, directory, name, AFSStoreStatus())).OutFid
        builder.add(name, out.Vnode, out.Unique)
        expected[name] = DirEntry(out.Vnode, out.Unique)

    data, status = await FS.FetchData64(fs, directory, 0, 1 << 22)
    assert len(data) == status.OutStatus.Length
    parsed = parse_directory(data)
    assert parsed == expected
    assert data == builder.to_bytes()
    assert list(parsed) == list(parse_directory(builder.to_bytes()))
    for name, entry in expected.items():
        assert lookup(data, name) == entry
    assert lookup(data, b"no such name") is None


async def test_directory_beyond_the_allocation_map(admin_fs):
    """Past 128 pages the fileserver allocates without the map; the builder must follow."""
    fs, root = admin_fs
    directory, builder = await make_dir(fs, root)
    for i in range(8600):
        name = b"%x" % i if i % 7 else b"two-slot-name-%d" % i
        out = (await FS.CreateFile(fs, directory, name, AFSStoreStatus())).OutFid
        builder.add(name, out.Vnode, out.Unique)
    for i in range(0, 8600, 50):
        name = b"%x" % i if i % 7 else b"two-slot-name-%d" % i
        await FS.RemoveFile(fs, directory, name)
        builder.remove(name)
    for i in range(300):
        name = b"again-%d" % i
        out = (await FS.CreateFile(fs, directory, name, AFSStoreStatus())).OutFid
        builder.add(name, out.Vnode, out.Unique)
    data, _ = await FS.FetchData64(fs, directory, 0, 1 << 22)
    assert len(data) > 128 * PAGE_SIZE
    assert data == builder.to_bytes()
    assert len(parse_directory(data)) == 2 + 8600 - 172 + 300
