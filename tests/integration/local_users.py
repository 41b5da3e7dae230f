"""The local users integration tests run programs as (afsfuse-alice, afsfuse-bob), and how.

The `users` and `user_python` fixtures (conftest.py) make them; test modules and mounting.py
use these types and `as_user` to run a program as one of them.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Short name (the cell user of the same name) -> local user name.
LOCAL_USERS = {"alice": "afsfuse-alice", "bob": "afsfuse-bob"}


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class UserPython:
    """How an unprivileged user runs Python with afsfuse importable."""

    interpreter: str
    env: dict[str, str]


def as_user(user: User) -> list[str]:
    return ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups", "--"]
