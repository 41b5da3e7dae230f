"""Dirty data: bytes written locally and not yet stored on the fileserver.

Dirty data is never evicted.  A file no bigger than one chunk is kept in memory while dirty
(a budget bounds them all): creating a small file then costs no disk I/O and no worker
thread at all, which is most of what `tar x` or a build does.  A file that grows past a
chunk, or finds the budget spent, moves to plain files, one directory per file,

    dirty/<cell>/<volume>.<vnode>.<unique>/state.json   base data version, dirty chunks, writer
    dirty/<cell>/<volume>.<vnode>.<unique>/data         dirty chunks at their file offsets

Plain files because writes are partial: a FUSE write of a few KiB into a 1 MiB chunk is one
`pwrite` here, where diskcache (whole values only) would rewrite the whole chunk.  The size
of `data` is the file's length, so an ordinary write costs one `pwrite` and nothing else;
the state file changes only when a chunk becomes dirty or on truncation, and is replaced
atomically (write, rename) after the data it describes.  A write cut short by a crash
leaves at most what a local filesystem would: part of the write, never bytes from
elsewhere.  What is in memory is gone with the process, as unwritten pages are with a
kernel: the cache manager moves a file to disk (`persist`) once it has been dirty for a
moment, when its store fails, and at unmount, so only the writes of the last moment before a
crash can be lost, and their program was never told they were stored.

The state also says who wrote the file (`writer`, whose token stores it when no program
does), whether a store failed (`unsent`: a background task retries it), and which data
version a store in flight may have made (`pending`, with the modification time it sent), so
that after a crash the cache manager can tell the fileserver's copy it made itself from one
another client made.

What a byte of the file is while it is dirty: inside a dirty chunk, the byte in `data`;
otherwise zero at or beyond `zero_from` (a truncation cut it off), else the clean byte at
`base_version`; nothing exists at or beyond `length`.  A chunk becomes dirty whole: the
first write into it needs its clean content (`needs_base`) unless it lies entirely past
what the base version still contributes.

Every method takes `blocking`: with False, an operation that would touch the disk raises
`WouldBlock` before changing anything, so an event loop can try it inline first and hand
it to a worker thread only when it must.  The one disk operation made inline is a small
write into a chunk already dirty on disk (`INLINE_WRITE`).
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from afsfuse.cache.base import FidKey, check_cell_name, make_private_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DirtyFile:
    """A snapshot of one dirty file's state."""

    fid: FidKey
    base_version: int
    length: int
    zero_from: int
    chunk_size: int
    chunks: frozenset[int]
    #: Who wrote it: (uid, PAG or None); None when nobody is known.
    writer: tuple[int, int | None] | None = None
    #: A store failed (or a run before this one left it): stored in the background.
    unsent: bool = False
    #: (data version, modification time) a store in flight may have left on the server.
    pending: tuple[int, int] | None = None
    #: Monotonic time it became dirty in memory; None on disk.
    since: float | None = None

    def needs_base(self, offset: int, size: int) -> list[int]:
        """Chunks a write of `size` bytes at `offset` touches that are not dirty yet and
        still hold bytes of the base version: their clean content must come with the write."""
        if size <= 0:
            return []
        first, last = offset // self.chunk_size, (offset + size - 1) // self.chunk_size
        known_end = min(self.length, self.zero_from)
        return [
            index
            for index in range(first, last + 1)
            if index not in self.chunks and index * self.chunk_size < known_end
        ]


class BaseNeeded(LookupError):
    """A write touched chunks whose clean content was not supplied."""

    def __init__(self, indexes: list[int]) -> None:
        super().__init__(f"clean content needed for chunks {indexes}")
        self.indexes = indexes


class WouldBlock(Exception):
    """The operation needs the disk and `blocking=False` was given; nothing was changed."""


#: Bytes of small dirty files kept in memory, all files together.
DEFAULT_MEMORY_BUDGET = 32 << 20


#: A write this small into a dirty chunk of a file on disk is made even when the caller
#: must not block: it lands in the page cache in microseconds, where handing it to a
#: thread costs ~100 us (tar writes 10 KiB at a time).  Bigger ones, as cp's 128 KiB, may
#: meet the kernel's throttling of dirty pages, and go to a thread.
INLINE_WRITE = 32 << 10


class DirtyStore:
    """All dirty files of one cache directory.  Thread-safe; the state of every file is
    kept in memory (written through for files on disk), so `get` and `list` never touch
    the disk."""

    def __init__(
        self, path: Path, chunk_size: int, memory_budget: int = DEFAULT_MEMORY_BUDGET
    ) -> None:
        self.path = path
        self.chunk_size = chunk_size
        self.memory_budget = memory_budget
        make_private_dir(path)
        self._lock = threading.Lock()
        self._files: dict[FidKey, DirtyFile] = {}
        #: Content of the files kept in memory: `length` bytes, zeros outside dirty chunks.
        self._resident: dict[FidKey, bytearray] = {}
        self._resident_bytes = 0
        self._load()

    def _load(self) -> None:
        for cell_dir in self.path.iterdir():
            for file_dir in cell_dir.iterdir():
                try:
                    state = json.loads((file_dir / "state.json").read_text())
                    volume, vnode, unique = (int(part) for part in file_dir.name.split("."))
                except FileNotFoundError:
                    shutil.rmtree(file_dir)  # died before its first state was written
                    continue
                except (OSError, ValueError) as e:
                    log.error(
                        "unsent data in %s cannot be read (%s); left where it is", file_dir, e
                    )
                    continue
                fid = FidKey(cell_dir.name, volume, vnode, unique)
                length = os.stat(file_dir / "data").st_size
                chunk_size = state["chunk_size"]
                # A truncation cut short between the data and the state: finish it here.
                writer, pending = state.get("writer"), state.get("pending")
                # Whatever a run before this one left is stored (or set aside) in the background.
                self._files[fid] = DirtyFile(
                    fid,
                    state["base_version"],
                    length,
                    min(state["zero_from"], length),
                    chunk_size,
                    frozenset(i for i in state["chunks"] if i * chunk_size < length),
                    writer=(writer[0], writer[1]) if writer else None,
                    unsent=True,
                    pending=(pending[0], pending[1]) if pending else None,
                )

    def _dir(self, fid: FidKey) -> Path:
        return self.path / check_cell_name(fid.cell) / f"{fid.volume}.{fid.vnode}.{fid.unique}"

    def _data_path(self, fid: FidKey) -> str:
        """A plain string: pathlib costs more than the pwrite on the write path."""
        return f"{self.path}/{check_cell_name(fid.cell)}/{fid.volume}.{fid.vnode}.{fid.unique}/data"

    def _save(self, dirty: DirtyFile) -> None:
        state = {
            "base_version": dirty.base_version,
            "zero_from": dirty.zero_from,
            "chunk_size": dirty.chunk_size,
            "chunks": sorted(dirty.chunks),
            "writer": dirty.writer,
            "pending": dirty.pending,
        }
        directory = self._dir(dirty.fid)
        tmp = directory / "state.tmp"
        tmp.write_text(json.dumps(state))
        os.replace(tmp, directory / "state.json")
        self._files[dirty.fid] = dirty

    def _fits(self, fid: FidKey, length: int) -> bool:
        """May `fid` be kept in memory at `length` bytes?  (Never with a budget of 0.)"""
        held = self._resident.get(fid)
        more = length - (len(held) if held is not None else 0)
        return (
            self.memory_budget > 0
            and length <= self.chunk_size
            and self._resident_bytes + more <= self.memory_budget
        )

    def _resize(self, fid: FidKey, length: int) -> bytearray:
        content = self._resident[fid]
        self._resident_bytes += length - len(content)
        if length < len(content):
            del content[length:]
        else:
            content.extend(bytes(length - len(content)))
        return content

    def _spill(self, fid: FidKey) -> None:
        """Move a file from memory to its directory on disk."""
        content = self._resident[fid]
        directory = self._dir(fid)
        shutil.rmtree(directory, ignore_errors=True)
        make_private_dir(directory.parent)
        directory.mkdir(mode=0o700)
        with open(directory / "data", "xb") as data:
            data.write(content)
        self._save(replace(self._files[fid], since=None))
        del self._resident[fid]
        self._resident_bytes -= len(content)

    def _on_disk(self, fid: FidKey, blocking: bool) -> None:
        """Make sure `fid` is on disk before a disk operation (or refuse, not blocking)."""
        if not blocking:
            raise WouldBlock
        if fid in self._resident:
            self._spill(fid)

    def get(self, fid: FidKey) -> DirtyFile | None:
        return self._files.get(fid)

    def memory_used(self) -> int:
        """Bytes of the dirty files kept in memory (against memory_budget)."""
        return self._resident_bytes

    def in_memory(self, fid: FidKey) -> bool:
        return fid in self._resident

    def list(self) -> list[DirtyFile]:
        """Every dirty file, e.g. to store what a previous run left behind."""
        with self._lock:
            return list(self._files.values())

    def begin(
        self,
        fid: FidKey,
        base_version: int,
        length: int,
        writer: tuple[int, int | None] | None = None,
        *,
        blocking: bool = True,
    ) -> DirtyFile:
        """Start tracking local changes to `fid`, whose clean content is `length` bytes at
        `base_version`, written by `writer` (uid, PAG).  If `fid` is dirty already, its
        existing state is returned unchanged (the caller compares `base_version`)."""
        with self._lock:
            existing = self._files.get(fid)
            if existing is not None:
                return existing
            dirty = DirtyFile(
                fid, base_version, length, length, self.chunk_size, frozenset(), writer=writer
            )
            if self._fits(fid, length):
                self._resident[fid] = bytearray(length)
                self._resident_bytes += length
                self._files[fid] = replace(dirty, since=time.monotonic())
                return self._files[fid]
            if not blocking:
                raise WouldBlock
            directory = self._dir(fid)
            shutil.rmtree(directory, ignore_errors=True)
            make_private_dir(directory.parent)
            directory.mkdir(mode=0o700)
            with open(directory / "data", "xb") as data:
                os.ftruncate(data.fileno(), length)  # sparse: the base's bytes are not here
            self._save(dirty)
            return dirty

    def write(
        self,
        fid: FidKey,
        offset: int,
        data: bytes,
        bases: Mapping[int, bytes] | None = None,
        *,
        blocking: bool = True,
    ) -> DirtyFile:
        """Write `data` at `offset`.  `bases` maps each index from `needs_base` to that
        chunk's clean content; without them `BaseNeeded` is raised and nothing is written."""
        bases = bases or {}
        with self._lock:
            dirty = self._current(fid)
            missing = [i for i in dirty.needs_base(offset, len(data)) if i not in bases]
            if missing:
                raise BaseNeeded(missing)
            if not data:
                return dirty
            size = dirty.chunk_size
            end = offset + len(data)
            length = max(dirty.length, end)
            first, last = offset // size, (end - 1) // size
            new_chunks = [i for i in range(first, last + 1) if i not in dirty.chunks]
            updated = replace(dirty, length=length, chunks=dirty.chunks | set(new_chunks))
            resident = fid in self._resident
            in_memory = resident and self._fits(fid, length)
            inline = not resident and not new_chunks and len(data) <= INLINE_WRITE
            if not in_memory and not inline:
                self._on_disk(fid, blocking)  # before any work a thread would repeat
            pieces = self._pieces(dirty, offset, data, bases, length, new_chunks)
            if in_memory:
                content = self._resize(fid, length)
                for position, piece in pieces:
                    content[position : position + len(piece)] = piece
                self._files[fid] = updated
                return updated
            fd = os.open(self._data_path(fid), os.O_WRONLY)
            try:
                for position, piece in pieces:
                    os.pwrite(fd, piece, position)
            finally:
                os.close(fd)
            if new_chunks:
                self._save(updated)
            else:
                self._files[fid] = updated
            return updated

    @staticmethod
    def _pieces(
        dirty: DirtyFile,
        offset: int,
        data: bytes,
        bases: Mapping[int, bytes],
        length: int,
        new_chunks: builtins.list[int],
    ) -> builtins.list[tuple[int, bytes | bytearray]]:
        """What a write puts where: a newly dirty chunk whole (its base, then the new
        bytes: no stale byte survives in it), into an already dirty chunk just the bytes."""
        size = dirty.chunk_size
        end = offset + len(data)
        known_end = min(dirty.length, dirty.zero_from)
        pieces: list[tuple[int, bytes | bytearray]] = []
        for index in range(offset // size, (end - 1) // size + 1):
            start = index * size
            if index in new_chunks:
                content = bytearray(min(size, length - start))
                base = bases.get(index, b"")[: max(0, known_end - start)]
                content[: len(base)] = base
                lo, hi = max(offset, start), min(end, start + len(content))
                content[lo - start : hi - start] = data[lo - offset : hi - offset]
                pieces.append((start, content))
            else:
                lo, hi = max(offset, start), min(end, start + size)
                pieces.append((lo, data[lo - offset : hi - offset]))
        return pieces

    def read_chunk(self, fid: FidKey, index: int, *, blocking: bool = True) -> bytes:
        """The content of dirty chunk `index` (short for the last chunk)."""
        with self._lock:
            dirty = self._current(fid)
            if index not in dirty.chunks:
                raise KeyError(f"chunk {index} of {fid} is not dirty")
            start = index * dirty.chunk_size
            want = min(dirty.chunk_size, dirty.length - start)
            content = self._resident.get(fid)
            if content is not None:
                return bytes(content[start : start + want])
            if not blocking:
                raise WouldBlock
            fd = os.open(self._data_path(fid), os.O_RDONLY)
            try:
                read = os.pread(fd, want, start)
            finally:
                os.close(fd)
        return read.ljust(want, b"\0")  # a sparse tail reads short

    def truncate(self, fid: FidKey, length: int, *, blocking: bool = True) -> DirtyFile:
        """Set the length: dirty chunks past it go, and the clean bytes past it will not
        show through again if the file grows later (`zero_from`)."""
        with self._lock:
            dirty = self._current(fid)
            chunks = frozenset(i for i in dirty.chunks if i * dirty.chunk_size < length)
            updated = replace(
                dirty, length=length, zero_from=min(dirty.zero_from, length), chunks=chunks
            )
            if fid in self._resident and self._fits(fid, length):
                self._resize(fid, length)
                self._files[fid] = updated
                return updated
            self._on_disk(fid, blocking)
            with open(self._dir(fid) / "data", "r+b") as file:
                os.ftruncate(file.fileno(), length)
            self._save(updated)
            return updated

    def sync(self, fid: FidKey) -> None:
        """Make `fid`'s dirty data durable across a power loss too (a file kept in memory
        goes to disk first)."""
        with self._lock:
            self._current(fid)
            self._on_disk(fid, True)
            directory = self._dir(fid)
            for name in ("data", "state.json"):
                fd = os.open(directory / name, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def persist(self, fid: FidKey) -> None:
        """Move `fid` to disk if it is in memory, and make it durable (a failed store, an
        unmount, or a file that stayed dirty for a while: it must outlive the process)."""
        with self._lock:
            if fid in self._files:
                self._on_disk(fid, True)
        self.sync(fid)

    def held_in_memory_since(self, before: float) -> builtins.list[FidKey]:
        """Files kept in memory since before `before` (monotonic time)."""
        with self._lock:
            return [
                fid
                for fid in self._resident
                if (since := self._files[fid].since) is not None and since < before
            ]

    def update(
        self,
        fid: FidKey,
        *,
        base_version: int | None = None,
        unsent: bool | None = None,
        pending: tuple[int, int] | Literal[False] | None = False,
        blocking: bool = True,
    ) -> DirtyFile:
        """Change what the state says besides the data: the base version (a store made it
        the server's), whether a store failed, the version a store in flight may make
        (False: leave it as it is).  Written through for files on disk."""
        with self._lock:
            dirty = self._current(fid)
            updated = replace(
                dirty,
                base_version=dirty.base_version if base_version is None else base_version,
                unsent=dirty.unsent if unsent is None else unsent,
                pending=dirty.pending if pending is False else pending,
            )
            if fid in self._resident:
                self._files[fid] = updated
            elif not blocking:
                raise WouldBlock
            else:
                self._save(updated)
            return updated

    def set_aside(self, fid: FidKey, destination: Path) -> DirtyFile:
        """Stop tracking `fid` and move its content to `destination/data` (a new directory
        in the same filesystem): bytes of dirty chunks as written, zeros elsewhere."""
        with self._lock:
            dirty = self._current(fid)
            destination.mkdir(mode=0o700)
            content = self._resident.pop(fid, None)
            if content is not None:
                self._resident_bytes -= len(content)
                with open(destination / "data", "xb") as data:
                    data.write(content)
            else:
                directory = self._dir(fid)
                os.replace(directory / "data", destination / "data")
                (directory / "state.json").unlink()
                shutil.rmtree(directory)
            del self._files[fid]
            return dirty

    def discard(self, fid: FidKey, *, blocking: bool = True) -> None:
        """Forget `fid`'s dirty data: it is stored on the fileserver (or given up on)."""
        with self._lock:
            if fid not in self._files:
                return
            content = self._resident.pop(fid, None)
            if content is not None:
                self._resident_bytes -= len(content)
                del self._files[fid]
                return
            if not blocking:
                raise WouldBlock
            del self._files[fid]
            directory = self._dir(fid)
            (directory / "state.json").unlink()  # from here on it is not dirty
            shutil.rmtree(directory)

    def _current(self, fid: FidKey) -> DirtyFile:
        dirty = self._files.get(fid)
        if dirty is None:
            raise KeyError(f"{fid} is not dirty")
        return dirty
