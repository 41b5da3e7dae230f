"""XDR as OpenAFS's rxgen puts it on the wire, with every AFS quirk in this one module.

The quirks (afs-protocol-facts.md 1.18): 64-bit integers are two words, high first;
`short` and `char` scalars take a whole word; a fixed `char x[n]` array is n sign-extended
words, not n bytes; afsUUID is 11 words.

A type is a `Codec`.  Codecs of fixed layout also describe themselves as struct-module
format characters, so a struct made only of fixed parts compiles into a single
`Struct` and decodes with one `unpack_from` call.  Structs are `namedtuple` classes
carrying their codec in `_xdr`; anywhere a type is expected, such a class may be given.

Text (`string<N>`, `char x[n]`) decodes to `str` with UTF-8 and `surrogateescape`, which
round-trips any bytes (as `os.fsdecode` does); encoding accepts `str` or `bytes`.

Decoding checks every length and count against the buffer and raises `XdrError` and
nothing else, so a hostile peer cannot make it raise IndexError or allocate without bound.

Over 500 lines: every codec and quirk of the wire format in one place, on purpose.
"""

from __future__ import annotations

import uuid
from collections import namedtuple
from collections.abc import Callable, Sequence
from struct import Struct, pack, unpack_from
from struct import error as StructError
from typing import Any

Buffer = bytes | bytearray | memoryview


class XdrError(ValueError):
    """Bytes that do not decode as the declared type, or a value that does not encode."""


_LENGTH = Struct(">I")
# Sign extension of a C `char` (signed on the x86 servers whose bytes we must match).
_SIGNED_CHAR = tuple(b - 256 if b >= 128 else b for b in range(256))


def _pad(n: int) -> int:
    return -n % 4


def _text_bytes(value: str | bytes) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise XdrError(f"expected str or bytes, got {type(value).__name__}")


def _bytes_text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class Codec:
    """One XDR type.

    Fixed-layout codecs set `fixed_size`, `fmt` (struct format characters without the
    byte-order prefix) and `nflat` (values that `fmt` packs), and convert between a
    Python value and those flat values with `to_flat`/`from_flat`.  `identity` says the
    value *is* its single flat value, which lets enclosing structs skip the conversion.
    """

    fixed_size: int | None = None
    layout: Any = None  # the compiled Struct of a fixed layout
    min_size: int = 4
    fmt: str = ""
    nflat: int = 0
    identity: bool = False
    default: Any = None  # the zero value (a struct's is set by struct_type)

    def to_flat(self, value: Any, out: list[Any]) -> None:
        raise NotImplementedError

    def from_flat(self, flat: Sequence[Any], i: int) -> Any:
        raise NotImplementedError

    def pack_into(self, out: bytearray, value: Any) -> None:
        raise NotImplementedError

    def unpack_from(self, buf: Buffer, offset: int) -> tuple[Any, int]:
        raise NotImplementedError


class _Fixed(Codec):
    """A codec with a layout known in advance: packing goes through one Struct."""

    def __init__(self, fmt: str, nflat: int, default: Any) -> None:
        self.fmt = fmt
        self.nflat = nflat
        self.default = default
        self.layout = Struct(">" + fmt)
        self.fixed_size = self.min_size = self.layout.size

    def pack_into(self, out: bytearray, value: Any) -> None:
        flat: list[Any] = []
        self.to_flat(value, flat)
        out += self.layout.pack(*flat)

    def unpack_from(self, buf: Buffer, offset: int) -> tuple[Any, int]:
        end = offset + self.layout.size
        if end > len(buf):
            raise XdrError(f"need {self.layout.size} bytes at offset {offset}, buffer ends first")
        return self.from_flat(self.layout.unpack_from(buf, offset), 0), end


class _Scalar(_Fixed):
    identity = True

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt, 1, 0)

    def to_flat(self, value: int, out: list[Any]) -> None:
        out.append(value)

    def from_flat(self, flat: Sequence[Any], i: int) -> int:
        value: int = flat[i]
        return value


int32 = _Scalar("i")
uint32 = _Scalar("I")
int64 = _Scalar("q")  # big-endian 8 bytes is exactly "high word, then low word"
uint64 = _Scalar("Q")
# rxgen widens these C scalars to a full word each; they decode as plain integers.
short = int32
u_short = uint32
char = int32


class _FixedOpaque(_Fixed):
    def __init__(self, n: int) -> None:
        super().__init__(f"{n}s{_pad(n)}x", 1, bytes(n))
        self.n = n

    def to_flat(self, value: bytes, out: list[Any]) -> None:
        if len(value) != self.n:
            raise XdrError(f"opaque[{self.n}] given {len(value)} bytes")
        out.append(bytes(value))

    def from_flat(self, flat: Sequence[Any], i: int) -> bytes:
        value: bytes = flat[i]
        return value


class _CharArray(_Fixed):
    """`char x[n]`: one sign-extended word per char; the value is the text before the NUL."""

    def __init__(self, n: int) -> None:
        super().__init__(f"{n}i", n, "")
        self.n = n

    def to_flat(self, value: str | bytes, out: list[Any]) -> None:
        raw = _text_bytes(value)
        if len(raw) > self.n:
            raise XdrError(f"char[{self.n}] given {len(raw)} bytes")
        out.extend([_SIGNED_CHAR[b] for b in raw])
        out.extend([0] * (self.n - len(raw)))

    def from_flat(self, flat: Sequence[Any], i: int) -> str:
        raw = bytes([v & 0xFF for v in flat[i : i + self.n]])
        nul = raw.find(0)
        return _bytes_text(raw if nul < 0 else raw[:nul])


class _Uuid(_Fixed):
    """afsUUID: u32 time_low, u_short time_mid and time_hi, chars clock_seq_hi/low, node[6]."""

    def __init__(self) -> None:
        super().__init__("IIIii6i", 11, uuid.UUID(int=0))

    def to_flat(self, value: uuid.UUID, out: list[Any]) -> None:
        time_low, time_mid, time_hi, seq_hi, seq_low, node = value.fields
        out += (time_low, time_mid, time_hi, _SIGNED_CHAR[seq_hi], _SIGNED_CHAR[seq_low])
        out.extend([_SIGNED_CHAR[b] for b in node.to_bytes(6, "big")])

    def from_flat(self, flat: Sequence[Any], i: int) -> uuid.UUID:
        node = bytes([v & 0xFF for v in flat[i + 5 : i + 11]])
        return uuid.UUID(
            fields=(
                flat[i],
                flat[i + 1] & 0xFFFF,
                flat[i + 2] & 0xFFFF,
                flat[i + 3] & 0xFF,
                flat[i + 4] & 0xFF,
                int.from_bytes(node, "big"),
            )
        )


afsUUID = _Uuid()


class _FixedArray(_Fixed):
    def __init__(self, elem: Codec, n: int) -> None:
        if elem.fixed_size is None:
            raise TypeError("fixed arrays need an element type of fixed layout")
        super().__init__(elem.fmt * n, elem.nflat * n, (elem.default,) * n)
        self.elem = elem
        self.n = n

    def to_flat(self, value: Sequence[Any], out: list[Any]) -> None:
        if len(value) != self.n:
            raise XdrError(f"array[{self.n}] given {len(value)} elements")
        if self.elem.identity:
            out.extend(value)
        else:
            for v in value:
                self.elem.to_flat(v, out)

    def from_flat(self, flat: Sequence[Any], i: int) -> tuple[Any, ...]:
        if self.elem.identity:
            return tuple(flat[i : i + self.n])
        step = self.elem.nflat
        return tuple(self.elem.from_flat(flat, i + k * step) for k in range(self.n))


class _Counted(Codec):
    """Shared framing of `string<N>` and `opaque<N>`: length word, bytes, padding."""

    def __init__(self, maximum: int | None) -> None:
        self.maximum = maximum

    def _pack_bytes(self, out: bytearray, raw: bytes) -> None:
        n = len(raw)
        if self.maximum is not None and n > self.maximum:
            raise XdrError(f"{n} bytes exceed the declared maximum {self.maximum}")
        out += _LENGTH.pack(n)
        out += raw
        out += bytes(_pad(n))

    def _unpack_bytes(self, buf: Buffer, offset: int) -> tuple[bytes, int]:
        start = offset + 4
        if start > len(buf):
            raise XdrError(f"length word at offset {offset} runs past the end")
        (n,) = _LENGTH.unpack_from(buf, offset)
        if self.maximum is not None and n > self.maximum:
            raise XdrError(f"length {n} exceeds the declared maximum {self.maximum}")
        stop = start + n
        end = stop + _pad(n)
        if end > len(buf):
            raise XdrError(f"{n} bytes announced at offset {offset}, buffer ends first")
        return bytes(buf[start:stop]), end


class _String(_Counted):
    default: Any = ""

    def pack_into(self, out: bytearray, value: str | bytes) -> None:
        self._pack_bytes(out, _text_bytes(value))

    def unpack_from(self, buf: Buffer, offset: int) -> tuple[str, int]:
        raw, end = self._unpack_bytes(buf, offset)
        return _bytes_text(raw), end


class _Opaque(_Counted):
    default: Any = b""

    def pack_into(self, out: bytearray, value: bytes) -> None:
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise XdrError(f"opaque needs bytes, got {type(value).__name__}")
        self._pack_bytes(out, bytes(value))

    def unpack_from(self, buf: Buffer, offset: int) -> tuple[bytes, int]:
        return self._unpack_bytes(buf, offset)


class _VarArray(Codec):
    default: Any = ()

    def __init__(self, elem: Codec, maximum: int | None) -> None:
        if elem.min_size <= 0:
            raise TypeError("variable arrays need elements of non-zero size")
        self.elem = elem
        self.maximum = maximum

    def pack_into(self, out: bytearray, value: Sequence[Any]) -> None:
        n = len(value)
        if self.maximum is not None and n > self.maximum:
            raise XdrError(f"{n} elements exceed the declared maximum {self.maximum}")
        elem = self.elem
        if elem.identity:
            out += pack(f">I{n}{elem.fmt}", n, *value)
        elif elem.fixed_size is not None:
            flat: list[Any] = [n]
            for v in value:
                elem.to_flat(v, flat)
            out += pack(f">I{elem.fmt * n}", *flat)
        else:
            out += _LENGTH.pack(n)
            for v in value:
                elem.pack_into(out, v)

    def unpack_from(self, buf: Buffer, offset: int) -> tuple[tuple[Any, ...], int]:
        start = offset + 4
        if start > len(buf):
            raise XdrError(f"count word at offset {offset} runs past the end")
        (n,) = _LENGTH.unpack_from(buf, offset)
        if self.maximum is not None and n > self.maximum:
            raise XdrError(f"count {n} exceeds the declared maximum {self.maximum}")
        elem = self.elem
        if n * elem.min_size > len(buf) - start:
            raise XdrError(f"{n} elements announced at offset {offset}, buffer ends first")
        if elem.fixed_size is not None:
            end = start + n * elem.fixed_size
            if elem.identity:
                return unpack_from(f">{n}{elem.fmt}", buf, start), end
            items = elem.layout.iter_unpack(memoryview(buf)[start:end])
            return tuple(elem.from_flat(flat, 0) for flat in items), end
        values = []
        for _ in range(n):
            value, start = elem.unpack_from(buf, start)
            values.append(value)
        return tuple(values), start


class _Struct(Codec):
    """A struct: one precompiled Struct for every run of fixed-layout fields."""

    def __init__(self, cls: Any, fields: Sequence[tuple[str, Codec]]) -> None:
        self.cls = cls
        self.fields = list(fields)
        self.min_size = sum(c.min_size for _, c in self.fields)
        self._all_identity = all(c.identity for _, c in self.fields)
        if all(c.fixed_size is not None for _, c in self.fields):
            self.fmt = "".join(c.fmt for _, c in self.fields)
            self.nflat = sum(c.nflat for _, c in self.fields)
            self.layout = Struct(">" + self.fmt)
            self.fixed_size = self.layout.size
            self._plan = self._flat_plan(self.fields)
        # Segments: (Struct, [(field index, codec, flat offset)]) for a fixed run,
        # (None, (field index, codec)) for a field of variable size.
        self._segments: list[tuple[Struct | None, Any]] = []
        run: list[tuple[int, Codec]] = []
        for index, (_, c) in enumerate(self.fields):
            if c.fixed_size is not None:
                run.append((index, c))
                continue
            self._close_run(run)
            self._segments.append((None, (index, c)))
        self._close_run(run)

    @staticmethod
    def _flat_plan(members: Sequence[tuple[Any, Codec]]) -> list[tuple[Codec, int]]:
        plan, offset = [], 0
        for _, c in members:
            plan.append((c, offset))
            offset += c.nflat
        return plan

    def _close_run(self, run: list[tuple[int, Codec]]) -> None:
        if run:
            fmt = ">" + "".join(c.fmt for _, c in run)
            plan = [
                (index, c, off)
                for (index, _), (c, off) in zip(run, self._flat_plan(run), strict=True)
            ]
            self._segments.append((Struct(fmt), plan))
            run.clear()

    # Fixed-layout protocol, used when this struct is nested in another fixed layout.
    def to_flat(self, value: Sequence[Any], out: list[Any]) -> None:
        if len(value) != len(self.fields):
            raise XdrError(f"{self.cls.__name__} needs {len(self.fields)} fields, got {len(value)}")
        if self._all_identity:
            out.extend(value)
        else:
            for (_, c), v in zip(self.fields, value, strict=True):
                c.to_flat(v, out)

    def from_flat(self, flat: Sequence[Any], i: int) -> Any:
        if self._all_identity:
            return self.cls._make(flat[i : i + self.nflat])
        return self.cls._make(
            [flat[i + off] if c.identity else c.from_flat(flat, i + off) for c, off in self._plan]
        )

    def pack_into(self, out: bytearray, value: Sequence[Any]) -> None:
        if len(value) != len(self.fields):
            raise XdrError(f"{self.cls.__name__} needs {len(self.fields)} fields, got {len(value)}")
        for layout, part in self._segments:
            if layout is None:
                index, c = part
                c.pack_into(out, value[index])
                continue
            flat: list[Any] = []
            for index, c, _ in part:
                if c.identity:
                    flat.append(value[index])
                else:
                    c.to_flat(value[index], flat)
            out += layout.pack(*flat)

    def unpack_from(self, buf: Buffer, offset: int) -> tuple[Any, int]:
        if self.fixed_size is not None:
            end = offset + self.fixed_size
            if end > len(buf):
                raise XdrError(
                    f"{self.cls.__name__} needs {self.fixed_size} bytes at offset {offset}"
                )
            flat = self.layout.unpack_from(buf, offset)
            if self._all_identity:
                return self.cls._make(flat), end
            return self.from_flat(flat, 0), end
        values: list[Any] = [None] * len(self.fields)
        for layout, part in self._segments:
            if layout is None:
                index, c = part
                values[index], offset = c.unpack_from(buf, offset)
                continue
            end = offset + layout.size
            if end > len(buf):
                raise XdrError(f"{self.cls.__name__}: buffer ends inside a field at {offset}")
            flat = layout.unpack_from(buf, offset)
            for index, c, off in part:
                values[index] = flat[off] if c.identity else c.from_flat(flat, off)
            offset = end
        return self.cls._make(values), offset


XdrType = Codec | type

#: namedtuple called through a plain variable: mypy (and so mypyc) reads a direct call as a
#: class definition, which a field list known only at run time is not.
_make_namedtuple: Callable[..., type[Any]] = namedtuple


def codec(t: XdrType) -> Codec:
    """The codec of a type: codecs are themselves, struct classes carry theirs."""
    if isinstance(t, Codec):
        return t
    found = getattr(t, "_xdr", None)
    if not isinstance(found, Codec):
        raise TypeError(f"{t!r} is not an XDR type")
    return found


def string(maximum: int | None = None) -> Codec:
    """`string<maximum>`: text, length-prefixed and padded."""
    return _String(maximum)


def opaque(maximum: int | None = None) -> Codec:
    """`opaque<maximum>`: bytes, length-prefixed and padded."""
    return _Opaque(maximum)


def fixed_opaque(n: int) -> Codec:
    """`opaque x[n]`: exactly n raw bytes, padded."""
    return _FixedOpaque(n)


def chars(n: int) -> Codec:
    """`char x[n]`: n sign-extended words (vldbentry.name[65] is 260 bytes)."""
    return _CharArray(n)


def array(elem: XdrType, n: int) -> Codec:
    """`T x[n]`: n elements, no count word."""
    return _FixedArray(codec(elem), n)


def varray(elem: XdrType, maximum: int | None = None) -> Codec:
    """`T x<maximum>`: a count word, then the elements."""
    return _VarArray(codec(elem), maximum)


def struct_type(
    name: str, fields: Sequence[tuple[str, XdrType]], *, defaults: bool = True
) -> type[Any]:
    """A namedtuple class for an XDR struct; fields default to their zero value.

    Its fields are known only at run time: the interfaces' generated stubs (stubgen.py)
    give type checkers the NamedTuple each declaration makes."""
    resolved = [(field, codec(t)) for field, t in fields]
    cls = _make_namedtuple(
        name,
        [field for field, _ in resolved],
        defaults=[c.default for _, c in resolved] if defaults else None,
    )
    struct_codec = _Struct(cls, resolved)
    if defaults:
        struct_codec.default = cls()  # immutable, so one value serves every use
    # setattr: mypyc fails on an attribute assigned to a class it knows only as type[Any].
    setattr(cls, "_xdr", struct_codec)  # noqa: B010
    return cls


def struct(struct_name: str, /, **fields: XdrType) -> type[Any]:
    """Shorthand of `struct_type` with the fields as keyword arguments, in order.

    Not `name`: compiled by mypyc, a positional-only parameter still takes its keyword, and
    `name` is a field of several structs."""
    return struct_type(struct_name, list(fields.items()))


def encode(t: XdrType, value: Any) -> bytes:
    """Encode one value; any unencodable value raises XdrError."""
    out = bytearray()
    try:
        codec(t).pack_into(out, value)
    except XdrError:
        raise
    except (StructError, TypeError, ValueError, OverflowError) as e:
        raise XdrError(f"cannot encode {value!r}: {e}") from e
    return bytes(out)


def decode_from(t: XdrType, data: Buffer, offset: int = 0) -> tuple[Any, int]:
    """Decode one value at offset; return it and the offset just past it."""
    try:
        return codec(t).unpack_from(data, offset)
    except StructError as e:  # every bound is checked first; this is the last fence
        raise XdrError(str(e)) from e


def decode(t: XdrType, data: Buffer) -> Any:
    """Decode a value that must fill the buffer exactly."""
    value, end = decode_from(t, data)
    if end != len(data):
        raise XdrError(f"{len(data) - end} bytes left over after the value")
    return value
