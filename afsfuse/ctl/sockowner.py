"""Who owns a local UDP socket: the kernel's word on the sender of a loopback datagram.

rmtsys requests carry the caller's uid as a claim (`clientcred`), which any local program
can fill in as it likes.  The sending socket cannot lie: /proc/net/udp gives the uid that
created the socket bound to the source port, and /proc/<pid>/fd tells which processes hold
it.  A request is believed only when the claim, the socket's owner and the uid of every
process holding it agree (rmtsys.py).  The holders are also where a caller's PAG is read
from (keyring/callers.py).

Blocking (it reads /proc): run it in a worker thread.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class SocketOwner:
    """The socket a datagram came from, as /proc shows it."""

    #: The uid the socket belongs to (the creator's fsuid).
    uid: int
    inode: int
    #: Every process holding the socket, with its real uid.
    holders: tuple[tuple[int, int], ...]


class OwnerUnknown(Exception):
    """No single socket, or no live process, answers for the address: refuse the caller."""


def _hex_address(address: str, port: int) -> tuple[str, str]:
    """How /proc/net/udp spells an IPv4 address and a port (the address as the kernel's
    32-bit word printed on this host, i.e. in host byte order)."""
    word = int.from_bytes(ipaddress.IPv4Address(address).packed, sys.byteorder)
    return f"{word:08X}", f"{port:04X}"


def udp_sockets(
    address: str, port: int, table: Path = PROC / "net" / "udp"
) -> list[tuple[int, int]]:
    """(uid, inode) of each UDP socket bound to address:port, or to the wildcard address on
    that port, in this network namespace."""
    wanted, wanted_port = _hex_address(address, port)
    wildcard = "00000000"
    found = []
    with open(table) as lines:
        next(lines, None)  # the heading
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            local_address, _, local_port = fields[1].partition(":")
            if local_port != wanted_port or local_address not in (wanted, wildcard):
                continue
            found.append((int(fields[7]), int(fields[9])))
    return found


def holders_of(inode: int, proc: Path = PROC) -> list[tuple[int, int]]:
    """(pid, real uid) of each process with a descriptor for socket `inode`."""
    target = f"socket:[{inode}]"
    found = []
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        fd_dir = f"{entry.path}/fd"
        try:
            names = os.listdir(fd_dir)
        except OSError:  # gone, or not ours to look at
            continue
        for name in names:
            try:
                if os.readlink(f"{fd_dir}/{name}") == target:
                    found.append((int(entry.name), _real_uid(entry.path)))
                    break
            except (OSError, ValueError):
                continue
    return found


def _real_uid(process: str) -> int:
    with open(f"{process}/status") as status:
        for line in status:
            if line.startswith("Uid:"):
                return int(line.split()[1])
    raise ValueError(f"no Uid line in {process}/status")


def sender_uid(address: str, port: int, proc: Path = PROC) -> int | None:
    """The uid of the one local socket sending from address:port (a loopback address), or
    None when the sender is not local or no single socket answers.  One read of
    /proc/net/udp: cheap enough for every request of a debug listing."""
    if not ipaddress.IPv4Address(address).is_loopback:
        return None
    sockets = udp_sockets(address, port, proc / "net" / "udp")
    return sockets[0][0] if len(sockets) == 1 else None


def socket_owner(address: str, port: int, proc: Path = PROC) -> SocketOwner:
    """The owner of the local UDP socket that sends from address:port."""
    sockets = udp_sockets(address, port, proc / "net" / "udp")
    if len(sockets) != 1:
        raise OwnerUnknown(f"{len(sockets)} sockets bound to {address}:{port}")
    uid, inode = sockets[0]
    holders = holders_of(inode, proc)
    if not holders:
        raise OwnerUnknown(f"no process holds the socket of {address}:{port}")
    return SocketOwner(uid, inode, tuple(holders))
