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
