"""The trio driver over real UDP sockets on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import random
import re
import socket

import pytest
import trio
import trio.testing

from afsfuse.rx import packet as P
from afsfuse.rx.driver import RECEIVE_BATCH, ServerCall, open_endpoint
from afsfuse.rx.errors import RX_CALL_DEAD, RX_CALL_TIMEOUT, RX_USER_ABORT, RxAbort, RxTimeout
from afsfuse.rx.pathmtu import path_mtu
from afsfuse.rx.peer import ETHERNET_MTU

SERVICE = 52
LOCAL = "127.0.0.1"


async def echo(call: ServerCall) -> None:
    await call.send(await call.recv_rest())


async def test_echo_small_empty_and_multi_packet() -> None:
    async with open_endpoint(LOCAL) as server, open_endpoint(LOCAL) as client:
        server.serve(SERVICE, echo)
        conn = client.connect((LOCAL, server.port), SERVICE)
        assert conn.peer == (LOCAL, server.port) and conn.service_id == SERVICE
        with trio.fail_after(10):
            assert await conn.rpc(b"hello") == b"hello"
            assert await conn.rpc(b"") == b""
            payload = os.urandom(50_000)
            assert await conn.rpc(payload) == payload


async def test_ten_megabyte_split_call_both_ways() -> None:
    size = 10 * 1024 * 1024
    upload = random.Random(1).randbytes(size)
    download = random.Random(2).randbytes(size)
    seen: dict[str, str] = {}

    async def store_and_fetch(call: ServerCall) -> None:
        header = await call.recv_exactly(8)
        assert header == b"STORE+FE"
        digest = hashlib.sha256()
        buf = bytearray(100_000)
        while n := await call.recv_into(memoryview(buf)):
            digest.update(buf[:n])
        seen["server"] = digest.hexdigest()
        view = memoryview(download)
        for pos in range(0, size, 256 * 1024):
            await call.send(view[pos : pos + 256 * 1024])

    async with open_endpoint(LOCAL) as server, open_endpoint(LOCAL) as client:
        server.serve(SERVICE, store_and_fetch)
        conn = client.connect((LOCAL, server.port), SERVICE)
        with trio.fail_after(60):
            async with conn.new_call() as call:
                await call.send(b"STORE+FE")
                view = memoryview(upload)
                for pos in range(0, size, 300_000):
                    await call.send(view[pos : pos + 300_000])
                await call.close_send()
                digest = hashlib.sha256()
                got = 0
                while got < size:
                    chunk = await call.recv_exactly(min(65536, size - got))
                    digest.update(chunk)
                    got += len(chunk)
                assert await call.recv_rest() == b""
    assert seen["server"] == hashlib.sha256(upload).hexdigest()
    assert digest.hexdigest() == hashlib.sha256(download).hexdigest()


async def test_more_than_four_concurrent_calls_share_one_connection() -> None:
    running = 0
    peak = 0

    async def slow_echo(call: ServerCall) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        data = await call.recv_rest()
        await trio.sleep(0.05)
        running -= 1
        await call.send(data * 2)

    async with open_endpoint(LOCAL) as server, open_endpoint(LOCAL) as client:
        server.serve(SERVICE, slow_echo)
        conn = client.connect((LOCAL, server.port), SERVICE)
        results: dict[int, bytes] = {}

        async def one(i: int) -> None:
            results[i] = await conn.rpc(b"%d" % i)

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for i in range(12):
                    nursery.start_soon(one, i)
    assert results == {i: b"%d" % i * 2 for i in range(12)}
    assert peak == 4


async def test_handler_errors_reach_the_caller_and_the_endpoint_survives() -> None:
    async def failing(call: ServerCall) -> None:
        request = await call.recv_rest()
        if request == b"abort":
            raise RxAbort(1234)
        if request == b"explicit":
            await call.abort(77)
            return
        raise ValueError("handler bug")

    async with open_endpoint(LOCAL) as server, open_endpoint(LOCAL) as client:
        server.serve(SERVICE, failing)
        server.serve(SERVICE + 1, echo)
        conn = client.connect((LOCAL, server.port), SERVICE)
        with trio.fail_after(10):
            for request, code in ((b"abort", 1234), (b"bug", RX_USER_ABORT), (b"explicit", 77)):
                with pytest.raises(RxAbort) as info:
                    await conn.rpc(request)
                assert info.value.code == code
            other = client.connect((LOCAL, server.port), SERVICE + 1)
            assert await other.rpc(b"still here") == b"still here"


async def test_unknown_service_is_refused() -> None:
    async with open_endpoint(LOCAL) as server, open_endpoint(LOCAL) as client:
        conn = client.connect((LOCAL, server.port), 999)
        with trio.fail_after(10), pytest.raises(RxAbort) as info:
            await conn.rpc(b"x")
        assert info.value.code == -2


async def test_silent_peer_times_out_within_dead_time() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind((LOCAL, 0))
        async with open_endpoint(LOCAL) as client:
            conn = client.connect(silent.getsockname(), SERVICE, dead_time=1.0)
            start = trio.current_time()
            with trio.fail_after(5), pytest.raises(RxTimeout) as info:
                await conn.rpc(b"anyone?")
            assert info.value.code == RX_CALL_DEAD
            assert 0.9 <= trio.current_time() - start < 3.0


async def test_hard_timeout_while_the_server_thinks() -> None:
    async def forever(call: ServerCall) -> None:
        await call.recv_rest()
        await trio.sleep_forever()

    async with open_endpoint(LOCAL) as server, open_endpoint(LOCAL) as client:
        server.serve(SERVICE, forever)
        conn = client.connect((LOCAL, server.port), SERVICE, dead_time=3.0, hard_timeout=0.5)
        with trio.fail_after(5), pytest.raises(RxTimeout) as info:
            await conn.rpc(b"think")
        assert info.value.code == RX_CALL_TIMEOUT


async def test_caller_exception_aborts_the_call_on_the_server() -> None:
    outcome: list[int] = []

    async def reader(call: ServerCall) -> None:
        try:
            await call.recv_rest()
        except RxAbort as exc:
            outcome.append(exc.code)
            raise

    async with open_endpoint(LOCAL) as server, open_endpoint(LOCAL) as client:
        server.serve(SERVICE, reader)
        conn = client.connect((LOCAL, server.port), SERVICE)
        with trio.fail_after(10):
            with pytest.raises(KeyError):
                async with conn.new_call() as call:
                    await call.send(b"partial request" * 500)  # full packets go out now
                    await trio.sleep(0.05)
                    raise KeyError("caller gave up")
            while not outcome:
                await trio.sleep(0.01)
    assert outcome == [RX_USER_ABORT]


async def test_garbage_datagrams_do_not_kill_the_endpoint() -> None:
    rng = random.Random(5)
    async with open_endpoint(LOCAL) as server, open_endpoint(LOCAL) as client:
        server.serve(SERVICE, echo)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            for _ in range(300):
                raw.sendto(rng.randbytes(rng.randrange(0, 200)), (LOCAL, server.port))
            for ptype in range(16):
                header = P.Header(
                    0x80000001, 8, 1, 1, 1, ptype, rng.randrange(256), 0, 0, 0, SERVICE
                )
                raw.sendto(header.encode() + rng.randbytes(40), (LOCAL, server.port))
            await trio.sleep(0.1)
        conn = client.connect((LOCAL, server.port), SERVICE)
        with trio.fail_after(10):
            assert await conn.rpc(b"alive") == b"alive"


async def test_a_flood_that_wakes_no_task_still_lets_other_tasks_run_between_batches() -> None:
    total = 2 * RECEIVE_BATCH + 10
    async with open_endpoint(LOCAL) as endpoint:
        await trio.testing.wait_all_tasks_blocked()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as flooder:
            for _ in range(total):
                flooder.sendto(b"junk", (LOCAL, endpoint.port))
        seen = []
        with trio.fail_after(10):
            while endpoint.packets_received < total:
                await trio.lowlevel.checkpoint()
                seen.append(endpoint.packets_received)
    assert any(0 < count < total for count in seen)


class _FullBuffer:
    """A UDP socket whose send buffer is full at every other sendto."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.refused = 0

    def sendto(self, data: bytes, addr: tuple[str, int]) -> int:
        if (self.refused + self.sent) % 2 == 0:
            self.refused += 1
            raise BlockingIOError
        self.sent += 1
        return self._sock.sendto(data, addr)

    sent = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)


async def test_a_full_send_buffer_delays_datagrams_but_loses_none() -> None:
    payload = random.Random(3).randbytes(300_000)
    async with open_endpoint(LOCAL) as server, open_endpoint(LOCAL) as client:
        server.serve(SERVICE, echo)
        full = _FullBuffer(client._sock)
        client._sock = full  # type: ignore[assignment]
        conn = client.connect((LOCAL, server.port), SERVICE)
        with trio.fail_after(10):
            assert await conn.rpc(payload) == payload
    assert full.refused >= full.sent > 10


async def test_version_request_is_answered() -> None:
    async with open_endpoint(LOCAL) as server:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            raw.settimeout(5)
            request = P.Header(
                999, 0, 101, 0, 0, P.VERSION, P.CLIENT_INITIATED | P.LAST_PACKET, 0, 0, 0, 0
            )
            raw.sendto(request.encode() + b"\0", (LOCAL, server.port))
            await trio.lowlevel.wait_readable(raw)
            reply, _ = raw.recvfrom(1000)
    header = P.decode_header(reply)
    assert header.type == P.VERSION and header.call_number == 101
    assert not header.flags & P.CLIENT_INITIATED
    assert len(reply) == P.HEADER_SIZE + 65 and b"afsfuse" in reply


async def test_openafs_rxdebug_reads_version_and_stats() -> None:
    async with open_endpoint(LOCAL) as endpoint:
        with trio.fail_after(20):
            version = await trio.run_process(
                ["rxdebug", LOCAL, str(endpoint.port), "-version"], capture_stdout=True
            )
            stats = await trio.run_process(
                ["rxdebug", LOCAL, str(endpoint.port), "-noconns"], capture_stdout=True
            )
    assert b"AFS version:  afsfuse" in version.stdout
    assert b"calls waiting for a thread" in stats.stdout


async def test_openafs_rxdebug_ends_every_listing_with_sane_figures() -> None:
    async with open_endpoint(LOCAL) as server, open_endpoint(LOCAL) as client:
        server.serve(SERVICE, echo)
        conn = client.connect((LOCAL, server.port), SERVICE)
        assert await conn.rpc(b"ping") == b"ping"

        async def rxdebug(*options: str) -> str:
            with trio.fail_after(20):
                done = await trio.run_process(
                    ["rxdebug", LOCAL, str(client.port), *options], capture_stdout=True
                )
            return done.stdout.decode()

        plain = await rxdebug()
        # No call is under way, so no connection is "interesting": the list ends at once.
        assert plain.endswith("waiting for a thread\n0 threads are idle\n"
                              "0 calls have waited for a thread\nDone.\n")  # fmt: skip
        every = await rxdebug("-allconnections")
        assert every.count("Connection from host") == 1 and every.endswith("Done.\n")
        assert f"Connection from host {LOCAL}, port {server.port}, Cuid" in every
        assert "security index 0, client conn\n  rxnull level=0" in every
        assert "call 0: # 1, state dally, mode: eof" in every
        peers = await rxdebug("-peers", "-noconns")
        assert peers.count(f"Peer at host {LOCAL}, port {server.port}\n") == 1
        # Loopback carries 64 KiB datagrams: our packets are as big as we make them, both
        # ways, once the first ACK trailer told each end the other's size.
        assert peers.endswith("Done.\n") and "ifMTU 8588\tnatMTU 8588\tmaxMTU 8588" in peers
        rtt = re.search(r"rtt (\d+) msec, rtt_dev (\d+) msec", peers)
        assert rtt is not None and int(rtt[1]) < 1000
        stats = await rxdebug("-rxstats", "-noconns")
        counts = re.search(r"(\d+) server connections, (\d+) client connections, "
                           r"(\d+) peer structs, (\d+) call structs", stats)  # fmt: skip
        assert counts is not None and counts.groups() == ("0", "1", "1", "0")
        assert "Unexpected size" not in stats and "unexpected size" not in stats
        assert "AFS version:  afsfuse" in await rxdebug("-version")


def test_the_path_mtu_comes_from_the_kernels_route() -> None:
    # Loopback's 64 KiB (IP_MTU stops at 65535), where the route's interface says so.
    with open("/sys/class/net/lo/mtu") as lo:
        assert path_mtu((LOCAL, 7000)) == min(int(lo.read()), 65535)
    # The kernel refuses to connect a socket without SO_BROADCAST to a broadcast address.
    assert path_mtu(("255.255.255.255", 7000)) == ETHERNET_MTU
