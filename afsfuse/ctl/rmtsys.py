"""The rmtsys service: OpenAFS's own tools (fs, tokens, aklog, unlog) drive this mount.

OpenAFS's libsys sends every pioctl to UDP 7009 (service 4, rxnull) when `AFSSERVER`,
`~/.AFSSERVER` or `/.AFSSERVER` names a host.  Each Pioctl becomes a control op
(ctl/pioctl.py has the ABI), dispatched to the same handlers as `afsfuse-ctl`.

Who asks is never the request's word.  `clientcred` is the caller's claim; for a loopback
caller the kernel says who owns the sending socket (ctl/sockowner.py), and a claim that
differs from it, or a socket held by processes of another uid, is refused with EACCES.
A daemon that is not root serves its own uid only.  Other hosts are refused unless the
administrator allowed their network (`--rmtsys-allow`); their users are then who their
host says, as with OpenAFS's NFS translator: tokens they set are kept per (host, uid,
PAG) and serve only that host's later requests, and their root is nobody.  A local caller's
PAG is the one its process is in (keyring/pag.py), never the groups it sent.

Request bytes are never logged: they may hold tokens.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from afsfuse.ctl.pioctl import MAX_IN, NOOPS, TABLE, PathUse, PioctlError, Reader, command_key
from afsfuse.ctl.server import REQUEST_TIMEOUT, ControlError, Handlers, PagOf, PeerCred, Request
from afsfuse.ctl.sockowner import OwnerUnknown, SocketOwner, socket_owner
from afsfuse.fs.errors import FsError
from afsfuse.keyring.pag import pag_from_group_pair
from afsfuse.keyring.store import Identity
from afsfuse.rx.driver import Endpoint, ServerCall
from afsfuse.rx.interfaces.rmtsys import NIL_PATHP, RMTSYS, clientcred
from afsfuse.rx.rpc import make_dispatcher

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = ("127.0.0.1", RMTSYS.port)
#: The largest Pioctl request: cred, path<4096>, cmd, follow, two rmtbulk<16384>.
MAX_REQUEST = 12 + 4 + 4096 + 8 + 2 * (4 + 16384)
#: A remote root acts as nobody (OpenAFS's afs_nobody).
NOBODY = 65534
#: Pioctls in progress, per caller and in all; more are told EAGAIN.
MAX_PER_CALLER = 8
MAX_IN_FLIGHT = 64
#: /proc scans at once (each reads every process's descriptors).
_PROC_SCANS = 2


class PathCanonical(Protocol):
    async def canonical(self, path: str, who: Identity, follow: bool = True) -> str: ...


@dataclass(frozen=True)
class Caller:
    """Who a request acts for, once checked."""

    uid: int
    #: A process holding the sending socket (0 for a remote caller).
    pid: int
    host: str | None = None
    pag: int | None = None

    @property
    def identity(self) -> Identity:
        return Identity(self.uid, self.pag, self.host)


class Refused(Exception):
    """A caller that is not believed: answered EACCES."""


class RmtsysService:
    """Answers rmtsys calls with the daemon's control handlers."""

    def __init__(
        self,
        handlers: Handlers,
        paths: PathCanonical,
        *,
        daemon_uid: int,
        allow: Sequence[ipaddress.IPv4Network] = (),
        owner_of: Callable[[str, int], SocketOwner] = socket_owner,
        pag_of: PagOf | None = None,
    ) -> None:
        self._handlers = handlers
        self._paths = paths
        self._daemon_uid = daemon_uid
        self._allow = tuple(allow)
        self._owner_of = owner_of
        self._pag_of = pag_of
        self._scans = trio.CapacityLimiter(_PROC_SCANS)
        self._in_flight: dict[tuple[str | None, int], int] = {}

    def install(self, endpoint: Endpoint) -> None:
        endpoint.serve(RMTSYS.service_id, make_dispatcher(RMTSYS, self, max_request=MAX_REQUEST))

    # -- the RPCs ----------------------------------------------------------------------

    async def SetPag(self, call: ServerCall, cred: clientcred) -> tuple[int, int]:
        """A new PAG number, which the tool (root) then puts in its groups itself."""
        try:
            caller = await self._caller(call.peer, cred)
        except Refused as e:
            log.warning("rmtsys: refused %s:%d: %s", call.peer[0], call.peer[1], e)
            return 0, errno.EACCES
        request = Request(
            op="setpag", peer=PeerCred(caller.pid, caller.uid, -1), uid=caller.uid,
            args={"groups": True}, pag=caller.pag, host=caller.host,
        )  # fmt: skip
        try:
            result = await self._handlers.dispatch(request)
        except ControlError as e:
            _, number = self._failed(caller, "SetPag", getattr(errno, e.code, errno.EIO), e.message)
            return 0, number
        log.debug("rmtsys: SetPag from %s: %#x", self._who(caller), result["pag"])
        return result["pag"], 0

    async def Pioctl(
        self,
        call: ServerCall,
        cred: clientcred,
        path: str,
        cmd: int,
        follow: int,
        InData: bytes,
        OutData: bytes,
    ) -> tuple[bytes, int]:
        try:
            caller = await self._caller(call.peer, cred)
        except Refused as e:
            log.warning("rmtsys: refused %s:%d: %s", call.peer[0], call.peer[1], e)
            return b"", errno.EACCES
        key = (caller.host, caller.uid)
        if self._in_flight.get(key, 0) >= MAX_PER_CALLER or (
            sum(self._in_flight.values()) >= MAX_IN_FLIGHT
        ):
            return b"", errno.EAGAIN
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        try:
            return await self._pioctl(caller, path, cmd, bool(follow), bytes(InData))
        finally:
            self._in_flight[key] -= 1
            if not self._in_flight[key]:
                del self._in_flight[key]

    # -- who asks ------------------------------------------------------------------------

    async def _caller(self, peer: tuple[str, int], cred: clientcred) -> Caller:
        host, port = peer
        claimed = cred.uid & 0xFFFFFFFF
        address = ipaddress.IPv4Address(host)
        if address.is_loopback:
            try:
                owner: SocketOwner = await trio.to_thread.run_sync(
                    self._owner_of, host, port, limiter=self._scans
                )
            except (OwnerUnknown, OSError) as e:
                raise Refused(f"no owner found for the sending socket ({e})") from None
            if claimed != owner.uid:
                raise Refused(f"uid {owner.uid} claimed to be uid {claimed}")
            strangers = sorted({uid for _, uid in owner.holders if uid != owner.uid})
            if strangers:
                raise Refused(f"the socket of uid {owner.uid} is also held by uids {strangers}")
            if self._daemon_uid not in (0, owner.uid):
                raise Refused(f"uid {owner.uid}: this daemon serves uid {self._daemon_uid} only")
            return Caller(owner.uid, owner.holders[0][0], pag=self._local_pag(owner))
        if not any(address in network for network in self._allow):
            raise Refused("remote hosts are not allowed (see --rmtsys-allow)")
        uid = NOBODY if claimed == 0 else claimed
        return Caller(uid, 0, host, pag_from_group_pair(cred.group0, cred.group1))

    def _local_pag(self, owner: SocketOwner) -> int | None:
        """The PAG of the processes holding the socket, which must all be in the same one."""
        if self._pag_of is None:
            return None
        try:
            pags = {self._pag_of(pid) for pid, _ in owner.holders}
        except ProcessLookupError:
            raise Refused("the sending process has ended") from None
        if len(pags) != 1:
            raise Refused(f"the socket is held by processes of {len(pags)} PAGs")
        return pags.pop()

    # -- one pioctl ----------------------------------------------------------------------

    async def _pioctl(
        self, caller: Caller, path: str, cmd: int, follow: bool, in_data: bytes
    ) -> tuple[bytes, int]:
        key = command_key(cmd)
        spec = TABLE.get(key)
        name = spec.name if spec else f"{key[0]} {key[1]}"
        try:
            if key in NOOPS:
                return b"", 0
            if spec is None:
                raise PioctlError(errno.EINVAL, "not served")
            if len(in_data) > MAX_IN:
                raise PioctlError(errno.EINVAL, f"InData over {MAX_IN} bytes")
            args = spec.decode(Reader(in_data))
            who = caller.identity
            with trio.fail_after(REQUEST_TIMEOUT):
                if spec.path is not PathUse.NONE:
                    args["path"] = await self._path(spec.path, path, args, who, follow)
                request = Request(
                    op=spec.op, peer=PeerCred(caller.pid, caller.uid, -1), uid=caller.uid,
                    args=args, pag=caller.pag, host=caller.host,
                )  # fmt: skip
                result = await self._handlers.dispatch(request)
            out = spec.encode(result, args)
            if len(out) > spec.max_out:
                raise PioctlError(errno.E2BIG, f"{len(out)} bytes of output")
        except PioctlError as e:
            return self._failed(caller, name, e.errno, str(e))
        except FsError as e:
            return self._failed(caller, name, e.errno or errno.EIO, e.strerror or "")
        except ControlError as e:
            return self._failed(caller, name, getattr(errno, e.code, errno.EIO), e.message)
        except trio.TooSlowError:
            return self._failed(caller, name, errno.ETIMEDOUT, "took too long")
        except Exception:
            log.exception("rmtsys: %s from uid %d failed", name, caller.uid)
            return b"", errno.EIO
        log.debug("rmtsys: %s from %s: ok", name, self._who(caller))
        return out, 0

    async def _path(
        self, use: PathUse, path: str, args: dict[str, Any], who: Identity, follow: bool
    ) -> str:
        if path == NIL_PATHP:
            raise PioctlError(errno.EINVAL, "this pioctl needs a path")
        if use is PathUse.OBJECT:
            return await self._paths.canonical(path, who, follow)
        directory = await self._paths.canonical(path, who, True)
        return f"{directory.rstrip('/')}/{args.pop('name')}"

    def _failed(self, caller: Caller, name: str, number: int, why: str) -> tuple[bytes, int]:
        why = why.encode("utf-8", "backslashreplace").decode("utf-8")  # any log takes it
        log.debug(
            "rmtsys: %s from %s: %s (%s)",
            name,
            self._who(caller),
            errno.errorcode.get(number, number),
            why,
        )
        return b"", number

    @staticmethod
    def _who(caller: Caller) -> str:
        return f"uid {caller.uid}" + (f" on {caller.host}" if caller.host else "")
