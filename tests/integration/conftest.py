"""Fixtures for tests that talk to the real cell: Kerberos tokens and a CM endpoint."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from afsfuse.fs.callback import CallbackRegistry
from afsfuse.fs.cmservice import CacheManagerService
from afsfuse.keyring import Token, token_from_ccache
from afsfuse.rx.driver import Endpoint, open_endpoint
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


@pytest.fixture
async def cm() -> AsyncIterator[CacheManagerEndpoint]:
    async with open_endpoint() as endpoint:
        service = CacheManagerService(CallbackRegistry())
        service.install(endpoint)
        yield CacheManagerEndpoint(endpoint, service)


@pytest.fixture
def cm_factory() -> Callable[[], object]:
    """For tests that need several independent cache managers: `async with cm_factory() as c`."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def make() -> AsyncIterator[CacheManagerEndpoint]:
        async with open_endpoint() as endpoint:
            service = CacheManagerService(CallbackRegistry())
            service.install(endpoint)
            yield CacheManagerEndpoint(endpoint, service)

    return make
