"""XDR: the AFS wire quirks, round trips, and hostile input that must fail cleanly."""

from __future__ import annotations

import contextlib
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afsfuse.rx import xdr
from afsfuse.rx.interfaces import cb, fs, pt, vl
from afsfuse.rx.xdr import XdrError


def test_integers_are_big_endian_and_64_bit_is_high_word_first() -> None:
    assert xdr.encode(xdr.int32, -1) == b"\xff\xff\xff\xff"
    assert xdr.encode(xdr.uint32, 0x01020304) == bytes([1, 2, 3, 4])
    assert xdr.encode(xdr.int64, 0x0000000500000007) == bytes.fromhex("0000000500000007")
    assert xdr.encode(xdr.int64, -2) == bytes.fromhex("fffffffffffffffe")
    assert xdr.decode(xdr.uint64, bytes.fromhex("00000001fffffffe")) == (1 << 32) + 0xFFFFFFFE
    assert xdr.decode(xdr.int32, b"\xff\xff\xff\xfe") == -2


def test_short_and_char_scalars_take_a_word() -> None:
    for t in (xdr.short, xdr.u_short, xdr.char):
        assert xdr.encode(t, 7) == b"\x00\x00\x00\x07"
    assert xdr.encode(xdr.char, -3) == b"\xff\xff\xff\xfd"


def test_string_has_length_bytes_and_padding() -> None:
    t = xdr.string(10)
    assert xdr.encode(t, "abcde") == b"\x00\x00\x00\x05abcde\x00\x00\x00"
    assert xdr.encode(t, "abcd") == b"\x00\x00\x00\x04abcd"
    assert xdr.encode(t, "") == b"\x00\x00\x00\x00"
    assert xdr.decode(t, b"\x00\x00\x00\x05abcde\x00\x00\x00") == "abcde"
    assert xdr.encode(t, b"raw") == xdr.encode(t, "raw")


def test_string_keeps_undecodable_bytes() -> None:
    raw = b"caf\xe9"  # Latin-1, not UTF-8: must survive a round trip unchanged
    text = xdr.decode(xdr.string(), xdr.encode(xdr.string(), raw))
    assert text.encode("utf-8", "surrogateescape") == raw
    assert xdr.encode(xdr.string(), text) == xdr.encode(xdr.string(), raw)


def test_string_and_opaque_maximum_is_enforced_both_ways() -> None:
    with pytest.raises(XdrError):
        xdr.encode(xdr.string(3), "abcd")
    with pytest.raises(XdrError):
        xdr.decode(xdr.string(3), b"\x00\x00\x00\x04abcd")
    with pytest.raises(XdrError):
        xdr.decode(xdr.opaque(3), b"\x00\x00\x00\x04abcd")


def test_opaque_round_trip_and_type_check() -> None:
    t = xdr.opaque(100)
    assert xdr.encode(t, b"\x01\x02") == b"\x00\x00\x00\x02\x01\x02\x00\x00"
    assert xdr.decode(t, xdr.encode(t, b"\x00" * 9)) == b"\x00" * 9
    with pytest.raises(XdrError):
        xdr.encode(t, "text is not opaque")


def test_missing_padding_is_an_error() -> None:
    with pytest.raises(XdrError):
        xdr.decode(xdr.string(), b"\x00\x00\x00\x05abcde")


def test_fixed_opaque_is_raw_bytes_padded() -> None:
    t = xdr.fixed_opaque(5)
    assert xdr.encode(t, b"12345") == b"12345\x00\x00\x00"
    assert xdr.decode(t, b"12345\xaa\xbb\xcc") == b"12345"
    with pytest.raises(XdrError):
        xdr.encode(t, b"1234")


def test_char_array_is_one_sign_extended_word_per_char() -> None:
    t = xdr.chars(5)
    wire = xdr.encode(t, "a\xe9")  # 'é' is c3 a9 in UTF-8: both bytes >= 0x80
    assert wire == bytes.fromhex("00000061 ffffffc3 ffffffa9 00000000 00000000")
    assert xdr.decode(t, wire) == "a\xe9"
    # A server with unsigned chars sends 0x000000c3: the same text.
    assert xdr.decode(t, bytes.fromhex("00000061 000000c3 000000a9" + "00" * 8)) == "a\xe9"
    assert xdr.decode(t, xdr.encode(t, "abcde")) == "abcde"  # no room for a NUL: still fine
    with pytest.raises(XdrError):
        xdr.encode(t, "abcdef")


def test_afs_uuid_is_44_bytes_with_widened_fields() -> None:
    u = uuid.UUID("0a1b2c3d-4e5f-6a7b-8c9d-aabbccddeeff")
    wire = xdr.encode(xdr.afsUUID, u)
    assert len(wire) == 44
    assert wire == bytes.fromhex(
        "0a1b2c3d 00004e5f 00006a7b ffffff8c ffffff9d"
        " ffffffaa ffffffbb ffffffcc ffffffdd ffffffee ffffffff"
    )
    assert xdr.decode(xdr.afsUUID, wire) == u


def test_fixed_and_variable_arrays() -> None:
    fixed = xdr.array(xdr.int32, 3)
    assert xdr.encode(fixed, (1, -1, 2)) == bytes.fromhex("00000001ffffffff00000002")
    assert xdr.decode(fixed, xdr.encode(fixed, [4, 5, 6])) == (4, 5, 6)
    with pytest.raises(XdrError):
        xdr.encode(fixed, (1, 2))
    var = xdr.varray(xdr.uint32, 4)
    assert xdr.encode(var, [7, 8]) == bytes.fromhex("00000002 00000007 00000008")
    assert xdr.decode(var, b"\x00\x00\x00\x00") == ()
    with pytest.raises(XdrError):
        xdr.encode(var, [0] * 5)
    with pytest.raises(XdrError):
        xdr.decode(var, b"\x00\x00\x00\x05" + b"\x00" * 20)


def test_hostile_count_fails_before_allocating() -> None:
    unbounded = xdr.varray(fs.AFSFetchStatus)
    with pytest.raises(XdrError):
        xdr.decode(unbounded, b"\xff\xff\xff\xff" + b"\x00" * 84)
    with pytest.raises(XdrError):
        xdr.decode(xdr.varray(xdr.string()), b"\x7f\xff\xff\xff\x00\x00\x00\x00")


def test_array_of_structs_and_of_variable_elements() -> None:
    fids = [fs.AFSFid(1, 2, 3), fs.AFSFid(4, 5, 6)]
    wire = xdr.encode(fs.AFSCBFids, fids)
    assert len(wire) == 4 + 2 * 12
    assert xdr.decode(fs.AFSCBFids, wire) == tuple(fids)
    names = xdr.varray(xdr.string(8))
    assert xdr.decode(names, xdr.encode(names, ["a", "bcdef"])) == ("a", "bcdef")


def test_struct_defaults_nesting_and_compiled_layout() -> None:
    status = fs.AFSStoreStatus(Mask=fs.AFS_SETMODE, UnixModeBits=0o644)
    assert status.Owner == 0
    assert xdr.decode(fs.AFSStoreStatus, xdr.encode(fs.AFSStoreStatus, status)) == status
    # A struct of fixed parts, even nested ones, is one precompiled struct.Struct.
    entry = xdr.codec(vl.uvldbentry)
    assert entry.fixed_size == entry.layout.size == 1048
    mixed = xdr.struct("Mixed", a=xdr.int32, s=xdr.string(9), fid=fs.AFSFid, b=xdr.uint64)
    value = mixed(a=-5, s="hello", fid=fs.AFSFid(9, 8, 7), b=1 << 40)
    wire = xdr.encode(mixed, value)
    assert wire == (
        bytes.fromhex("fffffffb")
        + b"\x00\x00\x00\x05hello\x00\x00\x00"
        + bytes.fromhex("00000009 00000008 00000007 00000100 00000000")
    )
    assert xdr.decode(mixed, wire) == value
    assert xdr.codec(mixed).fixed_size is None


def test_encoding_bad_values_raises_xdr_error() -> None:
    with pytest.raises(XdrError):
        xdr.encode(xdr.uint32, -1)
    with pytest.raises(XdrError):
        xdr.encode(xdr.int32, 1 << 31)
    with pytest.raises(XdrError):
        xdr.encode(fs.AFSFid, (1, 2))
    with pytest.raises(XdrError):
        xdr.encode(fs.AFSFid, fs.AFSFid(1, "two", 3))
    with pytest.raises(XdrError):
        xdr.encode(xdr.string(), 12)


def test_trailing_bytes_and_every_truncation_are_errors() -> None:
    entry = vl.uvldbentry(name="root.cell", nServers=1, volumeId=(536870912, 536870913, 0))
    wire = xdr.encode(vl.uvldbentry, entry)
    with pytest.raises(XdrError):
        xdr.decode(vl.uvldbentry, wire + b"\x00\x00\x00\x00")
    for cut in range(0, len(wire), 4):
        with pytest.raises(XdrError):
            xdr.decode(vl.uvldbentry, wire[:cut])
    result = cb.CB.TellMeAboutYourself.Result(capabilities=(1,))
    wire = xdr.encode(cb.CB.TellMeAboutYourself.Result, result)
    for cut in range(len(wire)):
        with pytest.raises(XdrError):
            xdr.decode(cb.CB.TellMeAboutYourself.Result, wire[:cut])


def test_not_an_xdr_type() -> None:
    with pytest.raises(TypeError):
        xdr.codec(int)
    with pytest.raises(TypeError):
        xdr.array(xdr.string(), 2)


_HOSTILE_TARGETS = [
    vl.uvldbentry,
    vl.VL.GetAddrsU.Result,
    pt.namelist,
    fs.AFSBulkStats,
    fs.FS.GetVolumeStatus.Result,
    fs.FS.InlineBulkStatus.Result,
    cb.CB.TellMeAboutYourself.Result,
    xdr.varray(xdr.varray(xdr.opaque(), 3)),
    xdr.afsUUID,
]


@settings(max_examples=300, deadline=None)
@given(
    target=st.sampled_from(_HOSTILE_TARGETS),
    data=st.one_of(
        st.binary(max_size=200),
        # Mostly-small words make plausible counts and lengths, which reach deeper.
        st.lists(st.integers(0, 70), max_size=60).map(
            lambda words: b"".join(w.to_bytes(4, "big") for w in words)
        ),
    ),
)
def test_decoding_random_bytes_raises_only_xdr_error(target: xdr.XdrType, data: bytes) -> None:
    with contextlib.suppress(XdrError):
        xdr.decode(target, data)


_mixed = xdr.struct(
    "HypoMixed",
    n=xdr.int64,
    name=xdr.chars(12),
    text=xdr.string(40),
    blob=xdr.opaque(40),
    ids=xdr.varray(xdr.int32, 10),
    fids=xdr.varray(fs.AFSFid, 5),
    who=xdr.afsUUID,
)
_u32 = st.integers(0, 2**32 - 1)


@settings(max_examples=200, deadline=None)
@given(
    value=st.builds(
        _mixed,
        n=st.integers(-(2**63), 2**63 - 1),
        name=st.binary(max_size=12)
        .map(lambda b: b.replace(b"\x00", b"x"))
        .map(lambda b: b.decode("utf-8", "surrogateescape")),
        text=st.binary(max_size=40).map(lambda b: b.decode("utf-8", "surrogateescape")),
        blob=st.binary(max_size=40),
        ids=st.lists(st.integers(-(2**31), 2**31 - 1), max_size=10).map(tuple),
        fids=st.lists(st.builds(fs.AFSFid, _u32, _u32, _u32), max_size=5).map(tuple),
        who=st.uuids(),
    )
)
def test_round_trip(value: tuple) -> None:
    assert xdr.decode(_mixed, xdr.encode(_mixed, value)) == value
