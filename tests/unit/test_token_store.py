"""TokenStore: per-uid and per-PAG tokens, one per cell, with expiry and generations."""

from __future__ import annotations

from dataclasses import replace

from afsfuse.keyring.store import Identity, TokenStore
from afsfuse.keyring.token import Token

NOW = 1_700_000_000.0
ALICE = Identity(uid=1001)
BOB = Identity(uid=1002)


def token(
    cell: str = "afsfuse.test", client: str = "alice@AFSFUSE.TEST", end: float = NOW + 3600
) -> Token:
    return Token(
        cell=cell,
        realm=cell.upper(),
        client=client,
        session_key=b"K" * 8,
        ticket=b"\x61ticket",
        begin=int(NOW) - 10,
        end=int(end),
    )


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def test_a_token_serves_only_its_uid_and_cell() -> None:
    store = TokenStore(clock=Clock())
    mine = token()
    store.set(ALICE, mine)

    assert store.get(ALICE, "afsfuse.test") is mine
    assert store.get(ALICE, "AFSFUSE.Test") is mine  # cell names are case-insensitive
    assert store.get(ALICE, "other.test") is None
    assert store.get(BOB, "afsfuse.test") is None
    assert store.list(BOB) == []


def test_a_new_token_replaces_the_old_one_for_that_cell() -> None:
    store = TokenStore(clock=Clock())
    store.set(ALICE, token())
    newer = token(end=NOW + 7200)
    store.set(ALICE, newer)
    store.set(ALICE, token(cell="other.test"))

    assert store.get(ALICE, "afsfuse.test") is newer
    assert [t.cell for t in store.list(ALICE)] == ["afsfuse.test", "other.test"]


def test_a_pag_has_its_own_tokens_whatever_the_uid() -> None:
    store = TokenStore(clock=Clock())
    uid_token = token()
    pag_token = token(client="alice/admin@AFSFUSE.TEST")
    store.set(ALICE, uid_token)
    store.set(Identity(uid=1001, pag=77), pag_token)

    # The PAG is shared by its processes whatever their uid; the uid's token is not used.
    assert store.get(Identity(uid=1002, pag=77), "afsfuse.test") is pag_token
    assert store.get(Identity(uid=1001, pag=78), "afsfuse.test") is None
    assert store.get(ALICE, "afsfuse.test") is uid_token


def test_a_remote_hosts_users_are_not_this_machines_and_go_together() -> None:
    store = TokenStore(clock=Clock())
    local, remote = token(), token(client="alice@ELSEWHERE")
    store.set(ALICE, local)
    store.set(Identity(1001, host="192.0.2.5"), remote)
    store.set(Identity(1002, pag=77, host="192.0.2.5"), remote)
    store.set(Identity(1001, host="192.0.2.6"), remote)

    assert store.get(ALICE, "afsfuse.test") is local
    assert store.get(Identity(1001, host="192.0.2.5"), "afsfuse.test") is remote
    assert store.get(Identity(1002, pag=77), "afsfuse.test") is None  # a local PAG 77
    assert store.remove_host("192.0.2.5") == 2
    assert store.list(Identity(1001, host="192.0.2.5")) == []
    assert store.list(Identity(1002, pag=77, host="192.0.2.5")) == []
    assert store.get(Identity(1001, host="192.0.2.6"), "afsfuse.test") is remote
    assert store.get(ALICE, "afsfuse.test") is local


def test_an_expired_token_is_listed_but_not_used() -> None:
    clock = Clock()
    store = TokenStore(clock=clock)
    mine = token(end=NOW + 60)
    store.set(ALICE, mine)

    clock.now = NOW + 60
    assert store.get(ALICE, "afsfuse.test") is None  # anonymous from now on
    assert store.list(ALICE) == [mine]  # `tokens` still shows it, as expired


def test_remove_one_cell_or_all() -> None:
    store = TokenStore(clock=Clock())
    store.set(ALICE, token())
    store.set(ALICE, token(cell="other.test"))
    store.set(BOB, token(client="bob@AFSFUSE.TEST"))

    store.remove(ALICE, "OTHER.test")
    assert [t.cell for t in store.list(ALICE)] == ["afsfuse.test"]
    store.remove(ALICE)
    assert store.list(ALICE) == []
    assert store.get(BOB, "afsfuse.test") is not None


def test_generation_changes_with_every_change_and_never_repeats() -> None:
    store = TokenStore(clock=Clock())
    seen = [store.changed(ALICE)]
    store.set(ALICE, token())
    seen.append(store.changed(ALICE))
    store.remove(ALICE, "not-held.test")  # nothing changed
    assert store.changed(ALICE) == seen[-1]
    store.remove(ALICE)
    seen.append(store.changed(ALICE))
    store.set(ALICE, token())
    seen.append(store.changed(ALICE))

    assert len(set(seen)) == len(seen)
    assert store.changed(BOB) == 0  # bob's cache keys are untouched by alice's tokens


def test_secrets_stay_out_of_repr() -> None:
    secret = replace(token(), session_key=b"SECRETKY", ticket=b"\x61TICKETBYTES")
    store = TokenStore(clock=Clock())
    store.set(ALICE, secret)

    text = repr(store.list(ALICE))
    assert "SECRETKY" not in text and "TICKETBYTES" not in text
    assert "alice@AFSFUSE.TEST" in text


def test_a_replaced_or_removed_token_is_announced_once() -> None:
    store = TokenStore(clock=Clock())
    gone: list[Token] = []
    store.on_forget(gone.append)
    first, second = token(), token(client="alice2@AFSFUSE.TEST")
    other_cell = token(cell="example.org")
    store.set(ALICE, first)
    store.set(ALICE, first)  # the same token again: nothing is forgotten
    store.set(ALICE, second)
    assert gone == [first]
    store.set(ALICE, other_cell)
    store.remove(ALICE, "example.org")
    assert gone == [first, other_cell]
    store.remove(BOB)
    store.remove(ALICE)
    assert gone == [first, other_cell, second]


def test_an_expired_token_is_logged_once_without_its_secrets(caplog) -> None:
    clock = Clock()
    store = TokenStore(clock=clock)
    store.set(ALICE, token(end=NOW + 60))
    assert store.get(ALICE, "afsfuse.test") is not None
    clock.now += 61
    for _ in range(3):
        assert store.get(ALICE, "afsfuse.test") is None
    lines = [r.getMessage() for r in caplog.records if "expired" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "uid 1001 for cell afsfuse.test (alice@" in lines[0]
    assert "KKKK" not in caplog.text and "ticket" not in caplog.text
    store.set(ALICE, token(end=NOW + 3600))  # a new token, then it expires too: told again
    clock.now = NOW + 3601
    assert store.get(ALICE, "afsfuse.test") is None
    assert sum("expired" in r.getMessage() for r in caplog.records) == 2
    remote = Identity(uid=1001, host="192.0.2.9")
    store.set(remote, token(end=NOW))
    assert store.get(remote, "afsfuse.test") is None
    assert "uid 1001 of host 192.0.2.9 for cell" in caplog.records[-1].getMessage()


def test_all_lists_every_holder() -> None:
    store = TokenStore(clock=Clock())
    store.set(ALICE, token())
    store.set(BOB, token(cell="other.test", client="bob@OTHER.TEST"))
    store.set(Identity(uid=1001, pag=7), token())
    held = [(kind, number, t.cell) for kind, number, t in store.all()]
    assert held == [("pag", 7, "afsfuse.test"), ("uid", 1001, "afsfuse.test"),
                    ("uid", 1002, "other.test")]  # fmt: skip
