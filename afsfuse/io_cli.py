"""afsfuse-io: read or write one AFS file by its fid, straight over Rx (like OpenAFS's afsio).

    afsfuse-io fidread  --cell CELL --fid VOLUME.VNODE.UNIQUE [-o FILE]
    afsfuse-io fidwrite --cell CELL --fid VOLUME.VNODE.UNIQUE < FILE

No mount and no cache: the volume is located through the cell's VL servers (from
CellServDB), its sites tried as the mount tries them (fs/rotate.py), and the data streams
between the fileserver and the local file in pieces of a few MB.  The token comes from the caller's Kerberos credentials unless --security none.
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
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import trio

from afsfuse.fs.callback import CallbackRegistry
from afsfuse.fs.cmservice import CacheManagerService
from afsfuse.fs.errors import FsError
from afsfuse.fs.rotate import RotationConfig, Rotator
from afsfuse.fs.server import FileServer, ServerConfig, ServerTable
from afsfuse.fs.stats import Stats
from afsfuse.fs.volume import VolumeCache
from afsfuse.keyring import Token, TokenError, token_from_ccache
from afsfuse.rx.driver import ClientConnection, Endpoint, open_endpoint
from afsfuse.rx.errors import RxAbort
from afsfuse.rx.interfaces.fs import AFS_SETMODTIME, FS, AFSFid, AFSStoreStatus
from afsfuse.rx.interfaces.vl import RWVOL, VL_NOENT
from afsfuse.vl.cellservdb import DEFAULT_CELLSERVDB, cell_key, read_cellservdb
from afsfuse.vl.vlclient import VLClient

#: Bytes moved between the call and the local file at a time.
BUFFER_SIZE = 1 << 20
#: Bytes asked for per FetchData64 call; 0 fetches the whole file in one call.
DEFAULT_PIECE = 0
_WHOLE_FILE = 1 << 62


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
    """One transfer through the cache manager's own rotation (fs/rotate.py): the volume's
    sites from its VLDB entry, fail-over, busy volumes and errors as a mount sees them."""

    def __init__(
        self, endpoint: Endpoint, cell: str, vl_hosts: list[str], level: str, token: Token | None
    ):
        self.cell = cell
        vl = VLClient.on_endpoint(endpoint, vl_hosts)
        self.volumes = VolumeCache(lambda _cell, volume: vl.locate(volume))
        servers = ServerTable(endpoint, ServerConfig(security=level))
        self.rotator = Rotator(servers, self.volumes, RotationConfig(), Stats())
        self.token = token

    async def read(self, fid: AFSFid, out_fd: int, piece: int) -> Transfer:
        await self._locate(fid, writing=False)
        buf = bytearray(BUFFER_SIZE)
        view = memoryview(buf)
        pos = 0
        started = time.monotonic()

        async def fetch(conn: ClientConnection, server: FileServer) -> None:
            """From pos to the end of the file; pos advances as data is written, so another
            site carries on where this one failed."""
            nonlocal pos
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
                    await _give_up_callbacks(conn)
                    return

        await self._call(fid, "FS.FetchData64", fetch, f"reading {_fid_text(fid)}")
        return Transfer(pos, time.monotonic() - started)

    async def write(self, fid: AFSFid, source: BinaryIO) -> Transfer:
        await self._locate(fid, writing=True)
        start = source.tell()
        size = os.fstat(source.fileno()).st_size - start
        status = AFSStoreStatus(Mask=AFS_SETMODTIME, ClientModTime=int(time.time()))
        started = time.monotonic()

        async def store(conn: ClientConnection, server: FileServer) -> None:
            source.seek(start)  # a busy volume's retry sends it all again
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
            await _give_up_callbacks(conn)

        await self._call(fid, "FS.StoreData64", store, f"writing {_fid_text(fid)}")
        return Transfer(size, time.monotonic() - started)

    async def _locate(self, fid: AFSFid, *, writing: bool) -> None:
        """The volume's VLDB entry, looked up first (the rotation reuses it), so that a
        missing volume is told apart from a missing file."""
        try:
            location = await self.volumes.location(self.cell, fid.Volume)
        except RxAbort as error:
            raise IoError(self._volume_error(fid, error)) from None
        if writing and location.type_of(fid.Volume) != RWVOL:
            raise IoError(f"volume {fid.Volume} ({location.name}) is not a read-write volume")

    async def _call(
        self,
        fid: AFSFid,
        name: str,
        op: Callable[[ClientConnection, FileServer], Awaitable[None]],
        what: str,
    ) -> None:
        try:
            await self.rotator.call(self.cell, fid.Volume, self.token, name, op)
        except FsError as error:
            raise IoError(f"{what}: {_explained(error)}") from None

    def _volume_error(self, fid: AFSFid, error: RxAbort) -> str:
        if error.code == VL_NOENT:
            return f"no volume {fid.Volume} in cell {self.cell}"
        return f"volume location in {self.cell}: {error}"


def _explained(error: FsError) -> str:
    """One line for a failure, in the words a user expects."""
    if error.errno == errno.EACCES:
        return "permission denied"
    if error.errno == errno.ENOENT:
        return "no such file (the vnode does not exist)"
    if error.errno == errno.ETIMEDOUT:
        return f"the server did not answer ({error.strerror})"
    return error.strerror


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
        level = "clear" if args.security == "none" else args.security  # no token: rxnull
        io = FidIO(endpoint, args.cell, vl_hosts, level, token)
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
