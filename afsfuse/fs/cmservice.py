"""The cache manager's callback service (RXAFSCB), answered on our own Rx endpoint.

Fileservers call back to the address and port our requests came from.  They ask who we are
(TellMeAboutYourself, WhoAreYou) and reset our callbacks (InitCallBackState3) while our
own first call to them is still waiting, so the service must be running before any
fileserver call is made.  It speaks rxnull only, as every cache manager does.

The same service answers OpenAFS's `cmdebug`: cache entries, locks, cells and the cache
configuration, read from the cache manager's tables (fs/cmdebug.py).  Without them (a
program that only needs callbacks answered) the listings are empty and the cache zero.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import logging
import socket
import struct
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from afsfuse.fs.callback import CallbackRegistry, Fid
from afsfuse.rx.driver import Endpoint, ServerCall
from afsfuse.rx.errors import RxAbort
from afsfuse.rx.interfaces.cb import (
    AFS_CLIENT_RETRIEVAL_FIRST_EDITION,
    AFS_MAX_INTERFACE_ADDR,
    CB,
    CLIENT_CAPABILITY_ERRORTRANS,
    CM_INITPARAMS_V1_WORDS,
    interfaceAddr,
)
from afsfuse.rx.interfaces.fs import AFSCallBack, AFSFid
from afsfuse.rx.rpc import make_dispatcher

if TYPE_CHECKING:
    from afsfuse.fs.cmdebug import CacheView

log = logging.getLogger(__name__)

# The answer to GetCE/GetLock once the index runs past the end, which tells cmdebug and
# friends to stop asking.
_END_OF_LIST = 1
_SIOCGIFADDR = 0x8915
_SIOCGIFNETMASK = 0x891B


def local_ipv4_interfaces() -> list[tuple[int, int]]:
    """(address, netmask) of this host's non-loopback IPv4 interfaces, for WhoAreYou.

    Fileservers use the list to recognise a multi-homed client as one cache manager.
    """
    found: list[tuple[int, int]] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                addr = fcntl.ioctl(sock, _SIOCGIFADDR, request)[20:24]
                mask = fcntl.ioctl(sock, _SIOCGIFNETMASK, request)[20:24]
            except OSError:  # no IPv4 address on this interface
                continue
            if not ipaddress.IPv4Address(addr).is_loopback:
                found.append((int.from_bytes(addr, "big"), int.from_bytes(mask, "big")))
    return found[:AFS_MAX_INTERFACE_ADDR]


class CacheManagerService:
    """Answers fileservers on behalf of one cache manager instance."""

    def __init__(
        self,
        registry: CallbackRegistry,
        instance_uuid: uuid.UUID | None = None,
        local_cell: str = "",
        view: CacheView | None = None,
    ) -> None:
        self.registry = registry
        self.uuid = instance_uuid or uuid.uuid4()
        self.local_cell = local_cell
        self.view = view
        #: Whether the sender at (address, port) may see the cache entries: the fids,
        #: lengths and data versions of every user's files (blocking; None: anyone may).
        self.sees_every_file: Callable[[str, int], bool] | None = None

    def install(self, endpoint: Endpoint) -> None:
        endpoint.serve(CB.service_id, make_dispatcher(CB, self))

    def _interfaces(self) -> interfaceAddr:
        ifaces = local_ipv4_interfaces()
        pad = [0] * (AFS_MAX_INTERFACE_ADDR - len(ifaces))
        return interfaceAddr(
            numberOfInterfaces=len(ifaces),
            uuid=self.uuid,
            addr_in=tuple(a for a, _ in ifaces) + tuple(pad),
            subnetmask=tuple(m for _, m in ifaces) + tuple(pad),
            mtu=tuple(1500 for _ in ifaces) + tuple(pad),
        )

    # -- the RPCs ----------------------------------------------------------------------

    async def CallBack(
        self, call: ServerCall, Fids_Array: Sequence[AFSFid], CallBacks_Array: Sequence[AFSCallBack]
    ) -> None:
        server = call.peer[0]
        fids = [Fid(f.Volume, f.Vnode, f.Unique) for f in Fids_Array]
        log.debug("callback break from %s: %s", server, fids)
        self.registry.break_fids(server, fids)

    async def InitCallBackState(self, call: ServerCall) -> None:
        self.registry.break_server(call.peer[0])

    async def InitCallBackState3(self, call: ServerCall, serverUuid: uuid.UUID) -> None:
        self.registry.break_server(call.peer[0])

    async def Probe(self, call: ServerCall) -> None:
        return None

    async def ProbeUuid(self, call: ServerCall, clientUuid: uuid.UUID) -> None:
        # A different UUID tells the fileserver we are not the client it remembers, so it
        # must forget that client's callbacks.
        if clientUuid != self.uuid:
            raise RxAbort(1, "not this cache manager's UUID")

    async def WhoAreYou(self, call: ServerCall) -> interfaceAddr:
        return self._interfaces()

    async def InitCallBackState2(self, call: ServerCall) -> interfaceAddr:
        self.registry.break_server(call.peer[0])
        return self._interfaces()

    async def TellMeAboutYourself(self, call: ServerCall) -> tuple[interfaceAddr, tuple[int, ...]]:
        return self._interfaces(), (CLIENT_CAPABILITY_ERRORTRANS,)

    async def GetLocalCell(self, call: ServerCall) -> str:
        return self.local_cell

    async def XStatsVersion(self, call: ServerCall) -> int:
        return 2

    # -- cmdebug's: read-only, for anyone who asks ----------------------------------------

    async def GetLock(self, call: ServerCall, index: int) -> Any:
        return _listed(None if self.view is None else self.view.lock(index))

    async def GetCE(self, call: ServerCall, index: int) -> Any:
        await self._may_see_entries(call)
        return _listed(None if self.view is None else self.view.cache_entry(index, False))

    async def GetCE64(self, call: ServerCall, index: int) -> Any:
        await self._may_see_entries(call)
        return _listed(None if self.view is None else self.view.cache_entry(index, True))

    async def _may_see_entries(self, call: ServerCall) -> None:
        """Cache entries tell which files the mount's users have open and how long they
        are, whatever the asker's rights to them: only those who may see every file of
        the mount may list them."""
        if self.sees_every_file is None:
            return
        address, port = call.peer
        if not await trio.to_thread.run_sync(self.sees_every_file, address, port):
            raise RxAbort(errno.EACCES, "cache entries are for root and the mount's owner")

    async def GetServerPrefs(self, call: ServerCall, serverIndex: int) -> tuple[int, int]:
        return (0xFFFFFFFF, -1) if self.view is None else self.view.server_pref(serverIndex)

    async def GetCellServDB(self, call: ServerCall, cellIndex: int) -> tuple[str, tuple[int, ...]]:
        return ("", ()) if self.view is None else self.view.cell_by_index(cellIndex)

    async def GetCellByNum(self, call: ServerCall, cellNumber: int) -> tuple[str, tuple[int, ...]]:
        return ("", ()) if self.view is None else self.view.cell_by_number(cellNumber)

    async def GetCacheConfig(
        self, call: ServerCall, callerVersion: int
    ) -> tuple[int, int, tuple[int, ...]]:
        # One layout only, whatever version the caller asks for (as OpenAFS answers); its
        # size goes in bytes.
        config = (0,) * CM_INITPARAMS_V1_WORDS if self.view is None else self.view.cache_config()
        return AFS_CLIENT_RETRIEVAL_FIRST_EDITION, 4 * len(config), config


def _listed(entry: Any | None) -> Any:
    """A listing's entry, or the end-of-list code cmdebug stops at."""
    if entry is None:
        raise RxAbort(_END_OF_LIST, "past the end of the list")
    return entry
