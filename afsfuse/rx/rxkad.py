"""rxkad (security indexes 2 and 3): ticket-based authentication and fcrypt protection.

A client holds a token (an 8-byte session key, the server's opaque ticket and its type
"kvno") and answers the server's CHALLENGE with a RESPONSE that proves it knows the key.
Both ends then checksum every DATA header and, at levels auth and crypt, seal the payload.
Index 3 is the same protocol on a service that insists on crypt.

The server side exists so the client can be tested end to end; ticket decoding is left to
a caller-supplied function because real tickets need the service's long-term keys.
"""

from __future__ import annotations

import hmac
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from afsfuse.rx.errors import RxSecurityError, register_error_names
from afsfuse.rx.fcrypt import BLOCK_SIZE, Fcrypt, PacketFault, default_backend, packet_context
from afsfuse.rx.security import (
    ClientConnectionSecurity,
    ClientSecurity,
    ServerConnectionSecurity,
    ServerSecurity,
)

RXKAD_INDEX = 2
#: The fileserver's second rxkad object, which accepts only crypt.
RXKAD_CRYPT_ONLY_INDEX = 3


class Level(IntEnum):
    CLEAR = 0  # header checksum only
    AUTH = 1  # plus the first 8 payload bytes encrypted
    CRYPT = 2  # plus the whole payload encrypted


#: The levels by the names configuration gives them: "clear", "auth", "crypt".
LEVELS_BY_NAME = {level.name.lower(): level for level in Level}


_RXK_BASE = 19270400
RXKADINCONSISTENCY = _RXK_BASE + 0
RXKADPACKETSHORT = _RXK_BASE + 1
RXKADLEVELFAIL = _RXK_BASE + 2
RXKADTICKETLEN = _RXK_BASE + 3
RXKADOUTOFSEQUENCE = _RXK_BASE + 4
RXKADNOAUTH = _RXK_BASE + 5
RXKADBADKEY = _RXK_BASE + 6
RXKADBADTICKET = _RXK_BASE + 7
RXKADUNKNOWNKEY = _RXK_BASE + 8
RXKADEXPIRED = _RXK_BASE + 9
RXKADSEALEDINCON = _RXK_BASE + 10
RXKADDATALEN = _RXK_BASE + 11
RXKADILLEGALLEVEL = _RXK_BASE + 12

register_error_names(
    {
        RXKADINCONSISTENCY: "RXKADINCONSISTENCY (security module structure inconsistent)",
        RXKADPACKETSHORT: "RXKADPACKETSHORT (packet too short for security challenge)",
        RXKADLEVELFAIL: "RXKADLEVELFAIL (security level negotiation failed)",
        RXKADTICKETLEN: "RXKADTICKETLEN (ticket length too short or too long)",
        RXKADOUTOFSEQUENCE: "RXKADOUTOFSEQUENCE (packet had bad sequence number)",
        RXKADNOAUTH: "RXKADNOAUTH (caller not authorized)",
        RXKADBADKEY: "RXKADBADKEY (illegal key: bad parity or weak)",
        RXKADBADTICKET: "RXKADBADTICKET (security object was passed a bad ticket)",
        RXKADUNKNOWNKEY: "RXKADUNKNOWNKEY (ticket contained unknown key version number)",
        RXKADEXPIRED: "RXKADEXPIRED (authentication expired)",
        RXKADSEALEDINCON: "RXKADSEALEDINCON (sealed data inconsistent)",
        RXKADDATALEN: "RXKADDATALEN (user data too long)",
        RXKADILLEGALLEVEL: "RXKADILLEGALLEVEL (caller not authorized to use encryption)",
    }
)

#: Ticket types carried in the RESPONSE's kvno field (0..255 are Kerberos 4 key versions).
TICKET_TYPE_KERBEROS_V5 = 256
TICKET_TYPE_KERBEROS_V5_ENCPART_ONLY = 213
MIN_TICKET_LEN = 32
MAX_TICKET_LEN = 12000
#: Clock skew a server tolerates on a ticket's start time.
CLOCK_SKEW = 15 * 60

_HEADER_SIZE = {Level.CLEAR: 0, Level.AUTH: 4, Level.CRYPT: 8}
_MAX_TRAILER = {Level.CLEAR: 0, Level.AUTH: 4, Level.CRYPT: 8}

_CHALLENGE_VERSION = 2
_V2_CHALLENGE = struct.Struct(">IIII")  # version, nonce, minLevel, spare
_OLD_CHALLENGE = struct.Struct(">II")  # nonce, minLevel
# version, spare | epoch, cid, cksum, index, callNumbers[4], nonce + 1, level | kvno, ticketLen
_V2_RESPONSE = struct.Struct(">II IIII 4I II II")
_ENC_START, _ENC_END = 8, 48
_CKSUM_OFFSET = 16
_MASK32 = 0xFFFFFFFF


#: What each refusal of a received DATA packet is reported as.
_PACKET_FAULTS = {
    PacketFault.CHECKSUM: (RXKADSEALEDINCON, "rxkad: bad packet header checksum"),
    PacketFault.SHORT: (RXKADPACKETSHORT, "rxkad: payload shorter than one block"),
    PacketFault.NOT_BLOCKS: (RXKADDATALEN, "rxkad: crypt payload not whole blocks"),
    PacketFault.SEAL: (RXKADSEALEDINCON, "rxkad: seal word names another packet"),
    PacketFault.LENGTH: (RXKADDATALEN, "rxkad: seal word claims more data than sent"),
}


def response_checksum(body: bytes | bytearray) -> int:
    """The checksum over the 56 cleartext RESPONSE bytes (its own field zeroed)."""
    h = 1000003
    for byte in body:
        h = (h * 0x10204081 + byte) & _MASK32
    return h


class _RxkadConnection:
    """Keys and per-packet protection shared by both ends of an rxkad connection."""

    index: int
    header_size: int
    max_trailer: int

    def __init__(self, index: int, epoch: int, cid: int) -> None:
        self.index = index
        self.epoch = epoch
        self.cid = cid
        self.header_size = 0
        self.max_trailer = 0
        self.level = Level.CLEAR
        self._cipher: Fcrypt | None = None
        self._session_key = b""
        # Keys and preSeq as the per-packet functions take them; empty until keyed.
        self._context = b""
        self._backend = default_backend()
        self._seal_packet = self._backend.seal_packet
        self._unseal_packet = self._backend.unseal_packet
        # Like OpenAFS, only check checksums once the peer has shown it sends them.
        self._cksum_seen = False

    def _set_key(self, session_key: bytes, level: Level) -> None:
        cipher = Fcrypt(session_key, self._backend)
        endpoint = struct.pack(">IIII", self.epoch, self.cid & ~3 & _MASK32, 0, self.index)
        pre_seq = cipher.pcbc_encrypt(endpoint, session_key)[BLOCK_SIZE:]
        self._cipher = cipher
        self._session_key = session_key
        self._context = packet_context(session_key, pre_seq)
        self.level = level
        self.header_size = _HEADER_SIZE[level]
        self.max_trailer = _MAX_TRAILER[level]

    def _keyed_cipher(self) -> Fcrypt:
        """The connection's cipher; raises if it has no key yet."""
        if self._cipher is None:
            raise RxSecurityError(RXKADNOAUTH)
        return self._cipher

    def _usable_context(self) -> bytes:
        """The packet context; raises if the connection may not carry data yet."""
        if not self._context:
            raise RxSecurityError(RXKADNOAUTH)
        return self._context

    def packet_checksum(self, call_number: int, channel: int, seq: int) -> int:
        """The 16-bit header checksum of a DATA packet (never 0)."""
        # Sealing at level clear computes exactly the checksum and leaves the data alone.
        context = self._usable_context()
        return self._seal_packet(context, Level.CLEAR, call_number, channel, seq, b"")[0]

    def seal(self, call_number: int, channel: int, seq: int, data: bytes) -> tuple[int, bytes]:
        context = self._usable_context()
        return self._seal_packet(context, self.level, call_number, channel, seq, data)

    def unseal(self, call_number: int, channel: int, seq: int, cksum: int, payload: bytes) -> bytes:
        context = self._usable_context()
        if cksum:
            self._cksum_seen = True
        opened = self._unseal_packet(
            context, self.level, call_number, channel, seq, cksum, self._cksum_seen, payload
        )
        if isinstance(opened, int):
            raise RxSecurityError(*_PACKET_FAULTS[PacketFault(opened)])
        return opened


class RxkadClientConnection(_RxkadConnection, ClientConnectionSecurity):
    def __init__(self, security: RxkadClient, epoch: int, cid: int) -> None:
        super().__init__(security.index, epoch, cid)
        self._token = security
        self._set_key(security.session_key, security.level)

    def respond(self, challenge: bytes, call_numbers: list[int]) -> bytes:
        token = self._token
        if len(challenge) >= _V2_CHALLENGE.size:
            _version, nonce, min_level, _spare = _V2_CHALLENGE.unpack_from(challenge)
            v2 = True
        elif len(challenge) >= _OLD_CHALLENGE.size:
            nonce, min_level = _OLD_CHALLENGE.unpack_from(challenge)
            v2 = False
        else:
            raise RxSecurityError(RXKADPACKETSHORT)
        if min_level > self.level:
            raise RxSecurityError(
                RXKADLEVELFAIL, f"rxkad: server wants level {min_level}, we use {self.level}"
            )
        cipher = self._keyed_cipher()
        answer = (nonce + 1) & _MASK32
        if not v2:
            sealed = cipher.encrypt_block(struct.pack(">II", answer, self.level))
            return sealed + struct.pack(">II", token.kvno, len(token.ticket)) + token.ticket
        if len(call_numbers) != 4:
            raise ValueError("a RESPONSE reports exactly four call numbers")
        fields = bytearray(
            _V2_RESPONSE.pack(
                _CHALLENGE_VERSION,
                0,
                self.epoch,
                self.cid & ~3 & _MASK32,
                0,
                self.index,
                *(n & _MASK32 for n in call_numbers),
                answer,
                self.level,
                token.kvno,
                len(token.ticket),
            )
        )
        struct.pack_into(">I", fields, _CKSUM_OFFSET, response_checksum(fields))
        sealed = cipher.pcbc_encrypt(bytes(fields[_ENC_START:_ENC_END]), self._session_key)
        return bytes(fields[:_ENC_START]) + sealed + bytes(fields[_ENC_END:]) + token.ticket


class RxkadClient(ClientSecurity):
    """An rxkad token, as a client security class: one per (user, cell, level)."""

    def __init__(
        self,
        session_key: bytes,
        ticket: bytes,
        kvno: int,
        level: Level,
        *,
        index: int = RXKAD_INDEX,
    ) -> None:
        if len(session_key) != BLOCK_SIZE:
            raise ValueError("an rxkad session key is 8 bytes")
        if not MIN_TICKET_LEN <= len(ticket) <= MAX_TICKET_LEN:
            raise ValueError(f"ticket of {len(ticket)} bytes (rxkad allows 32..12000)")
        if not 0 <= kvno <= _MASK32:
            raise ValueError("kvno must fit in 32 bits")
        self.session_key = bytes(session_key)
        self.ticket = bytes(ticket)
        self.kvno = kvno
        self.level = Level(level)
        self.index = index

    def new_connection(self, epoch: int, cid: int) -> RxkadClientConnection:
        return RxkadClientConnection(self, epoch, cid)


@dataclass(frozen=True)
class ServerTicket:
    """What a server learned from decrypting a client's ticket."""

    session_key: bytes
    identity: str
    start: float  # seconds since the Unix epoch
    end: float


#: (kvno, ticket bytes) -> ServerTicket; raises RxSecurityError (RXKADBADTICKET,
#: RXKADUNKNOWNKEY, ...) for tickets it cannot decrypt.
TicketDecoder = Callable[[int, bytes], ServerTicket]


class RxkadServerConnection(_RxkadConnection, ServerConnectionSecurity):
    def __init__(self, security: RxkadServer, epoch: int, cid: int) -> None:
        super().__init__(security.index, epoch, cid)
        self._server = security
        # One nonce per connection: challenge resends and duplicate responses stay valid.
        self._nonce = int.from_bytes(os.urandom(4), "big")
        self._expires: float | None = None
        self._identity: str | None = None

    @property
    def authenticated(self) -> bool:
        return self._expires is not None and self._server.clock() < self._expires

    @property
    def identity(self) -> str | None:
        return self._identity if self.authenticated else None

    def _usable_context(self) -> bytes:
        if not self.authenticated:
            raise RxSecurityError(RXKADNOAUTH)
        return super()._usable_context()

    def challenge(self) -> bytes:
        return _V2_CHALLENGE.pack(_CHALLENGE_VERSION, self._nonce, self._server.min_level, 0)

    def check_response(self, response: bytes) -> list[int]:
        if len(response) < _V2_RESPONSE.size:
            raise RxSecurityError(RXKADPACKETSHORT)
        kvno, ticket_len = struct.unpack_from(">II", response, _ENC_END)
        if not MIN_TICKET_LEN <= ticket_len <= MAX_TICKET_LEN:
            raise RxSecurityError(RXKADTICKETLEN)
        if _V2_RESPONSE.size + ticket_len > len(response):
            raise RxSecurityError(RXKADPACKETSHORT)
        ticket_bytes = response[_V2_RESPONSE.size : _V2_RESPONSE.size + ticket_len]
        ticket = self._server.decode_ticket(kvno, ticket_bytes)
        now = self._server.clock()
        if now < ticket.start - CLOCK_SKEW:
            raise RxSecurityError(RXKADNOAUTH, "rxkad: ticket not yet valid")
        if now >= ticket.end:
            raise RxSecurityError(RXKADEXPIRED)
        if len(ticket.session_key) != BLOCK_SIZE:
            raise RxSecurityError(RXKADBADKEY)

        sealed = response[_ENC_START:_ENC_END]
        plain = Fcrypt(ticket.session_key).pcbc_decrypt(sealed, ticket.session_key)
        fields = bytearray(response[: _V2_RESPONSE.size])
        fields[_ENC_START:_ENC_END] = plain
        (_v, _s, epoch, cid, cksum, index, *call_numbers, answer, level, _k, _t) = (
            _V2_RESPONSE.unpack(fields)
        )
        struct.pack_into(">I", fields, _CKSUM_OFFSET, 0)
        if cksum != response_checksum(fields):
            raise RxSecurityError(RXKADSEALEDINCON, "rxkad: RESPONSE checksum mismatch")
        if (epoch, cid, index) != (self.epoch, self.cid & ~3 & _MASK32, self.index):
            raise RxSecurityError(RXKADSEALEDINCON, "rxkad: RESPONSE for another connection")
        if any(n >= 1 << 31 for n in call_numbers):
            raise RxSecurityError(RXKADSEALEDINCON, "rxkad: negative call number")
        if answer != (self._nonce + 1) & _MASK32:
            raise RxSecurityError(RXKADOUTOFSEQUENCE)
        if not self._server.min_level <= level <= Level.CRYPT:
            raise RxSecurityError(RXKADLEVELFAIL)

        self._set_key(ticket.session_key, Level(level))
        self._identity = ticket.identity
        self._expires = ticket.end
        return call_numbers


class RxkadServer(ServerSecurity):
    """rxkad for a service: challenges new connections and checks the responses."""

    def __init__(
        self,
        decode_ticket: TicketDecoder,
        *,
        min_level: Level = Level.CLEAR,
        index: int = RXKAD_INDEX,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.decode_ticket = decode_ticket
        self.min_level = Level(min_level)
        self.index = index
        self.clock = clock

    def new_connection(self, epoch: int, cid: int) -> RxkadServerConnection:
        return RxkadServerConnection(self, epoch, cid)


# --- rxkad-kdf: turning a Kerberos 5 session key into an rxkad key --------------------

_DES_ENCTYPES = frozenset({1, 2, 3})
_DES3_ENCTYPES = frozenset({5, 7, 16})
_REFUSED_ENCTYPES = frozenset({0, 4, 6, *range(8, 16)})
_KDF_LABEL = b"rxkad\x00" + (64).to_bytes(4, "big")

# The DES weak and semi-weak keys (with odd parity): fcrypt keys the KDF must not produce.
_WEAK_DES_KEYS = frozenset(
    bytes.fromhex(k)
    for k in (
        "0101010101010101",
        "fefefefefefefefe",
        "e0e0e0e0f1f1f1f1",
        "1f1f1f1f0e0e0e0e",
        "01fe01fe01fe01fe",
        "fe01fe01fe01fe01",
        "1fe01fe00ef10ef1",
        "e01fe01ff10ef10e",
        "01e001e001f101f1",
        "e001e001f101f101",
        "1ffe1ffe0efe0efe",
        "fe1ffe1ffe0efe0e",
        "011f011f010e010e",
        "1f011f010e010e01",
        "e0fee0fef1fef1fe",
        "fee0fee0fef1fef1",
    )
)


def _with_odd_parity(key: bytes) -> bytes:
    return bytes((b & 0xFE) | (1 - (b >> 1).bit_count() % 2) for b in key)


def _strip_des3_parity(key: bytes) -> bytes:
    """3DES keys carry parity bits: each 8-byte block holds 7 bytes of key material."""
    if len(key) % 8:
        raise ValueError("3DES keys are a whole number of 8-byte blocks")
    out = bytearray()
    for start in range(0, len(key), 8):
        block = key[start : start + 8]
        low_bits = block[7]
        out.extend((block[j] & 0xFE) | ((low_bits >> (j + 1)) & 1) for j in range(7))
    return bytes(out)


def derive_des_key(enctype: int, key: bytes) -> bytes:
    """The 8-byte rxkad session key for a Kerberos 5 session key of any enctype.

    Single-DES keys are used as they are; anything stronger goes through rxkad-kdf
    (HMAC-MD5 in SP800-108 counter mode, odd parity, weak keys skipped), so the fileserver,
    which applies the same derivation to the key inside the ticket, agrees.
    """
    if enctype in _DES_ENCTYPES:
        if len(key) != BLOCK_SIZE:
            raise ValueError("a single-DES key is 8 bytes")
        return bytes(key)
    if enctype in _REFUSED_ENCTYPES:
        raise ValueError(f"enctype {enctype} cannot be used for rxkad")
    if enctype in _DES3_ENCTYPES:
        key = _strip_des3_parity(key)
    if len(key) < 7:
        raise ValueError("session key too short for rxkad-kdf")
    for counter in range(1, 256):
        mac = hmac.digest(key, bytes([counter]) + _KDF_LABEL, "md5")
        candidate = _with_odd_parity(mac[:BLOCK_SIZE])
        if candidate not in _WEAK_DES_KEYS:
            return candidate
    raise ValueError("rxkad-kdf produced only weak keys")
