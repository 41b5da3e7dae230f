"""A mount of a distant cell (its server behind a 10 ms delay line) read file by file: `cat`
of a directory's small files gets every byte right with each file fetched once, ahead of
the reader, with the reader's own token; a user without read rights gets EACCES and sees
nothing that was fetched for another."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
import trio
from acls import ALICE_ALL
from local_users import User, UserPython
from logins import admin_token
from managers import ADMIN, manager
from mounting import afs_mount
from volumes import volume_root

from afsfuse.keyring.store import TokenStore
from afsfuse.testing.cell import Cell

pytestmark = pytest.mark.cell

RTT = 0.010
#: alice may read the directory's files; everyone else may only list them.
READERS = "3\n0\nsystem:administrators 127\nalice 9\nsystem:anyuser 8\n"


async def _fill(cell: Cell, cache: Path, volume: str, store: TokenStore, files: dict) -> None:
    """Directory `cat` in the volume's root, holding `files`, readable by alice only."""
    async with manager(cell, cache, store) as m:
        root = await volume_root(m, cell.name, volume)
        await m.set_acl(root, ALICE_ALL, ADMIN)
        directory, _ = await m.mkdir(root, "cat", 0o755, ADMIN)
        await m.set_acl(directory, READERS, ADMIN)
        for name, data in files.items():
            fid, _ = await m.create(directory, name, 0o644, ADMIN)
            await m.write(fid, 0, data, ADMIN)
            await m.store_data(fid, ADMIN)
        await m.give_up_callbacks()


def _rpcs(stats: dict, name: str) -> int:
    return int(stats["rpcs"].get(name, 0))


def test_cat_of_a_far_directory_is_fetched_ahead_for_its_reader_only(
    far_cell: Cell,
    users: dict[str, User],
    user_python: UserPython,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    volume = f"far.{secrets.token_hex(3)}"
    far_cell.exec("vos", "create", far_cell.servers[0].addr, "a", volume, "-localauth")
    store = TokenStore()
    store.set(ADMIN, admin_token(far_cell, tmp_path / "cc_admin", monkeypatch))
    # Below a packet and over it, each file its own bytes.
    files = {f"f{i:02d}": secrets.token_bytes(500 + 97 * i) for i in range(50)}
    trio.run(_fill, far_cell, tmp_path / "prepare", volume, store, files)
    far_cell.set_delay(0, RTT)
    with afs_mount(far_cell, users, user_python, tmp_path / "cache") as mount:
        for user in ("alice", "bob"):
            assert mount.ctl(user, "aklog").returncode == 0
        directory = mount.path / ".:mount" / f"{far_cell.name}:{volume}" / "cat"
        glob = ("sh", "-c", 'cat "$1"/*', "sh", str(directory))
        before = mount.stats()
        assert mount.run(*glob, user="alice").stdout == b"".join(files[n] for n in sorted(files))
        after = mount.stats()
        # The volume's root and the directory once, every file once, with alice's token ...
        assert _rpcs(after, "FS.FetchData64") - _rpcs(before, "FS.FetchData64") == 52
        # ... and ahead of cat: only the two listings and the first two files kept it waiting.
        assert after["data_misses"] - before["data_misses"] <= 4

        # What alice's reads fetched is in the cache, under her rights only.  A few files:
        # a fileserver answers a client's refusals a second late past ten in a row.
        some = [str(directory / name) for name in ("f00", "f10", "f49")]
        for user in ("bob", None):  # None: root, without a token (anonymous)
            done = mount.run("cat", *some, user=user, check=False)
            assert done.returncode != 0 and done.stdout == b""
            assert done.stderr.count(b"Permission denied") == len(some)
