"""The Rx stack against the real fileserver under impairment: loss, duplication, reordering,
delay (through the lossy relay), a server that vanishes, and garbage datagrams."""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import struct
import time

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from afsfuse.keyring import Token
from afsfuse.rx.driver import ClientConnection, Endpoint
from afsfuse.rx.errors import RxTimeout
from afsfuse.rx.interfaces.fs import FS, AFSFid, AFSStoreStatus
from afsfuse.rx.interfaces.vl import VL
from afsfuse.rx.rxkad import Level, RxkadClient
from afsfuse.rx.security import RXNULL, ClientSecurity
from afsfuse.testing.cell import Cell
from afsfuse.testing.relay import Relay, open_relay

pytestmark = pytest.mark.cell

FILE_SIZE = 10 * 1024 * 1024
CHUNK = 256 * 1024
DEAD_TIME = 3.0
#: What dead-peer detection may take beyond dead_time: the timer's own rounding, a
#: smoothed-RTT allowance and a slow CI machine.
DEAD_SLACK = 2.0
#: system:administrators all rights, system:anyuser rlidwk: anonymous may create and write.
OPEN_ACL = "2\n0\nsystem:administrators 127\nsystem:anyuser 63\n"
STORE_MODE = AFSStoreStatus(
    Mask=8, ClientModTime=0, Owner=0, Group=0, UnixModeBits=0o644, SegSize=0
)
MKDIR_MODE = AFSStoreStatus(
    Mask=8, ClientModTime=0, Owner=0, Group=0, UnixModeBits=0o755, SegSize=0
)


def fileserver(cell: Cell) -> tuple[str, int]:
    return (cell.servers[0].addr, FS.port)


def crypt(token: Token) -> RxkadClient:
    return RxkadClient(token.session_key, token.ticket, token.kvno, Level.CRYPT)


async def volume_root(endpoint: Endpoint, cell: Cell, name: str) -> AFSFid:
    conn = endpoint.connect((cell.db_server.addr, VL.port), VL.service_id)
    entry = await VL.GetEntryByNameU(conn, name)
    return AFSFid(Volume=entry.volumeId[0], Vnode=1, Unique=1)


@pytest.fixture
async def test_root(cm, cell: Cell) -> AFSFid:
    return await volume_root(cm.endpoint, cell, "test")


@pytest.fixture
async def open_dir(cm, cell: Cell, tokens: dict[str, Token], test_root: AFSFid) -> AFSFid:
    """A directory in `test` where anonymous (rxnull) callers may create and write files."""
    conn = cm.endpoint.connect(fileserver(cell), FS.service_id, crypt(tokens["admin"]))
    made = await FS.MakeDir(conn, test_root, f"robust-{secrets.token_hex(4)}", MKDIR_MODE)
    await FS.OldStoreACL(conn, made.OutFid, OPEN_ACL.encode() + b"\0")
    return made.OutFid


async def store_and_fetch(conn: ClientConnection, directory: AFSFid, data: bytes) -> bytes:
    """CreateFile + StoreData64 of `data` + FetchData64 of the whole file: the bytes read."""
    created = await FS.CreateFile(conn, directory, f"f-{secrets.token_hex(4)}", STORE_MODE)
    fid = created.OutFid
    async with FS.StoreData64.stream(conn, fid, STORE_MODE, 0, len(data), len(data)) as store:
        for pos in range(0, len(data), CHUNK):
            await store.send(data[pos : pos + CHUNK])
    assert store.result.OutStatus.Length == len(data)
    async with FS.FetchData64.stream(conn, fid, 0, len(data)) as fetch:
        got = await fetch.read_all()
    return got


def impaired_enough(relay: Relay) -> None:
    """The relay really did drop, duplicate and reorder, both ways."""
    for way in (relay.stats.to_server, relay.stats.to_client):
        assert way.forwarded > 1000, relay.stats
        assert way.dropped > 0, relay.stats
        assert way.duplicated > 0, relay.stats
        assert way.reordered > 0, relay.stats


@pytest.mark.parametrize("who", ["admin-crypt", "anonymous"])
async def test_store_and_fetch_10mb_through_a_lossy_relay(
    cm, cell: Cell, tokens: dict[str, Token], open_dir: AFSFid, who: str
) -> None:
    security: ClientSecurity = crypt(tokens["admin"]) if who == "admin-crypt" else RXNULL
    data = os.urandom(FILE_SIZE)
    started = time.monotonic()
    # About 10 s for the store and 30 s for the fetch, bounded by the fileserver's own
    # congestion control at this loss rate; the limit only guards against a hang.
    with trio.fail_after(120):
        async with open_relay(
            fileserver(cell), loss=0.10, dup=0.05, reorder=0.05, delay=(0, 0.005), seed=20240
        ) as relay:
            conn = cm.endpoint.connect(relay.addr, FS.service_id, security)
            got = await store_and_fetch(conn, open_dir, data)
    elapsed = time.monotonic() - started
    print(f"\n{who}: 10 MB store+fetch through the relay in {elapsed:.1f} s; {relay.stats}")
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    impaired_enough(relay)


@pytest.fixture
async def big_file(
    cm, cell: Cell, tokens: dict[str, Token], open_dir: AFSFid
) -> tuple[AFSFid, bytes]:
    """A 10 MB file of random bytes, stored straight to the fileserver (no relay)."""
    conn = cm.endpoint.connect(fileserver(cell), FS.service_id, RXNULL)
    data = os.urandom(FILE_SIZE)
    created = await FS.CreateFile(conn, open_dir, f"big-{secrets.token_hex(4)}", STORE_MODE)
    await FS.StoreData64(conn, created.OutFid, STORE_MODE, 0, len(data), len(data), data=data)
    return created.OutFid, data


def unused_address(cell: Cell) -> str:
    """An address in the cell's subnet where no machine answers."""
    taken = {cell.host_addr, *(s.addr for s in cell.servers)}
    prefix = cell.host_addr.rsplit(".", 1)[0]
    return next(f"{prefix}.{n}" for n in range(250, 10, -1) if f"{prefix}.{n}" not in taken)


async def timed_timeout(coro) -> float:
    """Run coro, which must fail with RxTimeout; return how long that took."""
    started = trio.current_time()
    with trio.fail_after(DEAD_TIME + 10), pytest.raises(RxTimeout):
        await coro
    return trio.current_time() - started


async def test_a_server_that_never_answers_times_out_and_the_endpoint_goes_on(
    cm, cell: Cell, test_root: AFSFid
) -> None:
    silent = cm.endpoint.connect(
        (unused_address(cell), FS.port), FS.service_id, dead_time=DEAD_TIME
    )
    took = await timed_timeout(FS.FetchStatus(silent, test_root))
    print(f"\nsilent server: RxTimeout after {took:.2f} s (dead_time {DEAD_TIME})")
    assert DEAD_TIME - 0.1 <= took < DEAD_TIME + DEAD_SLACK
    # The same endpoint still makes calls.
    live = cm.endpoint.connect(fileserver(cell), FS.service_id)
    status = await FS.FetchStatus(live, test_root)
    assert status.OutStatus.FileType == 2


async def test_a_fileserver_gone_mid_fetch_times_out(cm, cell: Cell, big_file) -> None:
    fid, _ = big_file
    async with open_relay(fileserver(cell), seed=1) as relay:
        conn = cm.endpoint.connect(relay.addr, FS.service_id, dead_time=DEAD_TIME)

        async def fetch() -> None:
            async with FS.FetchData64.stream(conn, fid, 0, FILE_SIZE) as stream:
                await stream.read(1 << 20)
                relay.loss = 1.0  # the server vanishes, both ways
                await stream.read_all()

        took = await timed_timeout(fetch())
    print(f"\nserver gone mid-fetch: RxTimeout after {took:.2f} s; {relay.stats}")
    assert took < DEAD_TIME + DEAD_SLACK
    assert relay.stats.to_client.forwarded > 700 and relay.stats.to_client.dropped > 0


async def test_a_fileserver_gone_mid_store_times_out(cm, cell: Cell, open_dir: AFSFid) -> None:
    data = os.urandom(FILE_SIZE)
    async with open_relay(fileserver(cell), seed=2) as relay:
        conn = cm.endpoint.connect(relay.addr, FS.service_id, dead_time=DEAD_TIME)
        created = await FS.CreateFile(conn, open_dir, f"gone-{secrets.token_hex(4)}", STORE_MODE)

        async def store() -> None:
            stream_ = FS.StoreData64.stream(
                conn, created.OutFid, STORE_MODE, 0, FILE_SIZE, FILE_SIZE
            )
            async with stream_ as stream:
                await stream.send(data[: 1 << 20])
                # send() returns once the data is queued: cut the server off only when a
                # good part of it is through, so the store is really under way.
                while relay.stats.to_server.forwarded < 500:
                    await trio.sleep(0.005)
                relay.loss = 1.0
                await stream.send(data[1 << 20 :])

        took = await timed_timeout(store())
    print(f"\nserver gone mid-store: RxTimeout after {took:.2f} s; {relay.stats}")
    assert took < DEAD_TIME + DEAD_SLACK
    assert relay.stats.to_server.forwarded >= 500 and relay.stats.to_server.dropped > 0


# ----- garbage ------------------------------------------------------------------------------

_u32 = st.integers(0, 2**32 - 1)
_small = st.integers(0, 40)
header_garbage = st.fixed_dictionaries(
    {
        # Which live connection the header names: ours to the fileserver, or the
        # fileserver's callback connection to us.
        "target": st.sampled_from(["our-call", "our-conn", "callback-conn"]),
        "type": st.integers(0, 15) | st.integers(0, 255),
        "flags": st.integers(0, 255),
        "seq": _small | _u32,
        "serial": _small | _u32,
        "call_delta": st.sampled_from([0, 0, 1, -1]) | st.integers(-(2**31), 2**31),
        "channel": st.integers(0, 3),
        "security": st.sampled_from([0, 2]) | st.integers(0, 255),
        "service": st.sampled_from([1, 0]) | st.integers(0, 65535),
        "body": st.binary(max_size=80),
    }
)
garbage = st.one_of(st.binary(max_size=1500), header_garbage)


def forge(spec: dict | bytes, endpoint: Endpoint, our_conn: ClientConnection) -> bytes:
    """Turn a drawn spec into a datagram aimed at the endpoint's live state."""
    if isinstance(spec, bytes):
        return spec
    core = endpoint._core
    if spec["target"] == "callback-conn" and core._server_conns:
        epoch, cid, _addr = next(iter(core._server_conns))
        call_number = max(core._server_conns[epoch, cid, _addr].call_numbers)
    else:
        epoch, cid = core.epoch, our_conn._core.cid
        call_number = max(our_conn._core.call_numbers)
    channel = spec["channel"] if spec["target"] != "our-call" else 0
    header = struct.pack(
        ">IIIIIBBBBHH",
        epoch,
        cid | channel,
        (call_number + spec["call_delta"]) & 0xFFFFFFFF,
        spec["seq"],
        spec["serial"],
        spec["type"],
        spec["flags"],
        0,
        spec["security"],
        0,
        spec["service"],
    )
    return header + spec["body"]


async def test_garbage_never_breaks_the_endpoint_or_a_running_call(
    cm, cell: Cell, big_file
) -> None:
    fid, data = big_file
    endpoint = cm.endpoint
    conn = endpoint.connect(fileserver(cell), FS.service_id)
    sender = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sender.bind(("127.0.0.1", 0))
    target = ("127.0.0.1", endpoint.port)
    sent = 0
    garbage_done = trio.Event()
    got = bytearray()
    remaining_when_done = 0

    async def fetch() -> None:
        nonlocal remaining_when_done
        async with FS.FetchData64.stream(conn, fid, 0, FILE_SIZE) as stream:
            # Read slowly while the garbage flies, so the call stays in progress.
            while not garbage_done.is_set() and stream.remaining > (1 << 20):
                got.extend(await stream.read(16 * 1024))
                await trio.sleep(0.01)
            remaining_when_done = stream.remaining
            got.extend(await stream.read_all())

    async def send_one(datagram: bytes) -> None:
        nonlocal sent
        await sender.sendto(datagram, target)
        sent += 1
        await trio.sleep(0)

    @settings(
        max_examples=300,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(garbage)
    def throw(spec: dict | bytes) -> None:
        trio.from_thread.run(send_one, forge(spec, endpoint, conn))

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetch)
            await trio.sleep(0.2)  # the call is under way (and the fileserver called us)
            await trio.to_thread.run_sync(throw)
            garbage_done.set()
    sender.close()

    core = endpoint._core
    print(f"\ngarbage: {sent} datagrams, {core.stats.bogus} dropped as malformed")
    assert sent >= 300
    assert core._server_conns, "the fileserver's callback connection was a target"
    assert remaining_when_done > 0, "the call ended before the garbage did"
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    # The endpoint still serves new calls.
    status = await FS.FetchStatus(conn, fid)
    assert status.OutStatus.Length == FILE_SIZE
