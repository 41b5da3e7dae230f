"""Sending a flush's datagrams with as few system calls as the kernel allows.

A flush often holds a run of full DATA packets to one peer (a store's window opening, the
first burst of a call).  Linux's UDP segmentation offload (UDP_SEGMENT, 4.18 and later)
takes such a run in one sendmsg: the buffers are cut into datagrams of the given size
(the last may be shorter) as late as the device allows, so the run costs one trip through
the socket and IP layers instead of one per packet.  The peer receives ordinary datagrams.

A run is only ever datagrams that sit next to each other in the flush, so the order on the
wire is the core's.  Where the kernel refuses segmentation (an old kernel, a device that
cannot checksum for it, a packet larger than the path), the run goes out one datagram at a
time and segmentation stays off for the socket.
"""

from __future__ import annotations

import errno
import logging
import socket
import sys
from collections.abc import Sequence

from .peer import Address
from .schedule import Datagram
from .stats import RxStats

log = logging.getLogger(__name__)

#: <linux/udp.h>; Python's socket module does not name it.
UDP_SEGMENT = 103
#: The kernel's UDP_MAX_SEGMENTS.
MAX_SEGMENTS = 64
#: A run's bytes: the largest UDP payload over IPv4 (65,535 less the IP and UDP headers).
MAX_RUN_BYTES = 65_507
#: What the kernel answers when it cannot segment for this socket, device or size.
_REFUSALS = frozenset({errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP})


def runs(datagrams: Sequence[tuple[Datagram, Address]], start: int = 0) -> list[tuple[int, int]]:
    """Split `datagrams[start:]` into runs the kernel can segment: (first, end) index
    pairs, each run to one address, every datagram but the last of its run the size of
    the first, none longer, at most MAX_SEGMENTS and MAX_RUN_BYTES in all."""
    found = []
    i, count = start, len(datagrams)
    while i < count:
        first, addr = datagrams[i]
        size = len(first)
        end, total = i + 1, size
        while end < count and end - i < MAX_SEGMENTS:
            data, to = datagrams[end]
            length = len(data)
            if to != addr or length > size or total + length > MAX_RUN_BYTES:
                break
            total += length
            end += 1
            if length < size:
                break  # only the last may be short
        found.append((i, end))
        i = end
    return found


class DatagramSender:
    """Sends a flush's datagrams on one non-blocking UDP socket, segmented where it can."""

    def __init__(self, sock: socket.socket, stats: RxStats, *, segmentation: bool = True) -> None:
        self._sock = sock
        #: Datagrams the kernel refused (besides a full buffer) are counted here, and dropped:
        #: Rx sends them again as it would any lost packet.
        self._stats = stats
        self.segmentation = segmentation

    def send(self, datagrams: Sequence[tuple[Datagram, Address]], start: int = 0) -> int:
        """Send `datagrams[start:]` in order until the socket would block; return the index
        of the first one not sent (len(datagrams) when all went)."""
        if not self.segmentation:
            return self._one_by_one(datagrams, start, len(datagrams))
        for first, end in runs(datagrams, start):
            if end - first == 1:
                sent = self._one_by_one(datagrams, first, end)
            else:
                sent = self._segmented(datagrams, first, end)
            if sent < end:
                return sent
        return len(datagrams)

    def _segmented(
        self, datagrams: Sequence[tuple[Datagram, Address]], first: int, end: int
    ) -> int:
        size = len(datagrams[first][0])
        buffers = [data for data, _ in datagrams[first:end]]
        option = [(socket.SOL_UDP, UDP_SEGMENT, size.to_bytes(2, sys.byteorder))]
        try:
            self._sock.sendmsg(buffers, option, 0, datagrams[first][1])
        except BlockingIOError:
            return first
        except OSError as exc:
            if exc.errno in _REFUSALS:
                log.debug("UDP segmentation refused (%s): datagrams go one by one", exc)
                self.segmentation = False
            # Whatever the error, each datagram gets its own try (and its own error).
            return self._one_by_one(datagrams, first, end)
        return end

    def _one_by_one(
        self, datagrams: Sequence[tuple[Datagram, Address]], first: int, end: int
    ) -> int:
        sendto = self._sock.sendto
        for i in range(first, end):
            data, addr = datagrams[i]
            try:
                sendto(data, addr)
            except BlockingIOError:
                return i
            except OSError as exc:
                self._stats.send_failures += 1
                log.debug("sendto %s: %s", addr, exc)
        return end
