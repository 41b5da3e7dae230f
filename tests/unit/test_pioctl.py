"""The pioctl ABI over rmtsys: InData as OpenAFS's tools and rmtsys lay it out, OutData as
they read it, and no input that makes a decoder fail any other way than with an errno."""

from __future__ import annotations

import contextlib
import errno
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afsfuse.ctl.pioctl import (
    MAX_TOKEN_OUT,
    NOPAG,
    TABLE,
    PioctlError,
    Reader,
    command_key,
)
from afsfuse.ctl.protocol import token_from_wire
from afsfuse.rx import xdr

TICKET = b"\x61" + bytes(range(200))
KEY = b"K3Y-8byt"


def ioctl(table: str, index: int, size: int = 24) -> int:
    """_VICEIOCTL(n) as Linux userland builds it (0x401856nn on LP64)."""
    return 0x40000000 | size << 16 | ord(table) << 8 | index


def spec(table: str, index: int):
    return TABLE[(table, index)]


def decode(table: str, index: int, data: bytes) -> dict:
    return spec(table, index).decode(Reader(data))


def settok_indata(cell: str | None, flags: int = 0, kvno: int = 256) -> bytes:
    """ktc.c SetToken's buffer after rmtsysnet's conversion to network order."""
    data = struct.pack(">i", len(TICKET)) + TICKET + struct.pack(">i", 24)
    data += struct.pack(">i8siii", kvno, KEY, 1000, 1_700_000_001, 1_700_036_000)
    if cell is not None:
        data += struct.pack(">i", flags) + cell.encode() + b"\0"
    return data


def test_command_numbers_keep_only_the_low_16_bits() -> None:
    assert command_key(ioctl("V", 2)) == ("V", 2)
    assert command_key(ioctl("V", 2, size=12)) == ("V", 2)  # 32-bit userland
    assert command_key(ioctl("C", 7)) == ("C", 7)
    assert TABLE[command_key(ioctl("V", 2))].name == "VIOCGETAL"


def test_settok_as_ktc_sends_it() -> None:
    args = decode("V", 3, settok_indata("afsfuse.test"))
    token = token_from_wire(args["token"])
    assert (token.cell, token.ticket, token.session_key) == ("afsfuse.test", TICKET, KEY)
    assert (token.kvno, token.viceid, token.begin, token.end) == (
        256,
        1000,
        1_700_000_001,
        1_700_036_000,
    )
    # Without the primary flag and cell: the workstation's cell, which the op fills in.
    assert "cell" not in decode("V", 3, settok_indata(None))["token"]
    # An old AuthHandle of -1 is the rxvab 999.
    assert token_from_wire(decode("V", 3, settok_indata("c.test", kvno=-1))["token"]).kvno == 999


@pytest.mark.parametrize(
    "data",
    [
        b"",
        struct.pack(">i", 99999) + TICKET,  # ticket longer than the input
        struct.pack(">i", len(TICKET)) + TICKET + struct.pack(">i", 23),  # wrong ClearToken size
        struct.pack(">i", 0) + struct.pack(">i", 24) + bytes(24),  # empty ticket
    ],
)
def test_settok_refuses_what_openafs_refuses(data: bytes) -> None:
    with pytest.raises(PioctlError) as caught:
        decode("V", 3, data)
    assert caught.value.errno == errno.EINVAL


def test_gettok_with_an_index_adds_the_primary_flag_and_cell() -> None:
    wire = decode("V", 3, settok_indata("afsfuse.test"))["token"]
    result = {"uid": 1001, "primary": True, "token": wire}
    args = decode("V", 8, struct.pack(">i", 0))
    assert args == {"index": 0}
    out = spec("V", 8).encode(result, args)
    assert struct.unpack_from(">i", out)[0] == len(TICKET)
    assert out[4 : 4 + len(TICKET)] == TICKET
    at = 4 + len(TICKET)
    size, kvno, key, viceid, begin, end = struct.unpack_from(">ii8siii", out, at)
    assert (size, kvno, key, viceid) == (24, 256, KEY, 1000)
    assert (end - begin) % 2 == 1  # an odd lifetime: the ViceId is an AFS id
    assert out[at + 28 :] == struct.pack(">i", 1) + b"afsfuse.test\0"
    # Without an index: the primary cell's token, and nothing after the ClearToken.
    assert len(spec("V", 8).encode(result, {})) == at + 28


def test_gettok_pads_short_tickets_and_marks_a_uid_as_such() -> None:
    wire = decode("V", 3, settok_indata("afsfuse.test"))["token"]
    short = {**wire, "ticket": "YWJj", "viceid": None}  # b"abc"
    out = spec("V", 8).encode({"uid": 1002, "primary": False, "token": short}, {})
    assert struct.unpack_from(">i", out)[0] == 56
    viceid, begin, end = struct.unpack_from(">iii", out, 4 + 56 + 4 + 12)
    assert viceid == 1002 and (end - begin) % 2 == 0


def test_gettok2_input_is_an_index_unless_it_spells_a_short_cell() -> None:
    assert decode("C", 7, struct.pack("=i", 3)) == {"index": 3}
    assert decode("C", 7, b"abc\0") == {"cell": "abc"}
    assert decode("C", 7, b"afsfuse.test\0") == {"cell": "afsfuse.test"}
    assert decode("C", 7, b"") == {}


def test_settok2_and_gettok2_speak_ktc_setTokenData() -> None:
    wire = decode("V", 3, settok_indata("afsfuse.test"))["token"]
    out = spec("C", 7).encode({"uid": 1001, "primary": True, "token": wire}, {"index": 0})
    assert len(out) <= MAX_TOKEN_OUT
    jar = xdr.struct(
        "jar", flags=xdr.int32, cell=xdr.string(64), tokens=xdr.varray(xdr.opaque(16384), 8)
    )
    flags, cell, tokens = xdr.decode(jar, out)
    assert (flags, cell, len(tokens)) == (0, "afsfuse.test", 1)
    assert struct.unpack_from(">iii", tokens[0]) == (2, 1000, 256)
    # What GETTOK2 gives, SETTOK2 takes back unchanged.
    back = token_from_wire(decode("C", 8, out)["token"])
    assert (back.ticket, back.session_key, back.viceid, back.cell) == (
        TICKET,
        KEY,
        1000,
        "afsfuse.test",
    )


def test_volume_status_is_the_36_byte_struct_in_network_order_then_three_strings() -> None:
    result = {
        "volume_id": 536870916, "parent_id": 536870915, "online": True, "in_service": True,
        "blessed": True, "needs_salvage": False, "type": 1, "min_quota": 0, "quota": 5000,
        "used": 2, "partition_free": 800, "partition_size": 1000, "volume": "root.cell.readonly",
        "offline_message": "", "motd": "hello",
    }  # fmt: skip
    out = spec("V", 4).encode(result, {})
    assert struct.unpack_from(">II4b6i", out) == (
        536870916,
        536870915,
        1,
        1,
        1,
        0,
        1,
        0,
        5000,
        2,
        800,
        1000,
    )
    assert out[36:] == b"root.cell.readonly\0\0hello\0"
    # fs setquota sends the same struct with -1 for what stays as it is.
    indata = struct.pack(">II4b6i", 0, 0, 0, 0, 0, 0, 0, -1, 300, 0, 0, 0) + b"\0\0\0"
    assert decode("V", 5, indata) == {"max": 300}
    indata = struct.pack(">II4b6i", 0, 0, 0, 0, 0, 0, 0, -1, -1, 0, 0, 0) + b"\0down\0\0"
    assert decode("V", 5, indata) == {"offline_message": "down"}


def test_whereis_lists_addresses_zero_terminated_getfid_is_native() -> None:
    out = spec("V", 14).encode({"servers": ["198.18.3.2", "10.0.0.1"]}, {})
    assert out == socket.inet_aton("198.18.3.2") + socket.inet_aton("10.0.0.1") + bytes(4)
    thirteen = spec("V", 14).encode({"servers": ["10.0.0.1"] * 20}, {})
    assert len(thirteen) == 13 * 4  # no room, no terminator
    fid = {"cell_number": 1, "volume": 536870916, "vnode": 1, "unique": 1}
    assert spec("V", 22).encode(fid, {}) == struct.pack("=iIII", 1, 536870916, 1, 1)


def test_mount_point_pioctls_take_a_name_in_the_directory() -> None:
    assert decode("V", 29, b"mnt\0") == {"name": "mnt"}
    for bad in (b"\0", b"a/b\0", b"..\0", b".\0"):
        with pytest.raises(PioctlError):
            decode("V", 29, bad)
    assert (
        spec("V", 29).encode({"mountpoint": "#afsfuse.test:root.cell"}, {})
        == b"#afsfuse.test:root.cell\0"
    )


def test_sysname_count_is_big_endian_and_names_follow() -> None:
    assert decode("V", 38, struct.pack(">i", 0)) == {}
    assert decode("V", 38, struct.pack(">i", 2) + b"a_sys\0b_sys\0") == {
        "names": ["a_sys", "b_sys"]
    }
    with pytest.raises(PioctlError):
        decode("V", 38, struct.pack(">i", 0x8001) + b"x\0")  # every PAG's: a translator's
    out = spec("V", 38).encode({"names": ["amd64_linux26", "x"]}, {})
    assert out == struct.pack(">i", 2) + b"amd64_linux26\0x\0"
    assert spec("V", 38).encode({"names": ["n"]}, {"names": ["n"]}) == b""


def test_listcells_and_checkservers() -> None:
    out = spec("V", 27).encode({"cells": [{"name": "c.test", "servers": ["198.18.3.2"]}]}, {})
    assert out == socket.inet_aton("198.18.3.2") + bytes(28) + b"c.test\0"
    # chservinfo: the magic in network order (rmtsys), the rest native.
    chserv = (
        struct.pack(">i", 0x12345678) + b"c.test".ljust(128, b"\0") + struct.pack("=iii", 7, -1, 2)
    )
    assert decode("V", 10, chserv) == {"cell": "c.test", "fast": False, "all": False}
    query = struct.pack(">i", 0x12345678) + bytes(128) + struct.pack("=iii", 0, 0, 2)
    assert decode("V", 10, query) == {"interval": 0}
    assert spec("V", 10).encode({"interval": 30}, {"interval": 0}) == struct.pack("=i", 30)
    old_form = struct.pack(">i", 1) + b"c.test\0"
    assert decode("V", 10, old_form) == {"cell": "c.test", "fast": True, "all": True}
    assert spec("V", 10).encode({"down": ["10.0.0.1"]}, {}) == socket.inet_aton("10.0.0.1")


def test_server_preferences_are_native_sprefs() -> None:
    assert decode("V", 43, struct.pack("=HHH", 2, 255, 1)) == {"vlservers": True, "offset": 2}
    assert decode("V", 43, struct.pack("=HH", 0, 255)) == {"vlservers": False, "offset": 0}
    servers = {"servers": [["10.0.0.1", 20000], ["10.0.0.2", 40000], ["10.0.0.3", 7]]}
    out = spec("V", 43).encode(servers, {"offset": 1})
    assert out == struct.pack("=HH", 0, 2) + socket.inet_aton("10.0.0.2") + struct.pack(
        "=Hxx", 40000
    ) + socket.inet_aton("10.0.0.3") + struct.pack("=Hxx", 7)
    setspref = struct.pack("=HH", 0, 1) + socket.inet_aton("10.0.0.9") + struct.pack("=Hxx", 123)
    assert decode("V", 46, setspref) == {"vlservers": False, "servers": [["10.0.0.9", 123]]}
    with pytest.raises(PioctlError):
        decode("V", 46, struct.pack("=HH", 0, 3) + bytes(8))  # three announced, one there
    assert decode("V", 42, setspref[4:] * 2) == {"servers": [["10.0.0.9", 123]] * 2}
    empty = {"vlservers": False, "servers": []}
    assert decode("V", 46, struct.pack("=HH", 0, 0)) == empty  # fs sp -vlservers alone


def test_getpag_without_a_pag_is_nopag() -> None:
    assert spec("C", 13).encode({"pag": None}, {}) == struct.pack("=I", NOPAG)


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(sorted(TABLE)), data=st.binary(max_size=600))
def test_no_indata_breaks_a_decoder(key: tuple[str, int], data: bytes) -> None:
    try:
        args = TABLE[key].decode(Reader(data))
    except PioctlError as e:
        assert e.errno in (errno.EINVAL, errno.E2BIG, errno.ENOENT)
    else:
        assert isinstance(args, dict)


@settings(max_examples=100, deadline=None)
@given(
    prefix=st.sampled_from([settok_indata("c.test"), settok_indata(None)]),
    cut=st.integers(0, 400),
    junk=st.binary(max_size=64),
)
def test_cut_and_spliced_tokens_fail_cleanly(prefix: bytes, cut: int, junk: bytes) -> None:
    for key in (("V", 3), ("C", 8)):
        try:
            args = TABLE[key].decode(Reader(prefix[:cut] + junk))
        except PioctlError:
            continue
        # What decodes is checked once more by the op, as every token is.
        with contextlib.suppress(ValueError):
            assert token_from_wire({"cell": "c.test", **args["token"]}).ticket
