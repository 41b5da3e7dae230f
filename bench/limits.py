"""What the fileserver itself can send of the big file: the ceiling of a mount's cold read.

Issue 15's crypt target is relative: afsfuse's cold read at rxkad crypt should reach 90 % of
what the fileserver can send at crypt, since the OpenAFS fileserver encrypts every packet
with fcrypt on the thread serving the call, and that can bound any client.  So, once the
rounds are over, the bench reads the same big file of the same cell with `afsfuse-io
fidread -o /dev/null`: Rx straight to the fileserver, no cache, no FUSE, no disk write,
the least a client can do.  At crypt it uses alice's token, as the "afsfuse crypt" client
does; at clear (rxnull, anonymous) for context.  Crypt runs with one stream, as a mount's
single reader, and with several processes each reading the whole file at once, to tell a
limit per call (more streams, more MB/s) from one per server.  The clear read goes first,
so the fileserver reads the file from its page cache in every timed run.  Not under
`--net`: behind the delay line a call's window over the round trip bounds each stream
(3.9 MB/s at wan10 even over rxnull), and the runs would take minutes.

Each run keeps afsfuse-io's CPU seconds (its rusage) and the fileserver's (its process in
the cell's namespace, from /proc), so the table says which side was busy; MB per fileserver
CPU second is what one of its cores can encrypt and send, whatever the host's load.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import trio
from clients import daemon_usage

from afsfuse.fs.callback import CallbackRegistry
from afsfuse.fs.cmservice import CacheManagerService
from afsfuse.fs.dir import parse_directory
from afsfuse.fs.directories import MAX_DIRECTORY
from afsfuse.rx.driver import open_endpoint
from afsfuse.rx.interfaces.fs import FS, AFSFid
from afsfuse.rx.security import RXNULL
from afsfuse.testing.cell import USERS, Cell
from afsfuse.vl.vlclient import VLClient

#: (security level for afsfuse-io, processes at once), in the order run.
RUNS = (("none", 1), ("crypt", 1), ("crypt", 2), ("crypt", 4))
#: The mount whose cold read is compared with the crypt limit, and the workload.
CRYPT_CLIENT = "afsfuse crypt"
COLD_READ = "cold-read"
TARGET_PERCENT = 90
#: Per run, generous: 4 x 256 MiB at 10 MB/s.
RUN_TIMEOUT = 300.0
_SERVER_NAMES = ("fileserver", "dafileserver")


@dataclass
class Limit:
    level: str  # afsfuse-io's --security: "none" (rxnull) or "crypt"
    streams: int
    nbytes: int  # all streams together
    seconds: float | None = None
    io_cpu_seconds: float | None = None  # afsfuse-io, all processes
    server_cpu_seconds: float | None = None  # the fileserver process(es)
    error: str | None = None

    @property
    def mb_per_s(self) -> float | None:
        return self.nbytes / self.seconds / 1e6 if self.seconds else None


async def _lookup(cell: str, vl_hosts: list[str], path: list[str]) -> AFSFid:
    """A file's fid from the `test` volume's root, anonymously (the bench's volume lets
    system:anyuser look), by parsing each directory as the mount would."""
    async with open_endpoint() as endpoint:
        CacheManagerService(CallbackRegistry(), local_cell=cell).install(endpoint)
        location = await VLClient.on_endpoint(endpoint, vl_hosts).locate("test")
        address = location.sites[0][0].addresses[0]
        conn = endpoint.connect((address, FS.port), FS.service_id, RXNULL)
        fid = AFSFid(location.rw_id, 1, 1)
        for name in path:
            data, _reply = await FS.FetchData64(conn, fid, 0, MAX_DIRECTORY)
            entry = parse_directory(data)[name.encode()]
            fid = AFSFid(fid.Volume, entry.vnode, entry.unique)
        with trio.move_on_after(2):
            await FS.GiveUpAllCallBacks(conn)
        return fid


def _fileserver_pids(cell: Cell) -> list[int]:
    pids = []
    for server in cell.servers:
        listed = subprocess.run(
            ["ip", "netns", "pids", server.netns], capture_output=True, text=True, check=False
        ).stdout.split()
        for pid in map(int, listed):
            try:
                name = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            if name in _SERVER_NAMES:
                pids.append(pid)
    return pids


def _server_cpu(pids: list[int]) -> float:
    return sum(daemon_usage(pid).cpu_seconds for pid in pids)


def _one(argv: list[str], env: dict[str, str], limit: Limit, pids: list[int]) -> None:
    """`limit.streams` afsfuse-io processes at once; fills in the times or the error."""
    server_before, io_before = _server_cpu(pids), _children_cpu()
    started = time.monotonic()
    procs = [
        subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(limit.streams)
    ]
    errors = []
    for proc in procs:
        remaining = max(0.0, started + RUN_TIMEOUT - time.monotonic())
        try:
            proc.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            errors.append(f"afsfuse-io timed out after {RUN_TIMEOUT:.0f} s")
        assert proc.stderr is not None
        err = proc.stderr.read().decode().strip()
        if proc.returncode != 0 and not errors:
            errors.append(f"afsfuse-io exit {proc.returncode}: {err}"[:300])
    seconds = time.monotonic() - started
    if errors:
        limit.error = errors[0]
        return
    limit.seconds = seconds
    limit.io_cpu_seconds = _children_cpu() - io_before
    limit.server_cpu_seconds = _server_cpu(pids) - server_before


def _children_cpu() -> float:
    times = os.times()
    return times.children_user + times.children_system


def measure(cell: Cell, scratch: Path, big_path: list[str], big_bytes: int) -> list[Limit]:
    """Every run of RUNS against the big file at `big_path` (from the `test` volume's root)."""
    env = {**cell.env(), "KRB5CCNAME": f"FILE:{scratch / 'cc_limits'}"}
    subprocess.run(
        ["kinit", "alice"], input=USERS["alice"] + "\n", env=env, text=True,
        capture_output=True, check=True, timeout=30,
    )  # fmt: skip
    fid = trio.run(_lookup, cell.name, [cell.db_server.addr], big_path)
    pids = _fileserver_pids(cell)
    limits = []
    for level, streams in RUNS:
        argv = [
            sys.executable, "-m", "afsfuse.io_cli", "fidread", "--cell", cell.name,
            "--fid", f"{fid.Volume}.{fid.Vnode}.{fid.Unique}",
            "--cellservdb", os.fspath(cell.cellservdb), "--security", level, "-o", os.devnull,
        ]  # fmt: skip
        limit = Limit(level, streams, big_bytes * streams)
        _one(argv, env, limit, pids)
        shown = f"{limit.mb_per_s:.1f} MB/s" if limit.error is None else limit.error
        print(f"  afsfuse-io {level:5s} x{streams} {shown}", flush=True)
        limits.append(limit)
    return limits


def to_json(limits: list[Limit]) -> list[dict]:
    return [{**asdict(limit), "mb_per_s": limit.mb_per_s} for limit in limits]


def crypt_limit(limits: list[dict]) -> dict | None:
    """The fastest crypt run that succeeded: what the fileserver can send at crypt."""
    ok = [lim for lim in limits if lim["level"] == "crypt" and lim["mb_per_s"]]
    return max(ok, key=lambda lim: lim["mb_per_s"]) if ok else None


def cold_read_mb_per_s(workloads: list[dict], client: str = CRYPT_CLIENT) -> float | None:
    """The client's median cold read in MB/s, None if it was not run or failed."""
    for w in workloads:
        if w["key"] == COLD_READ and client in w["clients"]:
            seconds = w["clients"][client]["median_seconds"]
            return w["bytes"] / seconds / 1e6 if seconds else None
    return None


def summary(result: dict) -> dict | None:
    """The crypt client's cold read as a percentage of the fileserver's crypt limit."""
    limit = crypt_limit(result.get("fileserver_limits") or [])
    cold = cold_read_mb_per_s(result["workloads"])
    if limit is None or cold is None:
        return None
    percent = 100 * cold / limit["mb_per_s"]
    return {
        "limit_mb_per_s": limit["mb_per_s"],
        "limit_streams": limit["streams"],
        "cold_read_mb_per_s": cold,
        "percent": percent,
        "meets_target": percent >= TARGET_PERCENT,
    }


def render(result: dict) -> str:
    """A second table: each afsfuse-io run, then the crypt client's share of the limit."""
    limits = result.get("fileserver_limits")
    net = result["meta"].get("net", "lan")
    if not limits and net != "lan":
        return (
            f"fileserver limits: not measured under --net {net} (there the round trip bounds"
            " a call, not the fileserver's fcrypt, and a run of afsfuse-io takes minutes)"
        )
    if not limits:
        return f"fileserver limits: not measured (no {COLD_READ} workload in this run)"
    rows = [["fileserver sending the big file (afsfuse-io)", "MB/s", "CPU s afsfuse-io",
             "CPU s fileserver", "MB per fileserver CPU s"]]  # fmt: skip
    for lim in limits:
        level = "crypt" if lim["level"] == "crypt" else "clear (rxnull)"
        label = f"fileserver limit at {level} (afsfuse-io, {lim['streams']} stream"
        label += "s)" if lim["streams"] > 1 else ")"
        if lim["error"] is not None:
            rows.append([label, f"failed: {lim['error'][:60]}", "-", "-", "-"])
            continue
        server = lim["server_cpu_seconds"]
        per_cpu = f"{lim['nbytes'] / server / 1e6:.1f}" if server else "-"
        rows.append([label, f"{lim['mb_per_s']:.1f}", f"{lim['io_cpu_seconds']:.2f}",
                     f"{server:.2f}", per_cpu])  # fmt: skip
    share = summary(result)
    if share is not None:
        rows.append([
            f"{CRYPT_CLIENT} cold read, % of the crypt limit ({share['limit_streams']} streams)",
            f"{share['cold_read_mb_per_s']:.1f} = {share['percent']:.0f} %"
            f" ({'meets' if share['meets_target'] else 'below'} {TARGET_PERCENT} %)",
            "", "", "",
        ])  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
             for r in rows]  # fmt: skip
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
