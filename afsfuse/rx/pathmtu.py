"""The MTU of our route to a peer, as the kernel knows it.

The endpoint's one UDP socket is unconnected, and the kernel tells a path's MTU
(IP_MTU) only on a connected socket.  A throwaway socket connected to the peer (connecting
UDP sends nothing) reads it once per new peer: the outgoing interface's MTU, or a smaller
one the kernel learnt from ICMP "fragmentation needed", with policy routing and the
process's network namespace taken into account, which a walk of the routing table would
not.
"""

from __future__ import annotations

import socket

from .peer import ETHERNET_MTU, Address

#: <linux/in.h>; Python's socket module does not name it.
IP_MTU = 14


def path_mtu(addr: Address) -> int:
    """The route's MTU to addr; a plain Ethernet's if the kernel cannot tell."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(addr)
            mtu: int = probe.getsockopt(socket.IPPROTO_IP, IP_MTU)
    except OSError:
        return ETHERNET_MTU
    return mtu
