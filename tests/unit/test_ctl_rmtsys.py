"""The rmtsys service in-process: whom it believes, what it answers, and that no request
(however made up) fails it or touches another user's tokens.  OpenAFS's own tools against a
real mount are in tests/integration/test_rmtsys.py."""

from __future__ import annotations

import errno
import ipaddress
import struct
import time
from dataclasses import dataclass
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memrx import FakeConnection, FakeServerCall

from afsfuse.ctl.ops import SysnameOps, TokenOps
from afsfuse.ctl.pagops import PagOps
from afsfuse.ctl.pioctl import TABLE
from afsfuse.ctl.rmtsys import MAX_REQUEST, NOBODY, RmtsysService
from afsfuse.ctl.server import Handlers, Request, op
from afsfuse.ctl.sockowner import OwnerUnknown, SocketOwner
from afsfuse.keyring.pag import Pags, pag_from_group_pair
from afsfuse.keyring.procs import ExitWatch
from afsfuse.keyring.store import Identity, TokenStore
from afsfuse.rx.errors import RXGEN_SS_UNMARSHAL, RxAbort
from afsfuse.rx.interfaces.rmtsys import NIL_PATHP, RMTSYS, clientcred
from afsfuse.rx.rpc import make_dispatcher

CELL = "afsfuse.test"
ALICE, BOB = 1001, 1002
#: Source ports of loopback callers, and who owns them: (socket uid, holders).
SOCKETS = {
    5001: (ALICE, ((100, ALICE),)),
    5002: (BOB, ((200, BOB),)),
    5003: (ALICE, ((300, ALICE), (301, BOB))),  # alice's socket, passed to a bob process
}
#: The PAG each (made-up) holder process is in, as /proc would tell.
PAGS: dict[int, int] = {}


def pag_of(pid: int) -> int | None:
    return PAGS.get(pid)


def owner_of(address: str, port: int) -> SocketOwner:
    if port not in SOCKETS:
        raise OwnerUnknown("no such socket")
    uid, holders = SOCKETS[port]
    return SocketOwner(uid, port, holders)


def ioctl(table: str, index: int) -> int:
    return 0x40185600 & ~0xFF00 | ord(table) << 8 | index


def settok(cell: str = CELL) -> bytes:
    ticket = b"\x61" + b"t" * 100
    now = int(time.time())
    return (
        struct.pack(">i", len(ticket)) + ticket + struct.pack(">i", 24)
        + struct.pack(">i8siii", 256, b"sesskey!", 7, now, now + 3601)
        + struct.pack(">i", 0) + cell.encode() + b"\0"
    )  # fmt: skip


@dataclass
class Call:
    peer: tuple[str, int]


class Echo:
    """A path op that says whom and what it was asked about."""

    @op("whichcell")
    async def whichcell(self, request: Request) -> dict[str, Any]:
        return {"cell": f"{request.identity.uid}:{request.args['path']}"}


class Paths:
    async def canonical(self, path: str, who: Identity, follow: bool = True) -> str:
        return path


def service(
    store: TokenStore, *, daemon_uid: int = 0, allow: tuple[str, ...] = ()
) -> RmtsysService:
    sysnames = ["amd64_linux26"]
    handlers = Handlers(
        TokenOps(store, CELL),
        SysnameOps(lambda: sysnames, lambda names: sysnames.__setitem__(slice(None), names)),
        PagOps(store, Pags(store, ExitWatch()), lambda: None),
        Echo(),
    )
    return RmtsysService(
        handlers, Paths(), daemon_uid=daemon_uid, owner_of=owner_of,
        allow=[ipaddress.IPv4Network(net) for net in allow], pag_of=pag_of,
    )  # fmt: skip


async def pioctl(
    svc: RmtsysService,
    port: int,
    uid: int,
    table: str,
    index: int,
    data: bytes = b"",
    path: str = NIL_PATHP,
    host: str = "127.0.0.1",
    groups: tuple[int, int] = (0, 0),
) -> tuple[bytes, int]:
    cred = clientcred(uid=uid, group0=groups[0], group1=groups[1])
    out, number = await svc.Pioctl(
        Call((host, port)), cred, path, ioctl(table, index), 1, data, bytes(16384)
    )
    return out, number


async def test_a_caller_is_who_the_kernel_says() -> None:
    store = TokenStore()
    svc = service(store)
    assert await pioctl(svc, 5001, ALICE, "V", 3, settok()) == (b"", 0)
    assert [t.viceid for t in store.list(Identity(ALICE))] == [7]
    # bob claiming alice's uid learns nothing and changes nothing.
    assert await pioctl(svc, 5002, ALICE, "C", 7, struct.pack("=i", 0)) == (b"", errno.EACCES)
    assert await pioctl(svc, 5002, ALICE, "V", 9) == (b"", errno.EACCES)
    assert await pioctl(svc, 5002, ALICE, "V", 3, settok("evil.test")) == (b"", errno.EACCES)
    assert [t.cell for t in store.list(Identity(ALICE))] == [CELL]
    # A socket held by another uid's process too, or one nobody holds: refused.
    assert (await pioctl(svc, 5003, ALICE, "V", 31))[1] == errno.EACCES
    assert (await pioctl(svc, 5999, ALICE, "V", 31))[1] == errno.EACCES
    # bob as himself: his own (empty) token list.
    assert await pioctl(svc, 5002, BOB, "C", 7, struct.pack("=i", 0)) == (b"", errno.EDOM)
    out, number = await pioctl(svc, 5001, ALICE, "C", 7, struct.pack("=i", 0))
    assert number == 0 and b"sesskey!" in out


async def test_a_users_daemon_serves_that_user_only() -> None:
    svc = service(TokenStore(), daemon_uid=ALICE)
    assert await pioctl(svc, 5001, ALICE, "V", 31) == (CELL.encode() + b"\0", 0)
    assert (await pioctl(svc, 5002, BOB, "V", 31))[1] == errno.EACCES


async def test_remote_hosts_need_an_allowed_network_and_keep_their_own_tokens() -> None:
    store = TokenStore()
    assert (await pioctl(service(store), 40000, ALICE, "V", 3, settok(), host="192.0.2.5"))[
        1
    ] == errno.EACCES
    svc = service(store, allow=("192.0.2.0/24",))
    assert (await pioctl(svc, 40000, ALICE, "V", 3, settok(), host="192.0.2.5"))[1] == 0
    remote = Identity(ALICE, None, "192.0.2.5")
    assert store.list(remote) and not store.list(Identity(ALICE))
    assert not store.list(Identity(ALICE, None, "192.0.2.6"))
    # The host's root is nobody there.
    assert await pioctl(svc, 40000, 0, "V", 30, path="/afs/x", host="192.0.2.5") == (
        f"{NOBODY}:/afs/x".encode() + b"\0",
        0,
    )
    # Root here may discard that host's tokens (fs nukenfscreds).
    nuke = struct.pack("4B", 192, 0, 2, 5)
    assert (await pioctl(svc, 5002, BOB, "O", 1, nuke))[1] == errno.EPERM
    assert store.list(remote)
    SOCKETS[5000] = (0, ((1, 0),))
    try:
        assert await pioctl(svc, 5000, 0, "O", 1, nuke) == (b"", 0)
    finally:
        del SOCKETS[5000]
    assert not store.list(remote)


async def test_pioctls_travel_as_rmtsys_xdr_and_overlong_requests_are_cut_off(
    nursery: trio.Nursery,
) -> None:
    SOCKETS[FakeServerCall.peer[1]] = (ALICE, ((100, ALICE),))
    svc = service(TokenStore())
    conn = FakeConnection(nursery, make_dispatcher(RMTSYS, svc, max_request=MAX_REQUEST))
    cred = clientcred(uid=ALICE, group0=0, group1=0)
    reply = await RMTSYS.Pioctl(conn, cred, NIL_PATHP, ioctl("V", 31), 0, b"", bytes(16384))
    assert (reply.OutData, reply.errornumber) == (CELL.encode() + b"\0", 0)
    with pytest.raises(RxAbort) as caught:
        await conn.rpc(struct.pack(">I", 2) + bytes(MAX_REQUEST + 1))
    assert caught.value.code == RXGEN_SS_UNMARSHAL


def two_groups(pag: int) -> tuple[int, int]:
    """The groups OpenAFS's libsys sets for a PAG (afs_get_groups_from_pag)."""
    pag &= 0x7FFFFFFF
    g0 = (0x3FFF & (pag >> 14)) | ((pag >> 28) // 3) << 14
    g1 = (0x3FFF & pag) | ((pag >> 28) % 3) << 14
    return g0 + 0x3F00, g1 + 0x3F00


def test_old_two_group_pags_decode_as_openafs_encodes_them() -> None:
    for pag in (0x41000000, 0x41000001, 0x41ABCDEF):
        assert pag_from_group_pair(*two_groups(pag)) == pag
    assert pag_from_group_pair(0, 0) is None
    assert pag_from_group_pair(1000, 1000) is None


async def test_a_local_callers_pag_is_its_processes_never_its_claim() -> None:
    store = TokenStore()
    svc = service(store)
    pag, claimed = 0x41000123, 0x41000456
    PAGS[100] = pag
    # Groups naming another PAG are a claim, and ignored: the token is the process's PAG's.
    claim = two_groups(claimed)
    assert await pioctl(svc, 5001, ALICE, "V", 3, settok(), groups=claim) == (b"", 0)
    assert store.list(Identity(ALICE, pag)) and not store.list(Identity(ALICE, claimed))
    assert not store.list(Identity(ALICE))
    assert await pioctl(svc, 5001, ALICE, "C", 13) == (struct.pack("=I", pag), 0)
    # Outside it, alice has no token, whatever she claims.
    del PAGS[100]
    assert await pioctl(svc, 5001, ALICE, "C", 7, struct.pack("=i", 0), groups=claim) == (
        b"",
        errno.EDOM,
    )
    # A socket held by processes of two PAGs speaks for neither.
    SOCKETS[5004] = (ALICE, ((400, ALICE), (401, ALICE)))
    PAGS[400] = pag
    assert (await pioctl(svc, 5004, ALICE, "V", 31))[1] == errno.EACCES


async def test_setpag_gives_root_a_number_for_its_groups() -> None:
    svc = service(TokenStore())
    cred = clientcred(uid=ALICE, group0=0, group1=0)
    # Only root can set groups: anyone else would have a number it cannot use.
    assert await svc.SetPag(Call(("127.0.0.1", 5001)), cred) == (0, errno.EPERM)
    SOCKETS[5000] = (0, ((1, 0),))
    first, number = await svc.SetPag(Call(("127.0.0.1", 5000)), clientcred(0, 0, 0))
    second, _ = await svc.SetPag(Call(("127.0.0.1", 5000)), clientcred(0, 0, 0))
    assert number == 0 and first >> 24 == second >> 24 == ord("A") and first != second
    # A claim of another uid is refused, as for any pioctl.
    assert await svc.SetPag(Call(("127.0.0.1", 5002)), cred) == (0, errno.EACCES)


async def test_unknown_commands_paths_and_sizes() -> None:
    svc = service(TokenStore())
    assert await pioctl(svc, 5001, ALICE, "V", 57) == (b"", errno.EINVAL)  # arla's, not served
    assert await pioctl(svc, 5001, ALICE, "Q", 1) == (b"", errno.EINVAL)
    assert await pioctl(svc, 5001, ALICE, "V", 17) == (b"", 0)  # an old no-op
    assert await pioctl(svc, 5001, ALICE, "V", 30) == (b"", errno.EINVAL)  # needs a path
    assert await pioctl(svc, 5001, ALICE, "V", 3, b"x" * 16384) == (b"", errno.EINVAL)
    # Only root sets the sysname list (fs says the same of EPERM as of OpenAFS's EACCES).
    assert await pioctl(svc, 5001, ALICE, "V", 38, struct.pack(">i", 1) + b"x\0") == (
        b"",
        errno.EPERM,
    )


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    key=st.one_of(
        st.sampled_from(sorted(TABLE)), st.tuples(st.sampled_from("VCOX"), st.integers(0, 255))
    ),
    data=st.one_of(st.binary(max_size=300), st.just(settok())),
    path=st.one_of(st.just(NIL_PATHP), st.text(max_size=50)),
    uid=st.integers(-(2**31), 2**31 - 1),
    port=st.sampled_from(sorted(SOCKETS)),
)
async def test_no_request_fails_the_service_or_touches_another_user(
    key: tuple[str, int], data: bytes, path: str, uid: int, port: int
) -> None:
    store = TokenStore()
    svc = service(store)
    await pioctl(svc, 5001, ALICE, "V", 3, settok())
    before = store.list(Identity(ALICE))
    out, number = await pioctl(svc, port, uid, key[0], key[1], data, path)
    assert isinstance(out, bytes) and number >= 0
    if number:
        assert out == b""
    if port != 5001 or uid != ALICE:
        assert store.list(Identity(ALICE)) == before


@pytest.fixture(autouse=True)
def _restore_sockets():
    saved = dict(SOCKETS)
    yield
    SOCKETS.clear()
    SOCKETS.update(saved)
    PAGS.clear()
