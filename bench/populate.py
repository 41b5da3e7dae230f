"""The benchmark's files in the test cell, made by the cell admin straight over Rx.

A big file, four files of a quarter of its size (one per parallel reader: together as many
bytes as the big file, so that row compares with the single cold read), directories of 1000
and 10 000 empty files, and 1000 small files to cat.

No mount is involved, so neither client under test has seen any of it, and afsd.fuse (which
cannot hold tokens) can still use it: root.cell and the `test` volume get `system:anyuser`
rights, and root.cell gets a mount point `test` for the `test` volume (released afterwards).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import trio

from afsfuse.fs.callback import CallbackRegistry
from afsfuse.fs.cmservice import CacheManagerService
from afsfuse.keyring import Token
from afsfuse.rx.driver import ClientConnection, open_endpoint
from afsfuse.rx.errors import RX_RESTARTING, RxAbort
from afsfuse.rx.interfaces.fs import AFS_SETMODE, FS, VBUSY, AFSFid, AFSStoreStatus
from afsfuse.rx.rxkad import Level, RxkadClient
from afsfuse.vl.vlclient import VLClient

BUSY_RETRIES = 40
BUSY_PAUSE = 0.5

#: rights bits: r=1 l=8 i=2 d=4 w=16 k=32 a=64
READ_LOOKUP = 1 | 8
READ_WRITE = READ_LOOKUP | 2 | 4 | 16 | 32
SMALL_FILE = 2048
#: Readers and tar processes at once in the parallel workloads.
PARALLEL = 4
#: Calls in flight at once while filling directories (Rx gives 4 channels per connection).
WORKERS = 8
_PIECE = 1 << 20


@dataclass(frozen=True)
class Layout:
    """What the benchmark expects under <cell>/test/bench (names and sizes)."""

    big_bytes: int
    big_sha256: str
    listing_sizes: tuple[int, ...]
    cat_files: int
    #: The parallel readers' files: a quarter of the big file each, their SHA-256s.
    quarter_bytes: int
    quarter_sha256: tuple[str, ...]

    @staticmethod
    def listing_dir(entries: int) -> str:
        return f"ls{entries}"

    @staticmethod
    def quarter_file(index: int) -> str:
        return f"quarter{index}.bin"

    cat_dir = "cat"
    cat_bytes = SMALL_FILE
    big_file = "big.bin"
    top = "bench"


def _acl(anyuser_rights: int) -> bytes:
    return f"2\n0\nsystem:administrators 127\nsystem:anyuser {anyuser_rights}\n".encode() + b"\0"


def big_block(index: int, seed: bytes) -> bytes:
    """1 MiB of incompressible data, different for every index (so no block repeats)."""
    return hashlib.shake_256(seed + index.to_bytes(8, "little")).digest(_PIECE)


def _seed(seed: bytes, quarter: int) -> bytes:
    """A quarter file's own seed, so that no two files share a block."""
    return seed + b"quarter" + quarter.to_bytes(1, "little")


def big_content_sha256(size: int, seed: bytes) -> str:
    digest = hashlib.sha256()
    for index in range(size // _PIECE):
        digest.update(big_block(index, seed))
    return digest.hexdigest()


async def _store(conn: ClientConnection, fid: AFSFid, size: int, piece_of) -> None:
    status = AFSStoreStatus(Mask=AFS_SETMODE, UnixModeBits=0o644)
    async with FS.StoreData64.stream(conn, fid, status, 0, size, size) as stream:
        for index in range(size // _PIECE):
            await stream.send(piece_of(index))
        if size % _PIECE:
            await stream.send(piece_of(size // _PIECE)[: size % _PIECE])
        await stream.finish()


async def _fill_dir(
    conns: list[ClientConnection], parent: AFSFid, name: str, files: int, data: bytes
):
    made = await FS.MakeDir(conns[0], parent, name, AFSStoreStatus())
    directory = made.OutFid
    names = iter(range(files))
    mode = AFSStoreStatus(Mask=AFS_SETMODE, UnixModeBits=0o644)

    async def worker(conn: ClientConnection) -> None:
        for i in names:
            created = await _patiently(FS.CreateFile, conn, directory, f"f{i:05d}", mode)
            if data:
                await _patiently(_store, conn, created.OutFid, len(data), lambda _: data)

    async with trio.open_nursery() as nursery:
        for i in range(WORKERS):
            nursery.start_soon(worker, conns[i % len(conns)])


async def _patiently(rpc, *args):
    """A fileserver under a burst of creates may answer VBUSY before doing anything: wait and
    ask again, as a cache manager would (bounded)."""
    for _ in range(BUSY_RETRIES):
        try:
            return await rpc(*args)
        except RxAbort as e:
            if e.code not in (VBUSY, RX_RESTARTING):
                raise
            await trio.sleep(BUSY_PAUSE)
    return await rpc(*args)


async def _populate(cell: str, vlserver: str, admin: Token, layout: Layout, seed: bytes) -> None:
    async with open_endpoint() as endpoint:
        CacheManagerService(CallbackRegistry()).install(endpoint)
        vl = VLClient.on_endpoint(endpoint, [vlserver])
        security = RxkadClient(admin.session_key, admin.ticket, admin.kvno, Level.CRYPT)

        async def root_of(volume: str) -> tuple[list[ClientConnection], AFSFid]:
            location = await vl.locate(volume)
            host = location.sites[0][0].addresses[0]
            conns = [endpoint.connect((host, FS.port), FS.service_id, security) for _ in (1, 2)]
            return conns, AFSFid(location.rw_id, 1, 1)

        conns, root_cell = await root_of("root.cell")
        await FS.OldStoreACL(conns[0], root_cell, _acl(READ_LOOKUP))
        mode = AFSStoreStatus(Mask=AFS_SETMODE, UnixModeBits=0o644)
        await FS.Symlink(conns[0], root_cell, "test", f"#{cell}:test.", mode)

        conns, test = await root_of("test")
        await FS.OldStoreACL(conns[0], test, _acl(READ_WRITE))
        top = (await FS.MakeDir(conns[0], test, layout.top, AFSStoreStatus())).OutFid
        big = (await FS.CreateFile(conns[0], top, layout.big_file, mode)).OutFid
        await _store(conns[0], big, layout.big_bytes, lambda i: big_block(i, seed))
        for index in range(PARALLEL):
            quarter = (await FS.CreateFile(conns[0], top, layout.quarter_file(index), mode)).OutFid
            own = _seed(seed, index)
            await _store(conns[0], quarter, layout.quarter_bytes, lambda i, s=own: big_block(i, s))
        small = os.urandom(SMALL_FILE)
        await _fill_dir(conns, top, layout.cat_dir, layout.cat_files, small)
        for entries in layout.listing_sizes:
            await _fill_dir(conns, top, layout.listing_dir(entries), entries, b"")


def populate(
    cell: str,
    vlserver: str,
    admin: Token,
    big_mb: int,
    listing_sizes: tuple[int, ...],
    cat_files: int,
) -> Layout:
    """Create <cell>/test/bench and its contents; root.cell then needs a `vos release`."""
    seed = os.urandom(16)
    size = big_mb * _PIECE
    quarter = max(1, big_mb // PARALLEL) * _PIECE
    quarters = tuple(big_content_sha256(quarter, _seed(seed, i)) for i in range(PARALLEL))
    layout = Layout(
        size, big_content_sha256(size, seed), listing_sizes, cat_files, quarter, quarters
    )
    trio.run(_populate, cell, vlserver, admin, layout, seed)
    return layout
