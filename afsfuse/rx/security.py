"""The interface between the Rx core and a security class (rxnull, rxkad).

A security *class* is chosen per connection when it is created; it produces one
*connection security* object per Rx connection, holding whatever keys that connection
derives.  The Rx core calls only the methods below, once per DATA packet it sends or
receives, and once per CHALLENGE/RESPONSE exchange.
"""

from __future__ import annotations

from abc import ABC, abstractmethod


class ConnectionSecurity(ABC):
    """Security state of one Rx connection (client or server side)."""

    #: securityIndex carried in every packet of the connection.
    index: int
    #: Bytes this class puts before the user data in each DATA packet.
    header_size: int = 0
    #: Worst-case bytes this class adds after the user data (padding).
    max_trailer: int = 0

    @abstractmethod
    def seal(self, call_number: int, channel: int, seq: int, data: bytes) -> tuple[int, bytes]:
        """Protect one DATA packet's user data: return (header checksum, wire payload)."""

    @abstractmethod
    def unseal(self, call_number: int, channel: int, seq: int, cksum: int, payload: bytes) -> bytes:
        """Check and strip one received DATA packet; raise RxSecurityError on failure."""

    def max_user_data(self, packet_payload: int) -> int:
        """User bytes that fit in a DATA packet whose payload (after the Rx header) is given."""
        return packet_payload - self.header_size - self.max_trailer


class ClientConnectionSecurity(ConnectionSecurity):
    """Client side: answers the server's CHALLENGE."""

    @abstractmethod
    def respond(self, challenge: bytes, call_numbers: list[int]) -> bytes:
        """Build the RESPONSE body for a CHALLENGE body.

        call_numbers are the connection's four channel call numbers as the RESPONSE must
        report them (the Rx core already added 1 for channels whose call is finished).
        Raises RxSecurityError if the challenge cannot be met (for example, a minimum level
        above ours).
        """


class ServerConnectionSecurity(ConnectionSecurity):
    """Server side: decides whether calls need a CHALLENGE and checks the RESPONSE."""

    @property
    @abstractmethod
    def authenticated(self) -> bool:
        """True once calls on this connection may be dispatched."""

    def challenge(self) -> bytes | None:
        """The CHALLENGE body to send, or None if this class never challenges."""
        return None

    def check_response(self, response: bytes) -> list[int]:
        """Verify a RESPONSE body; return the call numbers it reports.

        Raises RxSecurityError when it does not verify.
        """
        raise NotImplementedError

    @property
    def identity(self) -> str | None:
        """Who the peer proved to be (for example 'alice@EXAMPLE.ORG'); None if anonymous."""
        return None


class ClientSecurity(ABC):
    """A client security class: what a caller picks when it opens a connection."""

    index: int

    @abstractmethod
    def new_connection(self, epoch: int, cid: int) -> ClientConnectionSecurity:
        """Make the state for a new connection with this epoch and connection id."""


class ServerSecurity(ABC):
    """A server security class, registered with a service under its index."""

    index: int

    @abstractmethod
    def new_connection(self, epoch: int, cid: int) -> ServerConnectionSecurity:
        """Make the state for a new incoming connection."""


class _NullConnection(ClientConnectionSecurity, ServerConnectionSecurity):
    index = 0

    def seal(self, call_number: int, channel: int, seq: int, data: bytes) -> tuple[int, bytes]:
        return 0, data

    def unseal(self, call_number: int, channel: int, seq: int, cksum: int, payload: bytes) -> bytes:
        return payload

    def respond(self, challenge: bytes, call_numbers: list[int]) -> bytes:
        return b""

    @property
    def authenticated(self) -> bool:
        return True


_NULL_CONNECTION = _NullConnection()


class RxNull(ClientSecurity, ServerSecurity):
    """rxnull (index 0): no authentication, no protection; one shared stateless object."""

    index = 0

    def new_connection(self, epoch: int, cid: int) -> _NullConnection:
        return _NULL_CONNECTION


RXNULL = RxNull()
