"""Shared fixtures: the real OpenAFS test cell."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from afsfuse.testing.cell import Cell, running_cell


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
