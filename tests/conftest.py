"""Shared fixtures: the real OpenAFS test cell; no test reads the machine's own AFS client
files."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from afsfuse import config
from afsfuse.testing.cell import Cell, running_cell


@pytest.fixture(autouse=True)
def no_client_files(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """The default places of OpenAFS's and kAFS's files, in this process, are empty ones of
    the test's (an openafs-client's cacheinfo would set the cache size of what a test
    configures); commands a test runs are given --openafs-dir and --kafs-config."""
    empty = tmp_path_factory.mktemp("etc")
    monkeypatch.setattr(config, "DEFAULT_OPENAFS_DIR", empty / "openafs")
    monkeypatch.setattr(config, "DEFAULT_KAFS_CONFIG", empty / "kafs" / "client.conf")


@pytest.fixture(scope="session")
def cell() -> Iterator[Cell]:
    """One real cell (one fileserver) shared by the whole test session."""
    with running_cell(fileservers=1) as c:
        yield c


@pytest.fixture(scope="session")
def cell2() -> Iterator[Cell]:
    """A real cell with two fileservers holding RO replicas, for fail-over tests."""
    with running_cell(fileservers=2, name="two.afsfuse.test") as c:
        yield c
