"""Cell users logged in with the real kinit, for tests that need their tickets or tokens.

A helper module rather than conftest.py: `from conftest import ...` gets whichever
conftest module pytest imported last under that name.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from afsfuse.keyring import Token, token_from_ccache
from afsfuse.testing.cell import USERS, Cell


def kinit(cell: Cell, user: str, ccache: Path) -> dict[str, str]:
    """Log `user` in with the real kinit; return the environment that names the ccache."""
    env = {**os.environ, "KRB5_CONFIG": cell.env()["KRB5_CONFIG"], "KRB5CCNAME": f"FILE:{ccache}"}
    subprocess.run(
        ["kinit", user], input=USERS[user] + "\n", env=env, text=True,
        capture_output=True, check=True, timeout=30,
    )  # fmt: skip
    return env


def admin_token(cell: Cell, ccache: Path, monkeypatch: pytest.MonkeyPatch) -> Token:
    """The admin's token in `cell` (for cells other than the session's, whose `tokens`
    fixture has them); KRB5_CONFIG stays set to that cell's for the rest of the test."""
    env = kinit(cell, "admin", ccache)
    monkeypatch.setenv("KRB5_CONFIG", env["KRB5_CONFIG"])
    return token_from_ccache(cell.name, f"FILE:{ccache}")
