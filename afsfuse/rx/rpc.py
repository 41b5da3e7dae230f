"""RPC declarations: one `Rpc` per procedure; client stubs and server dispatch both come from it.

A declaration lists its parameters in rxgen order, each IN, OUT or INOUT:

    Rpc("Pioctl", 2,
        IN(cred=clientcred, path=xdr.string(4096), cmd=xdr.int32, follow=xdr.int32,
           InData=rmtbulk),
        INOUT(OutData=rmtbulk),
        OUT(errornumber=xdr.int32))

The request is the opcode then the IN and INOUT arguments; the reply is the INOUT and OUT
arguments (rxgen marshals INOUT both ways).  Split calls stream raw bytes between the two:
`FetchSplit` (reply = length, bytes, OUT args) and `StoreSplit` (request = IN args, bytes).

Client: `await VL.GetEntryByNameU(conn, "root.cell")` returns the OUT value (None, the single
value, or a `Result` namedtuple).  Split calls also offer `.stream(conn, ...)`.

Server: `make_dispatcher(interface, impl)` gives the handler for `Endpoint.serve`; it calls
`await impl.<RpcName>(call, **args)` (split calls also get `stream=`), which returns the OUT
value in the same shape the client stub returns.

Just over 500 lines: the declaration format, the client stubs and the server dispatch are
one mechanism read from one declaration, kept together so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from struct import Struct
from typing import Any, Protocol

from . import xdr
from .errors import (
    RX_EOF,
    RXGEN_CC_MARSHAL,
    RXGEN_CC_UNMARSHAL,
    RXGEN_OPCODE,
    RXGEN_SS_MARSHAL,
    RXGEN_SS_UNMARSHAL,
    RxAbort,
    register_error_names,
)


class CallLike(Protocol):
    """The part of an Rx call (client or server side) that stubs use."""

    async def send(self, data: bytes | bytearray | memoryview) -> None: ...
    async def close_send(self) -> None: ...
    async def recv_exactly(self, n: int) -> bytes: ...
    async def recv_into(self, buf: memoryview) -> int: ...
    async def recv_rest(self) -> bytes: ...


class ConnectionLike(Protocol):
    """The part of an Rx connection that client stubs use."""

    def new_call(self) -> AbstractAsyncContextManager[CallLike]: ...
    async def rpc(self, request: bytes) -> bytes: ...


IN_DIR, OUT_DIR, INOUT_DIR = "IN", "OUT", "INOUT"


@dataclass(frozen=True)
class Param:
    name: str
    type: xdr.Codec
    direction: str


def _params(direction: str, fields: dict[str, xdr.XdrType]) -> tuple[Param, ...]:
    return tuple(Param(name, xdr.codec(t), direction) for name, t in fields.items())


def IN(**fields: xdr.XdrType) -> tuple[Param, ...]:
    """Arguments the client sends."""
    return _params(IN_DIR, fields)


def OUT(**fields: xdr.XdrType) -> tuple[Param, ...]:
    """Results the server sends back."""
    return _params(OUT_DIR, fields)


def INOUT(**fields: xdr.XdrType) -> tuple[Param, ...]:
    """Arguments marshalled in both the request and the reply."""
    return _params(INOUT_DIR, fields)


@dataclass(frozen=True)
class FetchSplit:
    """The reply starts with a length (`length_type` on the wire), then that many raw bytes,
    then the OUT args.  The length may not exceed the IN argument named `requested`."""

    length_type: xdr.Codec
    requested: str


@dataclass(frozen=True)
class StoreSplit:
    """The request's IN args are followed by raw bytes, as many as the IN argument `length`."""

    length: str


_OPCODE = Struct(">I")
# Names the stubs and the dispatcher use for themselves.
_RESERVED = frozenset({"opcode", "conn", "call", "data", "stream"})
_SKIP_CHUNK = 1 << 16


@contextmanager
def _eof_means(code: int, what: str) -> Iterator[None]:
    """A stream that ends early is a message that does not parse, for rxgen and for us."""
    try:
        yield
    except RxAbort as e:
        if e.code != RX_EOF:
            raise
        raise RxAbort(code, f"{what} ended early") from e


class _RawReader:
    """A run of `length` raw bytes inside a call, read in caller-sized pieces."""

    def __init__(self, call: CallLike, length: int, short_code: int, what: str) -> None:
        self._call = call
        self._short_code = short_code
        self._what = what
        self.length = length
        self.remaining = length

    def _short(self) -> RxAbort:
        got = self.length - self.remaining
        return RxAbort(self._short_code, f"{self._what}: data ended after {got} of {self.length}")

    async def recv_into(self, buf: memoryview | bytearray) -> int:
        """Fill up to len(buf) bytes; 0 once the data is all read."""
        if not self.remaining:
            return 0
        view = memoryview(buf)
        if len(view) > self.remaining:
            view = view[: self.remaining]
        with _eof_means(self._short_code, self._what):
            n = await self._call.recv_into(view)
        if n <= 0:
            raise self._short()
        self.remaining -= n
        return n

    async def read(self, n: int) -> bytes:
        """Exactly min(n, remaining) bytes."""
        n = min(n, self.remaining)
        with _eof_means(self._short_code, self._what):
            data = await self._call.recv_exactly(n)
        self.remaining -= n
        return data

    async def read_all(self) -> bytes:
        return await self.read(self.remaining)

    async def _skip(self) -> None:
        while self.remaining:
            await self.read(_SKIP_CHUNK)


class FetchStream(_RawReader):
    """Client side of a split fetch.  `length` is what the server announced; `result` holds
    the OUT args once the stream is finished (at the end of its `async with`)."""

    def __init__(self, rpc: Rpc, call: CallLike) -> None:
        super().__init__(call, 0, RXGEN_CC_UNMARSHAL, f"{rpc.qualified_name} reply")
        self._rpc = rpc
        self._done = False
        self.result: Any = None

    async def _start(self, split: FetchSplit, requested: int) -> None:
        layout = split.length_type.layout
        with _eof_means(RXGEN_CC_UNMARSHAL, self._what):
            head = await self._call.recv_exactly(layout.size)
        (length,) = layout.unpack(head)
        if not 0 <= length <= requested:
            raise RxAbort(
                RXGEN_CC_UNMARSHAL, f"{self._what}: length {length} for a request of {requested}"
            )
        self.length = self.remaining = length

    async def finish(self) -> Any:
        """Discard unread data, then read and return the OUT args (idempotent)."""
        if not self._done:
            await self._skip()
            with _eof_means(RXGEN_CC_UNMARSHAL, self._what):
                rest = await self._call.recv_rest()
            self.result = self._rpc.decode_reply(rest)
            self._done = True
        return self.result


class StoreStream:
    """Client side of a split store: send exactly `length` bytes; `result` holds the OUT args
    once the stream is finished."""

    def __init__(self, rpc: Rpc, call: CallLike, length: int) -> None:
        self._rpc = rpc
        self._call = call
        self._done = False
        self.length = length
        self.remaining = length
        self.result: Any = None

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        n = memoryview(data).nbytes
        if n > self.remaining:
            raise RxAbort(
                RXGEN_CC_MARSHAL,
                f"{self._rpc.qualified_name}: {n} bytes offered, {self.remaining} left to send",
            )
        await self._call.send(data)
        self.remaining -= n

    async def finish(self) -> Any:
        """End the data and return the OUT args (idempotent)."""
        if not self._done:
            if self.remaining:
                sent = self.length - self.remaining
                raise RxAbort(
                    RXGEN_CC_MARSHAL,
                    f"{self._rpc.qualified_name}: {sent} of {self.length} bytes sent",
                )
            await self._call.close_send()
            with _eof_means(RXGEN_CC_UNMARSHAL, f"{self._rpc.qualified_name} reply"):
                reply = await self._call.recv_rest()
            self.result = self._rpc.decode_reply(reply)
            self._done = True
        return self.result


class FetchSender:
    """Server side of a split fetch: `start(length)` announces, `send` streams the bytes."""

    def __init__(self, call: CallLike, split: FetchSplit, what: str) -> None:
        self._call = call
        self._layout = split.length_type.layout
        self._what = what
        self.started = False
        self.remaining = 0

    async def start(self, length: int) -> None:
        if self.started:
            raise RxAbort(RXGEN_SS_MARSHAL, f"{self._what}: length announced twice")
        try:
            head = self._layout.pack(length)
        except Exception as e:
            raise RxAbort(RXGEN_SS_MARSHAL, f"{self._what}: bad length {length!r}") from e
        self.started = True
        self.remaining = length
        await self._call.send(head)

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        n = memoryview(data).nbytes
        if not self.started or n > self.remaining:
            raise RxAbort(RXGEN_SS_MARSHAL, f"{self._what}: data beyond the announced length")
        await self._call.send(data)
        self.remaining -= n

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Announce len(data) and send it."""
        await self.start(memoryview(data).nbytes)
        await self.send(data)


class StoreReceiver(_RawReader):
    """Server side of a split store: the `length` raw bytes that follow the IN args."""

    def __init__(self, call: CallLike, length: int, what: str) -> None:
        super().__init__(call, length, RXGEN_SS_UNMARSHAL, what)


class Rpc:
    """One remote procedure: the single source of its client stub and its server dispatch."""

    def __init__(
        self,
        name: str,
        opcode: int,
        *params: Iterable[Param],
        split: FetchSplit | StoreSplit | None = None,
    ) -> None:
        self.name = name
        self.qualified_name = name
        self.opcode = opcode
        self.split = split
        self.params = tuple(p for group in params for p in group)
        sent = [(p.name, p.type) for p in self.params if p.direction != OUT_DIR]
        returned = [(p.name, p.type) for p in self.params if p.direction != IN_DIR]
        clashes = _RESERVED.intersection(p.name for p in self.params)
        if clashes:
            raise ValueError(f"{name}: parameter names {sorted(clashes)} are reserved")
        #: The arguments as the server receives them (IN and INOUT).
        self.Args = xdr.struct_type(f"{name}Args", sent, defaults=False)
        #: The reply (INOUT and OUT); servers may build it, clients get it back.
        self.Result = xdr.struct_type(f"{name}Result", returned)
        self._request = xdr.codec(
            xdr.struct_type(f"{name}Request", [("opcode", xdr.uint32), *sent], defaults=False)
        )
        self._args = xdr.codec(self.Args)
        self._reply = xdr.codec(self.Result)
        self._n_out = len(returned)
        if isinstance(split, StoreSplit) and self._args.fixed_size is None:
            raise ValueError(f"{name}: a store split needs IN args of fixed size")
        if split is not None:
            arg = split.requested if isinstance(split, FetchSplit) else split.length
            if arg not in self.Args._fields:
                raise ValueError(f"{name}: split refers to unknown IN argument {arg}")

    def __repr__(self) -> str:
        return f"<Rpc {self.qualified_name} ({self.opcode})>"

    # Marshalling, shared by both sides.

    def encode_request(self, *args: Any, **kwargs: Any) -> bytes:
        """The request bytes (opcode and IN/INOUT args) for a call with these arguments."""
        return self._encode_bound(self.Args(*args, **kwargs))

    def _encode_bound(self, bound: tuple[Any, ...]) -> bytes:
        try:
            return xdr.encode(self._request, (self.opcode, *bound))
        except xdr.XdrError as e:
            raise RxAbort(RXGEN_CC_MARSHAL, f"{self.qualified_name} request: {e}") from e

    def decode_reply(self, data: bytes | memoryview) -> Any:
        """The OUT value of a reply: None, the single value, or a Result."""
        try:
            value, _ = xdr.decode_from(self._reply, data)
        except xdr.XdrError as e:
            raise RxAbort(RXGEN_CC_UNMARSHAL, f"{self.qualified_name} reply: {e}") from e
        if self._n_out == 0:
            return None
        return value[0] if self._n_out == 1 else value

    def decode_args(self, data: bytes | memoryview) -> Any:
        """Server side: the Args of a request body (after the opcode)."""
        try:
            value, _ = xdr.decode_from(self._args, data)
        except xdr.XdrError as e:
            raise RxAbort(RXGEN_SS_UNMARSHAL, f"{self.qualified_name} request: {e}") from e
        return value

    def encode_reply(self, result: Any) -> bytes:
        """Server side: reply bytes from what an implementation returned."""
        if self._n_out == 0:
            values: Any = ()
        elif self._n_out == 1:
            values = (result,)
        else:
            values = result
        try:
            return xdr.encode(self._reply, values)
        except xdr.XdrError as e:
            raise RxAbort(RXGEN_SS_MARSHAL, f"{self.qualified_name} reply: {e}") from e

    # Client side.

    async def __call__(
        self,
        conn: ConnectionLike,
        *args: Any,
        data: bytes | memoryview | None = None,
        **kwargs: Any,
    ) -> Any:
        """Make the call.  A fetch split returns (data, OUT value); a store split takes the
        bytes to send as `data=`."""
        if isinstance(self.split, StoreSplit):
            if data is None:
                raise TypeError(f"{self.name} needs data=")
            async with self.stream(conn, *args, **kwargs) as store:
                await store.send(data)
            return store.result
        if data is not None:
            raise TypeError(f"{self.name} takes no data=")
        if isinstance(self.split, FetchSplit):
            async with self.stream(conn, *args, **kwargs) as fetch:
                body = await fetch.read_all()
            return body, fetch.result
        return self.decode_reply(await conn.rpc(self.encode_request(*args, **kwargs)))

    @asynccontextmanager
    async def stream(self, conn: ConnectionLike, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        """A split call as a stream: yields a FetchStream or a StoreStream, whose `result`
        holds the OUT value after the block."""
        if self.split is None:
            raise TypeError(f"{self.name} is not a split call")
        bound = self.Args(*args, **kwargs)
        request = self._encode_bound(bound)
        async with conn.new_call() as call:
            await call.send(request)
            s: FetchStream | StoreStream
            if isinstance(self.split, FetchSplit):
                await call.close_send()
                s = FetchStream(self, call)
                await s._start(self.split, getattr(bound, self.split.requested))
            else:
                s = StoreStream(self, call, getattr(bound, self.split.length))
            yield s
            await s.finish()

    # Server side.

    async def serve(
        self,
        call: CallLike,
        method: Callable[..., Awaitable[Any]],
        max_request: int | None = None,
    ) -> None:
        """Run one request (whose opcode was already read) through an implementation; a
        request longer than max_request bytes is refused before it is all read."""
        what = f"{self.qualified_name} request"
        if isinstance(self.split, StoreSplit):
            with _eof_means(RXGEN_SS_UNMARSHAL, what):
                body = await call.recv_exactly(self._args.fixed_size or 0)
        elif max_request is not None:
            body = await _recv_at_most(call, max_request, what)
        else:
            body = await call.recv_rest()
        args = self.decode_args(body)._asdict()
        if isinstance(self.split, FetchSplit):
            sender = FetchSender(call, self.split, f"{self.qualified_name} reply")
            result = await method(call, stream=sender, **args)
            if not sender.started or sender.remaining:
                raise RxAbort(RXGEN_SS_MARSHAL, f"{self.qualified_name}: data not all sent")
        elif isinstance(self.split, StoreSplit):
            receiver = StoreReceiver(call, args[self.split.length], what)
            result = await method(call, stream=receiver, **args)
        else:
            result = await method(call, **args)
        await call.send(self.encode_reply(result))
        await call.close_send()


class Interface:
    """The RPCs of one Rx service, reachable as attributes (`VL.GetEntryByNameU`)."""

    def __init__(
        self,
        name: str,
        service_id: int,
        port: int,
        rpcs: Iterable[Rpc],
        *,
        aliases: dict[str, str] | None = None,
        errors: dict[int, str] | None = None,
    ) -> None:
        self.name = name
        self.service_id = service_id
        self.port = port
        self.rpcs = tuple(rpcs)
        self.by_opcode: dict[int, Rpc] = {}
        for rpc in self.rpcs:
            if rpc.opcode in self.by_opcode or hasattr(self, rpc.name):
                raise ValueError(f"{name}: {rpc.name} ({rpc.opcode}) clashes")
            rpc.qualified_name = f"{name}.{rpc.name}"
            self.by_opcode[rpc.opcode] = rpc
            setattr(self, rpc.name, rpc)
        for alias, target in (aliases or {}).items():
            setattr(self, alias, getattr(self, target))
        if errors:
            register_error_names(errors)

    def __getattr__(self, name: str) -> Rpc:
        # Only reached for names not set in __init__: a clear error for a mistyped RPC.
        raise AttributeError(f"interface {self.name} has no RPC {name}")


async def _recv_at_most(call: CallLike, limit: int, what: str) -> bytes:
    buf = bytearray(limit + 1)
    view = memoryview(buf)
    got = 0
    while got <= limit:
        n = await call.recv_into(view[got:])
        if not n:
            return bytes(view[:got])
        got += n
    raise RxAbort(RXGEN_SS_UNMARSHAL, f"{what} longer than {limit} bytes")


def make_dispatcher(
    interface: Interface, impl: object, *, max_request: int | None = None
) -> Callable[[Any], Awaitable[None]]:
    """The handler for Endpoint.serve: dispatch each call by opcode to `impl.<RpcName>`.

    RPCs the implementation lacks answer RXGEN_OPCODE, which is how rxgen servers signal
    "not implemented" and how clients know to fall back to an older RPC.  A service open
    to untrusted peers bounds each request with max_request (bytes after the opcode).
    """
    methods = {
        rpc.opcode: (rpc, getattr(impl, rpc.name))
        for rpc in interface.rpcs
        if callable(getattr(impl, rpc.name, None))
    }

    async def dispatch(call: Any) -> None:
        with _eof_means(RXGEN_SS_UNMARSHAL, f"{interface.name} request"):
            head = await call.recv_exactly(_OPCODE.size)
        (opcode,) = _OPCODE.unpack(head)
        found = methods.get(opcode)
        if found is None:
            raise RxAbort(RXGEN_OPCODE, f"{interface.name} has no RPC {opcode}")
        rpc, method = found
        await rpc.serve(call, method, max_request)

    return dispatch
