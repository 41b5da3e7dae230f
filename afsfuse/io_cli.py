"""afsfuse-io: read or write one AFS file by its fid, straight over Rx (like OpenAFS's afsio).

    afsfuse-io fidread  --cell CELL --fid VOLUME.VNODE.UNIQUE [-o FILE]
    afsfuse-io fidwrite --cell CELL --fid VOLUME.VNODE.UNIQUE < FILE

No mount and no cache: the volume is located through the cell's VL servers (from
CellServDB) and the data streams between the fileserver and the local file in pieces of a
few MB.  The token comes from the caller's Kerberos credentials unless --security none.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import trio

from afsfuse.fs.callback import CallbackRegistry
from afsfuse.fs.cmservice import CacheManagerService
from afsfuse.keyring import Token, TokenError, token_from_ccache
from afsfuse.rx.driver import ClientConnection, Endpoint, open_endpoint
from afsfuse.rx.errors import RxAbort, RxTimeout
from afsfuse.rx.interfaces.fs import (
    AFS_SETMODTIME,
    FS,
    VBUSY,
    VMOVED,
    VNOVNODE,
    VNOVOL,
    VOFFLINE,
    VRESTARTING,
    VSALVAGE,
    AFSFid,
    AFSStoreStatus,
)
from afsfuse.rx.interfaces.vl import RWVOL, VL_NOENT
from afsfuse.rx.rxkad import Level, RxkadClient
from afsfuse.rx.security import RXNULL, ClientSecurity
from afsfuse.vl.cellservdb import DEFAULT_CELLSERVDB, cell_key, read_cellservdb
from afsfuse.vl.vlclient import VLClient, VolumeSite

#: Bytes moved between the call and the local file at a time.
BUFFER_SIZE = 1 << 20
#: Bytes asked for per FetchData64 call; 0 fetches the whole file in one call.
DEFAULT_PIECE = 0
_WHOLE_FILE = 1 << 62
#: "No rights", plain and as the "uae" code a fileserver sends once told we translate errors.
_PERMISSION_DENIED = frozenset({errno.EACCES, 49733376 + errno.EACCES - 1})
#: Errors after which another site of the volume may do better.
_TRY_NEXT_SITE = frozenset({VSALVAGE, VNOVOL, VOFFLINE, VMOVED, VBUSY, VRESTARTING})
_LEVELS = {"clear": Level.CLEAR, "auth": Level.AUTH, "crypt": Level.CRYPT}


class IoError(Exception):
    """A failure worth one line on stderr."""


@dataclass
class Transfer:
    nbytes: int = 0
    seconds: float = 0.0


def parse_fid(text: str) -> AFSFid:
    parts = text.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise IoError(f"bad fid {text!r}: expected VOLUME.VNODE.UNIQUE, all numbers")
    volume, vnode, unique = (int(p) for p in parts)
    if not all(0 < n <= 0xFFFFFFFF for n in (volume, vnode)) or unique > 0xFFFFFFFF:
        raise IoError(f"bad fid {text!r}: numbers out of range")
    return AFSFid(volume, vnode, unique)


def describe(error: RxAbort, what: str) -> str:
    """One line for an abort, in the words a user expects."""
    if isinstance(error, RxTimeout):
        return f"{what}: the server did not answer ({error})"
    if error.code in _PERMISSION_DENIED:
        return f"{what}: permission denied"
    if error.code == VNOVNODE:
        return f"{what}: no such file (the vnode does not exist)"
    return f"{what}: {error}"


def _security(level: str, token: Token | None) -> ClientSecurity:
    if level == "none":
        return RXNULL
    assert token is not None
    return RxkadClient(token.session_key, token.ticket, token.kvno, _LEVELS[level])


@contextlib.contextmanager
def _input_file() -> Iterator[BinaryIO]:
    """stdin as a seekable file whose size is known (a pipe is spooled to disk first)."""
    stdin = sys.stdin.buffer
    if stat.S_ISREG(os.fstat(stdin.fileno()).st_mode):
        yield stdin
        return
    with tempfile.TemporaryFile() as spool:
        while chunk := stdin.read(BUFFER_SIZE):
            spool.write(chunk)
        spool.seek(0)
        yield spool


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


class FidIO:
    """One transfer: locate the volume, connect to a site, move the bytes."""

    def __init__(
        self, endpoint: Endpoint, cell: str, vl_hosts: list[str], security: ClientSecurity
    ):
        self.endpoint = endpoint
        self.cell = cell
        self.vl = VLClient.on_endpoint(endpoint, vl_hosts)
        self.security = security

    async def sites(self, fid: AFSFid, for_write: bool) -> list[VolumeSite]:
        try:
            location = await self.vl.locate(fid.Volume)
        except RxAbort as error:
            if error.code == VL_NOENT:
                raise IoError(f"no volume {fid.Volume} in cell {self.cell}") from None
            raise IoError(describe(error, f"volume location in {self.cell}")) from None
        voltype = location.type_of(fid.Volume)
        if for_write and voltype != RWVOL:
            raise IoError(f"volume {fid.Volume} ({location.name}) is not a read-write volume")
        sites = list(location.sites_for(fid.Volume))
        if not sites:
            raise IoError(f"volume {fid.Volume} ({location.name}) has no usable site")
        return sites

    def connect(self, site: VolumeSite) -> ClientConnection:
        return self.endpoint.connect((site.addresses[0], FS.port), FS.service_id, self.security)

    async def read(self, fid: AFSFid, out_fd: int, piece: int) -> Transfer:
        sites = await self.sites(fid, for_write=False)
        buf = bytearray(BUFFER_SIZE)
        view = memoryview(buf)
        pos = 0
        started = time.monotonic()
        for index, site in enumerate(sites):
            conn = self.connect(site)
            try:
                pos = await self._fetch_from(conn, fid, pos, piece, out_fd, view)
                await self._give_up_callbacks(conn)
                return Transfer(pos, time.monotonic() - started)
            except RxAbort as error:
                retry = isinstance(error, RxTimeout) or error.code in _TRY_NEXT_SITE
                if not retry or index + 1 == len(sites):
                    raise IoError(describe(error, f"reading {_fid_text(fid)}")) from None
        raise AssertionError("unreachable")

    async def _fetch_from(
        self,
        conn: ClientConnection,
        fid: AFSFid,
        pos: int,
        piece: int,
        out_fd: int,
        view: memoryview,
    ) -> int:
        """Fetch from pos to the end of the file; return the final position.  pos advances
        as data is written, so another site can carry on where this one failed."""
        want = piece or _WHOLE_FILE
        while True:
            async with FS.FetchData64.stream(conn, fid, pos, want) as stream:
                length = stream.length
                while stream.remaining:
                    # Whole buffers to the writer thread: one thread hop per BUFFER_SIZE.
                    filled = 0
                    while filled < len(view) and (n := await stream.recv_into(view[filled:])):
                        filled += n
                    await trio.to_thread.run_sync(_write_all, out_fd, view[:filled])
                    pos += filled
            if length < want:
                return pos

    async def write(self, fid: AFSFid, source: BinaryIO) -> Transfer:
        sites = await self.sites(fid, for_write=True)
        size = os.fstat(source.fileno()).st_size - source.tell()
        status = AFSStoreStatus(Mask=AFS_SETMODTIME, ClientModTime=int(time.time()))
        conn = self.connect(sites[0])
        started = time.monotonic()
        try:
            async with FS.StoreData64.stream(conn, fid, status, 0, size, size) as stream:
                sent = 0
                while sent < size:
                    chunk = await trio.to_thread.run_sync(
                        source.read, min(BUFFER_SIZE, size - sent)
                    )
                    if not chunk:
                        raise IoError(f"input ended after {sent} of {size} bytes")
                    await stream.send(chunk)
                    sent += len(chunk)
            await self._give_up_callbacks(conn)
        except RxAbort as error:
            raise IoError(describe(error, f"writing {_fid_text(fid)}")) from None
        return Transfer(size, time.monotonic() - started)

    @staticmethod
    async def _give_up_callbacks(conn: ClientConnection) -> None:
        """Spare the fileserver a break to a cache manager that is about to vanish."""
        with trio.move_on_after(2), contextlib.suppress(RxAbort):
            await FS.GiveUpAllCallBacks(conn)


def _fid_text(fid: AFSFid) -> str:
    return f"{fid.Volume}.{fid.Vnode}.{fid.Unique}"


async def _run(
    args: argparse.Namespace, fid: AFSFid, vl_hosts: list[str], token: Token | None
) -> Transfer:
    async with open_endpoint() as endpoint:
        CacheManagerService(CallbackRegistry(), local_cell=args.cell).install(endpoint)
        io = FidIO(endpoint, args.cell, vl_hosts, _security(args.security, token))
        if args.command == "fidread":
            if args.output in (None, "-"):
                return await io.read(fid, sys.stdout.buffer.fileno(), args.piece)
            with open(args.output, "wb") as out:
                return await io.read(fid, out.fileno(), args.piece)
        with _input_file() as source:
            return await io.write(fid, source)


def _sole(error: BaseException) -> BaseException:
    """The one real error inside the exception groups trio's nurseries wrap it in."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="afsfuse-io", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("fidread", "copy a file's contents to stdout or -o FILE"),
        ("fidwrite", "replace a file's contents with stdin"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--cell", required=True)
        cmd.add_argument("--fid", required=True, help="VOLUME.VNODE.UNIQUE")
        cmd.add_argument("--security", choices=("none", "clear", "auth", "crypt"), default="crypt")
        cmd.add_argument("--cellservdb", default=str(DEFAULT_CELLSERVDB))
        cmd.add_argument("--verbose", "-v", action="store_true", help="print the rate to stderr")
        if name == "fidread":
            cmd.add_argument("-o", "--output", help="write here instead of stdout")
            cmd.add_argument(
                "--piece",
                type=int,
                default=DEFAULT_PIECE,
                help="bytes per FetchData64 call (0: the whole file in one call)",
            )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        fid = parse_fid(args.fid)
        try:
            cells = read_cellservdb(args.cellservdb)
        except OSError as error:
            raise IoError(f"cannot read {args.cellservdb}: {error.strerror}") from None
        entry = cells.get(cell_key(args.cell))
        if entry is None:
            raise IoError(f"unknown cell {args.cell} (not in {args.cellservdb})")
        if not entry.servers:
            raise IoError(f"cell {args.cell} has no VL servers in {args.cellservdb}")
        token = None
        if args.security != "none":
            try:
                token = token_from_ccache(entry.name)
            except TokenError as error:
                raise IoError(f"no token for {entry.name}: {error}") from None
        try:
            transfer = trio.run(_run, args, fid, [s.address for s in entry.servers], token)
        except BaseExceptionGroup as group:
            raise _sole(group) from None
    except IoError as error:
        print(f"afsfuse-io: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if args.verbose:
        rate = transfer.nbytes / transfer.seconds / 1e6 if transfer.seconds else 0.0
        print(
            f"afsfuse-io: {args.command} {transfer.nbytes} bytes in {transfer.seconds:.3f} s,"
            f" {rate:.1f} MB/s",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
