"""ACL text and rights letters (fs/acl.py)."""

from __future__ import annotations

import pytest

from afsfuse.fs.acl import Acl, letters_to_rights, rights_to_letters


def test_parse_and_format_round_trip_with_negative_entries() -> None:
    text = "2\n1\nsystem:administrators 127\nalice 9\nbob 2\n\0"
    acl = Acl.parse(text)
    assert acl.positive == {"system:administrators": 127, "alice": 9}
    assert acl.negative == {"bob": 2}
    assert acl.format() == text.rstrip("\0")
    assert Acl.parse(acl.format().encode()) == acl


def test_user_bits_are_signed_on_the_wire() -> None:
    acl = Acl.parse("1\n0\nalice -2147483521\n")  # as the fileserver prints A..H with rlidwka
    assert acl.positive["alice"] == 0x8000007F
    assert rights_to_letters(acl.positive["alice"]) == "rlidwkaH"
    assert acl.format() == "1\n0\nalice -2147483521\n"


def test_entries_without_rights_are_left_out() -> None:
    acl = Acl({"alice": letters_to_rights("none"), "bob": 1}, {"eve": 0})
    assert acl.format() == "1\n0\nbob 1\n"


@pytest.mark.parametrize(
    ("text", "rights"),
    [("rl", 9), ("read", 9), ("write", 0x3F), ("all", 0x7F), ("none", 0), ("rlidwkaA", 0x100007F)],
)
def test_letters(text: str, rights: int) -> None:
    assert letters_to_rights(text) == rights


def test_letters_in_fs_listacl_order() -> None:
    assert rights_to_letters(0x7F) == "rlidwka"
    assert rights_to_letters(0x01000008) == "lA"


@pytest.mark.parametrize(
    "text",
    ["", "1\n", "x\n0\n", "2\n0\nalice 9\n", "1\n0\nalice\n", "1\n0\nalice nine\n", "-1\n1\n"],
)
def test_malformed_text_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        Acl.parse(text)


def test_bad_letters_and_names_are_refused() -> None:
    with pytest.raises(ValueError):
        letters_to_rights("rx")
    with pytest.raises(ValueError):
        Acl({"two words": 1}).format()
