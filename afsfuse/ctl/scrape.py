"""The optional metrics listener: Prometheus scrapes `GET /metrics` over HTTP, on an address
or a unix socket the administrator chose (`--metrics-listen`).  Off unless configured.

Read-only and bounded: one request per connection, its head at most MAX_REQUEST bytes, the
connection dropped after TIMEOUT seconds, at most MAX_CONNECTIONS served at once (more are
closed unanswered).  Only GET and HEAD of /metrics are answered; anything else gets 404 or
405.  What it serves is ctl/metrics.py's text: counts, never a path or a token.  h11 reads
the requests: HTTP parsing is not written here.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NoReturn

import h11
import trio

from afsfuse.ctl.metrics import CONTENT_TYPE

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 8
TIMEOUT = 10.0
MAX_REQUEST = 8192
PATH = "/metrics"

#: Where to listen: (host, port), or a unix socket's path.
Where = tuple[str, int] | Path
Render = Callable[[], Awaitable[str]]


async def serve_metrics(
    where: Where,
    render: Render,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve scrapes at `where` until cancelled (a unix socket is removed then)."""
    listeners = await _listen(where)
    busy = 0

    async def serve(stream: trio.abc.Stream) -> None:
        nonlocal busy
        async with stream:
            if busy >= MAX_CONNECTIONS:
                return
            busy += 1
            try:
                with trio.move_on_after(TIMEOUT):
                    await _answer(stream, render)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the scraper went away
            except Exception:
                # A failed scrape must not take the mount down with it.
                log.exception("metrics scrape failed")
            finally:
                busy -= 1

    log.info("Prometheus metrics at %s", _describe(where))
    try:
        await trio.serve_listeners(serve, listeners, task_status=task_status)
    finally:
        if isinstance(where, Path):
            with contextlib.suppress(FileNotFoundError):
                where.unlink()
    raise AssertionError("serve_listeners returned")  # pragma: no cover


def _describe(where: Where) -> str:
    if isinstance(where, Path):
        return f"{PATH} on the unix socket {where}"
    return f"http://{where[0]}:{where[1]}{PATH}"


async def _listen(where: Where) -> list[trio.SocketListener]:
    if not isinstance(where, Path):
        host, port = where
        return await trio.open_tcp_listeners(port, host=host)
    try:
        if not stat.S_ISSOCK(where.lstat().st_mode):
            raise FileExistsError(errno.EEXIST, "exists and is not a socket", str(where))
        where.unlink()  # a daemon before this one left it (the path is ours: configured)
    except FileNotFoundError:
        pass
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(os.fspath(where))
        # Counts only, as a port on 127.0.0.1 would show every local user.
        os.chmod(where, 0o666)
        sock.listen(MAX_CONNECTIONS)
    except BaseException:
        sock.close()
        raise
    return [trio.SocketListener(sock)]


async def _answer(stream: trio.abc.Stream, render: Render) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
    try:
        event = conn.next_event()
        while event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(MAX_REQUEST)))
            event = conn.next_event()
    except h11.RemoteProtocolError as error:
        await _send(stream, conn, error.error_status_hint, b"bad request\n")
        return
    if not isinstance(event, h11.Request):
        return  # closed before asking anything
    target = event.target.split(b"?", 1)[0]
    if target != PATH.encode():
        await _send(stream, conn, 404, b"only /metrics is here\n")
    elif event.method not in (b"GET", b"HEAD"):
        await _send(stream, conn, 405, b"only GET and HEAD\n", [("Allow", "GET, HEAD")])
    else:
        body = (await render()).encode()
        await _send(stream, conn, 200, body, [("Content-Type", CONTENT_TYPE)], event.method)


async def _send(
    stream: trio.abc.Stream,
    conn: h11.Connection,
    status: int,
    body: bytes,
    headers: list[tuple[str, str]] | None = None,
    method: bytes = b"GET",
) -> None:
    head = [
        *(headers or [("Content-Type", "text/plain; charset=utf-8")]),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
    ]
    data = conn.send(h11.Response(status_code=status, headers=head)) or b""
    if method != b"HEAD":
        data += conn.send(h11.Data(data=body)) or b""
    data += conn.send(h11.EndOfMessage()) or b""
    await stream.send_all(data)
