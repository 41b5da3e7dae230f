"""One Rx connection (epoch, cid) in one direction: its four channels, serials and security.

The connection stamps the packets its calls and the endpoint send on it and queues them on
the endpoint's Schedule.  It holds its calls but calls nothing on them: what concerns every
call of a connection (failing them, finding a free channel) is the endpoint's.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from . import packet as P
from .peer import Address, Peer
from .schedule import Schedule
from .security import ConnectionSecurity

DEFAULT_DEAD_TIME = 12.0

C = TypeVar("C")


class Connection(Generic[C]):
    """Channels, call numbers and serials of one connection; C is the call type."""

    def __init__(
        self,
        schedule: Schedule[C],
        peer: Peer,
        epoch: int,
        cid: int,
        service_id: int,
        security: ConnectionSecurity,
        is_client: bool,
        *,
        dead_time: float = DEFAULT_DEAD_TIME,
        hard_timeout: float | None = None,
        idle_timeout: float | None = None,
    ) -> None:
        self.schedule = schedule
        self.peer = peer
        self.epoch = epoch
        self.cid = cid
        self.service_id = service_id
        self.security = security
        self.security_index = security.index
        self.is_client = is_client
        self.direction_flag = P.CLIENT_INITIATED if is_client else 0
        self.dead_time = dead_time
        self.hard_timeout = hard_timeout
        self.idle_timeout = idle_timeout
        self.serial = 0
        self.calls: list[C | None] = [None] * 4
        self.call_numbers = [0] * 4
        self.error: int | None = None
        self.last_activity = 0.0
        #: Server side: calls held until the peer answers our CHALLENGE.
        self.held: list[C] = []
        self.challenge_at: float | None = None
        self.challenges_sent = 0
        #: Free slot for the driver (its task-facing wrapper).
        self.app: object = None

    @property
    def addr(self) -> Address:
        return self.peer.addr

    def max_user_data(self) -> int:
        return self.security.max_user_data(self.peer.max_packet - P.HEADER_SIZE)

    def send_packet(
        self,
        ptype: int,
        flags: int,
        call_number: int,
        channel: int,
        seq: int,
        body: bytes,
        now: float,
        cksum: int = 0,
    ) -> int:
        """Queue one datagram on this connection; return the serial it got."""
        self.serial = serial = (self.serial + 1) & 0xFFFFFFFF or 1
        header = P.HEADER.pack(
            self.epoch,
            self.cid | channel,
            call_number,
            seq,
            serial,
            ptype,
            flags,
            0,
            self.security_index,
            cksum,
            self.service_id,
        )
        schedule = self.schedule
        schedule.outgoing.append((header + body, self.peer.addr))
        schedule.stats.sent[ptype] += 1
        self.last_activity = now
        return serial

    def send_connection_abort(self, now: float) -> None:
        assert self.error is not None
        self.send_packet(P.ABORT, self.direction_flag, 0, 0, 0, P.encode_abort(self.error), now)
