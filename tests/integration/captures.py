"""tshark on one of the cell's links: capture what passes while a test runs, then read
fields of the packets back (the tests of our Rx on the wire share it)."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import trio


def tshark_read(capture: Path, display_filter: str, *fields: str) -> list[list[str]]:
    """Rows of the named fields for each packet of the capture that passes the filter."""
    argv = ["tshark", "-r", str(capture), "-Y", display_filter, "-T", "fields"]
    for field in fields:
        argv += ["-e", field]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True).stdout
    return [line.split("\t") for line in out.splitlines()]


class Capture:
    """tshark writing every UDP datagram on one interface to a file, until stopped."""

    def __init__(self, interface: str, path: Path) -> None:
        self.path = path
        self._proc = subprocess.Popen(
            ["tshark", "-i", interface, "-w", str(path), "-f", "udp", "-q"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    async def started(self) -> None:
        # tshark writes the file's header once the capture runs.
        with trio.fail_after(30):
            while not (self.path.exists() and self.path.stat().st_size > 0):
                if self._proc.poll() is not None:
                    raise RuntimeError(f"tshark exited: {self._proc.stderr.read()}")
                await trio.sleep(0.05)
        await trio.sleep(0.5)

    def stop(self) -> None:
        """SIGINT to tshark itself, then wait until it has flushed the file and exited."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc.stderr.close()
