"""Two afsfuse mounts of a throwaway test cell under mixed load for a long while (`make soak`;
never part of `make test`).  Needs root.

Each mount has a writer that rewrites and appends to files of its own (one block up to
several 1 MiB chunks), two readers that read every file, a thread that creates, renames,
reads back and removes small files, and `ls -l` of the work directory.  Every byte carries
its own description: a 1 KiB block names its file, the version that wrote it and its block
number, so a reader can tell any byte that no write put there.  A read may mix adjacent
versions block by block while a file is being rewritten (AFS stores chunk by chunk), and may
stop at any block boundary no longer than the file ever was (the writer's own mount sees its
writes as they happen); it may never hold an invented block.  At the end every file is read
on both mounts and must equal its last written version exactly.

Both daemons' RSS (/proc) is sampled every few seconds.  It "keeps growing" when, after a
warm-up of the first quarter of the run, the median of the last quarter of samples exceeds
the median of the first quarter by more than 16 MiB and 10 %: caches fill up to their bounds
early, a leak keeps going.

Exit status 0 when nothing was wrong: no wrong byte, no failed operation, RSS flat.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from clients import AFSFUSE_BIN, Afsfuse, CellInfo

from afsfuse.testing.cell import USERS, running_cell

BLOCK = 1024
CHUNK = 1 << 20
#: Sizes of the files each writer owns, in blocks: one block, tens of KiB, 2 and 4 chunks.
SIZES = (1, 60, CHUNK // BLOCK + 3, 3 * CHUNK // BLOCK + 1)
#: What one read(2) of a reader asks for, as `cat` does.
READ_SIZE = 128 * 1024
_HEADER = re.compile(rb"(\S+) v(\d+) b(\d+)")
RSS_SLACK_BYTES = 16 << 20
RSS_SLACK_RATIO = 0.10
RESULTS = Path(__file__).resolve().parent / "results"
#: Seconds both mounts get to agree on the last versions (callbacks travel asynchronously).
SETTLE_SECONDS = 20.0


def block(name: str, version: int, index: int) -> bytes:
    """Block `index` of `name` as version `version` wrote it."""
    header = f"{name} v{version} b{index}\n".encode()
    return (header * (BLOCK // len(header) + 1))[:BLOCK]


def read_whole(path: Path) -> bytes:
    """A file read to its end one read(2) of READ_SIZE at a time, so that reads end where
    pages end.  A file rewritten between two reads hands the second one the new version's
    bytes: a read ending inside a page would leave that page, and a block, of two versions
    with no byte wrong.  f.read() ends them anywhere: it asks for the size stat gave plus
    one, then grows its requests by an eighth.  (tests/integration/rewrite_load.py reads
    the same way; it runs as a local user without afsfuse, so the two cannot share this.)"""
    parts = []
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(READ_SIZE):
            parts.append(chunk)
    return b"".join(parts)


def blocks(name: str, version: int, first: int, count: int) -> bytes:
    return b"".join(block(name, version, i) for i in range(first, first + count))


@dataclass
class Written:
    """What has been written to one file: each version's block range, the longest it ever
    was, and its content after the last completed write."""

    ranges: dict[int, tuple[int, int]] = field(default_factory=dict)
    longest: int = 0
    content: bytearray = field(default_factory=bytearray)
    version: int = 0


class Tally:
    """Operations by kind, bytes checked, failures; shared by every thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ops: Counter[str] = Counter()
        self.bytes_checked = 0
        self.bytes_written = 0
        self.errors: list[str] = []
        self.wrong: list[str] = []
        self.wrong_kinds: Counter[str] = Counter()

    def op(self, kind: str, checked: int = 0) -> None:
        with self.lock:
            self.ops[kind] += 1
            self.bytes_checked += checked

    def error(self, what: str) -> None:
        with self.lock:
            self.errors.append(f"{time.strftime('%H:%M:%S')} {what}")

    def wrong_bytes(self, kind: str, what: str) -> None:
        with self.lock:
            self.wrong.append(f"{time.strftime('%H:%M:%S')} {what}")
            self.wrong_kinds[kind] += 1


class Files:
    """The checked files: their names, what was written, and the check of a read."""

    def __init__(self, names: list[str]) -> None:
        self.written = {name: Written() for name in names}

    def check(self, name: str, data: bytes) -> str | None:
        problem = self._problem(name, data)
        if problem is None:
            return None
        # Where the last versions ended, in blocks: a wrong block near one of them is
        # where a length change met a read.
        ranges = self.written[name].ranges
        ends = ", ".join(f"v{v}: {ranges[v][1]}" for v in sorted(ranges)[-4:])
        return f"{problem} (read {len(data) / BLOCK:g} blocks; the last versions end at {ends})"

    def _problem(self, name: str, data: bytes) -> str | None:
        """None when every block is one some version wrote at that place; else why not.

        A read that ends inside a block is fine when that block's start is right: a
        program reading to EOF (Python's read() asks for one byte more than the size it
        saw) can get part of a block while the file changes under it, as on any filesystem.
        """
        written = self.written[name]
        if len(data) > written.longest:
            return f"length {len(data)} (longest ever {written.longest})"
        whole, tail = divmod(len(data), BLOCK)
        if tail and not self._starts_a_block(name, whole, data[whole * BLOCK :]):
            return f"length {len(data)}: the last block is none written: {data[-tail:][:48]!r}"
        for index in range(whole):
            got = data[index * BLOCK : (index + 1) * BLOCK]
            match = _HEADER.match(got)
            if match is None or match[1].decode() != name or int(match[3]) != index:
                return f"block {index}: {got[:48]!r}"
            version = int(match[2])
            span = written.ranges.get(version)
            if span is None or not span[0] <= index < span[1]:
                return f"block {index}: version {version} never wrote it"
            expected = block(name, version, index)
            if got != expected:
                at = next(i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b)
                return (
                    f"block {index} of version {version} is damaged from byte {at}:"
                    f" {got[at : at + 48]!r}"
                )
        return None

    def _starts_a_block(self, name: str, index: int, part: bytes) -> bool:
        ranges = self.written[name].ranges
        return any(
            first <= index < end and block(name, version, index).startswith(part)
            for version, (first, end) in list(ranges.items())
        )


class SoakMount(Afsfuse):
    """An anonymous afsfuse mount; its work is under the test volume's root."""

    def __init__(self, cell: CellInfo, workdir: Path, name: str) -> None:
        super().__init__(cell, workdir)
        self.name = name

    @property
    def top(self) -> Path:
        return self.mountpoint / ".:mount" / f"{self.cell.name}:test"

    def ready_path(self) -> Path:
        return self.top


def _grant_everyone(mount: SoakMount, krb5_config: Path, scratch: Path) -> None:
    """As the cell admin (kinit, afsfuse-ctl aklog): anyone may write in the test volume."""
    env = {**os.environ, "KRB5_CONFIG": os.fspath(krb5_config)}
    env["KRB5CCNAME"] = f"FILE:{scratch / 'cc_admin'}"
    subprocess.run(
        ["kinit", "admin"], input=USERS["admin"] + "\n", env=env, text=True,
        capture_output=True, check=True, timeout=30,
    )  # fmt: skip
    ctl = [os.fspath(AFSFUSE_BIN / "afsfuse-ctl"), "--mount", os.fspath(mount.mountpoint)]
    for args in (["aklog"], ["setacl", os.fspath(mount.top), "system:anyuser", "all"], ["unlog"]):
        subprocess.run([*ctl, *args], env=env, capture_output=True, check=True, timeout=60)


def _first_difference(path: Path, expected: bytes) -> str:
    """Where a file first differs from what it should hold, as a reader sees it now."""
    got = path.read_bytes()
    for start in range(0, max(len(got), len(expected)), BLOCK):
        if got[start : start + BLOCK] != expected[start : start + BLOCK]:
            where = f"first wrong at block {start // BLOCK}: {got[start : start + 24]!r}"
            return f"now {len(got)} bytes, {where}"
    return f"now {len(got)} bytes, as expected"


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Soak:
    def __init__(self, mounts: list[SoakMount], work: str, seconds: float, seed: int) -> None:
        self.mounts = mounts
        self.work = work
        self.seconds = seconds
        self.seed = seed
        self.tally = Tally()
        self.stop = threading.Event()
        owners = {m.name: [f"{m.name}-{size}" for size in SIZES] for m in mounts}
        self.owned = owners
        self.files = Files([name for names in owners.values() for name in names])
        #: (seconds since start, RSS of each daemon in bytes)
        self.rss: list[tuple[float, list[int]]] = []

    def dir(self, mount: SoakMount) -> Path:
        return mount.top / self.work

    def _loop(self, what: str, step: Callable[[random.Random], None]) -> None:
        rng = random.Random(f"{self.seed}-{what}")
        while not self.stop.is_set():
            try:
                step(rng)
            except OSError as e:
                self.tally.error(f"{what}: {e}")
                time.sleep(0.2)

    # -- the load -------------------------------------------------------------------

    def writer(self, mount: SoakMount) -> Callable[[random.Random], None]:
        def step(rng: random.Random) -> None:
            name = rng.choice(self.owned[mount.name])
            written = self.files.written[name]
            size = int(name.rsplit("-", 1)[1])
            version = written.version + 1
            path = self.dir(mount) / "files" / name
            length = len(written.content) // BLOCK
            if written.version and rng.random() < 0.4 and length < 2 * size:
                count = rng.randint(1, min(16, size))
                data = blocks(name, version, length, count)
                written.ranges[version] = (length, length + count)
                written.longest = max(written.longest, (length + count) * BLOCK)
                with open(path, "ab", buffering=0) as f:
                    f.write(data)
                    ended = f.tell()
                written.content += data
                if ended != len(written.content):  # O_APPEND wrote elsewhere
                    self.tally.wrong_bytes(
                        "append elsewhere",
                        f"{mount.name} append to {name}: ended at {ended}, not"
                        f" {len(written.content)}; {_first_difference(path, written.content)}",
                    )
                kind = "append"
            else:
                count = max(1, size + rng.randint(-size // 4, size // 4))
                data = blocks(name, version, 0, count)
                written.ranges[version] = (0, count)
                written.longest = max(written.longest, count * BLOCK)
                with open(path, "wb", buffering=0) as f:
                    f.write(data)
                written.content = bytearray(data)
                kind = "rewrite"
            written.version = version
            self.tally.op(kind)
            with self.tally.lock:
                self.tally.bytes_written += len(data)

        return step

    def reader(self, mount: SoakMount) -> Callable[[random.Random], None]:
        names = list(self.files.written)

        def step(rng: random.Random) -> None:
            name = rng.choice(names)
            if not self.files.written[name].version:
                time.sleep(0.05)  # not created yet
                return
            data = read_whole(self.dir(mount) / "files" / name)
            problem = self.files.check(name, data)
            if problem is not None:
                whose = "its own" if name.startswith(f"{mount.name}-") else "the other mount's"
                what = "zeros" if b"\0" * 8 in data else "no zeros"
                kind = f"read of {whose} file, {what}"
                self.tally.wrong_bytes(kind, f"{mount.name} read {name} ({kind}): {problem}")
            self.tally.op("read", len(data))

        return step

    def churner(self, mount: SoakMount) -> Callable[[random.Random], None]:
        counter = iter(range(1 << 62))

        def step(rng: random.Random) -> None:
            n = next(counter)
            base = self.dir(mount) / f"churn-{mount.name}"
            name = f"c-{mount.name}-{n}"
            data = blocks(name, 1, 0, rng.randint(1, 3))
            (base / name).write_bytes(data)
            self.tally.op("create")
            os.rename(base / name, base / f"{name}.renamed")
            self.tally.op("rename")
            got = (base / f"{name}.renamed").read_bytes()
            if got != data:
                self.tally.wrong_bytes("read back", f"{mount.name} {name}: read back {got[:48]!r}")
            self.tally.op("read back", len(got))
            os.unlink(base / f"{name}.renamed")
            self.tally.op("unlink")
            if n % 50 == 49:
                (base / f"d{n}").mkdir()
                (base / f"d{n}").rmdir()
                self.tally.op("mkdir+rmdir")

        return step

    def lister(self, mount: SoakMount) -> Callable[[random.Random], None]:
        def step(rng: random.Random) -> None:
            done = subprocess.run(
                ["ls", "-l", os.fspath(self.dir(mount) / "files")],
                capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                self.tally.error(f"{mount.name} ls -l: {done.stderr.strip()}")
            self.tally.op("ls -l")
            time.sleep(1.0)

        return step

    def sampler(self, start: float, interval: float) -> None:
        while not self.stop.wait(interval):
            self.rss.append((time.monotonic() - start, [_rss(m.pid) for m in self.mounts]))

    # -- the run --------------------------------------------------------------------

    def run(self, sample_seconds: float) -> None:
        first = self.mounts[0]
        (first.top / self.work / "files").mkdir(parents=True)
        for mount in self.mounts:
            (first.top / self.work / f"churn-{mount.name}").mkdir()
        start = time.monotonic()
        self.rss.append((0.0, [_rss(m.pid) for m in self.mounts]))
        threads = [threading.Thread(target=self.sampler, args=(start, sample_seconds))]
        for mount in self.mounts:
            roles = {"writer": self.writer, "churn": self.churner, "ls": self.lister}
            roles |= {"reader1": self.reader, "reader2": self.reader}
            for role, make in roles.items():
                what = f"{mount.name} {role}"
                threads.append(threading.Thread(target=self._loop, args=(what, make(mount))))
        for thread in threads:
            thread.start()
        try:
            self.stop.wait(self.seconds)
        finally:
            self.stop.set()
            for thread in threads:
                thread.join()
        self.rss.append((time.monotonic() - start, [_rss(m.pid) for m in self.mounts]))
        self.elapsed = time.monotonic() - start
        self.final_check()

    def final_check(self) -> None:
        """Every file on every mount equals its last written version (once callbacks had
        time to arrive)."""
        for name, written in self.files.written.items():
            for mount in self.mounts:
                path = self.dir(mount) / "files" / name
                deadline = time.monotonic() + SETTLE_SECONDS
                while True:
                    try:
                        got = path.read_bytes()
                    except OSError as e:
                        got = f"{e}".encode()
                    if got == written.content or time.monotonic() > deadline:
                        break
                    time.sleep(0.5)
                self.tally.op("final read", len(got))
                if got != written.content:
                    problem = self.files.check(name, got) or "an older version"
                    self.tally.wrong_bytes(
                        "final",
                        f"final: {mount.name} {name} is not version {written.version}"
                        f" ({len(got)} bytes, {len(written.content)} expected): {problem}",
                    )

    # -- the verdict ----------------------------------------------------------------

    def rss_growth(self) -> list[str]:
        """Why RSS keeps growing, per daemon (empty: flat, or too few samples to say)."""
        after = [s for s in self.rss if s[0] >= self.elapsed / 4]
        quarter = len(after) // 4
        if quarter < 2:
            return []
        found = []
        for i, mount in enumerate(self.mounts):
            early = statistics.median(s[1][i] for s in after[:quarter])
            late = statistics.median(s[1][i] for s in after[-quarter:])
            if late - early > max(RSS_SLACK_BYTES, RSS_SLACK_RATIO * early):
                found.append(f"{mount.name}: RSS grew from {early / 2**20:.0f} MiB to "
                             f"{late / 2**20:.0f} MiB after the warm-up")  # fmt: skip
        return found

    def report(self, full: Path) -> int:
        """Print the summary (20 lines of each kind of failure) and write everything to
        `full`; the exit status."""
        mib = 2**20
        lines = [
            f"soak: {self.elapsed / 60:.1f} minutes, seed {self.seed}",
            "operations: " + ", ".join(f"{k} {v}" for k, v in sorted(self.tally.ops.items())),
            f"bytes written: {self.tally.bytes_written / mib:.0f} MiB,"
            f" bytes checked: {self.tally.bytes_checked / mib:.0f} MiB",
        ]
        for i, mount in enumerate(self.mounts):
            values = [s[1][i] for s in self.rss]
            lines.append(
                f"RSS {mount.name}: start {values[0] / mib:.0f} MiB, max {max(values) / mib:.0f}"
                f" MiB, end {values[-1] / mib:.0f} MiB ({len(values)} samples)"
            )
            every = max(1, len(self.rss) // 12)
            curve = " ".join(f"{t:.0f}s:{rss[i] / mib:.0f}" for t, rss in self.rss[::every])
            lines.append(f"  over time (s:MiB): {curve}")
        growth = self.rss_growth()
        for kind, items in (("wrong bytes", self.tally.wrong), ("errors", self.tally.errors),
                            ("RSS growth", growth)):  # fmt: skip
            lines.append(f"{kind}: {len(items)}")
            if kind == "wrong bytes" and items:
                kinds = self.tally.wrong_kinds.items()
                lines.append("  by kind: " + ", ".join(f"{k}: {n}" for k, n in kinds))
            lines += [f"  {item}" for item in items[:20]]
            if len(items) > 20:
                lines.append(f"  ... and {len(items) - 20} more")
        print("\n".join(lines), flush=True)
        full.parent.mkdir(exist_ok=True)
        everything = [*lines, "every wrong byte:", *self.tally.wrong]
        everything += ["every error:", *self.tally.errors]
        full.write_text("\n".join(everything) + "\n")
        print(f"soak: every failure is in {full}")
        return 1 if self.tally.wrong or self.tally.errors or growth else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--seed", type=int, default=None, help="for the choices of the load")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("soak: needs root (test cell, FUSE mounts)", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else secrets.randbelow(1 << 30)
    with (
        tempfile.TemporaryDirectory(prefix="afsfuse-soak-") as tmp,
        running_cell() as cell,
    ):
        scratch = Path(tmp)
        krb5_config = Path(cell.env()["KRB5_CONFIG"])
        info = CellInfo(cell.name, cell.cellservdb, krb5_config)
        mounts = [SoakMount(info, scratch / name, name) for name in ("a", "b")]
        print(f"soak: cell {cell.name} is up; mounting twice", flush=True)
        try:
            for mount in mounts:
                mount.mount(mount.workdir / "cache")
            _grant_everyone(mounts[0], krb5_config, scratch)
            soak = Soak(mounts, f"soak-{seed}", args.minutes * 60, seed)
            print(f"soak: {args.minutes:g} minutes of load on {mounts[0].top / soak.work}",
                  flush=True)  # fmt: skip
            soak.run(args.sample)
        finally:
            for mount in mounts:
                with contextlib.suppress(Exception):
                    mount.unmount()
        stamp = time.strftime("soak-%Y%m%d-%H%M%S")
        status = soak.report(RESULTS / f"{stamp}.txt")
        for mount in mounts:
            kept = RESULTS / f"{stamp}-{mount.name}.log"
            shutil.copyfile(mount.workdir / mount.log_name, kept)
            print(f"soak: daemon {mount.name}'s log is {kept}; its last line: {mount.log_tail()}")
    return status


if __name__ == "__main__":
    sys.exit(main())
