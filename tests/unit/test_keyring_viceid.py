"""Filling a token's viceid: the PT name for a Kerberos principal, and NameToID's answers
(served in memory by a fake PT server made from the same declarations)."""

from __future__ import annotations

import dataclasses

import pytest
import trio
from memrx import FakeConnection

from afsfuse.keyring import Token, pt_name, with_viceid
from afsfuse.rx.interfaces.pt import ANONYMOUSID, PT
from afsfuse.rx.rpc import make_dispatcher


def token(client: str, realm: str = "EXAMPLE.ORG") -> Token:
    return Token(
        cell="example.org",
        realm=realm,
        client=client,
        session_key=bytes(8),
        ticket=bytes(64),
        begin=0,
        end=1,
    )


@pytest.mark.parametrize(
    ("client", "expected"),
    [
        ("alice@EXAMPLE.ORG", "alice"),
        ("Alice@EXAMPLE.ORG", "alice"),
        ("admin/root@EXAMPLE.ORG", "admin.root"),
        ("bob@OTHER.EXAMPLE", "bob@other.example"),
        ("svc/host.example.org@OTHER.EXAMPLE", "svc.host.example.org@other.example"),
        ("x" * 63 + "@EXAMPLE.ORG", "x" * 63),
        ("x" * 64 + "@EXAMPLE.ORG", None),  # prname is char[64] with its NUL
    ],
)
def test_pt_name(client: str, expected: str | None) -> None:
    assert pt_name(token(client)) == expected


class FakePT:
    def __init__(self, ids: dict[str, int]) -> None:
        self.ids = ids
        self.asked: list[list[str]] = []

    async def NameToID(self, call, nlist):
        self.asked.append(list(nlist))
        return [self.ids.get(name, ANONYMOUSID) for name in nlist]


async def test_with_viceid_fills_the_id() -> None:
    pt = FakePT({"alice": 1001})
    async with trio.open_nursery() as nursery:
        original = token("alice@EXAMPLE.ORG")
        filled = await with_viceid(original, FakeConnection(nursery, make_dispatcher(PT, pt)))
    assert filled.viceid == 1001
    assert filled == dataclasses.replace(original, viceid=1001)
    assert pt.asked == [["alice"]]


async def test_unknown_name_leaves_viceid_unset() -> None:
    pt = FakePT({})
    async with trio.open_nursery() as nursery:
        original = token("mallory@OTHER.EXAMPLE")
        filled = await with_viceid(original, FakeConnection(nursery, make_dispatcher(PT, pt)))
    assert filled.viceid is None
    assert pt.asked == [["mallory@other.example"]]


async def test_unspellable_name_asks_nobody() -> None:
    pt = FakePT({})
    async with trio.open_nursery() as nursery:
        filled = await with_viceid(
            token("y" * 70 + "@EXAMPLE.ORG"), FakeConnection(nursery, make_dispatcher(PT, pt))
        )
    assert filled.viceid is None
    assert pt.asked == []
