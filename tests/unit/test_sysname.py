"""@sys expansion."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from afsfuse.fs.sysname import (
    MAX_SYSNAME,
    MAX_SYSNAMES,
    check_sysnames,
    default_sysname,
    sysname_candidates,
)

NAMES = [b"amd64_linux26", b"amd64_linux24", b"i386_linux26"]


def test_exact_at_sys_tries_each_sysname_in_order() -> None:
    assert sysname_candidates(b"@sys", NAMES) == NAMES


def test_suffix_at_sys_is_tried_literally_first() -> None:
    assert sysname_candidates(b"bin.@sys", NAMES) == [
        b"bin.@sys",
        b"bin.amd64_linux26",
        b"bin.amd64_linux24",
        b"bin.i386_linux26",
    ]


@pytest.mark.parametrize("name", [b"sys", b"@sy", b"@sysx", b"x@Sys", b"@sys@", b"bin", b""])
def test_other_names_are_left_alone(name: bytes) -> None:
    assert sysname_candidates(name, NAMES) == [name]


def test_without_sysnames_the_name_is_taken_literally() -> None:
    assert sysname_candidates(b"@sys", []) == [b"@sys"]
    assert sysname_candidates(b"a@sys", []) == [b"a@sys"]


@given(st.binary(max_size=40), st.lists(st.binary(min_size=1, max_size=20), max_size=5))
def test_candidates_always_start_with_something_sensible(stem: bytes, names: list[bytes]) -> None:
    candidates = sysname_candidates(stem + b"@sys", names)
    if stem:
        assert candidates[0] == stem + b"@sys"
        assert candidates[1:] == [stem + n for n in names]
    else:
        assert candidates == (names or [b"@sys"])


def test_sysname_list_limits() -> None:
    assert check_sysnames(NAMES) == tuple(NAMES)
    assert check_sysnames([b"x" * (MAX_SYSNAME - 1)])
    for bad in ([], [b"x"] * (MAX_SYSNAMES + 1), [b""], [b"x" * MAX_SYSNAME], [b"."], [b".."],
                [b"a/b"], [b"a\0"]):  # fmt: skip
        with pytest.raises(ValueError):
            check_sysnames(bad)


def test_default_sysname_looks_like_openafs() -> None:
    name = default_sysname()
    assert name.endswith(b"_linux26")
    check_sysnames([name])
