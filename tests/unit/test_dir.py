"""AFS directory blobs: parsing, hash lookup, the OpenAFS-compatible builder, hostile input."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afsfuse.fs.dir import (
    MAX_PAGES,
    NAME_MAX,
    PAGE_SIZE,
    DirectoryBuilder,
    DirectoryError,
    DirEntry,
    build_directory,
    lookup,
    name_hash,
    name_slots,
    parse_directory,
)

ME = DirEntry(1, 1)
DOT = [(b".", 1, 1), (b"..", 1, 1)]


def slot(blob: int) -> int:
    return blob * 32


def made(*names: bytes) -> DirectoryBuilder:
    builder = DirectoryBuilder(ME, ME)
    for i, name in enumerate(names):
        builder.add(name, 100 + i, 7)
    return builder


# -- the format -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "bucket"), [(b".", 46), (b"..", 68), (b"foo", 72), (b"README", 6), (b"root.cell", 90)]
)
def test_hash_matches_the_fact_sheet(name: bytes, bucket: int) -> None:
    assert name_hash(name) == bucket


def test_hash_of_bytes_above_127_is_unsigned() -> None:
    # h = 0xff, then 0xff*173 + 0xff = 44370: below 2^31, so bucket = 44370 & 127.
    assert name_hash(b"\xff\xff") == (0xFF * 173 + 0xFF) & 127


@pytest.mark.parametrize(
    ("length", "slots"), [(1, 1), (15, 1), (16, 2), (47, 2), (48, 3), (256, 9)]
)
def test_slots_per_name(length: int, slots: int) -> None:
    assert name_slots(length) == slots


def test_new_directory_has_the_makedir_layout() -> None:
    data = DirectoryBuilder(DirEntry(5, 9), DirEntry(1, 1)).to_bytes()
    assert len(data) == PAGE_SIZE
    pgcount, tag, freecount = struct.unpack_from(">HHB", data)
    assert (pgcount, tag, freecount) == (1, 1234, 51)  # freecount is never updated
    assert data[5:13] == b"\xff\x7f" + bytes(6)  # header slots 0..12, then '.' and '..'
    assert data[32] == 64 - 13 - 2  # alloMap[0]
    assert data[33:160] == bytes([64]) * 127
    hash_table = struct.unpack_from(">128H", data, 160)
    assert hash_table[46] == 13 and hash_table[68] == 14
    assert sum(1 for b in hash_table if b) == 2
    assert data[slot(13) : slot(14)] == b"\x01\x00\x00\x00" + struct.pack(
        ">II", 5, 9
    ) + b".\0" + bytes(18)
    assert parse_directory(data) == {b".": DirEntry(5, 9), b"..": DirEntry(1, 1)}


def test_chain_insertion_is_at_the_head() -> None:
    # Two names in the same bucket: the newer one is found first, linking to the older.
    first, second = (
        b"foo",
        next(b"n%d" % i for i in range(10_000) if name_hash(b"n%d" % i) == name_hash(b"foo")),
    )
    data = made(first, second).to_bytes()
    head = struct.unpack_from(">H", data, 160 + 2 * name_hash(first))[0]
    assert data[slot(head) + 12 : slot(head) + 12 + len(second)] == second
    assert struct.unpack_from(">H", data, slot(head) + 2)[0] == 15
    assert lookup(data, first) == DirEntry(100, 7)
    assert lookup(data, second) == DirEntry(101, 7)


def test_pages_are_added_as_entries_fill_them() -> None:
    builder = made(*[b"%03d" % i for i in range(49 + 63 + 1)])
    data = builder.to_bytes()
    assert len(data) == 3 * PAGE_SIZE
    assert struct.unpack_from(">H", data)[0] == 3
    assert list(data[32:36]) == [0, 0, 62, 64]
    for page in (1, 2):
        pgcount, tag, freecount = struct.unpack_from(">HHB", data, page * PAGE_SIZE)
        assert (pgcount, tag, freecount) == (0, 1234, 63)
    assert len(parse_directory(data)) == 2 + 113


def test_long_names_skip_a_page_that_cannot_hold_them() -> None:
    # Page 0 has 49 free slots after '.' and '..': five 9-slot names fit, the sixth does not.
    names = [bytes([65 + i]) * NAME_MAX for i in range(6)]
    data = made(*names).to_bytes()
    parsed = parse_directory(data)
    assert list(parsed) == [b".", b"..", *names]
    assert data[32] == 49 - 5 * 9
    assert data[33] == 64 - 1 - 9


def test_order_is_slot_order_and_holes_are_refilled() -> None:
    builder = made(b"a", b"b", b"c", b"d")
    builder.remove(b"b")
    builder.add(b"e", 200, 1)  # takes b's slot
    assert list(parse_directory(builder.to_bytes())) == [b".", b"..", b"a", b"e", b"c", b"d"]
    with pytest.raises(KeyError):
        builder.remove(b"b")
    with pytest.raises(ValueError, match="exists"):
        builder.add(b"a", 1, 1)


def test_deletion_clears_28_bytes_per_slot_like_openafs() -> None:
    builder = made(b"x" * 200)  # 7 slots from slot 15; the name ends at byte 212
    builder.remove(b"x" * 200)
    data = builder.to_bytes()
    assert data[slot(15) : slot(15) + 7 * 28] == bytes(7 * 28)
    assert data[slot(15) + 7 * 28 : slot(22)] == b"x" * 16 + bytes(12)
    assert parse_directory(data) == {b".": ME, b"..": ME}
    assert data[32] == 49


@pytest.mark.parametrize("bad", [b"", b"a\0b", b"x" * (NAME_MAX + 1)])
def test_builder_refuses_names_the_fileserver_refuses(bad: bytes) -> None:
    with pytest.raises(ValueError):
        DirectoryBuilder().add(bad, 1, 1)


def test_vnode_zero_marks_a_deleted_entry() -> None:
    data = build_directory([*DOT, (b"gone", 0, 0), (b"kept", 3, 3)])
    assert parse_directory(data) == {b".": ME, b"..": ME, b"kept": DirEntry(3, 3)}
    assert lookup(data, b"gone") is None


def test_ten_thousand_entries_parse() -> None:
    # How fast is the bench's business (`ls -l` of 10 000 entries), not a timed assertion.
    data = build_directory([*DOT, *((b"file-number-%05d" % i, i + 2, 1) for i in range(10_000))])
    parsed = parse_directory(data)
    assert len(parsed) == 10_002
    assert parsed[b"file-number-04321"] == DirEntry(4_323, 1)
    assert lookup(data, b"file-number-09999") == DirEntry(10_001, 1)


# -- hostile input --------------------------------------------------------------------------


def corrupt(data: bytes, offset: int, patch: bytes) -> bytes:
    return data[:offset] + patch + data[offset + len(patch) :]


def set_used(data: bytes, blob: int) -> bytes:
    page, s = divmod(blob, 64)
    at = page * PAGE_SIZE + 5 + s // 8
    return corrupt(data, at, bytes([data[at] | 1 << (s % 8)]))


@pytest.mark.parametrize("size", [0, 1, PAGE_SIZE - 1, PAGE_SIZE + 32, (MAX_PAGES + 1) * PAGE_SIZE])
def test_sizes_that_are_not_whole_pages_are_refused(size: int) -> None:
    data = (made().to_bytes() + bytes(size))[:size]
    with pytest.raises(DirectoryError, match=r"size|pages"):
        parse_directory(data)
    with pytest.raises(DirectoryError):
        lookup(data, b".")


def test_bad_page_tag() -> None:
    data = made(*[b"%03d" % i for i in range(60)]).to_bytes()
    with pytest.raises(DirectoryError, match="page 1 has tag 0"):
        parse_directory(corrupt(data, PAGE_SIZE + 2, b"\0\0"))
    with pytest.raises(DirectoryError, match="page 0"):
        parse_directory(corrupt(data, 2, b"\x12\x34"))


def test_name_without_nul_before_page_end() -> None:
    data = made().to_bytes()
    data = set_used(corrupt(data, slot(63), b"\x01\0\0\0" + bytes(8) + b"z" * 20), 63)
    with pytest.raises(DirectoryError, match="runs off the end of its page"):
        parse_directory(data)


def test_last_slot_of_a_page_holds_names_up_to_15_bytes() -> None:
    # 12 + 19 + NUL would fit the 32 bytes, but OpenAFS's rounding counts a 16..19-byte name
    # as two slots, so it never puts one in slot 63; kAFS and we call that an overrun.
    data = made().to_bytes()
    entry = b"\x01\0\0\0" + struct.pack(">II", 9, 9)
    fits = set_used(corrupt(data, slot(63), entry + b"z" * 15 + b"\0"), 63)
    assert parse_directory(fits)[b"z" * 15] == DirEntry(9, 9)
    spills = set_used(corrupt(data, slot(63), entry + b"z" * 19 + b"\0"), 63)
    with pytest.raises(DirectoryError, match="overrun its page"):
        parse_directory(spills)


def test_used_slot_with_empty_name() -> None:
    with pytest.raises(DirectoryError, match="empty name"):
        parse_directory(set_used(made().to_bytes(), 20))


def test_overlong_name() -> None:
    name = b"n" * (NAME_MAX + 1)
    data = made().to_bytes()
    data = corrupt(data, slot(15), b"\x01\0\0\0" + struct.pack(">II", 9, 9) + name + b"\0")
    for blob in range(15, 15 + name_slots(len(name))):
        data = set_used(data, blob)
    with pytest.raises(DirectoryError, match="too long"):
        parse_directory(data)


def test_continuation_slots_must_be_marked_used() -> None:
    data = made(b"y" * 40).to_bytes()  # slots 15, 16
    page0_bitmap_byte2 = 5 + 16 // 8
    data = corrupt(data, page0_bitmap_byte2, bytes([data[page0_bitmap_byte2] & ~1]))
    with pytest.raises(DirectoryError, match="continuation slots marked free"):
        parse_directory(data)


def test_entry_that_overruns_its_page() -> None:
    # A 51-byte name physically fits slots 62-63, but counts as 3 slots.
    data = made(*[b"%03d" % i for i in range(60)]).to_bytes()
    data = corrupt(data, slot(63), b"\x01\0\0\0" + struct.pack(">II", 9, 9) + b"w" * 15 + b"\0")
    data = set_used(data, 63)
    assert b"w" * 15 in parse_directory(data)
    data = corrupt(data, slot(62), b"\x01\0\0\0" + struct.pack(">II", 9, 9) + b"w" * 51 + b"\0")
    data = set_used(data, 62)
    with pytest.raises(DirectoryError, match="overrun its page"):
        parse_directory(data)


def test_duplicate_names() -> None:
    data = made(b"twice").to_bytes()
    copy = data[slot(15) : slot(16)]
    data = set_used(corrupt(data, slot(16), copy), 16)
    with pytest.raises(DirectoryError, match="appears twice"):
        parse_directory(data)


def test_hash_chain_loop_is_detected() -> None:
    data = made(b"foo").to_bytes()  # slot 15, alone in bucket 72
    data = corrupt(data, slot(15) + 2, struct.pack(">H", 15))
    assert lookup(data, b"foo") == DirEntry(100, 7)
    with pytest.raises(DirectoryError, match="loops"):
        lookup(data, next(b"n%d" % i for i in range(9999) if name_hash(b"n%d" % i) == 72))


@pytest.mark.parametrize(
    ("target", "why"),
    [(5, "no entry there"), (64, "no entry there"), (40, "free slot"), (9000, "no entry")],
)
def test_hash_chain_to_nowhere(target: int, why: str) -> None:
    data = made(b"foo").to_bytes()
    data = corrupt(data, 160 + 2 * name_hash(b"foo"), struct.pack(">H", target))
    with pytest.raises(DirectoryError, match=why):
        lookup(data, b"foo")
    assert parse_directory(data)[b"foo"] == DirEntry(100, 7)  # listing ignores the chains


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=3 * PAGE_SIZE))
def test_random_bytes_never_crash(data: bytes) -> None:
    for blob in (data, data[: len(data) // PAGE_SIZE * PAGE_SIZE]):
        for call in (parse_directory, lambda d: lookup(d, b"x")):
            with contextlib.suppress(DirectoryError):
                call(blob)


def _mixed_directory() -> bytes:
    builder = made(*[b"entry-%d-" % i + b"q" * (i * 7 % 80) for i in range(90)])
    for i in range(0, 90, 4):
        builder.remove(b"entry-%d-" % i + b"q" * (i * 7 % 80))
    return builder.to_bytes()


MIXED = _mixed_directory()


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, len(MIXED) - 1), st.integers(0, 255)), min_size=1, max_size=8)
)
def test_corrupted_real_looking_directories_never_crash(patches: list[tuple[int, int]]) -> None:
    data = bytearray(MIXED)
    for offset, value in patches:
        data[offset] = value
    try:
        parsed = parse_directory(bytes(data))
    except DirectoryError:
        parsed = {}
    for name in [*list(parse_directory(MIXED))[:20], *parsed]:
        with contextlib.suppress(DirectoryError):
            lookup(bytes(data), name)


# -- round trips ----------------------------------------------------------------------------

names = st.binary(min_size=1, max_size=NAME_MAX).filter(lambda n: b"\0" not in n and b"/" not in n)


@settings(max_examples=150, deadline=None)
@given(st.lists(names, unique=True, max_size=120), st.integers(1, 2**32 - 1))
def test_round_trip(names_: list[bytes], unique: int) -> None:
    names_ = [n for n in names_ if n not in (b".", b"..")]
    expected = {b".": ME, b"..": ME} | {n: DirEntry(i + 2, unique) for i, n in enumerate(names_)}
    data = build_directory([*DOT, *((n, i + 2, unique) for i, n in enumerate(names_))])
    parsed = parse_directory(data)
    assert parsed == expected
    for name, entry in expected.items():
        assert lookup(data, name) == entry


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.booleans(), names), max_size=150))
def test_adds_and_removes_match_a_model(ops: list[tuple[bool, bytes]]) -> None:
    builder = DirectoryBuilder(ME, ME)
    model = {b".": ME, b"..": ME}
    for i, (remove, name) in enumerate(ops):
        if name in (b".", b".."):
            continue
        if remove and name in model:
            builder.remove(name)
            del model[name]
        elif not remove and name not in model:
            builder.add(name, i + 2, i)
            model[name] = DirEntry(i + 2, i)
    data = builder.to_bytes()
    assert parse_directory(data) == model
    for name, entry in model.items():
        assert lookup(data, name) == entry
