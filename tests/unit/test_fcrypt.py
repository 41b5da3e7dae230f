"""fcrypt: published vectors for both implementations, and the two must agree."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afsfuse.rx import fcrypt
from afsfuse.rx.fcrypt import ACCELERATOR, REFERENCE, Backend, Fcrypt

KEY_A = bytes.fromhex("f0e1d2c3b4a59687")
KEY_B = bytes.fromhex("fedcba9876543210")
PLAINTEXT = b"The quick brown fox jumps over the lazy dogs.\0\0\0"

BACKENDS = [
    pytest.param(REFERENCE, id="python"),
    pytest.param(ACCELERATOR, id="c"),
]


def test_key_schedule_words() -> None:
    schedule = fcrypt.key_schedule(KEY_A)
    assert len(schedule) == 16
    assert schedule[:4] == (0x1B54A5C3, 0x69C36A94, 0xC70D386D, 0xE1F8E1A7)


def test_key_schedule_ignores_parity_bits() -> None:
    flipped = bytes(b ^ 1 for b in KEY_A)
    assert fcrypt.key_schedule(flipped) == fcrypt.key_schedule(KEY_A)


def test_key_must_be_8_bytes() -> None:
    with pytest.raises(ValueError):
        Fcrypt(b"short")


@pytest.mark.parametrize("backend", BACKENDS)
def test_ecb_of_zero_block(backend: Backend) -> None:
    cipher = Fcrypt(KEY_A, backend)
    assert cipher.encrypt_block(bytes(8)) == bytes.fromhex("92bf4e19aba44ba3")
    assert cipher.decrypt_block(bytes.fromhex("92bf4e19aba44ba3")) == bytes(8)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("key", "iv", "expected"),
    [
        (
            KEY_A,
            KEY_B,
            "00f00e1175e62382eeac98624451e484c359d8aa6460aef7"
            "d2d9137972a3450323b562d70cf527d1f8913cac442292ef",
        ),
        (
            KEY_B,
            KEY_A,
            "ca90f59dcbd4d23c01887f3e316e629dd8e057a3063a4258"
            "2a28fe72522fdde01989091c2a8e8c94fcc768e488aade0f",
        ),
    ],
)
def test_published_pcbc_vectors(backend: Backend, key: bytes, iv: bytes, expected: str) -> None:
    cipher = Fcrypt(key, backend)
    assert cipher.pcbc_encrypt(PLAINTEXT, iv).hex() == expected
    assert cipher.pcbc_decrypt(bytes.fromhex(expected), iv) == PLAINTEXT


@pytest.mark.parametrize("backend", BACKENDS)
def test_partial_final_block_is_zero_padded(backend: Backend) -> None:
    cipher = Fcrypt(KEY_A, backend)
    assert cipher.pcbc_encrypt(PLAINTEXT[:45], KEY_B) == cipher.pcbc_encrypt(PLAINTEXT, KEY_B)
    assert cipher.pcbc_encrypt(b"", KEY_B) == b""


@pytest.mark.parametrize("backend", BACKENDS)
def test_pcbc_chains_errors_forward(backend: Backend) -> None:
    """PCBC: a changed ciphertext block garbles its own and every later plaintext block."""
    cipher = Fcrypt(KEY_A, backend)
    sealed = bytearray(cipher.pcbc_encrypt(PLAINTEXT, KEY_B))
    sealed[9] ^= 0x01
    opened = cipher.pcbc_decrypt(bytes(sealed), KEY_B)
    assert opened[:8] == PLAINTEXT[:8]
    for block in range(1, 6):
        assert opened[8 * block : 8 * block + 8] != PLAINTEXT[8 * block : 8 * block + 8]


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_lengths_are_refused(backend: Backend) -> None:
    cipher = Fcrypt(KEY_A, backend)
    with pytest.raises(ValueError):
        cipher.pcbc_decrypt(bytes(12), KEY_B)
    with pytest.raises(ValueError):
        cipher.pcbc_encrypt(bytes(8), b"1234")
    with pytest.raises(ValueError):
        cipher.encrypt_block(bytes(16))


@settings(max_examples=200, deadline=None)
@given(
    key=st.binary(min_size=8, max_size=8),
    iv=st.binary(min_size=8, max_size=8),
    data=st.binary(max_size=160),
)
def test_accelerator_matches_reference(key: bytes, iv: bytes, data: bytes) -> None:
    fast, slow = Fcrypt(key, ACCELERATOR), Fcrypt(key, REFERENCE)
    sealed = fast.pcbc_encrypt(data, iv)
    assert sealed == slow.pcbc_encrypt(data, iv)
    assert fast.pcbc_decrypt(sealed, iv) == slow.pcbc_decrypt(sealed, iv)
    assert fast.pcbc_decrypt(sealed, iv)[: len(data)] == data


def test_accelerator_matches_reference_on_a_full_packet() -> None:
    data = bytes(range(256)) * 5 + bytes(128)  # 1408 bytes: 8-byte header + 1400 user bytes
    fast, slow = Fcrypt(KEY_B, ACCELERATOR), Fcrypt(KEY_B, REFERENCE)
    assert fast.pcbc_encrypt(data, KEY_A) == slow.pcbc_encrypt(data, KEY_A)


def test_environment_forces_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AFSFUSE_FCRYPT", "python")
    assert fcrypt.default_backend() is REFERENCE
    assert Fcrypt(KEY_A).backend is REFERENCE


def test_accelerator_is_the_default_when_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AFSFUSE_FCRYPT", raising=False)
    expected = ACCELERATOR or REFERENCE
    assert fcrypt.default_backend() is expected


def test_missing_accelerator_warns_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("AFSFUSE_FCRYPT", raising=False)
    monkeypatch.setattr(fcrypt, "ACCELERATOR", None)
    monkeypatch.setattr(fcrypt, "_warned_slow", False)
    with caplog.at_level(logging.WARNING, logger="afsfuse.rx.fcrypt"):
        assert Fcrypt(KEY_A).backend is REFERENCE
        assert Fcrypt(KEY_B).backend is REFERENCE
    warnings = [r for r in caplog.records if "accelerator not built" in r.getMessage()]
    assert len(warnings) == 1


def test_the_accelerator_is_built() -> None:
    """The normal install compiles it; a silent fall-back to 1 MB/s would go unnoticed."""
    assert ACCELERATOR is not None
    assert ACCELERATOR.name == "c"


# --- rxkad DATA packets: the accelerator against the reference ----------------------------

LEVELS = (0, 1, 2)  # rxkad.Level: clear, auth, crypt
PRE_SEQ = bytes.fromhex("3414dfc77587be29")
CONTEXT = fcrypt.packet_context(KEY_A, PRE_SEQ)
u32 = st.integers(min_value=0, max_value=0xFFFFFFFF)
contexts = st.builds(
    fcrypt.packet_context, st.binary(min_size=8, max_size=8), st.binary(min_size=8, max_size=8)
)


def test_packet_context_layout() -> None:
    assert len(CONTEXT) == fcrypt.PACKET_CONTEXT_SIZE == 80
    assert CONTEXT[:64] == Fcrypt(KEY_A)._packed
    assert CONTEXT[64:] == KEY_A + PRE_SEQ
    with pytest.raises(ValueError):
        fcrypt.packet_context(KEY_A, b"short")


@pytest.mark.parametrize("backend", BACKENDS)
def test_header_checksum_example(backend: Backend) -> None:
    """The fact sheet's worked example (section 2.4): sealing at clear yields the checksum."""
    assert backend.seal_packet(CONTEXT, 0, 1, 0, 1, b"data") == (0xB793, b"data")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 7, 8, 9, 16, 1399, 1400, 0xFFFF])
def test_packet_round_trip(backend: Backend, level: int, size: int) -> None:
    data = bytes((i * 13 + size) & 0xFF for i in range(size))
    cksum, wire = backend.seal_packet(CONTEXT, level, 7, 2, 11, data)
    assert len(wire) == {0: size, 1: max(8, size + 4), 2: (size + 15) // 8 * 8}[level]
    assert backend.unseal_packet(CONTEXT, level, 7, 2, 11, cksum, True, wire) == data
    assert backend.unseal_packet(CONTEXT, level, 7, 2, 11, cksum, True, bytearray(wire)) == data


@settings(max_examples=300, deadline=None)
@given(
    context=contexts,
    level=st.sampled_from(LEVELS),
    call=u32,
    channel=st.integers(0, 3),
    seq=u32,
    data=st.binary(max_size=100),
)
def test_accelerated_sealing_matches_reference(
    context: bytes, level: int, call: int, channel: int, seq: int, data: bytes
) -> None:
    sealed = ACCELERATOR.seal_packet(context, level, call, channel, seq, data)
    assert sealed == REFERENCE.seal_packet(context, level, call, channel, seq, data)
    cksum, wire = sealed
    for backend in (ACCELERATOR, REFERENCE):
        assert backend.unseal_packet(context, level, call, channel, seq, cksum, True, wire) == data


@settings(max_examples=40, deadline=None)
@given(
    context=contexts,
    call=u32,
    seq=u32,
    data=st.integers(1365, 1412).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
)
def test_accelerated_crypt_packets_of_full_size_match_reference(
    context: bytes, call: int, seq: int, data: bytes
) -> None:
    """Packet-sized payloads: every block loop, its lanes and its leftover blocks."""
    sealed = ACCELERATOR.seal_packet(context, 2, call, 3, seq, data)
    assert sealed == REFERENCE.seal_packet(context, 2, call, 3, seq, data)
    cksum, wire = sealed
    for backend in (ACCELERATOR, REFERENCE):
        assert backend.unseal_packet(context, 2, call, 3, seq, cksum, True, wire) == data


@st.composite
def received_payloads(draw: st.DrawFn) -> tuple[int, int, bytes]:
    """(level, cksum, payload) as a hostile peer might send them for call 7, seq 11.

    Half are raw noise; the rest decrypt to a seal word that names this packet (or nearly)
    but claims any length, so every check and boundary in unsealing is reached.
    """
    level = draw(st.sampled_from(LEVELS))
    right = REFERENCE.seal_packet(CONTEXT, 0, 7, 1, 11, b"")[0]
    cksum = draw(st.sampled_from([right, right, 0, 0xFFFF]))
    if draw(st.booleans()):
        return level, cksum, draw(st.binary(max_size=64))
    tag = draw(st.sampled_from([(7 ^ 11) & 0xFFFF, 0x1234]))
    rest = draw(st.binary(min_size=4, max_size=64))
    claimed = draw(st.one_of(st.integers(0, len(rest)), st.integers(0, 0xFFFF)))
    body = (tag << 16 | claimed).to_bytes(4, "big") + rest
    cipher = Fcrypt(KEY_A, REFERENCE)
    if level == 1:
        payload = cipher.encrypt_block(body[:8]) + body[8:]
    else:
        payload = cipher.pcbc_encrypt(body[: len(body) // 8 * 8], KEY_A)
        payload += draw(st.one_of(st.just(b""), st.binary(max_size=9)))  # maybe not blocks
    return level, cksum, payload


@settings(max_examples=500, deadline=None)
@given(received=received_payloads(), check=st.booleans())
def test_accelerated_unsealing_matches_reference_on_any_input(
    received: tuple[int, int, bytes], check: bool
) -> None:
    level, cksum, payload = received
    fast = ACCELERATOR.unseal_packet(CONTEXT, level, 7, 1, 11, cksum, check, payload)
    slow = REFERENCE.unseal_packet(CONTEXT, level, 7, 1, 11, cksum, check, payload)
    assert fast == slow
    assert isinstance(fast, bytes) == isinstance(slow, bytes)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unsealing_faults(backend: Backend) -> None:
    fault = fcrypt.PacketFault
    cksum, wire = backend.seal_packet(CONTEXT, 2, 7, 1, 11, b"twenty bytes of data")
    assert len(wire) == 32

    def unseal(level: int, payload: bytes, seq: int = 11, check: bool = True) -> bytes | int:
        return backend.unseal_packet(CONTEXT, level, 7, 1, seq, cksum, check, payload)

    assert unseal(2, wire) == b"twenty bytes of data"
    assert unseal(2, wire, seq=12) == fault.CHECKSUM
    assert unseal(2, wire, seq=12, check=False) == fault.SEAL
    assert unseal(2, wire[:7]) == fault.SHORT
    assert unseal(1, wire[:7]) == fault.SHORT
    assert unseal(2, wire + b"\0") == fault.NOT_BLOCKS
    assert unseal(2, wire[:24]) == fault.LENGTH  # the seal word still claims 20 bytes
    forged_tail = unseal(2, wire[:24] + bytes(8))  # PCBC: only the last block is garbled
    assert isinstance(forged_tail, bytes) and len(forged_tail) == 20
    assert forged_tail[:16] == b"twenty bytes of data"[:16]
    assert forged_tail[16:] != b"data"


@pytest.mark.parametrize("backend", BACKENDS)
def test_packet_argument_errors(backend: Backend) -> None:
    with pytest.raises(ValueError):
        backend.seal_packet(CONTEXT[:-1], 2, 1, 0, 1, b"x")
    with pytest.raises(ValueError):
        backend.seal_packet(CONTEXT, 3, 1, 0, 1, b"x")
    with pytest.raises(ValueError):
        backend.unseal_packet(CONTEXT, -1, 1, 0, 1, 0, False, bytes(8))
    with pytest.raises(ValueError):
        backend.seal_packet(CONTEXT, 2, 1, 0, 1, bytes(0x10000))
    with pytest.raises(TypeError):
        backend.seal_packet(CONTEXT, 2, "1", 0, 1, b"x")  # type: ignore[arg-type]


def test_accelerator_refuses_wrong_argument_counts() -> None:
    assert ACCELERATOR is not None
    with pytest.raises(TypeError):
        ACCELERATOR.seal_packet(CONTEXT, 2, 1, 0, 1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        ACCELERATOR.unseal_packet(CONTEXT, 2, 1, 0, 1, 0, True)  # type: ignore[call-arg]
