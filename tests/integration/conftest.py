"""Fixtures for tests that talk to the real cell: Kerberos tokens and a CM endpoint."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest
import trio

from afsfuse.fs.callback import CallbackRegistry
from afsfuse.fs.cmservice import CacheManagerService
from afsfuse.keyring import Token, token_from_ccache
from afsfuse.rx.driver import Endpoint, open_endpoint
from afsfuse.rx.errors import RxError
from afsfuse.rx.interfaces.fs import FS
from afsfuse.testing.cell import USERS, Cell


def kinit(cell: Cell, user: str, ccache: Path) -> dict[str, str]:
    """Log `user` in with the real kinit; return the environment that names the ccache."""
    env = {**os.environ, "KRB5_CONFIG": cell.env()["KRB5_CONFIG"], "KRB5CCNAME": f"FILE:{ccache}"}
    subprocess.run(
        ["kinit", user], input=USERS[user] + "\n", env=env, text=True,
        capture_output=True, check=True, timeout=30,
    )  # fmt: skip
    return env


@pytest.fixture(scope="session")
def tokens(cell: Cell, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Token]:
    """rxkad tokens for alice, bob and admin, obtained the way a user would (kinit, then ours)."""
    result = {}
    saved = {k: os.environ.get(k) for k in ("KRB5_CONFIG", "KRB5CCNAME")}
    try:
        for user in USERS:
            ccache = tmp_path_factory.mktemp("krb5") / f"cc_{user}"
            env = kinit(cell, user, ccache)
            os.environ["KRB5_CONFIG"] = env["KRB5_CONFIG"]
            result[user] = token_from_ccache(cell.name, f"FILE:{ccache}")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return result


class CacheManagerEndpoint:
    """An Rx endpoint with the CB service installed, as every fileserver client needs."""

    def __init__(self, endpoint: Endpoint, service: CacheManagerService) -> None:
        self.endpoint = endpoint
        self.service = service
        self.registry = service.registry


@asynccontextmanager
async def cache_manager_endpoint(cell: Cell) -> AsyncIterator[CacheManagerEndpoint]:
    """A CM endpoint that gives its callbacks back when it closes.

    A fileserver that still holds callbacks for a closed port stalls about 2 s on each later
    break it sends there, which would slow every test that changes a shared directory.
    """
    async with open_endpoint() as endpoint:
        service = CacheManagerService(CallbackRegistry())
        service.install(endpoint)
        try:
            yield CacheManagerEndpoint(endpoint, service)
        finally:
            with trio.move_on_after(5, shield=True):
                for server in cell.servers:
                    conn = endpoint.connect((server.addr, 7000), FS.service_id)
                    with contextlib.suppress(RxError):
                        await FS.GiveUpAllCallBacks(conn)


@pytest.fixture
async def cm(cell: Cell) -> AsyncIterator[CacheManagerEndpoint]:
    async with cache_manager_endpoint(cell) as endpoint:
        yield endpoint


@pytest.fixture
def cm_factory(cell: Cell) -> Callable[[], AbstractAsyncContextManager[CacheManagerEndpoint]]:
    """For tests that need several independent cache managers: `async with cm_factory() as c`."""
    return lambda: cache_manager_endpoint(cell)
