"""fcrypt, the 56-bit block cipher of rxkad, PCBC mode, and rxkad's per-packet sealing.

Two implementations share one interface: a pure-Python reference (always present, about
1 MB/s) and the compiled ``afsfuse.rx._fcrypt`` accelerator (hundreds of MB/s, built by
setup.py when a C compiler is available), which crypt-level bulk transfers need.  The
accelerator is used when it was built; ``AFSFUSE_FCRYPT=python`` forces the reference.

Sealing a DATA packet (header checksum, seal word, encryption) lives here rather than in
rxkad.py because it is the part worth compiling: the accelerator does a whole packet in
one call, and the reference below is its specification.

The S-box contents are the cipher's published constants; everything else is derived here.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable
from enum import IntEnum
from typing import NamedTuple

log = logging.getLogger(__name__)

BLOCK_SIZE = 8
_MASK32 = 0xFFFFFFFF
_MASK56 = (1 << 56) - 1

#: The four 256-entry S-boxes of fcrypt, in order sbox0 .. sbox3.
SBOXES: tuple[bytes, bytes, bytes, bytes] = (
    # sbox0
    bytes.fromhex(
        "ea7fb2649db0d911cd8686910ab293060e06d26573c52860f220b5387eda9fe3"
        "d2cfc43c61ff4a4a35acaa5f2bbbbc534e9d78a3dc093210c66f66d6aba9affd"
        "3b95e8349a8172809cf3ecda9f2676153e554dde84eeadc7f16b3dd30449aa24"
        "0b8a83bafa85a0a8b1d401d87064f051d2c3a7758ca564ef104eb7c66103eb44"
        "3de5b35baed5ad1dfa5a1e33ab93a2b7e7a845a4cd296344b6697e2e6203c8e0"
        "17bbc7f33f36ba718e97656069b6f6e66ee08159e8afdd952299fd63197461b1"
        "b65bae54b370ffc63b3ec1d7e10e76e5364f59c7086e82a693c4aa2649e02164"
        "079f64819cbff9d143f8b6b9f1247503e4b099463df5d1397212f6ba0c0d422e"
    ),
    # sbox1
    bytes.fromhex(
        "7714a6feb25e8c3e676ca10dc2a2c1856c7b67c623e3f289509c03b773e6e139"
        "312c279fa56944d62383987d3cb42d991c1f8c20037c5fadf4fa95ca7644cdb6"
        "b8a1a1be9e548f0b1674318a231704fa7984b1f513abb52eaa0c606b5bc44bbc"
        "e2af4573fac949cd00927d977a18603dcf5bdec6e2e6bb8b06da08151b886a17"
        "89d0a9c1c9706be543f468c8d384280a5266a3caf2e37f7a31f788945e9c63d5"
        "2466fcb35725be8944c4e08f233c1252f51ef4cb18331ff869109dd3f728f830"
        "055e32c0d519bd458b5bfdbce25ca996ef70cfc22ab361ad804881b71d43d9d7"
        "45f0d88a597c57c179c734d643dfe4781606da927651e1d47003e02f96918280"
    ),
    # sbox2
    bytes.fromhex(
        "f03724532a038386d1ec50f042782f6dbf80872795e2c55df96fdbb4656ee724"
        "c81abb49b50a7db9e8dcb7d945201bce599d6bbd0e8fa3a9bc74a6f67f5fb168"
        "84bca9fd5550e9b6135e07b89502c0d06a1a85bdb6fdfe173f09a38dfbedda1d"
        "6d1c6c015ae5713e8b6bbe29eb121934cdb3bd35ea4bd5ae2a795aa532127bdc"
        "2cd0224bb1855980c0309f73d3144840072d8f800fce0b5eb75eac24944a1815"
        "05e80277a9c7404589d1eade0c792a996c3e95dd8c7dad6fdcfffd6247b3218a"
        "ec8e1918b46e3dfd74541e0485d8bc1f56e73a5667d6c8a5f38edeae3749b7fa"
        "c8f41fe02a9b15d1340eb5e044788459566877a51406f52f8c8a738076b41086"
    ),
    # sbox3
    bytes.fromhex(
        "a92a4851847e49e2b5b742337d5da61244486d28aa206d57d66b5d72f0925a1b"
        "538024709acca766a101a54197413182f114cf530da010cc2a7dd2bf4b1adb16"
        "47f65136edf3b91aa7df2943015470a4bfd40b5344609e23a118684ff02f82c2"
        "2a41b2420ced0c1d133a3c6e35dc606585e964029a3f9f8796dfbef2cbe56cd4"
        "5a83bf921b940042cf4b0075ba8f765f5d3a4d091208389517e4011d4ca9cc85"
        "824c9d2f3b66a13410cd5989a531cf05c884fac7ba4e8b1a19f1a13b181217b0"
        "988d0b23c33a2d20df13a0a84c0d6c2f471313521f2df5793da254bd69c86bf3"
        "0528f1164640b011d3b79549cfc31d8fd8e173dbadc8c9a9a1c2c5e3bafc0e25"
    ),
)

# Where each S-box's output byte lands in the round function's 32-bit word, before the
# final rotation: sbox0 -> bits 15..8, sbox1 -> 7..0, sbox2 -> 23..16, sbox3 -> 31..24.
# sbox0 is indexed by the input's most significant byte, sbox3 by its least.
_SBOX_SHIFTS = (8, 0, 16, 24)
_ROUND_ROTATION = 5


def _rotate_right32(value: int, bits: int) -> int:
    return ((value >> bits) | (value << (32 - bits))) & _MASK32


def round_tables() -> tuple[list[int], list[int], list[int], list[int]]:
    """The round function as four lookups, one per input byte (MSB first).

    Each entry is an S-box output already moved to its byte position and rotated, so the
    round function is the XOR of four table reads.  The accelerator builds the same tables
    from SBOXES, so the constants live in one place.
    """
    t0, t1, t2, t3 = (
        [_rotate_right32(value << shift, _ROUND_ROTATION) for value in sbox]
        for sbox, shift in zip(SBOXES, _SBOX_SHIFTS, strict=True)
    )
    return t0, t1, t2, t3


_T0, _T1, _T2, _T3 = round_tables()


def key_schedule(key: bytes) -> tuple[int, ...]:
    """The sixteen 32-bit round keys of an 8-byte key (its parity bits are ignored)."""
    if len(key) != BLOCK_SIZE:
        raise ValueError(f"fcrypt keys are 8 bytes, not {len(key)}")
    k = 0
    for byte in key:
        k = (k << 7) | (byte >> 1)
    words = []
    for _ in range(16):
        words.append(k & _MASK32)
        k = ((k >> 11) | (k << 45)) & _MASK56
    return tuple(words)


def _pcbc_setup(schedule: bytes, iv: bytes, data: bytes) -> tuple[tuple[int, ...], int, int]:
    if len(schedule) != 64 or len(iv) != BLOCK_SIZE:
        raise ValueError("fcrypt needs a 64-byte packed schedule and an 8-byte IV")
    vl, vr = struct.unpack(">II", iv)
    return struct.unpack(">16I", schedule), vl, vr


def _python_pcbc_encrypt(schedule: bytes, iv: bytes, data: bytes) -> bytes:
    ks, vl, vr = _pcbc_setup(schedule, iv, data)
    tail = len(data) % BLOCK_SIZE
    if tail:
        data = bytes(data) + bytes(BLOCK_SIZE - tail)
    t0, t1, t2, t3 = _T0, _T1, _T2, _T3
    rounds = tuple(zip(ks[0::2], ks[1::2], strict=True))
    words = struct.unpack(f">{len(data) // 4}I", data)
    out = []
    for i in range(0, len(words), 2):
        pl = words[i]
        pr = words[i + 1]
        left = pl ^ vl
        right = pr ^ vr
        for k_even, k_odd in rounds:
            x = right ^ k_even
            left ^= t0[x >> 24] ^ t1[(x >> 16) & 255] ^ t2[(x >> 8) & 255] ^ t3[x & 255]
            x = left ^ k_odd
            right ^= t0[x >> 24] ^ t1[(x >> 16) & 255] ^ t2[(x >> 8) & 255] ^ t3[x & 255]
        out.append(left)
        out.append(right)
        vl = pl ^ left
        vr = pr ^ right
    return struct.pack(f">{len(out)}I", *out)


def _python_pcbc_decrypt(schedule: bytes, iv: bytes, data: bytes) -> bytes:
    ks, vl, vr = _pcbc_setup(schedule, iv, data)
    if len(data) % BLOCK_SIZE:
        raise ValueError("PCBC ciphertext must be a whole number of 8-byte blocks")
    t0, t1, t2, t3 = _T0, _T1, _T2, _T3
    rounds = tuple(zip(ks[15::-2], ks[14::-2], strict=True))
    words = struct.unpack(f">{len(data) // 4}I", data)
    out = []
    for i in range(0, len(words), 2):
        cl = left = words[i]
        cr = right = words[i + 1]
        for k_odd, k_even in rounds:
            x = left ^ k_odd
            right ^= t0[x >> 24] ^ t1[(x >> 16) & 255] ^ t2[(x >> 8) & 255] ^ t3[x & 255]
            x = right ^ k_even
            left ^= t0[x >> 24] ^ t1[(x >> 16) & 255] ^ t2[(x >> 8) & 255] ^ t3[x & 255]
        left ^= vl
        right ^= vr
        out.append(left)
        out.append(right)
        vl = cl ^ left
        vr = cr ^ right
    return struct.pack(f">{len(out)}I", *out)


#: Bytes of a packet context: the packed schedule, the IV (the session key), then preSeq.
PACKET_CONTEXT_SIZE = 64 + 2 * BLOCK_SIZE
#: Most user bytes one sealed packet carries (the seal word's length field is 16 bits).
MAX_SEALED_DATA = 0xFFFF
# rxkad levels (rxkad.Level), which this module cannot import.
_CLEAR, _AUTH, _CRYPT = 0, 1, 2
_ZERO_IV = bytes(BLOCK_SIZE)


class PacketFault(IntEnum):
    """Why a received DATA packet was refused (the accelerator returns the same numbers)."""

    CHECKSUM = 1  # header checksum wrong
    SHORT = 2  # payload shorter than one block
    NOT_BLOCKS = 3  # crypt payload not a whole number of blocks
    SEAL = 4  # seal word does not match this call and sequence number
    LENGTH = 5  # seal word claims more user data than the packet holds


def packet_context(key: bytes, pre_seq: bytes) -> bytes:
    """What seal_packet and unseal_packet need to know about a connection's keys."""
    if len(pre_seq) != BLOCK_SIZE:
        raise ValueError("preSeq is 8 bytes")
    return struct.pack(">16I", *key_schedule(key)) + key + pre_seq


def _split_context(context: bytes, level: int) -> tuple[bytes, bytes, int, int]:
    if len(context) != PACKET_CONTEXT_SIZE:
        raise ValueError(f"an rxkad packet context is {PACKET_CONTEXT_SIZE} bytes")
    if level not in (_CLEAR, _AUTH, _CRYPT):
        raise ValueError("rxkad levels are 0 (clear), 1 (auth), 2 (crypt)")
    pre0, pre1 = struct.unpack_from(">II", context, 72)
    return context[:64], context[64:72], pre0, pre1


def _header_checksum(
    schedule: bytes, pre0: int, pre1: int, call: int, channel: int, seq: int
) -> int:
    w0 = (call & _MASK32) ^ pre0
    w1 = (((channel & 3) << 30) | (seq & 0x3FFFFFFF)) ^ pre1
    block = _python_pcbc_encrypt(schedule, _ZERO_IV, struct.pack(">II", w0, w1))
    return ((block[4] << 8) | block[5]) or 1


def _python_seal_packet(
    context: bytes, level: int, call_number: int, channel: int, seq: int, data: bytes
) -> tuple[int, bytes]:
    schedule, iv, pre0, pre1 = _split_context(context, level)
    cksum = _header_checksum(schedule, pre0, pre1, call_number, channel, seq)
    if level == _CLEAR:
        return cksum, bytes(data)
    if len(data) > MAX_SEALED_DATA:
        raise ValueError("rxkad seals at most 65535 user bytes per packet")
    seal_word = struct.pack(">I", (((seq ^ call_number) & 0xFFFF) << 16) | len(data))
    if level == _AUTH:
        body = seal_word + data
        if len(body) < BLOCK_SIZE:
            body += bytes(BLOCK_SIZE - len(body))
        return cksum, _python_pcbc_encrypt(schedule, _ZERO_IV, body[:BLOCK_SIZE]) + body[
            BLOCK_SIZE:
        ]
    return cksum, _python_pcbc_encrypt(schedule, iv, seal_word + bytes(4) + data)


def _python_unseal_packet(
    context: bytes,
    level: int,
    call_number: int,
    channel: int,
    seq: int,
    cksum: int,
    check: bool,
    payload: bytes,
) -> bytes | int:
    schedule, iv, pre0, pre1 = _split_context(context, level)
    if check and cksum != _header_checksum(schedule, pre0, pre1, call_number, channel, seq):
        return PacketFault.CHECKSUM
    if level == _CLEAR:
        return bytes(payload)
    if len(payload) < BLOCK_SIZE:
        return PacketFault.SHORT
    if level == _AUTH:
        header = 4
        body = _python_pcbc_decrypt(schedule, _ZERO_IV, payload[:BLOCK_SIZE]) + payload[BLOCK_SIZE:]
    else:
        if len(payload) % BLOCK_SIZE:
            return PacketFault.NOT_BLOCKS
        header = BLOCK_SIZE
        body = _python_pcbc_decrypt(schedule, iv, payload)
    (seal_word,) = struct.unpack_from(">I", body)
    if seal_word >> 16 != (seq ^ call_number) & 0xFFFF:
        return PacketFault.SEAL
    length = seal_word & 0xFFFF
    # Stricter than OpenAFS (which compares with the length including this header).
    if length > len(body) - header:
        return PacketFault.LENGTH
    return body[header : header + length]


class Backend(NamedTuple):
    """One implementation of PCBC over a packed (big-endian, 64-byte) key schedule, and of
    rxkad DATA packet sealing over a packet context.

    ECB on a single block is PCBC with a zero IV.  seal_packet(context, level, call_number,
    channel, seq, data) returns (header checksum, wire payload); unseal_packet(context,
    level, call_number, channel, seq, cksum, check, payload) returns the user data, or the
    PacketFault that refuses the packet (the checksum is compared only when check is true).
    """

    name: str
    pcbc_encrypt: Callable[[bytes, bytes, bytes], bytes]
    pcbc_decrypt: Callable[[bytes, bytes, bytes], bytes]
    seal_packet: Callable[[bytes, int, int, int, int, bytes], tuple[int, bytes]]
    unseal_packet: Callable[[bytes, int, int, int, int, int, bool, bytes], bytes | int]


REFERENCE = Backend(
    "python",
    _python_pcbc_encrypt,
    _python_pcbc_decrypt,
    _python_seal_packet,
    _python_unseal_packet,
)


def _load_accelerator() -> Backend | None:
    try:
        from afsfuse.rx import _fcrypt  # type: ignore[attr-defined]
    except ImportError:
        return None
    _fcrypt.init(*(struct.pack(">256I", *table) for table in round_tables()))
    return Backend(
        "c", _fcrypt.pcbc_encrypt, _fcrypt.pcbc_decrypt, _fcrypt.seal_packet, _fcrypt.unseal_packet
    )


#: The compiled implementation, or None when it was not built.
ACCELERATOR = _load_accelerator()

_warned_slow = False


def default_backend() -> Backend:
    """The accelerator unless AFSFUSE_FCRYPT=python or it is missing (warned about once)."""
    global _warned_slow
    if os.environ.get("AFSFUSE_FCRYPT") == "python":
        return REFERENCE
    if ACCELERATOR is not None:
        return ACCELERATOR
    if not _warned_slow:
        _warned_slow = True
        log.warning("fcrypt accelerator not built; crypt-level transfers will be slow")
    return REFERENCE


class Fcrypt:
    """An fcrypt key, ready to encrypt: ECB on single blocks and PCBC on buffers."""

    __slots__ = ("_decrypt", "_encrypt", "_packed", "backend", "schedule")

    def __init__(self, key: bytes, backend: Backend | None = None) -> None:
        self.backend = backend or default_backend()
        self.schedule = key_schedule(key)
        self._packed = struct.pack(">16I", *self.schedule)
        self._encrypt = self.backend.pcbc_encrypt
        self._decrypt = self.backend.pcbc_decrypt

    def encrypt_block(self, block: bytes) -> bytes:
        if len(block) != BLOCK_SIZE:
            raise ValueError("fcrypt blocks are 8 bytes")
        return self._encrypt(self._packed, _ZERO_IV, block)

    def decrypt_block(self, block: bytes) -> bytes:
        if len(block) != BLOCK_SIZE:
            raise ValueError("fcrypt blocks are 8 bytes")
        return self._decrypt(self._packed, _ZERO_IV, block)

    def pcbc_encrypt(self, data: bytes, iv: bytes) -> bytes:
        """Encrypt in PCBC mode; a partial final block is zero-padded (output is longer)."""
        return self._encrypt(self._packed, iv, data)

    def pcbc_decrypt(self, data: bytes, iv: bytes) -> bytes:
        """Decrypt in PCBC mode; the input must be a whole number of blocks."""
        return self._decrypt(self._packed, iv, data)
