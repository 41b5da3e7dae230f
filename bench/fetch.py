"""Bulk read speed of afsfuse-io against the test cell, at each security level.

    python -m afsfuse.testing.cell run -- .venv/bin/python bench/fetch.py [--size-mb 256]

Creates a file in the cell's `test` volume (readable by system:anyuser), fills it with
`afsfuse-io fidwrite`, then times `afsfuse-io fidread -o /dev/null` a few times per level.
Prints the rate (10^6 bytes per second, wall clock of the whole process) and the CPU seconds
the process used (user + system, from its rusage).

`--in-process` instead moves the data from this process, as the mount does (rxnull, which
the anonymous mount uses): StoreData64 of the whole file in one call, then FetchData64 in
4 MiB calls, 4 at a time, each read 1 MiB at a time.  It prints the rate, the CPU seconds
per 64 MiB (Rx alone, no process start-up) and the packets received and sent.

`--core` needs no cell: it stores --size-mb through the sans-I/O RxCore alone, against a
scripted receiver that acks every second packet as the OpenAFS fileserver does, one ACK per
turn of the loop, the writer refilling the call only when woken, as the driver does.  It
then fetches as much from a scripted sender, whose full DATA packets reach the core one per
turn, each read out as soon as it is in, as a reader waiting on the call would.  No
sockets and a fake clock: the CPU it prints is the Rx send and receive paths' own, and it
repeats exactly under `valgrind --tool=callgrind` or `perf stat -e instructions:u` (count
instructions there; the machine is noisy).
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import struct
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import trio

from afsfuse.fs.callback import CallbackRegistry
from afsfuse.fs.cmservice import CacheManagerService
from afsfuse.keyring import Token, token_from_ccache
from afsfuse.rx import packet as P
from afsfuse.rx.call import SEND_BACKLOG
from afsfuse.rx.core import RxCore
from afsfuse.rx.driver import open_endpoint
from afsfuse.rx.interfaces.fs import FS, AFSFid, AFSStoreStatus
from afsfuse.rx.rxkad import Level, RxkadClient
from afsfuse.rx.security import RXNULL
from afsfuse.testing.cell import USERS
from afsfuse.vl.vlclient import VLClient

ANYONE_READS = b"2\n0\nsystem:administrators 127\nsystem:anyuser 9\n\0"
ANYONE_WRITES = b"2\n0\nsystem:administrators 127\nsystem:anyuser 127\n\0"
#: --in-process: bytes per FetchData64 call and calls at a time (the mount's read-ahead).
FETCH_CALL = 4 << 20
FETCH_CALLS = 4
FETCH_PIECE = 1 << 20


async def create_file(
    cell: str, vl_hosts: list[str], admin: Token, acl: bytes = ANYONE_READS
) -> AFSFid:
    """A new empty file in a new directory of the test volume that anyone may read."""
    async with open_endpoint() as endpoint:
        CacheManagerService(CallbackRegistry()).install(endpoint)
        location = await VLClient.on_endpoint(endpoint, vl_hosts).locate("test")
        security = RxkadClient(admin.session_key, admin.ticket, admin.kvno, Level.CRYPT)
        site = location.sites[0][0]
        conn = endpoint.connect((site.addresses[0], FS.port), FS.service_id, security)
        root = AFSFid(location.rw_id, 1, 1)
        made = await FS.MakeDir(conn, root, f"bench-{secrets.token_hex(4)}", AFSStoreStatus())
        await FS.OldStoreACL(conn, made.OutFid, acl)
        created = await FS.CreateFile(
            conn, made.OutFid, "data", AFSStoreStatus(Mask=8, UnixModeBits=0o644)
        )
        return created.OutFid


async def in_process(vl_hosts: list[str], fid: AFSFid, size_mb: int, runs: int) -> None:
    """Store then fetch the file from this process over rxnull; print rate, CPU, packets."""
    size = size_mb << 20
    piece = bytes(FETCH_PIECE)
    async with open_endpoint() as endpoint:
        CacheManagerService(CallbackRegistry()).install(endpoint)
        location = await VLClient.on_endpoint(endpoint, vl_hosts).locate("test")
        address = location.sites[0][0].addresses[0]
        conn = endpoint.connect((address, FS.port), FS.service_id, RXNULL)

        async def store() -> None:
            async with FS.StoreData64.stream(conn, fid, AFSStoreStatus(), 0, size, size) as s:
                for pos in range(0, size, FETCH_PIECE):
                    await s.send(piece[: size - pos])

        async def fetch() -> None:
            limit = trio.Semaphore(FETCH_CALLS)

            async def one(pos: int) -> None:
                async with limit, FS.FetchData64.stream(conn, fid, pos, FETCH_CALL) as stream:
                    while stream.remaining:
                        await stream.read(FETCH_PIECE)

            async with trio.open_nursery() as nursery:
                for pos in range(0, size, FETCH_CALL):
                    nursery.start_soon(one, pos)

        for run in range(1, runs + 1):
            for name, transfer in (("store", store), ("fetch", fetch)):
                received, sent = endpoint.packets_received, endpoint.packets_sent
                wall, cpu = time.perf_counter(), time.process_time()
                await transfer()
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                print(
                    f"{name} {size_mb} MiB rxnull run {run}: {size / wall / 1e6:7.1f} MB/s,"
                    f" CPU {cpu * 64 / size_mb:.2f} s per 64 MiB, packets in"
                    f" {endpoint.packets_received - received} out {endpoint.packets_sent - sent}",
                    flush=True,
                )


#: --core: the scripted receiver's address, its ACK trailer and the fake clock's step per turn.
CORE_SERVER = ("10.0.0.1", 7000)
CORE_ACK_TRAILER = struct.pack(">3xIIII", 1444, 1444, 32, 1)
CORE_TICK = 50e-6


def store_core(size: int) -> int:
    """Store `size` bytes through one RxCore call to a scripted receiver; return packets sent.

    The receiver soft-acks the packet before each pair it acks (its reader lags a little),
    answers the request's last packet with a one-packet reply, and its ACKs reach the core
    one per turn, in order, each followed by what the core then sends.
    """
    core = RxCore(rng=random.Random(1))
    conn = core.connect(CORE_SERVER, FS.service_id, RXNULL)
    now = 0.0
    call = core.new_call(conn, now)
    assert call is not None
    source = memoryview(bytes(FETCH_PIECE))
    written = 0
    pending: deque[bytes] = deque()
    serial = 0
    since_ack = 0
    sent = 0
    while True:
        woken = not written or any(event.call is call for event in core.pop_events())
        while woken and written < size and call.tx_backlog < SEND_BACKLOG:
            take = (SEND_BACKLOG - call.tx_backlog) * conn.max_user_data()
            offset = written % FETCH_PIECE
            take = min(take, size - written, FETCH_PIECE - offset)
            call.write(source[offset : offset + take], now)
            written += take
        if written >= size and not call.tx_closed:
            call.close_send(now)
        for datagram, _addr in core.datagrams_to_send(now):
            sent += 1
            epoch, cid, number, seq, their_serial, _t, flags, _u, index, _c, service = (
                P.HEADER.unpack_from(datagram)
            )
            since_ack += 1
            if since_ack >= 2 or flags & P.REQUEST_ACK or not flags & P.MORE_PACKETS:
                since_ack = 0
                first = max(1, seq - 1)
                reason = P.ACK_REQUESTED if flags & P.REQUEST_ACK else P.ACK_IDLE
                acks = b"\1" * (seq + 1 - first)
                body = P.encode_ack(first, seq, their_serial, reason, acks, 1444, 1444, 32, 1)
                serial += 1
                header = P.HEADER.pack(
                    epoch, cid, number, 0, serial, P.ACK, 0, 0, index, 0, service
                )
                pending.append(header + body)
            if flags & P.LAST_PACKET:
                serial += 1
                header = P.HEADER.pack(
                    epoch, cid, number, 1, serial, P.DATA, P.LAST_PACKET, 0, index, 0, service
                )
                pending.append(header + bytes(100))
        if not pending:
            break
        now += CORE_TICK
        core.receive_datagram(pending.popleft(), CORE_SERVER, now)
        if call.at_eof:
            call.end(now)
            core.datagrams_to_send(now)
            break
    return sent


def fetch_core(size: int) -> int:
    """Receive `size` bytes of reply through one RxCore call; return DATA packets received.

    The scripted sender answers the one-packet request with full DATA packets, one per
    turn, the last flagged LAST_PACKET; what the core sends back (its ACKs) is drained and
    dropped, as the sender never needs to resend.
    """
    core = RxCore(rng=random.Random(1))
    conn = core.connect(CORE_SERVER, FS.service_id, RXNULL)
    now = 0.0
    call = core.new_call(conn, now)
    assert call is not None
    call.write(bytes(16), now)
    call.close_send(now)
    request = core.datagrams_to_send(now)[0][0]  # the request (a ping may follow it)
    epoch, cid, number, _s, _serial, _t, _f, _u, index, _c, service = P.HEADER.unpack_from(request)
    payload = bytes(conn.max_user_data())
    sink = memoryview(bytearray(FETCH_PIECE))
    packets = -(-size // len(payload))
    for seq in range(1, packets + 1):
        now += CORE_TICK
        flags = P.LAST_PACKET if seq == packets else 0
        header = P.HEADER.pack(epoch, cid, number, seq, seq, P.DATA, flags, 0, index, 0, service)
        core.receive_datagram(header + payload, CORE_SERVER, now)
        core.pop_events()
        call.read_into(sink, now)
        core.datagrams_to_send(now)
    assert call.at_eof
    call.end(now)
    core.datagrams_to_send(now)
    return packets


def run_io(argv: list[str], env: dict[str, str], stdin: object = None) -> tuple[float, float]:
    """Run afsfuse-io; return (wall seconds, CPU seconds) of the child."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdin=stdin, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({proc.returncode}): {err}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--levels", default="none,clear,crypt")
    parser.add_argument("--piece", type=int, default=None, help="passed to fidread --piece")
    parser.add_argument("--in-process", action="store_true", help="see the description")
    parser.add_argument("--core", action="store_true", help="see the description")
    args = parser.parse_args()
    if args.core:
        for what, through_core, moved in (
            ("store", store_core, "sent"),
            ("fetch", fetch_core, "received"),
        ):
            for run in range(1, args.runs + 1):
                cpu = time.process_time()
                packets = through_core(args.size_mb << 20)
                cpu = time.process_time() - cpu
                print(
                    f"core {what} {args.size_mb} MiB run {run}: CPU"
                    f" {cpu * 64 / args.size_mb:.3f} s per 64 MiB, {packets} packets {moved},"
                    f" {cpu / packets * 1e6:.2f} us each",
                    flush=True,
                )
        return
    cell = os.environ["AFSCELL_NAME"]
    vl_hosts = os.environ["AFSCELL_VLSERVERS"].split()
    size = args.size_mb * 1024 * 1024
    with tempfile.TemporaryDirectory(prefix="afsfuse-bench-") as tmp:
        ccache = f"FILE:{Path(tmp) / 'cc_admin'}"
        env = {**os.environ, "KRB5CCNAME": ccache}
        subprocess.run(
            ["kinit", "admin"], input=USERS["admin"] + "\n", env=env, text=True,
            capture_output=True, check=True, timeout=30,
        )  # fmt: skip
        os.environ["KRB5CCNAME"] = ccache
        admin = token_from_ccache(cell, ccache)
        if args.in_process:
            fid = trio.run(create_file, cell, vl_hosts, admin, ANYONE_WRITES)
            trio.run(in_process, vl_hosts, fid, args.size_mb, args.runs)
            return
        fid = trio.run(create_file, cell, vl_hosts, admin)
        fid_text = f"{fid.Volume}.{fid.Vnode}.{fid.Unique}"
        io = [sys.executable, "-m", "afsfuse.io_cli"]
        common = [
            "--cell",
            cell,
            "--fid",
            fid_text,
            "--cellservdb",
            os.environ["AFSCELL_CELLSERVDB"],
        ]
        source = Path(tmp) / "data"
        with source.open("wb") as out:
            for _ in range(args.size_mb):
                out.write(os.urandom(1024 * 1024))
        with source.open("rb") as stdin:
            wall, cpu = run_io([*io, "fidwrite", *common], env, stdin)
        print(f"fidwrite {args.size_mb} MiB crypt: {size / wall / 1e6:7.1f} MB/s, CPU {cpu:.2f} s")
        piece = [] if args.piece is None else ["--piece", str(args.piece)]
        for level in args.levels.split(","):
            for run in range(1, args.runs + 1):
                argv = [*io, "fidread", *common, "--security", level, "-o", os.devnull, *piece]
                wall, cpu = run_io(argv, env)
                print(
                    f"fidread {args.size_mb} MiB {level:5s} run {run}:"
                    f" {size / wall / 1e6:7.1f} MB/s, CPU {cpu:.2f} s, wall {wall:.2f} s",
                    flush=True,
                )


if __name__ == "__main__":
    main()
