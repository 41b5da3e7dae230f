"""A delay line between the host and one server namespace of the test cell.

The kernel here has no sch_netem, so distance is made in user space.  A server with a line
has no veth pair: it has two TAP devices, one in the host namespace (a port of the cell's
bridge) and one in its own namespace (holding the server's address), and this process copies
every Ethernet frame from one to the other after holding it for the one-way delay.  Both
sides see an ordinary link: ARP, the real addresses, callbacks from the server and traffic
between servers all cross it unchanged, so a FUSE mount needs no relay.

    python -m afsfuse.testing.delay HOST_TAP NETNS NS_TAP [--delay SECONDS]

creates both devices (they vanish when it exits), prints `ready`, then reads commands on
stdin, one a line: a number sets the one-way delay in seconds for frames read from then on,
`stats` prints the counters as one JSON line.  It exits at end of input, so a harness that
dies takes its lines with it.  Cell(delays=...) starts and configures it through DelayLine.

Each direction is a FIFO of (due time, frame), released in order once due, bounded at
QUEUE_BYTES: a frame that would overflow it is dropped and counted, as a full router queue
would.  One thread waits in select() on both devices, stdin and the earliest due time.

Measured here (2 cores, shared with other work: load average 8), 100 ICMP echoes each: a
veth pair without a line answers in 0.08 ms on average; a line at 10 ms of round trip in
10.4 ms at least, 10.8 ms on average (deviation 0.9 ms, worst 15.5 ms); at 1 ms in 1.3 ms at
least, 2.1 ms on average (deviation 1.4 ms, worst 11 ms).  What comes above the setting is
the scheduling of this process and of the sender on a busy machine.  A frame costs the line
about 7 us of CPU in a flood (frames read in batches) and up to 20 us when they come one at
a time: 7 s of CPU for the 355 000 frames of a quick WAN bench.  Frames the kernel drops
before the line, when a TAP queue (1000 frames) is full, show in `ip -s link`, not here.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import json
import os
import select
import struct
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000
#: Frames up to this size are copied whole (jumbo frames included).
MAX_FRAME = 65536
#: Per direction: about 5 ms of a 10 Gb/s link, far above any Rx window in the cell.
QUEUE_BYTES = 8 * 1024 * 1024
#: Frames read from one device per wake-up, so a flood in one direction never holds the
#: other direction's due frames back for long.
READ_BATCH = 64
#: Seconds the harness waits for the line to answer (start, stats) before giving up on it.
ANSWER_TIMEOUT = 10.0


class DelayLineError(RuntimeError):
    """The delay line did not start or stopped answering."""


class DelayLine:
    """The harness's handle on one line: starts the process, changes its delay, stops it.

    `rtt` is the round trip the line adds, half of it each way.  The process runs in a
    session of its own so a Ctrl-C meant for the harness leaves the link up while the cell
    shuts down through it.
    """

    def __init__(self, host_tap: str, netns: str, ns_tap: str, rtt: float) -> None:
        self.rtt = rtt
        self.process = subprocess.Popen(
            [sys.executable, "-m", __name__, host_tap, netns, ns_tap, "--delay", str(rtt / 2)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            if self._answer() != "ready":
                raise DelayLineError(f"delay line {host_tap} did not start")
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    def set_rtt(self, rtt: float) -> None:
        """Add `rtt` seconds of round trip to frames from now on (queued ones keep theirs)."""
        if rtt < 0:
            raise ValueError("a round trip cannot be negative")
        self._send(f"{rtt / 2!r}")
        self.rtt = rtt

    def stats(self) -> dict[str, Any]:
        """Frames forwarded, dropped (queue full), refused (device down) and queued, in each
        direction (to_server, to_host)."""
        self._send("stats")
        report: dict[str, Any] = json.loads(self._answer())
        return report

    def stop(self) -> None:
        """End of input ends the process (its devices go with it); killed if it lingers."""
        with contextlib.suppress(OSError):
            assert self.process.stdin is not None
            self.process.stdin.close()
        try:
            self.process.wait(timeout=ANSWER_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def _send(self, line: str) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()
        except OSError as exc:
            raise DelayLineError(f"delay line {self.pid} is gone: {exc}") from exc

    def _answer(self) -> str:
        stdout = self.process.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], ANSWER_TIMEOUT)
        line = stdout.readline() if ready else ""
        if not line:
            raise DelayLineError(f"delay line {self.pid} did not answer")
        return line.strip()


def open_tap(name: str) -> int:
    """A new TAP device `name` in the caller's network namespace; it lives as long as the fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def open_tap_in(netns: str, name: str) -> int:
    """A TAP device created inside the named network namespace (`ip netns add` made it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns}")
        try:
            return open_tap(name)
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back home")
    finally:
        os.close(home)
        os.close(target)


@dataclass
class Direction:
    """Frames read from `src`, held, then written to `dst` in order."""

    src: int
    dst: int
    queue: deque[tuple[float, bytes]] = field(default_factory=deque)
    queued_bytes: int = 0
    forwarded: int = 0
    dropped: int = 0  # the queue was full
    refused: int = 0  # the device would not take it (not up yet)

    def take(self, delay: float) -> None:
        """Read what is waiting (up to a batch) and queue it, dropping what does not fit."""
        for _ in range(READ_BATCH):
            try:
                frame = os.read(self.src, MAX_FRAME)
            except BlockingIOError:
                return
            if self.queued_bytes + len(frame) > QUEUE_BYTES:
                self.dropped += 1
                continue
            due = time.monotonic() + delay
            if self.queue and self.queue[-1][0] > due:  # the delay was just lowered
                due = self.queue[-1][0]
            self.queue.append((due, frame))
            self.queued_bytes += len(frame)

    def release(self, now: float) -> float | None:
        """Write every frame due by `now`; the due time of the next one, if any."""
        while self.queue:
            due, frame = self.queue[0]
            if due > now:
                return due
            self.queue.popleft()
            self.queued_bytes -= len(frame)
            try:
                os.write(self.dst, frame)
                self.forwarded += 1
            except OSError:
                self.refused += 1
        return None

    def stats(self) -> dict[str, int]:
        return {
            "forwarded": self.forwarded,
            "dropped": self.dropped,
            "refused": self.refused,
            "queued": len(self.queue),
        }


def serve(host_fd: int, ns_fd: int, delay: float) -> None:
    """Forward both ways until stdin ends; commands on stdin change the delay."""
    inward = Direction(host_fd, ns_fd)
    outward = Direction(ns_fd, host_fd)
    control = sys.stdin.fileno()
    os.set_blocking(control, False)
    pending = b""
    while True:
        now = time.monotonic()
        dues = [d for d in (inward.release(now), outward.release(now)) if d is not None]
        timeout = max(0.0, min(dues) - time.monotonic()) if dues else None
        ready, _, _ = select.select([host_fd, ns_fd, control], [], [], timeout)
        if host_fd in ready:
            inward.take(delay)
        if ns_fd in ready:
            outward.take(delay)
        if control in ready:
            chunk = os.read(control, 4096)
            if not chunk:
                return
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip() == b"stats":
                    report = {"to_server": inward.stats(), "to_host": outward.stats()}
                    print(json.dumps(report), flush=True)
                elif line.strip():
                    delay = float(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m afsfuse.testing.delay", description=__doc__)
    parser.add_argument("host_tap", help="name of the TAP device made in this namespace")
    parser.add_argument("netns", help="the server's network namespace")
    parser.add_argument("ns_tap", help="name of the TAP device made in that namespace")
    parser.add_argument("--delay", type=float, default=0.0, help="one-way delay in seconds")
    args = parser.parse_args(argv)
    host_fd = open_tap(args.host_tap)
    ns_fd = open_tap_in(args.netns, args.ns_tap)
    print("ready", flush=True)
    serve(host_fd, ns_fd, args.delay)
    return 0


if __name__ == "__main__":
    sys.exit(main())
