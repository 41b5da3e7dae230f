"""The errno mapping, vnode rights, the cell database, callback-break handling, and the
status shown when a store ends while a status request waits."""

from __future__ import annotations

import errno
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio

from afsfuse.cache.store import CacheStore
from afsfuse.fs import status as fs_status
from afsfuse.fs.callback import Fid
from afsfuse.fs.cell import CellDB
from afsfuse.fs.errors import FsError, errno_for, fs_error
from afsfuse.fs.manager import CacheManager, ManagerConfig
from afsfuse.fs.operation import NO_CALLBACK, ReplyOrigin
from afsfuse.fs.stats import Stats
from afsfuse.fs.vnode import AfsFid, Status, Vnode
from afsfuse.keyring.store import Identity, TokenStore
from afsfuse.keyring.token import Token
from afsfuse.rx import rxkad
from afsfuse.rx.errors import RX_CALL_DEAD, RXGEN_CC_UNMARSHAL, RXGEN_OPCODE
from afsfuse.rx.interfaces import fs as fsint
from afsfuse.rx.interfaces.fs import UAE_BASE
from afsfuse.rx.interfaces.vl import VL_NOENT
from afsfuse.vl.cellservdb import parse_cellservdb
from afsfuse.vl.dns import CellLookupError, CellServers, DnsServer


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (13, errno.EACCES),
        (UAE_BASE + errno.EACCES - 1, errno.EACCES),
        (UAE_BASE + errno.ENOTEMPTY - 1, errno.ENOTEMPTY),
        (fsint.VNOVNODE, errno.ENOENT),
        (fsint.VOVERQUOTA, errno.EDQUOT),
        (fsint.VDISKFULL, errno.ENOSPC),
        (fsint.VBUSY, errno.EWOULDBLOCK),
        (fsint.VNOVOL, errno.ENODEV),
        (fsint.VICETOKENDEAD, errno.EKEYEXPIRED),
        (RX_CALL_DEAD, errno.ETIMEDOUT),
        (RXGEN_CC_UNMARSHAL, errno.EIO),
        (RXGEN_OPCODE, errno.EOPNOTSUPP),
        (rxkad.RXKADEXPIRED, errno.EKEYEXPIRED),
        (rxkad.RXKADBADTICKET, errno.EKEYREJECTED),
        (rxkad.RXKADSEALEDINCON, errno.EPROTO),
        (VL_NOENT, errno.ENOENT),
        (123456789, errno.EIO),
    ],
)
def test_errno_mapping(code: int, expected: int) -> None:
    assert errno_for(code) == expected


def test_fs_error_names_code_and_operation() -> None:
    error = fs_error(fsint.VOVERQUOTA, "FS.StoreData64")
    assert isinstance(error, OSError)
    assert error.errno == errno.EDQUOT
    assert "VOVERQUOTA" in str(error) and "FS.StoreData64" in str(error)


def afs_status(**fields: int) -> SimpleNamespace:
    base = dict.fromkeys(fsint.AFSFetchStatus._fields, 0)
    base.update(InterfaceVersion=1, FileType=1, UnixModeBits=0o100644)
    base.update(fields)
    return SimpleNamespace(**base)


def test_status_joins_split_words() -> None:
    status = Status.from_afs(
        afs_status(Length=5, Length_hi=1, DataVersion=7, dataVersionHigh=2, lockCount=0xFFFFFFFF)
    )
    assert status.size == (1 << 32) + 5
    assert status.data_version == (2 << 32) + 7
    assert status.mode == 0o644
    assert status.lock_count == -1


def token(name: str) -> Token:
    return Token("c", "C", name, b"k" * 8, b"t" * 40, 0, 2**40)


def test_rights_are_known_per_token_and_forgotten_on_break() -> None:
    alice, bob = token("alice"), token("bob")
    vnode = Vnode(AfsFid("c", 1, 2, 3))
    vnode.status = Status.from_afs(afs_status(CallerAccess=0x9, AnonymousAccess=0x8))
    vnode.cb_expires = 100.0
    vnode.access[alice] = 0x9
    assert vnode.allows(alice, fsint.PRSFS_READ, now=50.0)
    # Bob has no known rights: only the anonymous ones count for him.
    assert not vnode.allows(bob, fsint.PRSFS_READ, now=50.0)
    assert vnode.allows(bob, fsint.PRSFS_LOOKUP, now=50.0)
    assert vnode.rights(bob, now=50.0) is None
    assert not vnode.allows(alice, fsint.PRSFS_READ, now=100.0)  # promise expired
    vnode.invalidate()
    assert not vnode.allows(alice, fsint.PRSFS_READ, now=50.0)
    assert vnode.breaks == 1 and vnode.status is not None


CSDB = """>home.example #home
10.1.0.1 #db1
>other.example
10.2.0.1 #db
"""


class FakeResolver:
    def __init__(self, answers: dict[str, object]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def lookup(self, cell: str):
        self.asked.append(cell)
        answer = self.answers.get(cell)
        if isinstance(answer, Exception):
            raise answer
        return answer


async def test_cell_db_files_alias_and_dns() -> None:
    dns_cell = CellServers(
        "dns.example", "afs3-vlserver", "srv", (DnsServer("h", "10.3.0.1", 7003, 0),), 0
    )
    resolver = FakeResolver(
        {"dns.example": dns_cell, "broken.example": CellLookupError("servfail")}
    )
    db = CellDB(parse_cellservdb(CSDB), "home.example", {"home": "home.example"}, resolver)  # type: ignore[arg-type]
    assert (await db.lookup("HOME.example")).vlservers == (("10.1.0.1", 7003),)  # type: ignore[union-attr]
    assert (await db.lookup("home")).name == "home.example"  # type: ignore[union-attr]
    found = await db.lookup("dns.example")
    assert found is not None and found.source == "DNS" and found.vlservers == (("10.3.0.1", 7003),)
    assert "dns.example" in db.known_cells()
    assert await db.lookup("nowhere.example") is None
    # A failed lookup is remembered for a while: no second query.
    assert await db.lookup("broken.example") is None
    assert await db.lookup("broken.example") is None
    assert resolver.asked.count("broken.example") == 1
    assert db.aliases() == {"home": "home.example"}


class FakeEndpoint:
    def serve(self, service_id, handler, securities=()) -> None:
        self.served = service_id

    def round_trip(self, addr):
        return None  # nothing measured: ranks by distance


@pytest.fixture
def manager(tmp_path: Path):
    store = CacheStore(tmp_path / "cache", 1 << 24)
    db = CellDB(parse_cellservdb(CSDB), "home.example")
    m = CacheManager(ManagerConfig(), FakeEndpoint(), db, store, TokenStore(), Stats())  # type: ignore[arg-type]
    yield m
    store.close()


def held(m: CacheManager, fid: AfsFid, server: str = "10.9.0.1") -> Vnode:
    vnode = m.vnodes.get(fid)
    vnode.status = Status.from_afs(afs_status())
    vnode.cb_server = server
    vnode.cb_expires = trio.current_time() + 100
    vnode.access[None] = 0x9
    return vnode


async def test_breaks_invalidate_and_notify(manager: CacheManager) -> None:
    seen: list = []
    manager.on_invalidate(seen.append)
    a, b, c = (AfsFid("home.example", 5, n, n) for n in (2, 3, 4))
    other = AfsFid("home.example", 6, 2, 2)
    records = {fid: held(manager, fid) for fid in (a, b, c)}
    held(manager, other, server="10.9.0.2")

    manager.registry.break_fids("10.9.0.1", [Fid(5, 2, 2)])
    assert seen == [a]
    assert not records[a].callback_valid(trio.current_time())
    assert records[b].callback_valid(trio.current_time())

    # A volume callback (vnode 0): every file of the volume.
    manager.registry.break_fids("10.9.0.1", [Fid(5, 0, 0)])
    assert set(seen[1:]) == {a, b, c}
    # InitCallBackState: everything that server promised, nothing from others.
    seen.clear()
    held(manager, a)
    manager.registry.break_server("10.9.0.1")
    assert seen == [a]
    assert manager.vnodes.get(other).callback_valid(trio.current_time())
    assert manager.stats.callbacks_received == 3


async def test_vnode_records_are_bounded_and_an_evicted_one_is_as_if_broken(
    manager: CacheManager,
) -> None:
    """Records beyond the limit go least recently used first; the kernel is told of each
    (its promise is gone, so no break would reach it), and the fid starts afresh."""
    seen: list = []
    manager.on_invalidate(seen.append)
    manager.vnodes.limit = 3
    a, b, c, d = (AfsFid("home.example", 5, n, n) for n in (2, 3, 4, 5))
    records = {fid: held(manager, fid) for fid in (a, b, c)}
    for fid in (a, b, c, d):
        promised = Fid(fid.volume, fid.vnode, fid.unique)
        manager.registry.promise("10.9.0.1", promised, trio.current_time() + 100)
    manager.vnodes.get(a)  # a is used again: b is now the oldest
    held(manager, d)
    assert len(manager.vnodes) == 3 and manager.vnodes.peek(b) is None
    assert seen == [b]
    assert not manager.registry.valid(Fid(5, 3, 3), trio.current_time())
    assert manager.registry.valid(Fid(5, 2, 2), trio.current_time())
    fresh = manager.vnodes.get(b)
    assert fresh is not records[b] and fresh.status is None
    # Breaks find the records through the volume index, and never an evicted one.
    manager.registry.break_fids("10.9.0.1", [Fid(5, 0, 0)])
    assert set(seen[1:]) >= {a, d} and records[b].breaks == 0
    assert list(manager.vnodes.matching(6)) == []


async def test_api_boundary_turns_surprises_into_eio(manager: CacheManager, caplog) -> None:
    async def broken(*args, **kwargs):
        raise KeyError("surprise")

    manager.status.fetch = broken  # type: ignore[method-assign]
    with pytest.raises(FsError) as caught:
        await manager.getattr(AfsFid("home.example", 1, 1, 1), Identity(1))
    assert caught.value.errno == errno.EIO
    assert "failed unexpectedly" in caplog.text and "surprise" in caplog.text


async def test_malformed_directory_is_eio_and_logged(manager: CacheManager, caplog) -> None:
    fid = AfsFid("home.example", 1, 1, 1)
    vnode = held(manager, fid)
    vnode.status = Status.from_afs(afs_status(FileType=fsint.FILE_DIRECTORY, DataVersion=4))

    async def fetch_whole(fid, token, vnode):
        return 4, b"not a directory" * 10

    manager.dirs.fetch_whole = fetch_whole  # type: ignore[method-assign]
    with pytest.raises(FsError) as caught:
        await manager.readdir(fid, Identity(1))
    assert caught.value.errno == errno.EIO
    assert "malformed directory" in caplog.text


def test_connections_of_a_replaced_token_are_closed(tmp_path: Path) -> None:
    """ServerTable.forget_token was never called: connections made with a token that was
    replaced (a new aklog) or removed (unlog) stayed open."""
    closed: list[str] = []

    class Endpoint(FakeEndpoint):
        def connect(self, address, service_id, security, **kw):
            return SimpleNamespace(close=lambda: closed.append(security.__class__.__name__))

    tokens = TokenStore()
    with CacheStore(tmp_path / "cache", 1 << 24) as store:
        db = CellDB(parse_cellservdb(CSDB), "home.example")
        m = CacheManager(ManagerConfig(), Endpoint(), db, store, tokens, Stats())  # type: ignore[arg-type]
        alice = Identity(1001)
        tokens.set(alice, token("alice"))
        server = m.servers.get("10.9.0.1")
        m.servers.connection(server, tokens.get(alice, "c"))
        m.servers.connection(server, None)
        tokens.set(alice, token("alice-again"))
        assert closed == ["RxkadClient"]
        m.servers.connection(server, tokens.get(alice, "c"))
        tokens.remove(alice)
        assert closed == ["RxkadClient", "RxkadClient"]


async def test_bulk_status_shows_a_held_status_with_the_dirty_state_of_its_moment(
    manager: CacheManager,
) -> None:
    """A store that ends while bulk_status waits for the server (for another fid) must not
    turn the held status of before it into the length from before the writes."""
    written, other = AfsFid("home.example", 5, 2, 2), AfsFid("home.example", 5, 4, 4)
    vnode = held(manager, written)
    vnode.status = Status.from_afs(afs_status(Length=1000, DataVersion=5))
    manager.store.dirty.begin(written, 5, 1000)
    manager.store.dirty.truncate(written, 3000)  # written locally, not stored yet

    async def bulk(cell, volume, fids, token):
        assert fids == [other]
        await trio.lowlevel.checkpoint()
        # Meanwhile the close of the writer stores the data: the store's reply is the new
        # status, and the dirty state goes.
        vnode.status = Status.from_afs(afs_status(Length=3000, DataVersion=6))
        manager.store.dirty.discard(written)
        return [Status.from_afs(afs_status(Length=7, DataVersion=1))]

    manager.status.bulk = bulk  # type: ignore[method-assign]
    shown = await manager.bulk_status([written, other], Identity(0))
    assert [s.size for s in shown] == [3000, 7]  # type: ignore[union-attr]


async def test_a_status_answered_before_our_store_does_not_undo_it(
    manager: CacheManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A status fetch that the server answered before this client's store, whose reply came
    after the store's, is older than what the store left: the store's status stays, and
    the fetch is shown with it, not with the length from before the writes."""
    written = AfsFid("home.example", 5, 2, 2)
    vnode = manager.vnodes.get(written)
    vnode.status = Status.from_afs(afs_status(Length=1000, DataVersion=5))  # no callback
    manager.store.dirty.begin(written, 5, 1000)
    manager.store.dirty.truncate(written, 3000)
    server = SimpleNamespace(addr="10.9.0.1", no_inline_bulk=False)
    seen: list = []
    manager.on_invalidate(seen.append)

    async def inline_bulk_status(conn, fids):
        await trio.sleep(0.001)
        # The server answered this call at version 5; then the writer's store ended.
        store_reply = afs_status(Length=3000, DataVersion=6)
        origin = ReplyOrigin(None, server, sent, vnode.breaks)  # type: ignore[arg-type]
        manager.status.commit(vnode, store_reply, NO_CALLBACK, origin, ours=6)
        manager.store.dirty.discard(written)
        callback = SimpleNamespace(CallBackType=1, ExpirationTime=3600)
        old = afs_status(Length=1000, DataVersion=5, CallerAccess=0x9)
        return SimpleNamespace(StatArray=[old], CBArray=[callback])

    async def call(cell, volume, token, name, op):
        return await op(None, server)

    sent = trio.current_time()
    monkeypatch.setattr(fs_status.FS, "InlineBulkStatus", inline_bulk_status)
    manager.rotator.call = call  # type: ignore[method-assign]
    [shown] = await manager.bulk_status([written], Identity(0))
    assert (shown.size, shown.data_version, shown.caller_access) == (3000, 6, 0x9)  # type: ignore[union-attr]
    assert vnode.status is not None and vnode.status.data_version == 6
    assert seen == []  # nothing changed that the kernel holds

    # An older version asked for after the held one came is the server's word (a volume
    # restored from a dump): taken.
    restored = afs_status(Length=10, DataVersion=2)
    later = trio.current_time() + 1
    origin = ReplyOrigin(None, server, later, vnode.breaks)  # type: ignore[arg-type]
    manager.status.commit_fetched(vnode, restored, NO_CALLBACK, origin)
    assert vnode.status.data_version == 2 and seen == [written]


async def test_a_reply_overtaken_by_a_later_one_does_not_take_the_file_back(
    manager: CacheManager,
) -> None:
    fid = AfsFid("home.example", 1, 2, 2)
    vnode = manager.vnodes.get(fid)
    server = SimpleNamespace(addr="10.9.0.1")
    none = SimpleNamespace(CallBackType=fsint.CB_DROPPED, ExpirationTime=0)

    def absorb(version: int, sent: float) -> Status:
        reply = afs_status(DataVersion=version, Length=version)
        origin = ReplyOrigin(None, server, sent, vnode.breaks)  # type: ignore[arg-type]
        return manager.status.commit(vnode, reply, none, origin)

    now = trio.current_time()
    absorb(7, sent=now)
    # A fetch asked for before version 7 came, answered before the change: its own version
    # is returned (its data is labelled with it), but the file stays at 7.
    assert absorb(6, sent=now - 1).data_version == 6
    assert vnode.status is not None and vnode.status.data_version == 7
    # Asked for after it, an older version is the fileserver's word (a restored volume).
    absorb(5, sent=now + 1)
    assert vnode.status.data_version == 5


async def test_a_read_is_served_at_the_version_the_reader_was_shown_while_in_memory(
    manager: CacheManager,
) -> None:
    chunk = manager.store.chunk_size
    fid = AfsFid("home.example", 1, 2, 2)
    vnode = held(manager, fid)
    vnode.status = Status.from_afs(afs_status(DataVersion=3, Length=chunk + 10))
    old, new = b"o" * chunk + b"O" * 6, b"n" * chunk + b"N" * 10
    for version, data in ((2, old), (3, new)):
        manager._memory.put((fid, version, 0), data[:chunk])
        manager._memory.put((fid, version, 1), data[chunk:])
    seen: list = []
    manager.on_invalidate(seen.append)
    who = Identity(1)

    got = await manager.read_shown(fid, chunk - 2, 100, who, (2, len(old)))
    assert (got.data, got.version, got.length) == (b"ooOOOOOO", 2, len(old))
    assert seen == [fid]  # pages of version 2 may now be in the kernel: push the change again
    got = await manager.read_shown(fid, chunk - 2, 100, who, (3, len(new)))
    assert (got.data, got.version) == (b"nn" + b"N" * 10, 3) and seen == [fid]
    # Version 2's second chunk is gone: the version the fileserver has, whole.
    manager._memory.drop(lambda f: True)
    manager._memory.put((fid, 3, 0), new[:chunk])
    manager._memory.put((fid, 3, 1), new[chunk:])
    got = await manager.read_shown(fid, chunk - 2, 100, who, (2, len(old)))
    assert (got.data, got.version, got.length) == (b"nn" + b"N" * 10, 3, len(new))
