"""In-memory Rx calls for unit tests: the ClientConnection/CallHandle API of
afsfuse.rx.driver, with a client call and a server call joined by two byte pipes and a
handler run per call."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio

from afsfuse.rx.errors import RX_EOF, RX_USER_ABORT, RxAbort


class _Pipe:
    """One direction of a call: bytes, an end mark, or an abort code."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.closed = False
        self.abort_code: int | None = None
        self._changed = trio.Event()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def write(self, data: bytes) -> None:
        self.buf += data
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def fail(self, code: int) -> None:
        if self.abort_code is None:
            self.abort_code = code
        self._wake()

    async def wait_for(self, ready: Callable[[], bool]) -> None:
        while True:
            if self.abort_code is not None:
                raise RxAbort(self.abort_code)
            if ready():
                return
            await self._changed.wait()


class FakeCall:
    def __init__(self, inbound: _Pipe, outbound: _Pipe) -> None:
        self.inbound = inbound
        self.outbound = outbound

    async def send(self, data: bytes | memoryview) -> None:
        if self.outbound.abort_code is not None:
            raise RxAbort(self.outbound.abort_code)
        if self.outbound.closed:
            raise RuntimeError("send after close_send")
        self.outbound.write(bytes(data))
        await trio.lowlevel.checkpoint()

    async def close_send(self) -> None:
        self.outbound.close()
        await trio.lowlevel.checkpoint()

    async def recv_into(self, buf: memoryview) -> int:
        pipe = self.inbound
        await pipe.wait_for(lambda: bool(pipe.buf) or pipe.closed or not len(buf))
        n = min(len(buf), len(pipe.buf))
        buf[:n] = pipe.buf[:n]
        del pipe.buf[:n]
        return n

    async def recv_exactly(self, n: int) -> bytes:
        pipe = self.inbound
        await pipe.wait_for(lambda: len(pipe.buf) >= n or pipe.closed)
        if len(pipe.buf) < n:
            raise RxAbort(RX_EOF)
        data = bytes(pipe.buf[:n])
        del pipe.buf[:n]
        return data

    async def recv_rest(self) -> bytes:
        pipe = self.inbound
        await pipe.wait_for(lambda: pipe.closed)
        data = bytes(pipe.buf)
        pipe.buf.clear()
        return data


class FakeServerCall(FakeCall):
    peer = ("127.0.0.1", 7001)
    security = None

    async def abort(self, code: int) -> None:
        self.outbound.fail(code)
        await trio.lowlevel.checkpoint()


class FakeConnection:
    """A client connection whose every call is served by `handler`, run in `nursery` as the
    real endpoint runs its handlers (so a handler bug fails the test loudly)."""

    def __init__(
        self, nursery: trio.Nursery, handler: Callable[[FakeServerCall], Awaitable[None]]
    ) -> None:
        self.nursery = nursery
        self.handler = handler

    @asynccontextmanager
    async def new_call(self) -> AsyncIterator[FakeCall]:
        to_server, to_client = _Pipe(), _Pipe()
        self.nursery.start_soon(self._serve, FakeServerCall(to_server, to_client))
        try:
            yield FakeCall(to_client, to_server)
        except BaseException as exc:
            to_server.fail(exc.code if isinstance(exc, RxAbort) else RX_USER_ABORT)
            raise

    async def _serve(self, call: FakeServerCall) -> None:
        # As the real endpoint does: an RxAbort from the handler becomes the call's abort.
        try:
            await self.handler(call)
        except RxAbort as e:
            call.outbound.fail(e.code)
        else:
            call.outbound.close()

    async def rpc(self, request: bytes) -> bytes:
        async with self.new_call() as call:
            await call.send(request)
            await call.close_send()
            return await call.recv_rest()
