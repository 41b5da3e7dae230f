"""The control socket server that runs inside the mount daemon.

Who asks is what the kernel says (SO_PEERCRED), never what the request says: a request acts
for its sender's uid, and only root may name another uid.  Each connection is a trio task
with bounded lines, idle time and handler time; whatever a client sends, it gets an error
reply at worst, and the daemon carries on.

Ops come from handler groups: objects whose methods are marked with @op("name").  A method
takes a Request and returns what goes into the reply's "result" (JSON-able); it refuses with
ControlError.  The daemon picks the groups it can back (tokens, sysname, stats...).
"""

from __future__ import annotations

import array
import contextlib
import errno
import json
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import trio

from afsfuse.ctl.protocol import MAX_LINE, registry_path
from afsfuse.keyring.store import Identity

log = logging.getLogger(__name__)

#: A client that sends nothing for this long is dropped.
IDLE_TIMEOUT = 60.0
#: A client that does not read its reply within this is dropped.
SEND_TIMEOUT = 10.0
#: An op that takes longer than this fails with ETIMEDOUT.
REQUEST_TIMEOUT = 60.0
#: Connections served at once, in all and per uid; more are told EAGAIN and closed.
#: Root is always let in, so a flood of users' connections cannot lock the admin out.
MAX_CONNECTIONS = 64
MAX_CONNECTIONS_PER_UID = 8

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_REQUIRED: Any = object()
_OP_ATTRIBUTE = "_afsfuse_control_op"

OpMethod = Callable[["Request"], Awaitable[Any]]
#: The PAG of a process, by pid (keyring/callers.py); ProcessLookupError once it has ended.
PagOf = Callable[[int], "int | None"]
#: An op handler as defined, before it is bound to its handler group.
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


@dataclass(frozen=True)
class WithFd:
    """A result sent with an open file descriptor (SCM_RIGHTS), which the server then
    closes: how a client gets data it may read but whose path it could not open."""

    result: Any
    fd: int


class ControlError(Exception):
    """A refusal to send back: code is an errno name ("EPERM"), message says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class PeerCred:
    """The connecting process as the kernel saw it at connect time."""

    pid: int
    uid: int
    gid: int


@dataclass(frozen=True)
class Request:
    """One decoded request: who sent it, whom it acts for, and its arguments."""

    op: str
    peer: PeerCred
    #: The uid the request acts for: the sender's, or one root named.
    uid: int
    args: dict[str, Any]
    #: The sender's PAG, when it is in one.
    pag: int | None = None
    #: For a request from another machine (rmtsys), that machine's address.
    host: str | None = None

    @property
    def identity(self) -> Identity:
        return Identity(self.uid, self.pag, self.host)

    @property
    def from_root(self) -> bool:
        return self.peer.uid == 0 and self.host is None

    def require_root(self, what: str) -> None:
        if not self.from_root:
            raise ControlError("EPERM", f"only root may {what}")

    def text(self, name: str, default: Any = _REQUIRED, limit: int = 1024) -> Any:
        """A string argument (or default when absent)."""
        value = self.args.get(name)
        if value is None:
            if default is _REQUIRED:
                raise ControlError("EINVAL", f"{self.op} needs {name!r}")
            return default
        if not isinstance(value, str) or len(value) > limit or "\0" in value:
            raise ControlError("EINVAL", f"{name!r} must be a string of at most {limit} characters")
        return value

    def texts(self, name: str, max_items: int, limit: int = 1024) -> list[str] | None:
        """A list of strings, or None when absent."""
        value = self.args.get(name)
        if value is None:
            return None
        if (
            not isinstance(value, list)
            or len(value) > max_items
            or not all(isinstance(v, str) and len(v) <= limit and "\0" not in v for v in value)
        ):
            raise ControlError("EINVAL", f"{name!r} must be a list of at most {max_items} strings")
        return value


def op(name: str) -> Callable[[F], F]:
    """Mark a handler-group method as the op `name`."""

    def mark(method: F) -> F:
        setattr(method, _OP_ATTRIBUTE, name)
        return method

    return mark


class Handlers:
    """The ops a daemon serves, gathered from handler groups."""

    def __init__(self, *groups: object) -> None:
        self._ops: dict[str, OpMethod] = {}
        for group in groups:
            self.add(group)

    def add(self, group: object) -> None:
        for attribute in dir(type(group)):
            name = getattr(getattr(type(group), attribute), _OP_ATTRIBUTE, None)
            if name is None:
                continue
            if name in self._ops:
                raise ValueError(f"two handlers for the control op {name!r}")
            self._ops[name] = getattr(group, attribute)

    @property
    def names(self) -> list[str]:
        return sorted(self._ops)

    async def dispatch(self, request: Request) -> Any:
        method = self._ops.get(request.op)
        if method is None:
            raise ControlError("ENOSYS", f"this daemon has no {request.op!r} operation")
        return await method(request)


async def serve_control(
    path: str | os.PathLike[str],
    handlers: Handlers,
    *,
    mountpoint: str | None = None,
    pag_of: PagOf | None = None,
    task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve the control socket at path until cancelled; then remove it.

    Run by root, the socket is open to every local user (0666: identity comes from the
    kernel), in a 0755 directory; run by anyone else, only its owner may connect (0600 in a
    0700 directory).  With mountpoint, a registry file beside the socket tells
    `afsfuse-ctl` which mount it serves.  pag_of finds a sender's PAG (without it, no
    sender is in one).
    """
    path = Path(path)
    shared = os.geteuid() == 0
    _prepare_directory(path.parent, 0o755 if shared else 0o700)
    await _remove_stale_socket(path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    registry = registry_path(path)
    identity = None
    try:
        await sock.bind(os.fspath(path))
        identity = path.stat().st_ino
        os.chmod(path, 0o666 if shared else 0o600)
        sock.listen(16)
        if mountpoint is not None:
            _write_registry(registry, mountpoint, path, 0o644 if shared else 0o600)
        log.info("control socket %s ready (ops: %s)", path, ", ".join(handlers.names))
        task_status.started(path)
        admission = Admission(MAX_CONNECTIONS, MAX_CONNECTIONS_PER_UID)

        async def serve(stream: trio.SocketStream) -> None:
            await _serve_connection(stream, handlers, admission, pag_of)

        await trio.serve_listeners(serve, [trio.SocketListener(sock)])
    finally:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_ino == identity:
                path.unlink()
                if mountpoint is not None:
                    registry.unlink()
    raise AssertionError("serve_listeners returned")  # pragma: no cover


def _prepare_directory(directory: Path, mode: int) -> None:
    """Make directory if needed; refuse one that others could swap our socket in."""
    try:
        directory.mkdir(mode=mode, parents=True)
        os.chmod(directory, mode)  # mkdir's mode is filtered by the umask
    except FileExistsError:
        pass
    info = directory.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise OSError(errno.ENOTDIR, "not a directory", str(directory))
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise PermissionError(
            errno.EPERM, "must be ours and writable by no one else", str(directory)
        )


async def _remove_stale_socket(path: Path) -> None:
    """Unlink a socket a dead daemon left behind; refuse if a live one still answers."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a socket", str(path))
    probe = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await probe.connect(os.fspath(path))
    except ConnectionRefusedError:
        path.unlink()
        return
    finally:
        probe.close()
    raise FileExistsError(errno.EADDRINUSE, "another daemon serves this socket", str(path))


def _write_registry(registry: Path, mountpoint: str, path: Path, mode: int) -> None:
    entry = {"mountpoint": os.path.realpath(mountpoint), "socket": str(path), "pid": os.getpid()}
    temporary = registry.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as file:
        json.dump(entry, file)
    os.chmod(temporary, mode)
    os.replace(temporary, registry)


class Admission:
    """Caps open connections in all and per uid, so that one user holding idle connections
    cannot lock the others out; root is always let in."""

    def __init__(self, total: int, per_uid: int) -> None:
        self._total = total
        self._per_uid = per_uid
        self._open: dict[int, int] = {}

    def enter(self, uid: int) -> bool:
        held = self._open.get(uid, 0)
        if uid != 0 and (held >= self._per_uid or sum(self._open.values()) >= self._total):
            return False
        self._open[uid] = held + 1
        return True

    def leave(self, uid: int) -> None:
        self._open[uid] -= 1
        if not self._open[uid]:
            del self._open[uid]


async def _serve_connection(
    stream: trio.SocketStream, handlers: Handlers, admission: Admission, pag_of: PagOf | None
) -> None:
    async with stream:
        try:
            raw = stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
            peer = PeerCred(*_PEERCRED.unpack(raw))
            if not admission.enter(peer.uid):
                await _send(stream, _error("EAGAIN", "too many control connections, try again"))
                return
            try:
                await _serve_lines(stream, handlers, peer, pag_of)
            finally:
                admission.leave(peer.uid)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away


async def _serve_lines(
    stream: trio.SocketStream, handlers: Handlers, peer: PeerCred, pag_of: PagOf | None
) -> None:
    buffer = bytearray()
    while True:
        end = buffer.find(b"\n", 0, MAX_LINE + 1)
        if end < 0:
            if len(buffer) > MAX_LINE:
                await _send(stream, _error("E2BIG", f"request longer than {MAX_LINE} bytes"))
                return
            data = b""
            with trio.move_on_after(IDLE_TIMEOUT):
                data = await stream.receive_some(MAX_LINE)
            if not data:
                return
            buffer += data
            continue
        line = bytes(buffer[:end])
        del buffer[: end + 1]
        if not line.strip():
            continue
        reply, fd = await _answer(line, handlers, peer, pag_of)
        try:
            if not await _send(stream, reply, fd):
                return
        finally:
            if fd is not None:
                os.close(fd)


async def _send(stream: trio.SocketStream, reply: bytes, fd: int | None = None) -> bool:
    with trio.move_on_after(SEND_TIMEOUT):
        if fd is not None:
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
            sent = await stream.socket.sendmsg([reply], rights)
            reply = reply[sent:]
        await stream.send_all(reply)
        return True
    return False


async def _answer(
    line: bytes, handlers: Handlers, peer: PeerCred, pag_of: PagOf | None
) -> tuple[bytes, int | None]:
    """The encoded reply to one request line (a result, or an error saying what was wrong),
    and the descriptor that goes with it, if any."""
    op_name = "?"
    try:
        request = _decode(line, peer, pag_of)
        op_name = request.op
        with trio.fail_after(REQUEST_TIMEOUT):
            result = await handlers.dispatch(request)
        fd = None
        if isinstance(result, WithFd):
            result, fd = result.result, result.fd
        reply = json.dumps({"ok": True, "result": result}, separators=(",", ":")) + "\n"
        log.debug("control: %s from uid %d pid %d: ok", op_name, peer.uid, peer.pid)
        return reply.encode(), fd
    except ControlError as error:
        log.debug("control: %s from uid %d: %s", op_name, peer.uid, error)
        return _error(error.code, error.message), None
    except trio.TooSlowError:
        return _error("ETIMEDOUT", f"{op_name} took longer than {REQUEST_TIMEOUT:.0f} s"), None
    except Exception:
        log.exception("control: %s from uid %d pid %d failed", op_name, peer.uid, peer.pid)
        return _error("EIO", f"internal error in {op_name}; see the daemon's log"), None


def _decode(line: bytes, peer: PeerCred, pag_of: PagOf | None) -> Request:
    try:
        message = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ControlError("EPROTO", f"not a JSON line: {error}") from None
    if not isinstance(message, dict):
        raise ControlError("EPROTO", "a request is a JSON object")
    name = message.pop("op", None)
    if not isinstance(name, str) or not name:
        raise ControlError("EPROTO", "a request needs an 'op' string")
    uid = message.pop("uid", None)
    if uid is None:
        uid = peer.uid
    elif isinstance(uid, bool) or not isinstance(uid, int) or not 0 <= uid < 2**32 - 1:
        raise ControlError("EINVAL", "'uid' must be a uid number")
    elif uid != peer.uid and peer.uid != 0:
        raise ControlError("EPERM", "only root may act for another uid")
    pag = None
    if pag_of is not None and uid == peer.uid:  # root acting for a uid acts outside PAGs
        try:
            pag = pag_of(peer.pid)
        except ProcessLookupError:
            raise ControlError("ESRCH", "the sender has ended") from None
    return Request(op=name[:64], peer=peer, uid=uid, args=message, pag=pag)


def _error(code: str, message: str) -> bytes:
    reply = {"ok": False, "error": code, "message": message}
    return (json.dumps(reply, separators=(",", ":")) + "\n").encode()
