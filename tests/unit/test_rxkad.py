"""rxkad: key material, packet checksums, sealing, CHALLENGE/RESPONSE and rxkad-kdf.

The server decodes a ticket format private to these tests (kvno TEST_KVNO): the session key,
end time and client name, PCBC-encrypted under a server key with fcrypt.  Everything after
ticket decoding (RESPONSE checksum, endpoint, nonce and level checks) is the real protocol.
"""

from __future__ import annotations

import struct

import pytest

from afsfuse.rx.errors import RxSecurityError, error_name
from afsfuse.rx.fcrypt import ACCELERATOR, REFERENCE, Fcrypt
from afsfuse.rx.rxkad import (
    _WEAK_DES_KEYS,
    RXKAD_INDEX,
    RXKADDATALEN,
    RXKADEXPIRED,
    RXKADLEVELFAIL,
    RXKADNOAUTH,
    RXKADOUTOFSEQUENCE,
    RXKADPACKETSHORT,
    RXKADSEALEDINCON,
    RXKADTICKETLEN,
    RXKADUNKNOWNKEY,
    Level,
    RxkadClient,
    RxkadClientConnection,
    RxkadServer,
    RxkadServerConnection,
    ServerTicket,
    derive_des_key,
    response_checksum,
)

SESSION_KEY = bytes.fromhex("f0e1d2c3b4a59687")
SERVER_KEY = bytes.fromhex("0123456789abcdef")
TEST_KVNO = 999
EPOCH = 0x80000001
CID = 0x1000
NOW = 1_700_000_000.0


def make_ticket(session_key: bytes, end: float, name: str = "alice") -> bytes:
    plain = session_key + struct.pack(">I", int(end)) + name.encode().ljust(20, b"\0")
    return Fcrypt(SERVER_KEY).pcbc_encrypt(plain, SERVER_KEY)


def decode_ticket(kvno: int, ticket: bytes) -> ServerTicket:
    if kvno != TEST_KVNO:
        raise RxSecurityError(RXKADUNKNOWNKEY)
    plain = Fcrypt(SERVER_KEY).pcbc_decrypt(ticket, SERVER_KEY)
    (end,) = struct.unpack_from(">I", plain, 8)
    return ServerTicket(plain[:8], plain[12:32].rstrip(b"\0").decode(), NOW - 60, float(end))


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def client_for(level: Level, key: bytes = SESSION_KEY, end: float = NOW + 3600) -> RxkadClient:
    return RxkadClient(key, make_ticket(SESSION_KEY, end), TEST_KVNO, level)


def server(min_level: Level = Level.CLEAR, clock: Clock | None = None) -> RxkadServer:
    return RxkadServer(decode_ticket, min_level=min_level, clock=clock or Clock())


def handshake(
    level: Level, calls: list[int] | None = None
) -> tuple[RxkadClientConnection, RxkadServerConnection]:
    client = client_for(level).new_connection(EPOCH, CID)
    srv = server().new_connection(EPOCH, CID)
    srv.check_response(client.respond(srv.challenge(), calls or [0, 0, 0, 0]))
    return client, srv


# --- key material and the header checksum ----------------------------------------------


def test_pre_seq_and_checksum_example() -> None:
    """The worked example of the fact sheet (section 2.4)."""
    conn = RxkadClient(SESSION_KEY, bytes(32), 0, Level.CLEAR).new_connection(EPOCH, CID)
    assert conn._context[-8:].hex() == "3414dfc77587be29"  # preSeq ends the context
    assert conn.packet_checksum(call_number=1, channel=0, seq=1) == 0xB793


def test_checksum_ignores_channel_bits_of_cid_but_not_channel() -> None:
    token = client_for(Level.CLEAR)
    a = token.new_connection(EPOCH, CID)
    b = token.new_connection(EPOCH, CID | 2)  # same connection, other channel's cid
    assert a._context == b._context
    sums = {a.packet_checksum(5, channel, 7) for channel in range(4)}
    assert len(sums) == 4
    assert all(0 < s <= 0xFFFF for s in sums)


def test_level_sizes() -> None:
    for level, header, trailer in ((Level.CLEAR, 0, 0), (Level.AUTH, 4, 4), (Level.CRYPT, 8, 8)):
        conn = client_for(level).new_connection(EPOCH, CID)
        assert (conn.header_size, conn.max_trailer) == (header, trailer)
    crypt = client_for(Level.CRYPT).new_connection(EPOCH, CID)
    assert crypt.max_user_data(1444 - 28) == 1400
    # Sealed, the largest packet's user data stays within it in whole blocks.
    assert crypt.max_user_data(8588 - 28) == 8544 and (8 + 8544) % 8 == 0


# --- sealing ---------------------------------------------------------------------------


@pytest.mark.parametrize("level", list(Level))
# 8480 and 8544: what crypt puts in an OpenAFS -jumbo fileserver's 8524-byte packet and in
# our largest, 8588 bytes.
@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 8, 13, 1400, 8480, 8544])
def test_seal_round_trip_both_directions(level: Level, size: int) -> None:
    client, srv = handshake(level)
    data = bytes((i * 7 + size) & 0xFF for i in range(size))
    cksum, wire = client.seal(3, 1, 9, data)
    assert srv.unseal(3, 1, 9, cksum, wire) == data
    cksum, wire = srv.seal(3, 1, 10, data)
    assert client.unseal(3, 1, 10, cksum, wire) == data


@pytest.mark.parametrize("level", list(Level))
@pytest.mark.parametrize(("client_side", "server_side"), [("c", "python"), ("python", "c")])
def test_compiled_and_python_connections_interoperate(
    monkeypatch: pytest.MonkeyPatch, level: Level, client_side: str, server_side: str
) -> None:
    """AFSFUSE_FCRYPT picks the packet code per connection; both speak the same wire."""
    monkeypatch.setenv("AFSFUSE_FCRYPT", client_side)
    client = client_for(level).new_connection(EPOCH, CID)
    monkeypatch.setenv("AFSFUSE_FCRYPT", server_side)
    srv = server().new_connection(EPOCH, CID)
    srv.check_response(client.respond(srv.challenge(), [0, 0, 0, 0]))
    backends = {client._unseal_packet, srv._unseal_packet}
    assert backends == {REFERENCE.unseal_packet, ACCELERATOR.unseal_packet}
    for size in (0, 5, 1400):
        data = bytes(i % 251 for i in range(size))
        cksum, wire = client.seal(6, 2, size + 1, data)
        assert srv.unseal(6, 2, size + 1, cksum, wire) == data
        cksum, wire = srv.seal(6, 2, size + 2, data)
        assert client.unseal(6, 2, size + 2, cksum, wire) == data


def test_data_length_beyond_the_packet_is_rejected() -> None:
    client, srv = handshake(Level.CRYPT)
    cksum, wire = client.seal(4, 0, 1, b"twenty bytes of data")
    with pytest.raises(RxSecurityError) as err:
        srv.unseal(4, 0, 1, cksum, wire[:24])  # the seal word still claims 20 bytes
    assert err.value.code == RXKADDATALEN


def test_wire_shape_per_level() -> None:
    data = b"0123456789abcdef0123"
    clear, _ = handshake(Level.CLEAR)
    assert clear.seal(1, 0, 1, data)[1] == data
    auth, _ = handshake(Level.AUTH)
    wire = auth.seal(1, 0, 1, data)[1]
    assert len(wire) == 4 + len(data)
    assert wire[8:] == data[4:]  # only the first block is encrypted
    assert wire[4:8] != data[:4]
    crypt, _ = handshake(Level.CRYPT)
    wire = crypt.seal(1, 0, 1, data)[1]
    assert len(wire) == 32  # 8-byte header + 20 bytes, padded to a whole block
    assert data[:8] not in wire


def test_checksum_is_sent_and_verified() -> None:
    client, srv = handshake(Level.CLEAR)
    cksum, wire = client.seal(2, 0, 1, b"hello")
    assert cksum == client.packet_checksum(2, 0, 1) != 0
    with pytest.raises(RxSecurityError) as err:
        srv.unseal(2, 0, 1, cksum ^ 0x0100, wire)
    assert err.value.code == RXKADSEALEDINCON


def test_zero_checksum_accepted_only_until_one_is_seen() -> None:
    client, srv = handshake(Level.CLEAR)
    assert srv.unseal(2, 0, 1, 0, b"x") == b"x"
    cksum, wire = client.seal(2, 0, 2, b"y")
    assert srv.unseal(2, 0, 2, cksum, wire) == b"y"
    with pytest.raises(RxSecurityError):
        srv.unseal(2, 0, 3, 0, b"z")


@pytest.mark.parametrize("level", [Level.AUTH, Level.CRYPT])
def test_tampered_first_block_is_rejected(level: Level) -> None:
    client, srv = handshake(level)
    cksum, wire = client.seal(4, 0, 1, b"some user data, 32 bytes of it!!")
    for byte in range(8):
        tampered = bytearray(wire)
        tampered[byte] ^= 0x20
        with pytest.raises(RxSecurityError) as err:
            srv.unseal(4, 0, 1, cksum, bytes(tampered))
        assert err.value.code in {RXKADSEALEDINCON, RXKADDATALEN}


@pytest.mark.parametrize("level", [Level.AUTH, Level.CRYPT])
def test_packet_replayed_at_another_sequence_number_is_rejected(level: Level) -> None:
    client, srv = handshake(level)
    _, wire = client.seal(4, 0, 1, b"payload")
    # Even with the right header checksum for the new position, the seal word disagrees.
    with pytest.raises(RxSecurityError) as err:
        srv.unseal(4, 0, 2, client.packet_checksum(4, 0, 2), wire)
    assert err.value.code == RXKADSEALEDINCON


def test_crypt_payload_must_be_whole_blocks() -> None:
    client, srv = handshake(Level.CRYPT)
    cksum, wire = client.seal(4, 0, 1, b"abc")
    with pytest.raises(RxSecurityError):
        srv.unseal(4, 0, 1, cksum, wire + b"\0")
    with pytest.raises(RxSecurityError) as err:
        srv.unseal(4, 0, 1, cksum, wire[:4])
    assert err.value.code == RXKADPACKETSHORT


def test_server_refuses_data_before_authentication() -> None:
    srv = server().new_connection(EPOCH, CID)
    assert not srv.authenticated
    with pytest.raises(RxSecurityError) as err:
        srv.unseal(1, 0, 1, 0, b"data")
    assert err.value.code == RXKADNOAUTH


# --- CHALLENGE and RESPONSE --------------------------------------------------------------


def test_challenge_is_v2() -> None:
    srv = server(min_level=Level.AUTH).new_connection(EPOCH, CID)
    version, _nonce, min_level, spare = struct.unpack(">IIII", srv.challenge())
    assert (version, min_level, spare) == (2, 1, 0)
    assert srv.challenge() == srv.challenge()  # resends carry the same nonce


def test_response_layout() -> None:
    client = client_for(Level.CRYPT).new_connection(EPOCH, CID | 3)
    challenge = struct.pack(">IIII", 2, 0x11223344, 0, 0)
    response = client.respond(challenge, [7, 0, 2, 1])
    version, spare = struct.unpack_from(">II", response)
    kvno, ticket_len = struct.unpack_from(">II", response, 48)
    assert (version, spare, kvno) == (2, 0, TEST_KVNO)
    assert response[56:] == client_for(Level.CRYPT).ticket
    assert ticket_len == len(response) - 56
    plain = Fcrypt(SESSION_KEY).pcbc_decrypt(response[8:48], SESSION_KEY)
    epoch, cid, cksum, index, *calls, answer, level = struct.unpack(">10I", plain)
    assert (epoch, cid, index) == (EPOCH, CID, RXKAD_INDEX)
    assert (calls, answer, level) == ([7, 0, 2, 1], 0x11223345, Level.CRYPT)
    cleartext = response[:8] + plain[:8] + bytes(4) + plain[12:] + response[48:56]
    assert cksum == response_checksum(cleartext)


def test_challenge_response_authenticates() -> None:
    clock = Clock()
    client = client_for(Level.CRYPT).new_connection(EPOCH, CID)
    srv = server(min_level=Level.AUTH, clock=clock).new_connection(EPOCH, CID)
    calls = srv.check_response(client.respond(srv.challenge(), [3, 0, 1, 0]))
    assert calls == [3, 0, 1, 0]
    assert srv.authenticated
    assert srv.identity == "alice"
    assert srv.level == Level.CRYPT and srv.header_size == 8
    clock.now = NOW + 3600  # the ticket's end time
    assert not srv.authenticated
    with pytest.raises(RxSecurityError):
        srv.seal(1, 0, 1, b"late")


def test_wrong_nonce_fails() -> None:
    client = client_for(Level.CRYPT).new_connection(EPOCH, CID)
    srv = server().new_connection(EPOCH, CID)
    version, nonce, min_level, spare = struct.unpack(">IIII", srv.challenge())
    forged = struct.pack(">IIII", version, (nonce + 1) & 0xFFFFFFFF, min_level, spare)
    with pytest.raises(RxSecurityError) as err:
        srv.check_response(client.respond(forged, [0, 0, 0, 0]))
    assert err.value.code == RXKADOUTOFSEQUENCE
    assert not srv.authenticated


def test_client_refuses_a_minimum_level_above_its_own() -> None:
    client = client_for(Level.AUTH).new_connection(EPOCH, CID)
    srv = server(min_level=Level.CRYPT).new_connection(EPOCH, CID)
    with pytest.raises(RxSecurityError) as err:
        client.respond(srv.challenge(), [0, 0, 0, 0])
    assert err.value.code == RXKADLEVELFAIL
    assert "RXKADLEVELFAIL" in error_name(err.value.code)


def test_server_refuses_a_level_below_its_minimum() -> None:
    client = client_for(Level.AUTH).new_connection(EPOCH, CID)
    srv = server(min_level=Level.CRYPT).new_connection(EPOCH, CID)
    _, nonce, _, _ = struct.unpack(">IIII", srv.challenge())
    lenient = struct.pack(">IIII", 2, nonce, Level.CLEAR, 0)
    with pytest.raises(RxSecurityError) as err:
        srv.check_response(client.respond(lenient, [0, 0, 0, 0]))
    assert err.value.code == RXKADLEVELFAIL


def test_response_with_the_wrong_session_key_fails() -> None:
    impostor = client_for(Level.CRYPT, key=bytes.fromhex("1122334455667788"))
    srv = server().new_connection(EPOCH, CID)
    with pytest.raises(RxSecurityError) as err:
        srv.check_response(impostor.new_connection(EPOCH, CID).respond(srv.challenge(), [0] * 4))
    assert err.value.code == RXKADSEALEDINCON


def test_response_for_another_connection_fails() -> None:
    srv = server().new_connection(EPOCH, CID)
    other = client_for(Level.CRYPT).new_connection(EPOCH, CID + 4)
    with pytest.raises(RxSecurityError) as err:
        srv.check_response(other.respond(srv.challenge(), [0] * 4))
    assert err.value.code == RXKADSEALEDINCON


def test_tampered_response_fails() -> None:
    client = client_for(Level.CRYPT).new_connection(EPOCH, CID)
    srv = server().new_connection(EPOCH, CID)
    response = bytearray(client.respond(srv.challenge(), [0] * 4))
    response[0] ^= 0x80  # the cleartext version is covered by the checksum
    with pytest.raises(RxSecurityError) as err:
        srv.check_response(bytes(response))
    assert err.value.code == RXKADSEALEDINCON


def test_expired_ticket_fails() -> None:
    client = client_for(Level.CRYPT, end=NOW - 1).new_connection(EPOCH, CID)
    srv = server().new_connection(EPOCH, CID)
    with pytest.raises(RxSecurityError) as err:
        srv.check_response(client.respond(srv.challenge(), [0] * 4))
    assert err.value.code == RXKADEXPIRED


def test_unknown_ticket_type_and_bad_lengths() -> None:
    token = client_for(Level.CRYPT)
    srv = server().new_connection(EPOCH, CID)
    good = RxkadClient(SESSION_KEY, token.ticket, TEST_KVNO + 1, Level.CRYPT)
    with pytest.raises(RxSecurityError) as err:
        srv.check_response(good.new_connection(EPOCH, CID).respond(srv.challenge(), [0] * 4))
    assert err.value.code == RXKADUNKNOWNKEY
    response = token.new_connection(EPOCH, CID).respond(srv.challenge(), [0] * 4)
    with pytest.raises(RxSecurityError) as err:
        srv.check_response(response[:-1])
    assert err.value.code == RXKADPACKETSHORT
    short_ticket = response[:52] + struct.pack(">I", 8) + response[56:64]
    with pytest.raises(RxSecurityError) as err:
        srv.check_response(short_ticket)
    assert err.value.code == RXKADTICKETLEN
    with pytest.raises(ValueError):
        RxkadClient(SESSION_KEY, bytes(12001), TEST_KVNO, Level.CRYPT)


def test_old_style_challenge_gets_old_style_response() -> None:
    token = client_for(Level.AUTH)
    client = token.new_connection(EPOCH, CID)
    response = client.respond(struct.pack(">II", 41, Level.CLEAR), [0] * 4)
    answer, level = struct.unpack(">II", Fcrypt(SESSION_KEY).decrypt_block(response[:8]))
    assert (answer, level) == (42, Level.AUTH)
    assert struct.unpack_from(">II", response, 8) == (TEST_KVNO, len(token.ticket))
    assert response[16:] == token.ticket
    with pytest.raises(RxSecurityError) as err:
        client.respond(b"1234", [0] * 4)
    assert err.value.code == RXKADPACKETSHORT


# --- rxkad-kdf -------------------------------------------------------------------------


def _has_odd_parity(key: bytes) -> bool:
    return all(b.bit_count() % 2 == 1 for b in key)


def test_kdf_vectors() -> None:
    """The fact sheet's self-computed vectors (AES-128 and AES-256 sized keys)."""
    assert derive_des_key(17, bytes(range(16))).hex() == "07838c58c11c64ab"
    assert derive_des_key(18, bytes(range(32))).hex() == "b60db5e30b266b16"


def test_kdf_output_is_a_parity_correct_strong_key() -> None:
    for seed in range(64):
        key = derive_des_key(23, bytes([seed]) * 16)
        assert len(key) == 8 and _has_odd_parity(key)
        assert key not in _WEAK_DES_KEYS


def test_weak_key_table_is_the_16_parity_correct_des_keys() -> None:
    assert len(_WEAK_DES_KEYS) == 16
    assert all(_has_odd_parity(key) for key in _WEAK_DES_KEYS)


def test_kdf_single_des_passes_through() -> None:
    assert derive_des_key(3, SESSION_KEY) == SESSION_KEY
    with pytest.raises(ValueError):
        derive_des_key(1, bytes(16))


def test_kdf_3des_drops_parity_bits_first() -> None:
    # Changing only parity (low) bits of bytes 0..6 of a block changes nothing once the
    # parity byte supplies them; changing byte 7's spare bits does.
    base = bytes(range(8, 32))
    low_bits_moved = bytearray(base)
    low_bits_moved[0] ^= 1
    assert derive_des_key(16, bytes(low_bits_moved)) == derive_des_key(16, base)
    parity_byte_changed = bytearray(base)
    parity_byte_changed[7] ^= 0x02
    assert derive_des_key(16, bytes(parity_byte_changed)) != derive_des_key(16, base)


@pytest.mark.parametrize("enctype", [0, 4, 6, 8, 15])
def test_kdf_refuses_unusable_enctypes(enctype: int) -> None:
    with pytest.raises(ValueError):
        derive_des_key(enctype, bytes(16))


def test_kdf_refuses_short_keys() -> None:
    with pytest.raises(ValueError):
        derive_des_key(18, bytes(6))
