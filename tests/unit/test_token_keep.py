"""Tokens kept in the kernel keyring (a real one: this process's user keyring) outlive the
TokenStore that set them, go when unlogged, and expire with the token."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import keyutils
import pytest

from afsfuse.keyring.kernel import KernelKeep, forget_keep
from afsfuse.keyring.store import Identity, TokenStore
from afsfuse.keyring.token import Token

ALICE = Identity(uid=1001)
PAG = Identity(uid=1002, pag=0x41000007)


def token(cell: str, lifetime: float) -> Token:
    now = time.time()
    return Token(
        cell=cell, realm=cell.upper(), client="alice@EXAMPLE.ORG", session_key=b"K" * 8,
        ticket=b"a ticket", begin=int(now) - 10, end=int(now + lifetime),
    )  # fmt: skip


@pytest.fixture
def name() -> Iterator[str]:
    """A keyring of the test's own, removed afterwards."""
    name = f"test-{secrets.token_hex(4)}"
    yield name
    forget_keep(name)


def test_tokens_outlive_the_store_until_unlogged(name: str) -> None:
    first = TokenStore(keep=KernelKeep(name))
    first.set(ALICE, token("example.org", 3600))
    first.set(ALICE, token("other.org", 3600))
    first.set(PAG, token("example.org", 3600))

    again = TokenStore(keep=KernelKeep(name))  # as a restarted daemon
    assert again.get(ALICE, "example.org") == first.get(ALICE, "example.org")
    assert again.get(PAG, "example.org") is not None
    assert again.holders() == 2

    again.remove(ALICE, "other.org")
    again.remove(PAG)
    third = TokenStore(keep=KernelKeep(name))
    assert [t.cell for t in third.list(ALICE)] == ["example.org"]
    assert third.list(PAG) == []


def test_the_kernel_drops_a_kept_token_when_it_expires(name: str) -> None:
    store = TokenStore(keep=KernelKeep(name))
    store.set(ALICE, token("example.org", 2))
    assert TokenStore(keep=KernelKeep(name)).holders() == 1
    time.sleep(3.5)
    assert TokenStore(keep=KernelKeep(name)).holders() == 0


def test_kept_tokens_are_readable_by_their_owner_only(name: str) -> None:
    TokenStore(keep=KernelKeep(name)).set(ALICE, token("example.org", 3600))
    ring = keyutils.search(keyutils.KEY_SPEC_USER_KEYRING, f"afsfuse:{name}".encode(),
                           keyType=b"keyring")  # fmt: skip
    key = keyutils.search(ring, b"uid:1001:example.org")
    perm = int(keyutils.describe_key(key).decode().split(";")[3], 16)
    assert perm & 0xFFFF == 0  # nothing for the group or others
