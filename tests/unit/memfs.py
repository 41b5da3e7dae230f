"""An in-memory AFS cell for unit tests of the cache manager, reached through memrx calls.

One fileserver holding one read-write volume, and a VL server that knows where it is; the
cache manager under test is the real one (`mem_manager`), its RPCs marshalled and served as
on the wire.  The fileserver implements what the read, write and name paths call, and a test
can make it fail a call (before or after the call took effect), stop answering altogether,
or change a file as another client would, breaking our callback as a fileserver does.

A fake for unit tests only: the integration tests run against a real OpenAFS cell.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trio
from memrx import FakeConnection

from afsfuse.cache.store import CacheStore
from afsfuse.fs.callback import Fid
from afsfuse.fs.cell import CellDB
from afsfuse.fs.dir import DirectoryBuilder
from afsfuse.fs.manager import CacheManager, ManagerConfig
from afsfuse.fs.stats import Stats
from afsfuse.fs.vnode import AfsFid
from afsfuse.keyring.store import TokenStore
from afsfuse.rx.errors import RX_CALL_DEAD, RxAbort
from afsfuse.rx.interfaces.fs import (
    AFS_SETMODTIME,
    CALLBACK_VERSION,
    CB_SHARED,
    FILE_DIRECTORY,
    FILE_FILE,
    FS,
    VNOVNODE,
    AFSCallBack,
    AFSFetchStatus,
    AFSFid,
    AFSVolSync,
)
from afsfuse.rx.interfaces.vl import VL, VL_NOENT, VLF_RWEXISTS, VLSF_RWVOL, uvldbentry
from afsfuse.rx.rpc import make_dispatcher
from afsfuse.vl.cellservdb import parse_cellservdb

CELL = "mem.example"
VOLUME = 536870912
FS_ADDR = "10.9.0.1"
VL_ADDR = "10.9.0.2"
ROOT = AfsFid(CELL, VOLUME, 1, 1)
#: Chunk size of the cache under test: small, so a few KiB make a many-chunk file.
CHUNK = 4096
#: Every caller may do everything (the tests here are not about rights).
ALL_RIGHTS = 0x7F
CALLBACK = AFSCallBack(CALLBACK_VERSION, 3600, CB_SHARED)
#: Background retries and the move of dirty files to disk wait for the test to ask
#: (`m.writer.unsent.pass_once`), so nothing runs behind a test's back.
QUIET = {"store_retry": 3600.0, "dirty_memory_age": 3600.0}


@dataclass
class MemVnode:
    """A file or directory; a directory's `data` is its blob as the fileserver writes it."""

    vnode: int
    unique: int
    file_type: int
    parent: int
    data: bytearray = field(default_factory=bytearray)
    #: A directory's entries: name -> (vnode, unique).
    entries: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    version: int = 1
    mtime: int = 1_600_000_000


@dataclass(frozen=True)
class Store:
    """A StoreData64 as the fileserver took it: over which data version, and what it made."""

    vnode: int
    over: int
    made: int
    pos: int
    length: int
    file_length: int
    mtime: int


@dataclass
class _Fault:
    rpc: str
    code: int
    applied: bool
    #: Calls of `rpc` to let through first.
    skip: int


def _name(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class MemFileServer:
    """The fileserver.  `broken(fids)` is how it breaks the cache manager's callbacks."""

    def __init__(self) -> None:
        root = MemVnode(1, 1, FILE_DIRECTORY, 1)
        self.vnodes = {1: root}
        self._set_entries(root, {b".": (1, 1), b"..": (1, 1)})
        self.next_vnode = 2
        self.down = False
        self.faults: list[_Fault] = []
        self.stores: list[Store] = []
        #: (vnode, first byte, bytes asked for) of every FetchData64.
        self.fetches: list[tuple[int, int, int]] = []
        #: The fids asked for in each InlineBulkStatus.
        self.bulk_calls: list[list[int]] = []
        #: Seconds each FetchData64 and InlineBulkStatus takes (a distant server), the
        #: calls of those under way, and the most that were at once.
        self.latency = 0.0
        self.under_way = 0
        self.most_at_once = 0
        self.broken: Callable[[list[Fid]], None] = lambda fids: None

    # -- what a test does -------------------------------------------------------------

    def fail(self, rpc: str, code: int, *, applied: bool = False, skip: int = 0) -> None:
        """The next `rpc` ("StoreData64") but `skip` fails with `code`; `applied`: after it
        took effect (the reply is what is lost)."""
        self.faults.append(_Fault(rpc, code, applied, skip))

    def add_file(self, name: str, data: bytes, *, break_callback: bool = True) -> AfsFid:
        """A file in the volume root, made by another client.  Without `break_callback`
        the break has not reached us yet (it is on its way, or the server is slow)."""
        vnode = self._new_vnode(FILE_FILE, 1, bytearray(data))
        root = self.vnodes[1]
        self._changed_dir(root, {**root.entries, _name(name): (vnode.vnode, vnode.unique)})
        if break_callback:
            self.broken([Fid(VOLUME, root.vnode, root.unique)])
        return AfsFid(CELL, VOLUME, vnode.vnode, vnode.unique)

    def store_as_another_client(self, fid: AfsFid, data: bytes, mtime: int) -> None:
        """Another client stores `data` over the whole file: a new data version, and our
        callback broken."""
        vnode = self.vnodes[fid.vnode]
        vnode.data = bytearray(data)
        vnode.version += 1
        vnode.mtime = mtime
        self.broken([Fid(VOLUME, vnode.vnode, vnode.unique)])

    def content(self, fid: AfsFid) -> bytes:
        return bytes(self.vnodes[fid.vnode].data)

    def names(self, fid: AfsFid = ROOT) -> set[str]:
        entries = self.vnodes[fid.vnode].entries
        return {n.decode() for n in entries} - {".", ".."}

    # -- the vnodes -------------------------------------------------------------------

    def _new_vnode(self, file_type: int, parent: int, data: bytearray) -> MemVnode:
        vnode = MemVnode(self.next_vnode, 100 + self.next_vnode, file_type, parent, data)
        self.vnodes[vnode.vnode] = vnode
        self.next_vnode += 1
        return vnode

    @staticmethod
    def _set_entries(vnode: MemVnode, entries: dict[bytes, tuple[int, int]]) -> None:
        vnode.entries = entries
        builder = DirectoryBuilder()
        for name, (number, unique) in entries.items():
            builder.add(name, number, unique)
        vnode.data = bytearray(builder.to_bytes())

    def _vnode(self, fid: AFSFid) -> MemVnode:
        vnode = self.vnodes.get(fid.Vnode)
        if vnode is None or vnode.unique != fid.Unique:
            raise RxAbort(VNOVNODE)
        return vnode

    def _status(self, vnode: MemVnode) -> AFSFetchStatus:
        fields = dict.fromkeys(AFSFetchStatus._fields, 0)
        fields.update(
            InterfaceVersion=1,
            FileType=vnode.file_type,
            LinkCount=1,
            Length=len(vnode.data),
            DataVersion=vnode.version,
            CallerAccess=ALL_RIGHTS,
            AnonymousAccess=ALL_RIGHTS,
            UnixModeBits=0o755 if vnode.file_type == FILE_DIRECTORY else 0o644,
            ParentVnode=vnode.parent,
            ParentUnique=self.vnodes[vnode.parent].unique,
            ClientModTime=vnode.mtime,
            ServerModTime=vnode.mtime,
        )
        return AFSFetchStatus(**fields)

    def _before(self, rpc: str) -> _Fault | None:
        """A call comes in: lost if the server is down; a fault scripted for it fails it
        now, or (applied) once it has taken effect."""
        if self.down:
            raise RxAbort(RX_CALL_DEAD)
        fault = next((f for f in self.faults if f.rpc == rpc), None)
        if fault is None:
            return None
        if fault.skip:
            fault.skip -= 1
            return None
        self.faults.remove(fault)
        if not fault.applied:
            raise RxAbort(fault.code)
        return fault

    @staticmethod
    def _after(fault: _Fault | None) -> None:
        if fault is not None:
            raise RxAbort(fault.code)

    def _changed_dir(self, vnode: MemVnode, entries: dict[bytes, tuple[int, int]]) -> None:
        self._set_entries(vnode, entries)
        vnode.version += 1

    # -- RPCs -------------------------------------------------------------------------

    async def GetTime(self, call: Any) -> Any:
        self._after(self._before("GetTime"))
        return FS.GetTime.Result(int(time.time()), 0)

    async def GiveUpAllCallBacks(self, call: Any) -> None:
        self._after(self._before("GiveUpAllCallBacks"))

    async def FetchStatus(self, call: Any, Fid: AFSFid) -> Any:
        fault = self._before("FetchStatus")
        vnode = self._vnode(Fid)
        self._after(fault)
        return FS.FetchStatus.Result(self._status(vnode), CALLBACK, AFSVolSync())

    async def _far(self) -> None:
        """The server's round trips, counting the calls waiting for them."""
        self.under_way += 1
        self.most_at_once = max(self.most_at_once, self.under_way)
        try:
            await trio.sleep(self.latency)
        finally:
            self.under_way -= 1

    async def InlineBulkStatus(self, call: Any, FidsArray: list[AFSFid]) -> Any:
        self._after(self._before("InlineBulkStatus"))
        self.bulk_calls.append([fid.Vnode for fid in FidsArray])
        await self._far()
        statuses, callbacks = [], []
        for fid in FidsArray:
            try:
                statuses.append(self._status(self._vnode(fid)))
            except RxAbort as e:
                fields = dict.fromkeys(AFSFetchStatus._fields, 0)
                statuses.append(AFSFetchStatus(**{**fields, "errorCode": e.code}))
            callbacks.append(CALLBACK)
        return FS.InlineBulkStatus.Result(statuses, callbacks, AFSVolSync())

    async def FetchData64(self, call: Any, stream: Any, Fid: AFSFid, Pos: int, Length: int) -> Any:
        fault = self._before("FetchData64")
        vnode = self._vnode(Fid)
        self.fetches.append((vnode.vnode, Pos, Length))
        await self._far()
        data = bytes(vnode.data[Pos : Pos + Length])
        await stream.start(len(data))
        await stream.send(data)
        self._after(fault)
        return FS.FetchData64.Result(self._status(vnode), CALLBACK, AFSVolSync())

    async def StoreData64(
        self,
        call: Any,
        stream: Any,
        Fid: AFSFid,
        InStatus: Any,
        Pos: int,
        Length: int,
        FileLength: int,
    ) -> Any:
        fault = self._before("StoreData64")
        vnode = self._vnode(Fid)
        buf = bytearray(Length)
        view = memoryview(buf)
        got = 0
        while got < Length and (n := await stream.recv_into(view[got:])):
            got += n
        # As the fileserver does: cut or extend the file to FileLength, then write at Pos.
        data = vnode.data
        del data[FileLength:]
        data.extend(bytes(FileLength - len(data)))
        data[Pos : Pos + Length] = buf
        over = vnode.version
        vnode.version += 1
        vnode.mtime = InStatus.ClientModTime if InStatus.Mask & AFS_SETMODTIME else int(time.time())
        self.stores.append(
            Store(vnode.vnode, over, vnode.version, Pos, Length, FileLength, vnode.mtime)
        )
        self._after(fault)
        return FS.StoreData64.Result(self._status(vnode), AFSVolSync())

    async def StoreStatus(self, call: Any, Fid: AFSFid, InStatus: Any) -> Any:
        """Only the modification time: the one status field the tests here change."""
        fault = self._before("StoreStatus")
        vnode = self._vnode(Fid)
        if InStatus.Mask & AFS_SETMODTIME:
            vnode.mtime = InStatus.ClientModTime
        self._after(fault)
        return FS.StoreStatus.Result(self._status(vnode), AFSVolSync())

    async def CreateFile(self, call: Any, DirFid: AFSFid, Name: str, InStatus: Any) -> Any:
        fault = self._before("CreateFile")
        parent = self._vnode(DirFid)
        vnode = self._new_vnode(FILE_FILE, parent.vnode, bytearray())
        entries = {**parent.entries, _name(Name): (vnode.vnode, vnode.unique)}
        self._changed_dir(parent, entries)
        self._after(fault)
        out = AFSFid(VOLUME, vnode.vnode, vnode.unique)
        return FS.CreateFile.Result(
            out, self._status(vnode), self._status(parent), CALLBACK, AFSVolSync()
        )

    async def MakeDir(self, call: Any, DirFid: AFSFid, Name: str, InStatus: Any) -> Any:
        fault = self._before("MakeDir")
        parent = self._vnode(DirFid)
        vnode = self._new_vnode(FILE_DIRECTORY, parent.vnode, bytearray())
        self._set_entries(
            vnode, {b".": (vnode.vnode, vnode.unique), b"..": (parent.vnode, parent.unique)}
        )
        self._changed_dir(parent, {**parent.entries, _name(Name): (vnode.vnode, vnode.unique)})
        self._after(fault)
        out = AFSFid(VOLUME, vnode.vnode, vnode.unique)
        return FS.MakeDir.Result(
            out, self._status(vnode), self._status(parent), CALLBACK, AFSVolSync()
        )

    async def RemoveFile(self, call: Any, DirFid: AFSFid, Name: str) -> Any:
        fault = self._before("RemoveFile")
        parent = self._vnode(DirFid)
        entries = dict(parent.entries)
        number, _ = entries.pop(_name(Name))
        del self.vnodes[number]
        self._changed_dir(parent, entries)
        self._after(fault)
        return FS.RemoveFile.Result(self._status(parent), AFSVolSync())

    async def Rename(
        self, call: Any, OldDirFid: AFSFid, OldName: str, NewDirFid: AFSFid, NewName: str
    ) -> Any:
        fault = self._before("Rename")
        old_dir, new_dir = self._vnode(OldDirFid), self._vnode(NewDirFid)
        old_entries = dict(old_dir.entries)
        moving = old_entries.pop(_name(OldName))
        if old_dir is new_dir:
            self._changed_dir(old_dir, {**old_entries, _name(NewName): moving})
        else:
            self._changed_dir(old_dir, old_entries)
            self._changed_dir(new_dir, {**new_dir.entries, _name(NewName): moving})
        self._after(fault)
        return FS.Rename.Result(self._status(old_dir), self._status(new_dir), AFSVolSync())


class MemVolumeLocation:
    """The VL server: the one volume, by name or id, on FS_ADDR."""

    async def GetEntryByNameU(self, call: Any, volumename: str) -> Any:
        if volumename not in ("mem.volume", str(VOLUME)):
            raise RxAbort(VL_NOENT)
        address = int.from_bytes(bytes(map(int, FS_ADDR.split("."))), "big")
        servers = (uuid.UUID(fields=(address, 0, 0, 0, 0, 0)),) + (uuid.UUID(int=0),) * 12
        return uvldbentry(
            name="mem.volume",
            nServers=1,
            serverNumber=servers,
            serverFlags=(VLSF_RWVOL,) + (0,) * 12,
            volumeId=(VOLUME, 0, 0),
            flags=VLF_RWEXISTS,
        )


class MemConnection(FakeConnection):
    """What the cache manager asks of a connection besides calls."""

    failed = False

    @property
    def last_heard(self) -> float:
        return trio.current_time()

    def close(self) -> None:
        pass


class MemEndpoint:
    """Connections to FS_ADDR reach the fileserver, to VL_ADDR the VL server; services the
    cache manager offers (its callback service) are recorded, never called."""

    def __init__(self, nursery: trio.Nursery, fileserver: MemFileServer) -> None:
        self.nursery = nursery
        self.handlers = {
            (FS_ADDR, FS.service_id): make_dispatcher(FS, fileserver),
            (VL_ADDR, VL.service_id): make_dispatcher(VL, MemVolumeLocation()),
        }
        self.served: dict[int, Any] = {}

    def connect(self, addr: tuple[str, int], service_id: int, *args: Any, **kw: Any) -> Any:
        return MemConnection(self.nursery, self.handlers[(addr[0], service_id)])

    def serve(self, service_id: int, handler: Any, securities: Any = ()) -> None:
        self.served[service_id] = handler

    def round_trip(self, addr: tuple[str, int]) -> tuple[float, float]:
        """Every server is near and was heard from just now: the ranker probes none."""
        return 0.0001, trio.current_time()


@asynccontextmanager
async def mem_manager(
    tmp_path: Path, server: MemFileServer | None = None, **config: Any
) -> AsyncIterator[tuple[CacheManager, MemFileServer]]:
    """A running cache manager (anonymous callers) on the cache in `tmp_path`, and its
    fileserver (a new one, unless `server` is given: a restarted daemon's).

    Probes of a server marked down are not held back for a second after the last one
    (probe_min_gap): the retries here come at once, where the daemon's come store_retry
    seconds apart."""
    server = server or MemFileServer()
    cells = CellDB(parse_cellservdb(f">{CELL}\n{VL_ADDR} #vl\n"), CELL)
    with CacheStore(tmp_path / "cache", 1 << 26, chunk_size=CHUNK) as store:
        async with trio.open_nursery() as nursery:
            endpoint = MemEndpoint(nursery, server)
            settings = ManagerConfig(**{**QUIET, **config})
            m = CacheManager(settings, endpoint, cells, store, TokenStore(), Stats())  # type: ignore[arg-type]
            m.servers.config = replace(m.servers.config, probe_min_gap=0.0)
            server.broken = lambda fids: m.registry.break_fids(FS_ADDR, fids)
            await nursery.start(m.run)
            yield m, server
            nursery.cancel_scope.cancel()
