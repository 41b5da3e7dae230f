"""The client end of the control socket: find a mount's socket and send it requests.

Blocking on purpose: `afsfuse-ctl` is a short-lived command with nothing else to do.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from afsfuse.ctl.protocol import (
    DEFAULT_MOUNTPOINT,
    MAX_LINE,
    control_socket_path,
    read_registry,
    search_dirs,
)

#: How long a request may take, Kerberos-free (the daemon bounds its own ops at 60 s).
TIMEOUT = 70.0
#: How long to try a registered socket when looking for live mounts.
PROBE_TIMEOUT = 2.0


class ControlFailed(Exception):
    """The daemon refused or failed a request; code is an errno name such as "EPERM"."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class MountNotFound(Exception):
    """No afsfuse mount (or none that this user may talk to) matches what was asked for."""


def find_control_socket(mountpoint: str | None = None) -> Path:
    """The control socket of mountpoint; without one, of the only mount running, else /afs."""
    if mountpoint is not None:
        return _socket_of(mountpoint)
    live: dict[Path, str] = {}
    for directory in search_dirs():
        for entry in read_registry(directory):
            if entry.socket not in live and _answers(entry.socket):
                live[entry.socket] = entry.mountpoint
    if len(live) == 1:
        return next(iter(live))
    default = os.path.realpath(DEFAULT_MOUNTPOINT)
    for path, mounted in live.items():
        if mounted == default:
            return path
    if live:
        listing = ", ".join(sorted(live.values()))
        raise MountNotFound(f"several afsfuse mounts ({listing}): pick one with --mount")
    try:
        return _socket_of(DEFAULT_MOUNTPOINT)
    except MountNotFound:
        raise MountNotFound("no afsfuse mount found (is the afsfuse daemon running?)") from None


def _socket_of(mountpoint: str) -> Path:
    candidates = [control_socket_path(mountpoint, directory) for directory in search_dirs()]
    for path in candidates:
        if path.exists():
            return path
    raise MountNotFound(f"no afsfuse mount at {mountpoint} (no control socket in {_dirs()})")


def _dirs() -> str:
    return " or ".join(str(directory) for directory in search_dirs())


def _answers(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(PROBE_TIMEOUT)
            probe.connect(os.fspath(path))
    except OSError:
        return False
    return True


class ControlClient:
    """One connection to a control socket; requests go one at a time."""

    def __init__(self, path: str | os.PathLike[str], timeout: float = TIMEOUT) -> None:
        self.path = Path(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(os.fspath(self.path))
        except OSError as error:
            self._sock.close()
            raise MountNotFound(
                f"cannot reach the daemon at {self.path}: {error.strerror}"
            ) from None
        self._reader = self._sock.makefile("rb")

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._reader.close()
        self._sock.close()

    def call(self, op: str, uid: int | None = None, **args: Any) -> Any:
        """Send one request; return its result or raise ControlFailed."""
        self._request(op, uid, args)
        return _result(self._reader.readline(MAX_LINE + 1))

    def call_with_fd(self, op: str, **args: Any) -> tuple[Any, int]:
        """A request whose reply comes with a file descriptor (the caller closes it).  The
        first request on this connection: the reply is read past the line reader."""
        self._request(op, None, args)
        line, fds = b"", []
        while not line.endswith(b"\n") and len(line) <= MAX_LINE:
            data, received, _flags, _addr = socket.recv_fds(self._sock, MAX_LINE + 1, 1)
            fds += received
            if not data:
                break
            line += data
        try:
            result = _result(line)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        if len(fds) != 1:
            raise ControlFailed("EPROTO", "the daemon's reply came without its file")
        return result, fds[0]

    def _request(self, op: str, uid: int | None, args: dict[str, Any]) -> None:
        request = {"op": op, **args}
        if uid is not None:
            request["uid"] = uid
        self._sock.sendall(json.dumps(request, separators=(",", ":")).encode() + b"\n")


def _result(line: bytes) -> Any:
    if not line.endswith(b"\n"):
        raise ControlFailed("EPROTO", "the daemon closed the connection without replying")
    reply = json.loads(line)
    if not reply.get("ok"):
        raise ControlFailed(str(reply.get("error")), str(reply.get("message")))
    return reply.get("result")
