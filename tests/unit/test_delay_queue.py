"""The delay line's queue (afsfuse.testing.delay.Direction) over datagram socket pairs:
frames wait for their due time, leave in order, and a full queue drops and counts."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from afsfuse.testing import delay
from afsfuse.testing.delay import Direction


@pytest.fixture
def way() -> Iterator[tuple[socket.socket, Direction, socket.socket]]:
    """A sender, the direction it feeds, and a receiver of what the direction forwards."""
    send, src = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    dst, receive = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    src.setblocking(False)
    receive.setblocking(False)
    yield send, Direction(src.fileno(), dst.fileno()), receive
    for s in (send, src, dst, receive):
        s.close()


def _received(receive: socket.socket) -> list[bytes]:
    frames = []
    while True:
        try:
            frames.append(receive.recv(delay.MAX_FRAME))
        except BlockingIOError:
            return frames


def test_frames_wait_their_delay_then_leave_in_order(way) -> None:
    send, direction, receive = way
    for frame in (b"one", b"two", b"three"):
        send.send(frame)
    start = time.monotonic()
    direction.take(0.5)
    due = direction.release(start)
    assert due is not None and due >= start + 0.5
    assert _received(receive) == []
    direction.release(due)  # each frame is due on its own: at least the first leaves
    first = _received(receive)
    assert direction.release(start + 1) is None
    assert first[:1] == [b"one"]
    assert first + _received(receive) == [b"one", b"two", b"three"]
    assert direction.stats() == {"forwarded": 3, "dropped": 0, "refused": 0, "queued": 0}


def test_a_lowered_delay_never_overtakes_queued_frames(way) -> None:
    send, direction, receive = way
    send.send(b"slow")
    direction.take(0.5)
    send.send(b"fast")
    direction.take(0.0)
    assert direction.release(time.monotonic()) is not None
    assert _received(receive) == []
    direction.release(time.monotonic() + 1)
    assert _received(receive) == [b"slow", b"fast"]


def test_a_full_queue_drops_and_counts(way, monkeypatch: pytest.MonkeyPatch) -> None:
    send, direction, receive = way
    monkeypatch.setattr(delay, "QUEUE_BYTES", 250)
    for _ in range(4):
        send.send(b"x" * 100)
    direction.take(0.0)
    direction.release(time.monotonic() + 1)
    assert _received(receive) == [b"x" * 100] * 2
    assert direction.stats()["dropped"] == 2


def test_a_frame_the_device_refuses_is_counted(way) -> None:
    send, direction, receive = way
    send.send(b"lost")
    direction.take(0.0)
    receive.close()  # the far end is gone: the write fails
    direction.release(time.monotonic() + 1)
    assert direction.stats()["refused"] == 1 and direction.stats()["forwarded"] == 0
