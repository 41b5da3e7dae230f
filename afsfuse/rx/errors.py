"""Rx failures as exceptions, keyed by the 32-bit codes that travel in ABORT packets."""

from __future__ import annotations

RX_CALL_DEAD = -1
RX_INVALID_OPERATION = -2
RX_CALL_TIMEOUT = -3
RX_EOF = -4
RX_PROTOCOL_ERROR = -5
RX_USER_ABORT = -6
RX_ADDRINUSE = -7
RX_MSGSIZE = -8
RX_RESTARTING = -100
RXGEN_CC_MARSHAL = -450
RXGEN_CC_UNMARSHAL = -451
RXGEN_SS_MARSHAL = -452
RXGEN_SS_UNMARSHAL = -453
RXGEN_DECODE = -454
RXGEN_OPCODE = -455

_NAMES = {
    RX_CALL_DEAD: "RX_CALL_DEAD (peer stopped answering)",
    RX_INVALID_OPERATION: "RX_INVALID_OPERATION (unknown service or security class)",
    RX_CALL_TIMEOUT: "RX_CALL_TIMEOUT (call took too long)",
    RX_EOF: "RX_EOF (reply ended early)",
    RX_PROTOCOL_ERROR: "RX_PROTOCOL_ERROR",
    RX_USER_ABORT: "RX_USER_ABORT",
    RX_ADDRINUSE: "RX_ADDRINUSE",
    RX_MSGSIZE: "RX_MSGSIZE",
    RX_RESTARTING: "RX_RESTARTING (server restarting)",
    RXGEN_CC_MARSHAL: "RXGEN_CC_MARSHAL",
    RXGEN_CC_UNMARSHAL: "RXGEN_CC_UNMARSHAL (reply did not parse)",
    RXGEN_SS_MARSHAL: "RXGEN_SS_MARSHAL",
    RXGEN_SS_UNMARSHAL: "RXGEN_SS_UNMARSHAL (request did not parse)",
    RXGEN_DECODE: "RXGEN_DECODE",
    RXGEN_OPCODE: "RXGEN_OPCODE (server does not know this RPC)",
}

# Other tables (VL, FS volume errors, rxkad, PT) register their names here so that
# every abort code prints the same way wherever it surfaces.
_TABLES: list[dict[int, str]] = [_NAMES]


def register_error_names(names: dict[int, str]) -> None:
    """Add an error table so abort codes from that service print with their names."""
    _TABLES.append(names)


def error_name(code: int) -> str:
    for table in _TABLES:
        if code in table:
            return table[code]
    return f"error {code}"


class RxError(Exception):
    """Base of everything the Rx layer raises."""


class RxAbort(RxError):
    """A call (or its connection) ended with an error code.

    Raised for ABORT packets from the peer and for local failures that OpenAFS would also
    express as an abort code (dead peer, timeout, unmarshalling failure).
    """

    def __init__(self, code: int, message: str | None = None) -> None:
        self.code = code
        super().__init__(message or error_name(code))


class RxTimeout(RxAbort):
    """The peer went silent (RX_CALL_DEAD) or the call ran past its time (RX_CALL_TIMEOUT)."""


class RxSecurityError(RxAbort):
    """A packet failed its security checks; the code is an rxkad error (RXKAD*)."""
