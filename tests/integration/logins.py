"""Cell users logged in with the real kinit, for tests that need their tickets or tokens.

A helper module rather than conftest.py: `from conftest import ...` gets whichever
conftest module pytest imported last under that name.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
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


def alice_token_secrets(env: dict[str, str], cell_name: str) -> list[bytes]:
    """The ticket and session key of alice's token (from her ccache in `env`), raw and in
    base64: what must never show in a file or a program's output."""
    code = (
        "import base64, sys\n"
        "from afsfuse.keyring import token_from_ccache\n"
        f"t = token_from_ccache({cell_name!r})\n"
        "print(base64.b64encode(t.ticket).decode(), base64.b64encode(t.session_key).decode())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True,
        text=True, timeout=60, check=True,
    )  # fmt: skip
    encoded = done.stdout.split()
    return [*(text.encode() for text in encoded), *(base64.b64decode(t) for t in encoded)]
