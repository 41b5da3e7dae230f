"""afsfuse side by side with OpenAFS's afsd.fuse on a throwaway test cell (`make bench`).

    .venv/bin/python bench/run.py [--quick] [--rounds N] [--big-mb N] [--clients A,B]
                                  [--only W1,W2] [--profile DIR] [--net wan10|wan1] [--jumbo]

Starts a cell, fills <cell>/test/bench as the cell admin (a big file, directories of 1000
and 10 000 entries, 1000 small files), then runs rounds.  In each round each client in turn
is mounted alone on an empty cache and runs every workload; the order of the clients
rotates from round to round.  afsd.fuse can only be anonymous; afsfuse runs anonymously, once
more with alice's token (rxkad crypt), and once more anonymously with --no-xattrs.

The workloads that write (cp, create, tar x, 4 parallel tar x) are timed until their programs
returned and again until the fileserver held everything, polled over Rx from outside either
mount (onserver.py).  Prints one table of medians and writes the same, every run included, as
JSON under bench/results/.  A workload that fails on a client is reported as failed, with the
reason.

--jumbo is the jumbo profile: the cell's links at MTU 9000 and its fileservers started
-jumbo, so Rx may use packets of up to 8588 bytes (and jumbograms) where a client asks.

Needs root (the cell, drop_caches, FUSE mounts for every user).

`--net wan10` (or `wan1`) puts every server 10 ms (1 ms) of round trip away, behind a delay
line, and runs the WAN workloads only (wan.py).

`--profile DIR` attaches py-spy to each afsfuse daemon for each timed workload and leaves
collapsed stacks in DIR (`<client>-<round>-<workload>.txt`, summarised by
`bench/profile_summary.py`) and the RPCs the daemon made meanwhile (`....rpcs.json`).

Just over 500 lines: the run, its rounds and the one table they print, read top to bottom;
the pieces with a concern of their own are beside it (workloads, onserver, limits, wan).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import errno
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import limits
import wan
from clients import CLIENTS, CellInfo, Client, ClientError, daemon_usage
from onserver import NotOnServer, ServerWatch
from populate import populate
from workloads import STEP_TIMEOUT, Context, Workload, WorkloadFailed, workloads

from afsfuse.keyring import token_from_ccache
from afsfuse.testing.cell import USERS, running_cell

RESULTS = Path(__file__).resolve().parent / "results"
BASELINE = "afsd.fuse"
CONTENDER = "afsfuse"


@dataclass
class Run:
    seconds: float | None  # until the program returned
    cpu_seconds: float | None = None
    peak_rss_kib: int | None = None
    error: str | None = None
    #: For a workload that writes: until the fileserver held it all, and the poller's last
    #: pass (its resolution).
    on_server_seconds: float | None = None
    poll_pass_seconds: float | None = None


@dataclass
class Series:
    """One workload on one client over all rounds."""

    runs: list[Run] = field(default_factory=list)

    @property
    def failure(self) -> str | None:
        return next((r.error for r in self.runs if r.error is not None), None)

    def median(self, attribute: str = "seconds") -> float | None:
        values = [getattr(r, attribute) for r in self.runs if r.error is None]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values and self.failure is None else None


def measure(
    client: Client, workload: Workload, ctx: Context, profile: Path | None, watch: ServerWatch
) -> Run:
    """One timed run.  A workload that writes is timed twice from its start: until its
    programs returned, and until the fileserver held everything (its CPU figure then
    covers the client's stores after the return too)."""
    try:
        if client.process is None or client.process.poll() is not None:
            assert client.cache is not None
            client.unmount()
            client.mount(client.cache)
        workload.prepare(ctx)
        expected = workload.written(ctx) if workload.written else None
        before = client.usage()
        stored = None
        with profiled(client, profile / f"{ctx.tag}-{workload.key}.txt" if profile else None):
            started = time.monotonic()
            workload.run(ctx)
            seconds = time.monotonic() - started
            if expected is not None:
                stored = watch.wait(expected, STEP_TIMEOUT)
        after = client.usage()
        workload.check(ctx)
    except (WorkloadFailed, NotOnServer, ClientError, OSError, subprocess.SubprocessError) as e:
        return Run(None, error=(_died(client) + f"{type(e).__name__}: {e}")[:300])
    run = Run(seconds, after.cpu_seconds - before.cpu_seconds, after.peak_rss_kib)
    if stored is not None:
        run.on_server_seconds = stored.at - started
        run.poll_pass_seconds = stored.last_pass
    return run


def _died(client: Client) -> str:
    """Says so when the daemon itself ended during the workload (afsd.fuse can crash under
    parallel reads), which the programs on the mount only see as ENOTCONN."""
    if client.process is None:
        return ""
    try:
        code = client.process.wait(timeout=1)  # its files close just before it ends
    except subprocess.TimeoutExpired:
        return ""
    how = signal.Signals(-code).name if code < 0 else f"status {code}"
    return f"daemon died ({how}): "


@contextlib.contextmanager
def profiled(client: Client, out: Path | None) -> Iterator[None]:
    """py-spy sampling the afsfuse daemon while the block runs, only the thread holding the
    GIL: where Python time goes, waits left out.  Collapsed stacks go to `out`.  afsd.fuse
    is C and is not profiled."""
    if out is None or not client.name.startswith(CONTENDER):
        yield
        return
    rpcs_before = _rpc_counts(client)
    spy = subprocess.Popen(
        [os.fspath(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(client.pid),
         "--format", "raw", "--rate", "250", "--threads", "--gil", "--nonblocking", "--output",
         os.fspath(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        time.sleep(0.5)  # py-spy attaches before the workload starts
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()
        after = _rpc_counts(client)
        made = {name: n - rpcs_before.get(name, 0) for name, n in after.items()}
        made = {name: n for name, n in sorted(made.items()) if n}
        out.with_suffix(".rpcs.json").write_text(json.dumps(made, indent=1) + "\n")


def _rpc_counts(client: Client) -> dict[str, int]:
    """The daemon's RPC counters (`afsfuse-ctl stats`), to go with a profile."""
    done = subprocess.run(
        [os.fspath(Path(sys.executable).parent / "afsfuse-ctl"), "--mount",
         os.fspath(client.mountpoint), "--json", "stats"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return json.loads(done.stdout)["stats"]["rpcs"] if done.returncode == 0 else {}


def _ccache_token(cell_name: str, krb5_config: str, ccache: Path, user: str):
    env = {**os.environ, "KRB5_CONFIG": krb5_config, "KRB5CCNAME": f"FILE:{ccache}"}
    subprocess.run(
        ["kinit", user], input=USERS[user] + "\n", env=env, text=True,
        capture_output=True, check=True, timeout=30,
    )  # fmt: skip
    return token_from_ccache(cell_name, f"FILE:{ccache}")


def _scratch_files(scratch: Path, big_mb: int, quick: bool) -> int:
    """The write source and a tarball of Python's standard library (quick: without its
    __pycache__ directories, half the entries); the tarball's member count."""
    with open(scratch / "write-source.bin", "wb") as out:
        for _ in range(big_mb):
            out.write(os.urandom(1 << 20))
    stdlib = Path(
        subprocess.run(
            ["/usr/bin/python3", "-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    )  # fmt: skip
    tarball = scratch / "stdlib.tar"
    excluded = ["site-packages", "dist-packages", *(["__pycache__"] if quick else [])]
    subprocess.run(
        ["tar", "cf", os.fspath(tarball), "-C", os.fspath(stdlib.parent),
         *(f"--exclude={name}" for name in excluded), stdlib.name],
        check=True,
    )  # fmt: skip
    listing = subprocess.run(["tar", "tf", os.fspath(tarball)], capture_output=True, check=True)
    return len(listing.stdout.splitlines())


def _meta(args: argparse.Namespace, listing_sizes: tuple[int, ...]) -> dict:
    def out(argv: list[str]) -> str:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    here = Path(__file__).resolve().parent.parent
    dirty = out(["git", "-C", os.fspath(here), "status", "--porcelain", "--untracked-files=no"])
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "net": args.net,
        "jumbo": args.jumbo,
        "rounds": args.rounds,
        "big_mb": args.big_mb,
        "listing_sizes": list(listing_sizes),
        "afsd_fuse_version": out(["dpkg-query", "-W", "-f", "${Version}", "openafs-fuse"]),
        "afsfuse_commit": out(["git", "-C", os.fspath(here), "rev-parse", "--short", "HEAD"])
        + ("+dirty" if dirty else ""),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": sysconfig.get_python_version(),
        "mb": "10^6 bytes",
    }


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a shorter run for development")
    parser.add_argument("--rounds", type=int, help="rounds (default 3, quick 1)")
    parser.add_argument("--big-mb", type=int, help="big file size in MiB (default 256, quick 64)")
    parser.add_argument(
        "--clients", default=",".join(c.name for c in CLIENTS), help="comma-separated subset"
    )
    parser.add_argument(
        "--only", help="comma-separated workload keys (and those whose files they use)"
    )
    parser.add_argument("--profile", type=Path, help="py-spy afsfuse into this directory")
    parser.add_argument(
        "--net", choices=["lan", *wan.PROFILES], default="lan", help="network profile"
    )
    parser.add_argument(
        "--jumbo", action="store_true", help="cell links at MTU 9000, fileservers with -jumbo"
    )
    args = parser.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.big_mb = args.big_mb or (64 if args.quick else 256)
    return args


def main() -> int:
    args = _parse()
    if os.geteuid() != 0:
        print("bench: needs root (test cell, drop_caches, FUSE mounts)", file=sys.stderr)
        return 2
    listing_sizes = (1000,) if args.quick else (1000, 10000)
    far = args.net in wan.PROFILES
    if far:
        listing_sizes = wan.LISTING_SIZES
    chosen = [c for c in CLIENTS if c.name in args.clients.split(",")]
    meta = _meta(args, listing_sizes)
    plan = wan.plan() if far else workloads(listing_sizes)
    if args.only:
        plan = chosen_workloads(plan, args.only.split(","))
    with (
        tempfile.TemporaryDirectory(prefix="afsfuse-bench-") as tmp,
        running_cell(delays=wan.lines(fileservers=1) if far else None, jumbo=args.jumbo) as cell,
    ):
        scratch = Path(tmp)
        scratch.chmod(0o755)
        env = cell.env()
        info = CellInfo(cell.name, cell.cellservdb, Path(env["KRB5_CONFIG"]))
        os.environ["KRB5_CONFIG"] = env["KRB5_CONFIG"]
        print(f"bench: cell {cell.name} is up; filling it", flush=True)
        admin = _ccache_token(cell.name, env["KRB5_CONFIG"], scratch / "cc_admin", "admin")
        layout = populate(cell.name, cell.db_server.addr, admin, args.big_mb, listing_sizes, 1000)
        watch = ServerWatch(cell.name, [cell.db_server.addr], "test")
        cell.exec("vos", "release", "root.cell", "-localauth", timeout=180)
        members = _scratch_files(scratch, args.big_mb, args.quick)
        clients = [cls(info, scratch / cls.name.replace(" ", "-")) for cls in chosen]
        if far:
            wan.go_far(cell, args.net)
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
        table = {w.key: {c.name: Series() for c in clients} for w in plan}
        rounds: dict[str, list[dict]] = {c.name: [] for c in clients}
        try:
            for number in range(args.rounds):
                order = clients[number % len(clients) :] + clients[: number % len(clients)]
                _round(number, order, plan, table, rounds, layout, scratch, members,
                       args.profile, watch)  # fmt: skip
        finally:
            for client in clients:
                client.unmount()
        lines = [_line_json(cell, index) for index, s in enumerate(cell.servers) if s.line]
        sent = None
        if any(w.key == limits.COLD_READ for w in plan) and not far:
            print("bench: the fileserver's own limit, afsfuse-io to /dev/null", flush=True)
            big = [layout.top, layout.big_file]
            sent = limits.to_json(limits.measure(cell, scratch, big, layout.big_bytes))
    result = {
        "meta": meta,
        "workloads": [
            {
                "key": w.key,
                "title": w.title,
                "bytes": w.nbytes(layout) if w.nbytes else None,
                "on_server": w.written is not None,
                "clients": {name: _cell_json(cell) for name, cell in table[w.key].items()},
            }
            for w in plan
        ],
        "daemons": rounds,
        "delay_lines": lines,
        "fileserver_limits": sent,
        "crypt_share": None,
    }
    result["crypt_share"] = limits.summary(result)
    print(render(result))
    print(limits.render(result))
    for line in lines:
        print(
            f"bench: delay line to server {line['server']}: {line['rtt'] * 1000:g} ms, "
            f"{line['cpu_seconds']:.1f} s CPU; frames forwarded/dropped: "
            + ", ".join(f"{way} {n['forwarded']}/{n['dropped']}" for way, n in line["ways"].items())
        )
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    net = "" if meta["net"] == "lan" else f"-{meta['net']}"
    net += "-jumbo" if meta["jumbo"] else ""
    path = RESULTS / f"{stamp}-{meta['mode']}{net}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nbench: wrote {path}")
    return 0


def chosen_workloads(plan: list[Workload], keys: list[str]) -> list[Workload]:
    """The workloads named, with those whose files or caches they use, in the plan's order."""
    unknown = set(keys) - {w.key for w in plan}
    if unknown:
        raise SystemExit(f"bench: no workload {', '.join(sorted(unknown))} in this profile")
    needed = set(keys)
    for workload in plan:
        for need in workload.needs:
            if workload.key in keys and need not in needed:
                print(f"bench: also running {need}: {workload.key} uses what it leaves")
                needed.add(need)
    return [w for w in plan if w.key in needed]


def _round(number, order, plan, table, rounds, layout, scratch, members, profile, watch) -> None:
    """Each client in turn, alone on the host: mounted on an empty cache, every workload,
    unmounted, so no client's background work or callback traffic weighs on another's."""
    print(f"bench: round {number + 1}: {', '.join(c.name for c in order)}", flush=True)
    for client in order:
        client.new_round()
        cache = client.workdir / f"cache-{number}"
        mount_error = None
        try:
            client.mount(cache)
        except (ClientError, OSError, subprocess.SubprocessError) as e:
            failed = str(e) if str(e).startswith("not available") else f"mount failed: {e}"
            mount_error = failed[:300]
        for workload in plan:
            if mount_error is not None:
                result = Run(None, error=mount_error)
            else:
                tag = f"{client.name.replace(' ', '-')}-{number}"
                ctx = Context(client, layout, tag, scratch, members)
                result = measure(client, workload, ctx, profile, watch)
            table[workload.key][client.name].runs.append(result)
            shown = f"{result.seconds:.2f} s" if result.error is None else result.error
            if result.on_server_seconds is not None:
                shown += f", on the server {result.on_server_seconds:.2f} s"
            print(f"  {client.name:14s} {workload.key:14s} {shown}", flush=True)
        client.unmount()  # reads the daemon's usage one last time
        rounds[client.name].append(
            {
                "cpu_seconds": client.spent_cpu,
                "peak_rss_kib": client.peak_rss_kib or None,
                "mount_error": mount_error,
            }
        )
        shutil.rmtree(cache, ignore_errors=True)


def _line_json(cell, index: int) -> dict:
    """What a delay line did over the run: frames each way (dropped ones too) and its CPU."""
    line = cell.delay_line(index)
    cpu = daemon_usage(line.pid).cpu_seconds
    return {"server": index, "rtt": line.rtt, "cpu_seconds": cpu, "ways": line.stats()}


def _cell_json(cell: Series) -> dict:
    return {
        "median_seconds": cell.median(),
        "median_on_server_seconds": cell.median("on_server_seconds"),
        "median_cpu_seconds": cell.median("cpu_seconds"),
        "failed": cell.failure,
        "runs": [asdict(r) for r in cell.runs],
    }


_STRERRORS = sorted((os.strerror(code) for code in errno.errorcode), key=len, reverse=True)


def short_failure(error: str) -> str:
    """`failed: <what>`, short enough for a table cell: the errno text when there is one."""
    if error.startswith("not available"):
        return "failed: not available"
    if died := re.match(r"daemon died \([^)]*\)", error):
        return f"failed: {died.group(0)}"
    exited = re.search(r"(\S+) exit -?\d+: ", error)
    program = exited.group(1) if exited else ""
    reason = next((text for text in _STRERRORS if text in error), None)
    if reason is None:
        reason = error[exited.end() :] if exited else error.split(": ", 1)[-1]
        reason = reason if len(reason) <= 40 else reason[:37] + "..."
    return f"failed: {program}{': ' if program else ''}{reason}"


def _seconds(entry: dict | None, nbytes: int | None, key: str = "median_seconds") -> str:
    if entry is None:
        return "-"
    if entry["failed"] is not None:
        return short_failure(entry["failed"])
    seconds = entry[key]
    text = f"{seconds:.2f} s"
    if nbytes:
        text += f" ({nbytes / seconds / 1e6:.0f} MB/s)"
    return text


def _ratio(base: dict | None, mine: dict | None, key: str) -> str:
    if base and mine and base[key] and mine[key] is not None:
        return f"{mine[key] / base[key]:.2f}"
    if (base and base["failed"]) or (mine and mine["failed"]):
        return "failed"
    return "-"


_ON_SERVER = "median_on_server_seconds"


def _other(entry: dict | None, nbytes: int | None, on_server: bool) -> str:
    """A client beside the two compared: returned, and on the server where measured."""
    text = _seconds(entry, nbytes)
    if on_server and entry is not None and entry["failed"] is None:
        text += f", {_seconds(entry, None, _ON_SERVER)} on server"
    return text


def _cpu(entry: dict | None) -> str:
    if entry is None or entry["median_cpu_seconds"] is None:
        return "-"
    return f"{entry['median_cpu_seconds']:.2f}"


def render(result: dict) -> str:
    """One table: medians per client until the programs returned and, for the workloads that
    write, until all was on the fileserver; afsfuse's time as a fraction of afsd.fuse's for
    each; daemon CPU seconds per workload; then the daemons' peak RSS and CPU per round."""
    names = list(result["daemons"])
    others = [n for n in names if n not in (BASELINE, CONTENDER)]
    header = ["workload", BASELINE, CONTENDER, "time ratio"]
    header += [f"{BASELINE} on server", f"{CONTENDER} on server", "ratio on server", *others]
    header += [f"CPU s {n}" for n in names]
    rows = [header]
    for w in result["workloads"]:
        clients, nbytes = w["clients"], w["bytes"]
        base, mine = clients.get(BASELINE), clients.get(CONTENDER)
        row = [w["title"], _seconds(base, nbytes), _seconds(mine, nbytes)]
        row.append(_ratio(base, mine, "median_seconds"))
        if w.get("on_server"):
            row += [_seconds(base, nbytes, _ON_SERVER), _seconds(mine, nbytes, _ON_SERVER)]
            row.append(_ratio(base, mine, _ON_SERVER))
        else:
            row += ["", "", ""]
        row += [_other(clients.get(n), nbytes, w.get("on_server", False)) for n in others]
        row += [_cpu(clients.get(n)) for n in names]
        rows.append(row)
    for label, key, scale, unit in (
        ("daemon peak RSS", "peak_rss_kib", 1 / 1024, "MiB"),
        ("daemon CPU per round", "cpu_seconds", 1, "s"),
    ):
        cells = {}
        for n in names:
            values = [r[key] for r in result["daemons"][n] if r[key] is not None]
            cells[n] = f"{statistics.median(values) * scale:.1f} {unit}" if values else "-"
        row = [label, cells.get(BASELINE, "-"), cells.get(CONTENDER, "-"), "", "", "", ""]
        rows.append(row + [cells[n] for n in others] + [""] * len(names))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
             for r in rows]  # fmt: skip
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    meta = result["meta"]
    title = (
        f"afsd.fuse {meta['afsd_fuse_version']} vs afsfuse {meta['afsfuse_commit']}: "
        f"{meta['mode']} run, {meta['rounds']} round(s), big file {meta['big_mb']} MiB, "
        f"{'' if meta.get('net', 'lan') == 'lan' else meta['net'] + ' network, '}"
        f"{'jumbo (MTU 9000, fileserver -jumbo), ' if meta.get('jumbo') else ''}"
        f"medians; time ratio = afsfuse / afsd.fuse (below 1: afsfuse is faster); "
        f"on server: from the start until the fileserver held all that was written"
    )
    return title + "\n" + "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
