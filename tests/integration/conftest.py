"""Fixtures shared by the integration tests: the cell users' tokens, CM endpoints, and the
local users programs run as.  Plain helpers live in modules named by what they hold
(logins.py, local_users.py, managers.py, admin_rpcs.py, mounting.py, programs.py...)."""

from __future__ import annotations

import contextlib
import os
import pwd
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest
import trio
from local_users import LOCAL_USERS, User, UserPython, as_user
from logins import kinit
from managers import token_store

from afsfuse.fs.callback import CallbackRegistry
from afsfuse.fs.cmservice import CacheManagerService
from afsfuse.keyring import Token, token_from_ccache
from afsfuse.keyring.store import TokenStore
from afsfuse.rx.driver import Endpoint, open_endpoint
from afsfuse.rx.errors import RxError
from afsfuse.rx.interfaces.fs import FS
from afsfuse.testing.cell import USERS, Cell, running_cell


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


@pytest.fixture
def token_db(tokens: dict[str, Token]) -> TokenStore:
    """A fresh token store with the cell users' tokens (managers.py's identities)."""
    return token_store(tokens)


@pytest.fixture(scope="session")
def users() -> dict[str, User]:
    """The local users, created if missing (useradd -M) and kept."""
    result = {}
    for short, name in LOCAL_USERS.items():
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            subprocess.run(
                ["useradd", "-M", "-r", "-s", "/usr/sbin/nologin", name], check=True, timeout=30
            )
            entry = pwd.getpwnam(name)
        result[short] = User(name, entry.pw_uid, entry.pw_gid)
    return result


@pytest.fixture(scope="session")
def user_python(users: dict[str, User]) -> UserPython:
    check = "import sys, afsfuse.ctl.cli; print(sys.version_info[:2])"
    done = subprocess.run(
        [*as_user(users["bob"]), sys.executable, "-c", check],
        env={"PATH": os.environ["PATH"]}, capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, (
        f"local users cannot run {sys.executable} with afsfuse ({done.stderr.strip()}); "
        "build the virtualenv on a Python every user can run: make clean venv"
    )
    return UserPython(sys.executable, {})


@pytest.fixture(scope="module")
def far_cell() -> Iterator[Cell]:
    """A cell of its own whose server sits behind a delay line, at 0 until a test sets it."""
    with running_cell(name="far.afsfuse.test", delays={0: 0.0}) as c:
        yield c
