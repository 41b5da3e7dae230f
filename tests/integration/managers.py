"""Cache managers without FUSE on the real cell: the identities tests act as, a fast
fail-over configuration, and `manager(...)`, which runs one on a cache directory of its own.
Tests of the core (test_fs_*) use them, and mount tests use them to prepare volumes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from afsfuse.cache.store import CacheStore
from afsfuse.fs.cell import CellDB
from afsfuse.fs.manager import CacheManager, ManagerConfig
from afsfuse.fs.stats import Stats
from afsfuse.keyring import Token
from afsfuse.keyring.store import Identity, TokenStore
from afsfuse.rx.driver import open_endpoint
from afsfuse.testing.cell import Cell
from afsfuse.vl.cellservdb import read_cellservdb

ADMIN = Identity(0)
ALICE = Identity(1001)
BOB = Identity(1002)
CHUNK = 64 * 1024
FAST = ManagerConfig(
    dead_time=2.0, probe_timeout=1.0, probe_interval=1.0, rotation_timeout=12.0, busy_wait=0.5
)


def token_store(tokens: dict[str, Token]) -> TokenStore:
    """The cell users' tokens under the identities above."""
    store = TokenStore()
    for who, user in ((ADMIN, "admin"), (ALICE, "alice"), (BOB, "bob")):
        store.set(who, tokens[user])
    return store


@asynccontextmanager
async def manager(
    cell: Cell, cache_dir: Path, tokens: TokenStore, config: ManagerConfig = FAST
) -> AsyncIterator[CacheManager]:
    cells = CellDB(read_cellservdb(cell.cellservdb), cell.name)
    with CacheStore(cache_dir, 1 << 30, chunk_size=CHUNK) as store:
        async with open_endpoint() as endpoint, trio.open_nursery() as nursery:
            m = CacheManager(config, endpoint, cells, store, tokens, Stats())
            await nursery.start(m.run)
            yield m
            nursery.cancel_scope.cancel()
