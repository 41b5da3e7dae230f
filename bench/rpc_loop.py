"""Client CPU per small RPC against the test cell: what one metadata operation costs our Rx.

    python -m afsfuse.testing.cell run -- .venv/bin/python bench/rpc_loop.py [--calls 2000]

Gets an admin token (kinit), makes a directory in the `test` volume with one small file,
then times loops of small RPCs on one rxkad connection (crypt level, as the mount uses):
FetchStatus, FetchData64 and StoreData64 of 100 bytes, each made one after the other and
then by --parallel tasks at once (sharing the connection's four channels, as the mount's
callers do).  Prints calls per second (wall clock) and the process CPU per call (user +
system, `os.times`, with the system part), which is what the Rx stack costs on the client.

`--only fetchstatus` limits the loops; wrap in `py-spy record` or run with `--cprofile FILE`
to see where the CPU goes.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import secrets
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from afsfuse.fs.callback import CallbackRegistry
from afsfuse.fs.cmservice import CacheManagerService
from afsfuse.keyring import token_from_ccache
from afsfuse.rx.driver import ClientConnection, Endpoint, open_endpoint
from afsfuse.rx.interfaces.fs import FS, AFSFid, AFSStoreStatus
from afsfuse.rx.rxkad import Level, RxkadClient
from afsfuse.testing.cell import USERS
from afsfuse.vl.vlclient import VLClient

SMALL = 100
RPCS = ("fetchstatus", "fetchdata", "storedata")


def _one_call(rpc: str, conn: ClientConnection, fid: AFSFid) -> Callable[[], Awaitable[object]]:
    payload = secrets.token_bytes(SMALL)
    if rpc == "fetchstatus":
        return lambda: FS.FetchStatus(conn, fid)
    if rpc == "fetchdata":
        return lambda: FS.FetchData64(conn, fid, 0, SMALL)
    return lambda: FS.StoreData64(conn, fid, AFSStoreStatus(), 0, SMALL, SMALL, data=payload)


async def _timed(
    label: str, calls: int, tasks: int, call: Callable[[], Awaitable[object]], endpoint: Endpoint
) -> None:
    """Run `calls` calls spread over `tasks` concurrent tasks; print the rate and CPU."""
    per_task = calls // tasks
    received0, sent0 = endpoint.packets_received, endpoint.packets_sent

    async def worker() -> None:
        for _ in range(per_task):
            await call()

    wall0, times0 = time.perf_counter(), os.times()
    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            nursery.start_soon(worker)
    wall, times = time.perf_counter() - wall0, os.times()
    user, system = times.user - times0.user, times.system - times0.system
    cpu = user + system
    done = per_task * tasks
    received = (endpoint.packets_received - received0) / done
    sent = (endpoint.packets_sent - sent0) / done
    print(
        f"{label:12s} x{tasks}: {done / wall:6.0f} calls/s, {cpu / done * 1e6:4.0f} us CPU/call"
        f" ({system / done * 1e6:3.0f} system),"
        f" packets/call {sent:.2f} out {received:.2f} in",
        flush=True,
    )


async def run(args: argparse.Namespace, ccache: str) -> None:
    cell = os.environ["AFSCELL_NAME"]
    admin = token_from_ccache(cell, ccache)
    async with open_endpoint() as endpoint:
        CacheManagerService(CallbackRegistry()).install(endpoint)
        location = await VLClient.on_endpoint(
            endpoint, os.environ["AFSCELL_VLSERVERS"].split()
        ).locate("test")
        security = RxkadClient(admin.session_key, admin.ticket, admin.kvno, Level.CRYPT)
        site = location.sites[0][0]
        conn = endpoint.connect((site.addresses[0], FS.port), FS.service_id, security)
        root = AFSFid(location.rw_id, 1, 1)
        made = await FS.MakeDir(conn, root, f"rpc-loop-{secrets.token_hex(4)}", AFSStoreStatus())
        created = await FS.CreateFile(
            conn, made.OutFid, "small", AFSStoreStatus(Mask=8, UnixModeBits=0o644)
        )
        fid = created.OutFid
        await FS.StoreData64(conn, fid, AFSStoreStatus(), 0, SMALL, SMALL, data=bytes(SMALL))
        for rpc in args.only.split(","):
            call = _one_call(rpc, conn, fid)
            await _timed(rpc, args.calls // 10, 1, call, endpoint)  # warm-up
            for tasks in (1, args.parallel):
                profile = cProfile.Profile() if args.cprofile else None
                if profile:
                    profile.enable()
                await _timed(rpc, args.calls, tasks, call, endpoint)
                if profile:
                    profile.disable()
                    profile.dump_stats(f"{args.cprofile}.{rpc}.x{tasks}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--only", default=",".join(RPCS), help=f"some of {', '.join(RPCS)}")
    parser.add_argument("--cprofile", metavar="FILE", help="write cProfile stats FILE.RPC.xN")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="afsfuse-bench-") as tmp:
        ccache = f"FILE:{Path(tmp) / 'cc_admin'}"
        subprocess.run(
            ["kinit", "admin"], input=USERS["admin"] + "\n", text=True, capture_output=True,
            env={**os.environ, "KRB5CCNAME": ccache}, check=True, timeout=30,
        )  # fmt: skip
        trio.run(run, args, ccache)


if __name__ == "__main__":
    main()
