"""What every pioctl codec shares (ctl/pioctl.py, ctl/cellpioctl.py): the errno a pioctl
fails with, InData read front to back, and the pieces OutData is made of."""

from __future__ import annotations

import errno
import ipaddress
import struct

#: An int32 rmtsys turned big-endian, and one left in the caller's (this host's) order.
BE = struct.Struct(">i")
NATIVE = struct.Struct("=i")


class PioctlError(Exception):
    """The errno a pioctl fails with."""

    def __init__(self, number: int, message: str = "") -> None:
        super().__init__(message or errno.errorcode.get(number, str(number)))
        self.errno = number


class Reader:
    """InData, read front to back; running short is EINVAL, as in OpenAFS."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    @property
    def remaining(self) -> int:
        return len(self.data) - self.at

    def take(self, n: int) -> bytes:
        if n < 0 or self.remaining < n:
            raise PioctlError(errno.EINVAL, f"InData ends {n - self.remaining} bytes short")
        self.at += n
        return self.data[self.at - n : self.at]

    def be(self) -> int:
        (value,) = BE.unpack(self.take(4))
        return int(value)

    def native(self) -> int:
        (value,) = NATIVE.unpack(self.take(4))
        return int(value)

    def string(self) -> str:
        """A NUL-terminated string; the kernel ends the input with a NUL of its own, so the
        last one may lack its terminator."""
        end = self.data.find(b"\0", self.at)
        raw = self.data[self.at :] if end < 0 else self.data[self.at : end]
        self.at = len(self.data) if end < 0 else end + 1
        return raw.decode("utf-8", "surrogateescape")


def cstr(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape") + b"\0"


def ipv4(address: str) -> bytes:
    return ipaddress.IPv4Address(address).packed
