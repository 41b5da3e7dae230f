"""The workloads: ordinary programs (cat, cp, ls, tar, find, python) on the mount.

Each has an untimed `prepare` (sync, drop the kernel's caches, remount...), a timed `run`,
and an untimed `check` that the result is right; a workload that does the wrong thing fast
is a failure, not a figure.  One that writes also says what it leaves in the volume
(`written`), and is timed again until that is on the fileserver (onserver.py).  Every
program runs under a time limit; the parallel ones start a few programs at once, under one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clients import Client
from onserver import Expected
from populate import PARALLEL, Layout

#: Seconds any one program may take before the workload counts as failed.
STEP_TIMEOUT = 900.0
SMALL_FILES = 1000
SMALL_BYTES = 100
#: Python without site or user paths: it starts in ~15 ms, the same on both sides.
PYTHON = ["/usr/bin/python3", "-I", "-S"]
_READER = (
    "import sys\n"
    "buf = bytearray(1 << 20); total = 0\n"
    "with open(sys.argv[1], 'rb', buffering=0) as f:\n"
    "    while n := f.readinto(buf): total += n\n"
    "print(total)\n"
)
_CREATOR = (
    "import os, sys\n"
    "d, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])\n"
    "os.mkdir(d)\n"
    "for i in range(n):\n"
    "    with open(os.path.join(d, f'f{i:04d}'), 'wb') as f: f.write(b'x' * size)\n"
)


class WorkloadFailed(RuntimeError):
    """The program failed, timed out or produced the wrong result."""


@dataclass
class Context:
    """What a workload acts on: one client in one round."""

    client: Client
    layout: Layout
    tag: str  # unique per client and round: names what this round writes
    scratch: Path  # local files: the write source and the tarball
    tar_members: int

    @property
    def big(self) -> Path:
        return self.client.top / self.layout.big_file

    def mine(self, what: str) -> Path:
        return self.client.top / f"{what}-{self.tag}"

    def mine_in_volume(self, what: str) -> str:
        """`mine(what)` as a path from the root of the bench's volume, for onserver.py."""
        return f"{Layout.top}/{what}-{self.tag}"


_ENV = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "LC_ALL": "C"}


def _failed(argv: list[str], returncode: int, stderr: bytes) -> WorkloadFailed:
    # The first complaint and the last line (a summary, or the exception that ended a
    # traceback).
    err = stderr.decode(errors="replace").strip().splitlines() or ["(no message)"]
    said = err[0] if len(err) == 1 else f"{err[0]} ... {err[-1]}"
    return WorkloadFailed(f"{os.path.basename(argv[0])} exit {returncode}: {said}")


def run(argv: list[str], *, stdout: int | None = subprocess.DEVNULL) -> str:
    try:
        done = subprocess.run(
            argv, stdout=stdout, stderr=subprocess.PIPE, env=_ENV, timeout=STEP_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise WorkloadFailed(f"{argv[0]} timed out after {STEP_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        raise _failed(argv, done.returncode, done.stderr)
    return done.stdout.decode() if done.stdout is not None else ""


def run_all(argvs: list[list[str]]) -> list[str]:
    """Start every program at once and wait until all have ended, within one STEP_TIMEOUT;
    their outputs.  Output goes to files, so no program waits on a full pipe while another
    is waited for."""
    with contextlib.ExitStack() as stack:
        outs = [stack.enter_context(tempfile.TemporaryFile()) for _ in argvs]
        errs = [stack.enter_context(tempfile.TemporaryFile()) for _ in argvs]
        procs: list[subprocess.Popen[bytes]] = []
        try:
            for argv, out, err in zip(argvs, outs, errs, strict=True):
                procs.append(subprocess.Popen(argv, stdout=out, stderr=err, env=_ENV))
            deadline = time.monotonic() + STEP_TIMEOUT
            for argv, proc in zip(argvs, procs, strict=True):
                try:
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    raise WorkloadFailed(
                        f"{argv[0]} timed out after {STEP_TIMEOUT:.0f} s"
                    ) from None
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        for argv, proc, err in zip(argvs, procs, errs, strict=True):
            if proc.returncode != 0:
                err.seek(0)
                raise _failed(argv, proc.returncode, err.read())
        texts = []
        for out in outs:
            out.seek(0)
            texts.append(out.read().decode())
        return texts


def drop_caches() -> None:
    """Page cache, dentries and inodes: what the kernel keeps in front of every FUSE daemon."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def sync_only(ctx: Context) -> None:
    os.sync()


def cold(ctx: Context) -> None:
    drop_caches()


def remount_then_cold(ctx: Context) -> None:
    ctx.client.remount()
    drop_caches()


def read_big(ctx: Context) -> None:
    got = int(run([*PYTHON, "-c", _READER, os.fspath(ctx.big)], stdout=subprocess.PIPE))
    if got != ctx.layout.big_bytes:
        raise WorkloadFailed(f"read {got} bytes of {ctx.layout.big_bytes}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def check_big_content(ctx: Context) -> None:
    if _sha256(ctx.big) != ctx.layout.big_sha256:
        raise WorkloadFailed("the big file read back with the wrong content")


def _quarters(ctx: Context) -> list[Path]:
    return [ctx.client.top / Layout.quarter_file(i) for i in range(PARALLEL)]


def read_quarters(ctx: Context) -> None:
    """One reader process per quarter file, all at once."""
    outs = run_all([[*PYTHON, "-c", _READER, os.fspath(path)] for path in _quarters(ctx)])
    got = [int(out) for out in outs]
    if got != [ctx.layout.quarter_bytes] * PARALLEL:
        raise WorkloadFailed(f"the readers read {got} bytes, each of {ctx.layout.quarter_bytes}")


def check_quarters(ctx: Context) -> None:
    for path, sha256 in zip(_quarters(ctx), ctx.layout.quarter_sha256, strict=True):
        if _sha256(path) != sha256:
            raise WorkloadFailed(f"{path.name} read back with the wrong content")


def write_source(ctx: Context) -> Path:
    return ctx.scratch / "write-source.bin"


def prepare_write(ctx: Context) -> None:
    run(["cat", os.fspath(write_source(ctx))])  # the source comes from memory, not disk
    os.sync()


def write_big(ctx: Context) -> None:
    run(["cp", os.fspath(write_source(ctx)), os.fspath(ctx.mine("write"))])


def written_big(ctx: Context) -> Expected:
    return Expected({ctx.mine_in_volume("write"): ctx.layout.big_bytes})


def check_written(ctx: Context) -> None:
    size = os.stat(ctx.mine("write")).st_size
    if size != ctx.layout.big_bytes:
        raise WorkloadFailed(f"the written file has {size} bytes, not {ctx.layout.big_bytes}")


def create_small(count: int) -> Callable[[Context], None]:
    def timed(ctx: Context) -> None:
        run([*PYTHON, "-c", _CREATOR, os.fspath(ctx.mine("create")), str(count),
             str(SMALL_BYTES)])  # fmt: skip

    return timed


def written_small(count: int) -> Callable[[Context], Expected]:
    def written(ctx: Context) -> Expected:
        directory = ctx.mine_in_volume("create")
        return Expected({f"{directory}/f{i:04d}": SMALL_BYTES for i in range(count)})

    return written


def check_created(count: int) -> Callable[[Context], None]:
    def check(ctx: Context) -> None:
        names = os.listdir(ctx.mine("create"))
        if len(names) != count:
            raise WorkloadFailed(f"{len(names)} files created, not {count}")

    return check


def list_long(entries: int) -> Callable[[Context], None]:
    def timed(ctx: Context) -> None:
        out = run(["ls", "-l", os.fspath(ctx.client.top / Layout.listing_dir(entries))],
                  stdout=subprocess.PIPE)  # fmt: skip
        if len(out.splitlines()) != entries + 1:  # the "total" line
            raise WorkloadFailed(f"ls -l listed {len(out.splitlines()) - 1} of {entries}")

    return timed


def cat_small(ctx: Context) -> None:
    directory = os.fspath(ctx.client.top / Layout.cat_dir)
    out = run(["sh", "-c", 'cat "$1"/* | wc -c', "sh", directory], stdout=subprocess.PIPE)
    expected = ctx.layout.cat_files * ctx.layout.cat_bytes
    if int(out) != expected:
        raise WorkloadFailed(f"cat read {int(out)} bytes, not {expected}")


def make_tar_dir(ctx: Context) -> None:
    os.mkdir(ctx.mine("tar"))
    os.sync()


def _untar_argv(ctx: Context, into: str) -> list[str]:
    # No owners, modes or times from the archive: afsd.fuse implements neither chown nor
    # utimens, and the point is creating files, not metadata calls one side lacks.
    return ["tar", "xf", os.fspath(ctx.scratch / "stdlib.tar"), "-C", os.fspath(ctx.mine(into)),
            "--no-same-owner", "--no-same-permissions", "-m"]  # fmt: skip


def untar(ctx: Context) -> None:
    run(_untar_argv(ctx, "tar"))


def written_tar(ctx: Context) -> Expected:
    return Expected.from_tar(ctx.scratch / "stdlib.tar", ctx.mine_in_volume("tar"))


def _parallel_tar_dirs() -> list[str]:
    return [f"ptar{i}" for i in range(PARALLEL)]


def make_parallel_tar_dirs(ctx: Context) -> None:
    for into in _parallel_tar_dirs():
        os.mkdir(ctx.mine(into))
    os.sync()


def untar_parallel(ctx: Context) -> None:
    """A tar process per directory, all at once."""
    run_all([_untar_argv(ctx, into) for into in _parallel_tar_dirs()])


def written_parallel_tars(ctx: Context) -> Expected:
    tarball = ctx.scratch / "stdlib.tar"
    trees = [Expected.from_tar(tarball, ctx.mine_in_volume(into)) for into in _parallel_tar_dirs()]
    return Expected({path: size for tree in trees for path, size in tree.files.items()})


def find_ls(ctx: Context) -> None:
    out = run(["find", os.fspath(ctx.mine("tar")), "-ls"], stdout=subprocess.PIPE)
    if len(out.splitlines()) != ctx.tar_members + 1:
        raise WorkloadFailed(f"find -ls saw {len(out.splitlines()) - 1} of {ctx.tar_members}")


def _nothing(ctx: Context) -> None:
    pass


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    run: Callable[[Context], None]
    prepare: Callable[[Context], None] = sync_only
    check: Callable[[Context], None] = _nothing
    #: Bytes moved, for MB/s (None: not a bulk transfer).
    nbytes: Callable[[Layout], int] | None = None
    #: What it leaves on the fileserver, for the "on the server" time (None: writes nothing).
    written: Callable[[Context], Expected] | None = None
    #: Workloads whose files or caches it uses: `--only` runs them before it.
    needs: tuple[str, ...] = ()


def _big(layout: Layout) -> int:
    return layout.big_bytes


def _all_quarters(layout: Layout) -> int:
    return layout.quarter_bytes * PARALLEL


def workloads(listing_sizes: tuple[int, ...], creates: int = SMALL_FILES) -> list[Workload]:
    """In the order they run within a round (later ones use what earlier ones left);
    `creates` small files in the create workload."""
    listings = [
        Workload(f"ls-l-{n}", f"cold ls -l, {n} entries", list_long(n), cold) for n in listing_sizes
    ]
    return [
        Workload("cold-read", "cold read (empty cache)", read_big, cold, nbytes=_big),
        Workload(
            "second-read", "second read (page cache)", read_big, nbytes=_big, needs=("cold-read",)
        ),
        Workload(
            "cache-read",
            "read after drop_caches",
            read_big,
            cold,
            nbytes=_big,
            needs=("cold-read",),
        ),
        Workload(
            "remount-read",
            "read after remount",
            read_big,
            prepare=remount_then_cold,
            check=check_big_content,
            nbytes=_big,
        ),
        Workload(
            "parallel-read",
            f"{PARALLEL} parallel readers, cold",
            read_quarters,
            cold,
            check=check_quarters,
            nbytes=_all_quarters,
        ),
        Workload(
            "write",
            "write with cp (close incl.)",
            write_big,
            prepare=prepare_write,
            check=check_written,
            nbytes=_big,
            written=written_big,
        ),
        Workload(
            "create",
            f"create {creates} small files",
            create_small(creates),
            check=check_created(creates),
            written=written_small(creates),
        ),
        *listings,
        Workload("cat-small", "cold cat of small files", cat_small, cold),
        Workload("tar-x", "tar x Python stdlib", untar, make_tar_dir, written=written_tar),
        Workload("find-ls", "find -ls over it (cold)", find_ls, cold, needs=("tar-x",)),
        Workload(
            "parallel-tar-x",
            f"{PARALLEL} parallel tar x",
            untar_parallel,
            make_parallel_tar_dirs,
            written=written_parallel_tars,
        ),
    ]
