"""Bulk read speed of afsfuse-io against the test cell, at each security level.

    python -m afsfuse.testing.cell run -- .venv/bin/python bench/fetch.py [--size-mb 256]

Creates a file in the cell's `test` volume (readable by system:anyuser), fills it with
`afsfuse-io fidwrite`, then times `afsfuse-io fidread -o /dev/null` a few times per level.
Prints the rate (10^6 bytes per second, wall clock of the whole process) and the CPU seconds
the process used (user + system, from its rusage).
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from afsfuse.fs.callback import CallbackRegistry
from afsfuse.fs.cmservice import CacheManagerService
from afsfuse.keyring import Token, token_from_ccache
from afsfuse.rx.driver import open_endpoint
from afsfuse.rx.interfaces.fs import FS, AFSFid, AFSStoreStatus
from afsfuse.rx.rxkad import Level, RxkadClient
from afsfuse.testing.cell import USERS
from afsfuse.vl.vlclient import VLClient

ANYONE_READS = b"2\n0\nsystem:administrators 127\nsystem:anyuser 9\n\0"


async def create_file(cell: str, vl_hosts: list[str], admin: Token) -> AFSFid:
    """A new empty file in a new directory of the test volume that anyone may read."""
    async with open_endpoint() as endpoint:
        CacheManagerService(CallbackRegistry()).install(endpoint)
        location = await VLClient.on_endpoint(endpoint, vl_hosts).locate("test")
        security = RxkadClient(admin.session_key, admin.ticket, admin.kvno, Level.CRYPT)
        site = location.sites[0][0]
        conn = endpoint.connect((site.addresses[0], FS.port), FS.service_id, security)
        root = AFSFid(location.rw_id, 1, 1)
        made = await FS.MakeDir(conn, root, f"bench-{secrets.token_hex(4)}", AFSStoreStatus())
        await FS.OldStoreACL(conn, made.OutFid, ANYONE_READS)
        created = await FS.CreateFile(
            conn, made.OutFid, "data", AFSStoreStatus(Mask=8, UnixModeBits=0o644)
        )
        return created.OutFid


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
    args = parser.parse_args()
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
        fid = trio.run(create_file, cell, vl_hosts, token_from_ccache(cell, ccache))
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
