"""Sending a flush's datagrams: which runs are segmented, what a peer receives, and the
fall-backs (a refusal, a full socket buffer, an error for one datagram)."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator

import pytest

from afsfuse.rx.sendbatch import MAX_RUN_BYTES, MAX_SEGMENTS, DatagramSender, runs
from afsfuse.rx.stats import RxStats

A = ("127.0.0.1", 7000)
B = ("127.0.0.1", 7001)


def test_runs_take_equal_sizes_to_one_address_and_end_at_a_short_one() -> None:
    flush = [(b"x" * 100, A)] * 3 + [(b"x" * 40, A), (b"x" * 100, A), (b"y" * 100, B)]
    assert runs(flush) == [(0, 4), (4, 5), (5, 6)]


def test_runs_end_at_a_longer_datagram_and_at_the_kernels_limits() -> None:
    assert runs([(b"x" * 10, A), (b"x" * 20, A)]) == [(0, 1), (1, 2)]
    many = [(b"x" * 10, A)] * (MAX_SEGMENTS + 1)
    assert runs(many) == [(0, MAX_SEGMENTS), (MAX_SEGMENTS, MAX_SEGMENTS + 1)]
    size = 1444
    per_run = MAX_RUN_BYTES // size
    big = [(b"x" * size, A)] * (per_run + 1)
    assert runs(big) == [(0, per_run), (per_run, per_run + 1)]
    assert runs(big, start=per_run) == [(per_run, per_run + 1)]
    assert runs([]) == []


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(5)
        sender.setblocking(False)
        yield sender, receiver
    finally:
        sender.close()
        receiver.close()


def test_a_segmented_run_arrives_as_the_datagrams_it_was_made_of(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    sender_sock, receiver = pair
    to = receiver.getsockname()
    flush = [(os.urandom(1400), to) for _ in range(20)] + [(os.urandom(333), to)]
    stats = RxStats()
    sender = DatagramSender(sender_sock, stats)
    assert sender.send(flush) == len(flush)
    assert sender.segmentation, "this kernel refused UDP segmentation on loopback"
    got = [receiver.recv(65536) for _ in flush]
    assert got == [data for data, _ in flush]
    assert stats.send_failures == 0


class _Socket:
    """A socket's send side whose answers the test chooses."""

    def __init__(self, sendmsg_error: OSError | None = None) -> None:
        self.sendmsg_error = sendmsg_error
        self.sendto_errors: dict[int, OSError] = {}
        self.wire: list[bytes] = []

    def sendmsg(self, buffers: list[bytes], ancillary: object, flags: int, addr: object) -> int:
        if self.sendmsg_error is not None:
            raise self.sendmsg_error
        self.wire.extend(buffers)
        return sum(map(len, buffers))

    def sendto(self, data: bytes, addr: object) -> int:
        error = self.sendto_errors.pop(len(self.wire), None)
        if error is not None:
            if isinstance(error, BlockingIOError):
                raise error
            self.wire.append(b"<lost>")
            raise error
        self.wire.append(data)
        return len(data)


def _flush(count: int) -> list[tuple[bytes, tuple[str, int]]]:
    return [(bytes([i]) * 100, A) for i in range(count)]


def test_a_refusal_sends_the_run_one_by_one_and_turns_segmentation_off() -> None:
    sock = _Socket(OSError(errno.EIO, "no checksum offload"))
    sender = DatagramSender(sock, RxStats())  # type: ignore[arg-type]
    flush = _flush(5)
    assert sender.send(flush) == 5
    assert sock.wire == [data for data, _ in flush]
    assert not sender.segmentation


def test_another_error_on_a_run_gives_each_datagram_its_own_try() -> None:
    sock = _Socket(OSError(errno.ECONNREFUSED, "an earlier ICMP error"))
    stats = RxStats()
    sender = DatagramSender(sock, stats)  # type: ignore[arg-type]
    flush = _flush(4)
    sock.sendto_errors[1] = OSError(errno.ENETUNREACH, "gone")
    assert sender.send(flush) == 4
    assert sock.wire == [flush[0][0], b"<lost>", flush[2][0], flush[3][0]]
    assert stats.send_failures == 1
    assert sender.segmentation


def test_a_full_socket_buffer_stops_at_the_first_datagram_not_sent() -> None:
    sock = _Socket(BlockingIOError())
    sender = DatagramSender(sock, RxStats())  # type: ignore[arg-type]
    flush = [(b"a" * 10, A), *_flush(3)]
    assert sender.send(flush) == 1  # the lone first datagram went; the run did not
    sock.sendmsg_error = None
    assert sender.send(flush, 1) == 4
    assert sock.wire == [data for data, _ in flush]

    plain = DatagramSender(_Socket(), RxStats(), segmentation=False)  # type: ignore[arg-type]
    plain._sock.sendto_errors[2] = BlockingIOError()  # type: ignore[attr-defined]
    assert plain.send(_flush(4)) == 2
