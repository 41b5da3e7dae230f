"""Callbacks against the real fileserver: promises, breaks, give-ups, and the fileserver's
questions to our CB service (TellMeAboutYourself, ProbeUuid)."""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio

from afsfuse.fs.callback import Break, CallbackRegistry, Fid
from afsfuse.fs.cmservice import CacheManagerService
from afsfuse.keyring import Token
from afsfuse.rx.driver import ClientConnection, ServerCall, open_endpoint
from afsfuse.rx.interfaces.fs import (
    CALLBACK_VERSION,
    CB_DROPPED,
    FS,
    AFSCallBack,
    AFSFid,
    AFSStoreStatus,
)
from afsfuse.rx.rxkad import Level, RxkadClient
from afsfuse.testing.cell import Cell

pytestmark = pytest.mark.cell

DEADLINE = 30


class WatchedService(CacheManagerService):
    """The real CB service, noting which questions the fileserver asked it."""

    def __init__(self, registry: CallbackRegistry, instance_uuid: uuid.UUID | None) -> None:
        super().__init__(registry, instance_uuid)
        self.told_about_ourselves = 0
        self.probed: list[uuid.UUID] = []

    async def TellMeAboutYourself(self, call: ServerCall):
        self.told_about_ourselves += 1
        return await super().TellMeAboutYourself(call)

    async def ProbeUuid(self, call: ServerCall, clientUuid: uuid.UUID) -> None:
        self.probed.append(clientUuid)
        await super().ProbeUuid(call, clientUuid)


class CacheManager:
    """One cache-manager endpoint talking to the cell's fileserver as admin."""

    def __init__(self, service: WatchedService, fs: ClientConnection, server: str) -> None:
        self.service = service
        self.registry = service.registry
        self.fs = fs
        self.server = server
        self.breaks: list[Break] = []
        self.registry.add_listener(self.breaks.append)

    async def fetch_status(self, fid: AFSFid) -> None:
        """FetchStatus, recording the callback promise as a cache manager would."""
        reply = await FS.FetchStatus(self.fs, fid)
        assert reply.CallBack.ExpirationTime > 0
        expires = trio.current_time() + reply.CallBack.ExpirationTime
        self.registry.promise(self.server, to_fid(fid), expires)

    def broke(self, fid: AFSFid) -> bool:
        return any(b.fid == to_fid(fid) for b in self.breaks)

    def break_event(self, fid: AFSFid) -> trio.Event:
        """An event set when a break for fid arrives."""
        event = trio.Event()

        def listener(b: Break) -> None:
            if b.fid == to_fid(fid):
                event.set()

        self.registry.add_listener(listener)
        return event


def to_fid(fid: AFSFid) -> Fid:
    return Fid(fid.Volume, fid.Vnode, fid.Unique)


@pytest.fixture
def open_cm(cell: Cell, tokens: dict[str, Token]) -> Callable[..., object]:
    """`async with open_cm() as cm`: a fresh endpoint with its own CB service; pass
    instance_uuid to pose as an earlier cache manager."""

    @asynccontextmanager
    async def make(instance_uuid: uuid.UUID | None = None) -> AsyncIterator[CacheManager]:
        admin = tokens["admin"]
        security = RxkadClient(admin.session_key, admin.ticket, admin.kvno, Level.CLEAR)
        server = cell.servers[0].addr
        async with open_endpoint() as endpoint:
            service = WatchedService(CallbackRegistry(), instance_uuid)
            service.install(endpoint)
            fs = endpoint.connect((server, FS.port), FS.service_id, security)
            yield CacheManager(service, fs, server)
            # As a cache manager that shuts down does: otherwise the fileserver's next break
            # for these files waits for the closed port to time out.
            with trio.move_on_after(DEADLINE, shield=True):
                await FS.GiveUpAllCallBacks(fs)

    return make


@pytest.fixture(scope="module")
def test_root(cell: Cell) -> AFSFid:
    out = cell.exec("vos", "examine", "test", "-localauth")
    return AFSFid(int(out.split()[1]), 1, 1)


@asynccontextmanager
async def shared_file(cm: CacheManager, directory: AFSFid) -> AsyncIterator[AFSFid]:
    name = f"cb-{secrets.token_hex(4)}"
    created = await FS.CreateFile(cm.fs, directory, name, AFSStoreStatus())
    try:
        yield created.OutFid
    finally:
        with trio.move_on_after(DEADLINE, shield=True):
            await FS.RemoveFile(cm.fs, directory, name)


async def store(cm: CacheManager, fid: AFSFid, data: bytes) -> None:
    await FS.StoreData64(cm.fs, fid, AFSStoreStatus(), 0, len(data), len(data), data=data)


async def test_store_breaks_the_other_cache_managers_callback(open_cm, test_root: AFSFid) -> None:
    with trio.fail_after(DEADLINE):
        async with (
            open_cm() as reader,
            open_cm() as writer,
            shared_file(writer, test_root) as fid,
        ):
            await reader.fetch_status(fid)
            await writer.fetch_status(fid)
            assert reader.registry.valid(to_fid(fid), trio.current_time())
            broken = reader.break_event(fid)
            await store(writer, fid, os.urandom(5000))
            with trio.fail_after(1):
                await broken.wait()
            now = trio.current_time()
            assert not reader.registry.valid(to_fid(fid), now)
            # The writer's own promise stands: the server knows it has the new data.
            assert not writer.broke(fid)
            assert writer.registry.valid(to_fid(fid), now)


async def test_fileserver_asks_who_we_are_and_probes_a_known_uuid(
    open_cm, test_root: AFSFid
) -> None:
    with trio.fail_after(DEADLINE):
        async with open_cm() as first:
            await first.fetch_status(test_root)
            assert first.service.told_about_ourselves == 1
            assert first.service.probed == []
            # The same UUID from another port looks like a cache manager that moved: the
            # fileserver asks the old address whether that UUID is still there.
            async with open_cm(first.service.uuid) as moved:
                await moved.fetch_status(test_root)
                assert moved.service.told_about_ourselves == 1
            assert first.service.probed == [first.service.uuid]


async def test_given_up_callbacks_are_not_broken(open_cm, test_root: AFSFid) -> None:
    with trio.fail_after(DEADLINE):
        async with AsyncExitStack() as stack:
            quitter = await stack.enter_async_context(open_cm())
            holder = await stack.enter_async_context(open_cm())
            writer = await stack.enter_async_context(open_cm())
            fid = await stack.enter_async_context(shared_file(writer, test_root))
            for cm in (quitter, holder):
                await cm.fetch_status(fid)

            # GiveUpCallBacks names the fids, with one DROPPED callback for all of them.
            dropped = AFSCallBack(CALLBACK_VERSION, 0, CB_DROPPED)
            await FS.GiveUpCallBacks(quitter.fs, [fid], [dropped])
            broken = holder.break_event(fid)
            await store(writer, fid, b"first")
            with trio.fail_after(1):
                await broken.wait()
            # The fileserver breaks every holder in one go; the quitter was not among them.
            assert not quitter.broke(fid)

            # GiveUpAllCallBacks drops everything the caller holds on this fileserver.
            await quitter.fetch_status(fid)
            await holder.fetch_status(fid)
            await FS.GiveUpAllCallBacks(holder.fs)
            broken = quitter.break_event(fid)
            holder.breaks.clear()
            await store(writer, fid, b"second")
            with trio.fail_after(1):
                await broken.wait()
            assert not holder.broke(fid)
