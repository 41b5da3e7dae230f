"""@sys: path components that mean "the directory for this kind of machine".

A component that is exactly `@sys` becomes each sysname in turn; one that merely ends in
`@sys` (`bin.@sys`) is first tried as written, then with the suffix replaced by each sysname.
The first candidate that exists wins (OpenAFS Check_AtSys / Next_AtSys).
"""

from __future__ import annotations

import platform
from collections.abc import Sequence

AT_SYS = b"@sys"
#: OpenAFS MAXNUMSYSNAMES and MAXSYSNAME (names are shorter than this, NUL included).
MAX_SYSNAMES = 32
MAX_SYSNAME = 128

_MACHINES = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "i386": "i386",
    "i686": "i386",
    "aarch64": "arm64",
    "arm64": "arm64",
}


def default_sysname() -> bytes:
    """What an OpenAFS client built for this machine calls itself, e.g. amd64_linux26."""
    machine = platform.machine().lower()
    return f"{_MACHINES.get(machine, machine)}_linux26".encode()


def check_sysnames(names: Sequence[bytes]) -> tuple[bytes, ...]:
    """Validate a sysname list as `fs sysname` would set it; ValueError says what is wrong."""
    if not 1 <= len(names) <= MAX_SYSNAMES:
        raise ValueError(f"between 1 and {MAX_SYSNAMES} sysnames, not {len(names)}")
    for name in names:
        if not name or len(name) >= MAX_SYSNAME:
            raise ValueError(f"sysname {name!r} must be 1 to {MAX_SYSNAME - 1} bytes")
        if name in (b".", b"..") or b"/" in name or b"\0" in name:
            raise ValueError(f"sysname {name!r} is not a valid name")
    return tuple(names)


def sysname_candidates(component: bytes, sysnames: Sequence[bytes]) -> list[bytes]:
    """The names to look up for a path component, in order, until one exists."""
    if component == AT_SYS:
        return list(sysnames) or [component]
    if len(component) > len(AT_SYS) and component.endswith(AT_SYS):
        stem = component[: -len(AT_SYS)]
        return [component, *(stem + name for name in sysnames)]
    return [component]
