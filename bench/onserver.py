"""When what a workload wrote is on the fileserver, seen from outside every mount.

afsd.fuse has no flush or fsync handler: its close() returns before the data is stored, and
the store goes on in the background (on FUSE's release).  afsfuse's close() waits for the
store, as AFS promises.  Timing only until the program returns would favour the client that
defers its work, so for the workloads that write, the bench also times until the fileserver
holds every file written at its full length.

The fileserver itself is asked, over Rx with afsfuse's own library (the VL client for the
volume, the rotation of fs/rotate.py, FetchData64 of each directory parsed by fs/dir.py,
InlineBulkStatus of the files), never through a mount; anonymously in the bench, whose
volume system:anyuser may read and look up.  A pass lists the directories not yet seen whole and asks
the status of the files not yet seen complete; passes follow every POLL_INTERVAL until
nothing is missing, or the time limit ends it.  The time taken is the end of the pass that
found the last file complete, so it includes up to one pass (a few hundred RPCs at most),
the same for every client; the JSON keeps that pass's length.
"""

from __future__ import annotations

import posixpath
import tarfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from afsfuse.fs.callback import CallbackRegistry
from afsfuse.fs.cmservice import CacheManagerService
from afsfuse.fs.dir import DirectoryError, DirEntry, parse_directory
from afsfuse.fs.directories import MAX_DIRECTORY
from afsfuse.fs.errors import FsError
from afsfuse.fs.rotate import RotationConfig, Rotator
from afsfuse.fs.server import ServerConfig, ServerTable
from afsfuse.fs.stats import Stats
from afsfuse.fs.volume import VolumeCache
from afsfuse.keyring import Token
from afsfuse.rx.driver import open_endpoint
from afsfuse.rx.errors import RxAbort
from afsfuse.rx.interfaces.fs import AFSCBMAX, FS, AFSFid
from afsfuse.vl.vlclient import VLClient

#: Seconds between passes.
POLL_INTERVAL = 0.05
#: Calls in flight at once within a pass (Rx gives a connection 4 channels; more wait).
CONCURRENCY = 8


class NotOnServer(RuntimeError):
    """The fileserver did not hold everything in time, or could not be asked."""


@dataclass(frozen=True)
class Expected:
    """Files a workload leaves in the volume, by path from the volume's root, with their
    lengths (None: any length, for symbolic links); their directories are implied."""

    files: Mapping[str, int | None]

    @property
    def dirs(self) -> frozenset[str]:
        """Every directory on the way to a file, the volume's root ("") included."""
        out = {""}
        for path in self.files:
            while (path := posixpath.dirname(path)) not in out:
                out.add(path)
        return frozenset(out)

    @staticmethod
    def from_tar(tarball: Path, under: str) -> Expected:
        """What `tar x` of `tarball` leaves in the directory `under`: regular files at their
        size, hard links at their target's, symbolic links at any length.  Empty directories
        are not expected (the stdlib has none that holds no file)."""
        files: dict[str, int | None] = {}
        with tarfile.open(tarball) as archive:
            members = archive.getmembers()
        sizes = {posixpath.normpath(m.name): m.size for m in members if m.isreg()}
        for m in members:
            name = posixpath.normpath(m.name)
            if m.isreg():
                files[posixpath.join(under, name)] = m.size
            elif m.islnk():
                files[posixpath.join(under, name)] = sizes[posixpath.normpath(m.linkname)]
            elif m.issym():
                files[posixpath.join(under, name)] = None
        return Expected(files)


@dataclass
class Progress:
    """What the passes so far found: pure bookkeeping, no I/O."""

    expected: Expected
    fids: dict[str, AFSFid] = field(default_factory=dict)
    whole_dirs: set[str] = field(default_factory=set)
    stored: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._dirs = self.expected.dirs
        self._children: dict[str, set[str]] = {d: set() for d in self._dirs}
        for path in (*self._dirs, *self.expected.files):
            if path:
                self._children[posixpath.dirname(path)].add(path)

    def root(self, fid: AFSFid) -> None:
        self.fids[""] = fid

    def to_list(self) -> list[tuple[str, AFSFid]]:
        """Directories whose fid is known and whose listing lacked something expected."""
        return [(d, self.fids[d]) for d in sorted(self._dirs - self.whole_dirs) if d in self.fids]

    def listed(self, directory: str, entries: Mapping[bytes, DirEntry]) -> None:
        volume = self.fids[directory].Volume
        missing = False
        for path in self._children[directory]:
            entry = entries.get(posixpath.basename(path).encode())
            if entry is None:
                missing = True
            else:
                self.fids[path] = AFSFid(volume, entry.vnode, entry.unique)
        if not missing:
            self.whole_dirs.add(directory)

    def to_stat(self) -> list[tuple[str, AFSFid]]:
        """Files found in their directory and not yet seen complete."""
        return [
            (path, self.fids[path])
            for path in sorted(self.expected.files)
            if path in self.fids and path not in self.stored
        ]

    def status(self, path: str, length: int) -> None:
        wanted = self.expected.files[path]
        if wanted is None or wanted == length:
            self.stored.add(path)

    @property
    def done(self) -> bool:
        return len(self.stored) == len(self.expected.files) and self.whole_dirs == self._dirs

    def summary(self) -> str:
        return (
            f"{len(self.stored)} of {len(self.expected.files)} files complete, "
            f"{len(self.whole_dirs)} of {len(self._dirs)} directories whole"
        )


@dataclass(frozen=True)
class Stored:
    """When the last pass ended (time.monotonic()), and how long that pass took."""

    at: float
    last_pass: float


class ServerWatch:
    """Polls one volume of a cell from the bench process: anonymously, or with `token`
    (rxkad clear) where system:anyuser may not look."""

    def __init__(
        self, cell: str, vl_hosts: list[str], volume: str, token: Token | None = None
    ) -> None:
        self.cell = cell
        self.vl_hosts = vl_hosts
        self.volume = volume
        self.token = token

    def wait(self, expected: Expected, timeout: float) -> Stored:
        """Poll until the fileserver holds everything `expected`; NotOnServer after
        `timeout` seconds or on an error."""
        progress = Progress(expected)
        try:
            return trio.run(self._wait, progress, timeout)
        except trio.TooSlowError:
            raise NotOnServer(
                f"not on the server after {timeout:.0f} s: {progress.summary()}"
            ) from None
        except (BaseExceptionGroup, FsError, RxAbort, DirectoryError, OSError) as e:
            leaf = _sole(e)
            if not isinstance(leaf, FsError | RxAbort | DirectoryError | OSError):
                raise
            raise NotOnServer(f"asking the fileserver: {leaf} ({progress.summary()})") from None

    async def _wait(self, progress: Progress, timeout: float) -> Stored:
        with trio.fail_after(timeout):
            async with open_endpoint() as endpoint:
                # Answers the fileserver's callback breaks at once, so a client's store never
                # waits on the poller.
                CacheManagerService(CallbackRegistry(), local_cell=self.cell).install(endpoint)
                vl = VLClient.on_endpoint(endpoint, self.vl_hosts)
                volumes = VolumeCache(lambda _cell, volume: vl.locate(volume))
                servers = ServerTable(endpoint, ServerConfig(security="clear"))
                rotator = Rotator(servers, volumes, RotationConfig(), Stats())
                location = await volumes.location(self.cell, self.volume)
                progress.root(AFSFid(location.rw_id, 1, 1))
                try:
                    return await self._passes(rotator, location.rw_id, progress)
                finally:
                    with trio.move_on_after(2):
                        await self._give_up_callbacks(rotator, location.rw_id)

    async def _passes(self, rotator: Rotator, volume: int, progress: Progress) -> Stored:
        limit = trio.CapacityLimiter(CONCURRENCY)

        async def call(name: str, op: Any) -> Any:
            async with limit:
                return await rotator.call(self.cell, volume, self.token, name, op)

        async def list_dir(directory: str, fid: AFSFid) -> None:
            data, _reply = await call(
                "FS.FetchData64", lambda conn, _server: FS.FetchData64(conn, fid, 0, MAX_DIRECTORY)
            )
            progress.listed(directory, parse_directory(data))

        async def stat(batch: list[tuple[str, AFSFid]]) -> None:
            fids = [fid for _path, fid in batch]
            reply = await call(
                "FS.InlineBulkStatus", lambda conn, _server: FS.InlineBulkStatus(conn, fids)
            )
            for (path, _fid), status in zip(batch, reply.StatArray, strict=True):
                if not status.errorCode:
                    progress.status(path, status.Length | status.Length_hi << 32)

        while True:
            started = time.monotonic()
            listed: set[str] = set()
            while batch := [(d, f) for d, f in progress.to_list() if d not in listed]:
                listed.update(d for d, _f in batch)
                async with trio.open_nursery() as nursery:
                    for directory, fid in batch:
                        nursery.start_soon(list_dir, directory, fid)
            pending = progress.to_stat()
            async with trio.open_nursery() as nursery:
                for i in range(0, len(pending), AFSCBMAX):
                    nursery.start_soon(stat, pending[i : i + AFSCBMAX])
            now = time.monotonic()
            if progress.done:
                return Stored(now, now - started)
            await trio.sleep(POLL_INTERVAL)

    async def _give_up_callbacks(self, rotator: Rotator, volume: int) -> None:
        """Spare the fileserver breaks to a poller about to vanish."""
        await rotator.call(
            self.cell, volume, self.token, "FS.GiveUpAllCallBacks",
            lambda conn, _server: FS.GiveUpAllCallBacks(conn),
        )  # fmt: skip


def _sole(error: BaseException) -> BaseException:
    """The one error inside the exception groups trio's nurseries wrap it in."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error
