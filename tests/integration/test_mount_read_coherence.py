"""Reading while another client writes (README): writers on mount A rewrite multi-chunk files
in place while readers on mount B, and some on A, read them whole.  Every page a reader gets
must be that page of a version the file had, no version it sees may have been replaced
before its read began, and the read must end where a version ends.  The programs and their
page format are in rewrite_load.py."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from local_users import User, UserPython, as_user
from managers import ADMIN, manager
from mounting import Mount, afs_mount
from rewrite_load import PAGE, length_of
from volumes import volume_root

from afsfuse.keyring import Token
from afsfuse.keyring.store import TokenStore
from afsfuse.testing.cell import Cell

pytestmark = pytest.mark.cell

LOAD = Path(__file__).with_name("rewrite_load.py")
#: alice writes and reads with her token (rxkad crypt); everyone may read, so the kernel
#: may keep attributes and pages (the harder case).
ALICE_WRITES = "3\n0\nsystem:administrators 127\nalice 127\nsystem:anyuser 9\n"
FILES = ("f0", "f1", "f2", "f3")
SECONDS = 25
READERS_ON_B = 8
READERS_ON_A = 2


@dataclass(frozen=True)
class Version:
    began: float
    done: float


async def _open_to_alice(cell: Cell, cache: Path, token: Token, volume: str) -> None:
    store = TokenStore()
    store.set(ADMIN, token)
    async with manager(cell, cache, store) as m:
        root = await volume_root(m, cell.name, volume, "rw")
        await m.set_acl(root, ALICE_WRITES, ADMIN)


@pytest.fixture(scope="module")
def volume(cell: Cell, tokens: dict[str, Token], tmp_path_factory: pytest.TempPathFactory) -> str:
    name = "rc." + secrets.token_hex(3)
    cell.exec("vos", "create", cell.servers[0].addr, "a", name, "-maxquota", "0", "-localauth")
    trio.run(_open_to_alice, cell, tmp_path_factory.mktemp("prepare"), tokens["admin"], name)
    return name


@pytest.fixture(scope="module")
def mounts(
    cell: Cell,
    volume: str,
    users: dict[str, User],
    user_python: UserPython,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Mount, Mount]]:
    with ExitStack() as stack:
        a, b = (
            stack.enter_context(
                afs_mount(cell, users, user_python, tmp_path_factory.mktemp(f"rc-cache-{which}"))
            )
            for which in "ab"
        )
        for mount in (a, b):
            assert mount.ctl("alice", "aklog").returncode == 0
        yield a, b


def _directory(mount: Mount, volume: str) -> Path:
    return mount.path / ".:mount" / f"{mount.cell}:{volume}"


def _load(mount: Mount, *args: object) -> subprocess.Popen[bytes]:
    """rewrite_load.py on `mount`, as alice."""
    env = {"PATH": "/usr/bin:/bin", **mount.user_env["alice"]}
    argv = [*as_user(mount.local["alice"]), "python3", str(LOAD), *map(str, args)]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _records(process: subprocess.Popen[bytes]) -> list[dict]:
    out, err = process.communicate(timeout=SECONDS + 120)
    assert process.returncode == 0, err.decode(errors="replace")
    return [json.loads(line) for line in out.splitlines()]


def _problems(read: dict, versions: dict[int, Version], *, writer_mount: bool) -> list[str]:
    """What is wrong with one read, per the promise in the README."""
    name, began, done, length = read["name"], read["began"], read["done"], read["length"]
    problems = [f"page {i} is no version's" for i in read["bad"]]
    if read["bad"]:
        problems.append(f"page {read['bad'][0]}: {read['first_bad']}")
    seen = {version for version, _, _ in read["runs"]} | {v for _, v, _ in read["joins"]}
    for version in seen:
        if version not in versions:
            problems.append(f"version {version} was never written")
            continue
        replaced = versions.get(version + 1)
        if replaced is not None and replaced.done < began:
            problems.append(f"version {version} was replaced {began - replaced.done:.3f} s before")
        if versions[version].began > done:
            problems.append(f"version {version} was begun after the read")
    if not read["runs"]:
        # The writer's mount shows a rewrite from its start, as a local disk would.
        return problems if writer_mount else [*problems, "empty read"]
    if problems:
        return problems
    last = read["runs"][-1][0]
    if writer_mount:
        # A reader on the writer's mount may see the beginning of a version being written.
        if length > length_of(name, last):
            problems.append(f"{length} bytes, longer than version {last}")
    elif length != length_of(name, last):
        # Shorter is right only where a shorter version replaced the file during the read:
        # the read stops at its end, or where it had got to past that end.
        current = [
            v
            for v, times in versions.items()
            if times.began < done and (v + 1 not in versions or versions[v + 1].done >= began)
        ]
        if not (
            length < length_of(name, last) and any(length_of(name, v) <= length for v in current)
        ):
            problems.append(f"{length} bytes, but version {last} has {length_of(name, last)}")
    return problems


def test_readers_see_only_pages_of_real_versions_while_another_mount_rewrites(
    mounts: tuple[Mount, Mount], volume: str
) -> None:
    a, b = mounts
    initial = subprocess.run(
        [*as_user(a.local["alice"]), "python3", "-c",
         "import sys; sys.path.insert(0, sys.argv[1]); from rewrite_load import write_version\n"
         "for name in sys.argv[3:]: write_version(f'{sys.argv[2]}/{name}', name, 0)",
         str(LOAD.parent), str(_directory(a, volume)), *FILES],
        env={"PATH": "/usr/bin:/bin"}, capture_output=True, timeout=120,
    )  # fmt: skip
    assert initial.returncode == 0, initial.stderr.decode(errors="replace")
    writers = _load(a, "write", _directory(a, volume), SECONDS, *FILES)
    readers_b = _load(b, "read", _directory(b, volume), SECONDS, READERS_ON_B, *FILES)
    readers_a = _load(a, "read", _directory(a, volume), SECONDS, READERS_ON_A, *FILES)
    written = _records(writers)
    reads = {"B": _records(readers_b), "A": _records(readers_a)}

    errors = [
        {**r, "mount": mount}
        for mount, records in (("A", written + reads["A"]), ("B", reads["B"]))
        for r in records
        if r["kind"] == "error"
    ]
    assert not errors, errors[:5]
    versions: dict[str, dict[int, Version]] = {
        name: {0: Version(float("-inf"), float("-inf"))} for name in FILES
    }
    for w in written:
        versions[w["name"]][w["version"]] = Version(w["began"], w["done"])
    failures = []
    for mount, records in reads.items():
        for read in records:
            problems = _problems(read, versions[read["name"]], writer_mount=mount == "A")
            if problems:
                runs = [(v, first * PAGE, pages * PAGE) for v, first, pages in read["runs"]]
                failures.append(f"{mount} {read['name']} {read['length']} B {runs}: {problems}")
    mixed = sum(len({v for v, _, _ in r["runs"]}) > 1 for r in reads["B"])
    longest = max((r["done"] - r["began"] for r in reads["A"] + reads["B"]), default=0.0)
    summary = (
        f"{len(written)} versions written, {len(reads['B'])} reads on B ({mixed} across a "
        f"version change), {len(reads['A'])} on A, the longest {longest:.1f} s"
    )
    print(summary, file=sys.stderr)
    assert not failures, f"{len(failures)} bad reads ({summary}):\n" + "\n".join(failures[:20])
    # The load really ran (bounds far below what a loaded machine does): versions of
    # every file, and readers on both mounts.
    assert {w["name"] for w in written} == set(FILES) and len(written) >= 2 * len(FILES), summary
    assert len(reads["B"]) >= READERS_ON_B and len(reads["A"]) >= READERS_ON_A, summary
