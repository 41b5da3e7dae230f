"""Dirty data: bytes written locally and not yet stored on the fileserver.

Dirty data must never be evicted and must survive the daemon dying between a write and its
store, so it lives outside diskcache, in plain files: one directory per file,

    dirty/<cell>/<volume>.<vnode>.<unique>/state.json   base data version, dirty chunks
    dirty/<cell>/<volume>.<vnode>.<unique>/data         dirty chunks at their file offsets

Plain files because writes are partial: a FUSE write of a few KiB into a 1 MiB chunk is one
`pwrite` here, where diskcache (whole values only) would rewrite the whole chunk.  The size
of `data` is the file's length, so an ordinary write costs one `pwrite` and nothing else;
the state file changes only when a chunk becomes dirty or on truncation, and is replaced
atomically (write, rename) after the data it describes.  A write cut short by a crash
leaves at most what a local filesystem would: part of the write, never bytes from
elsewhere.

What a byte of the file is while it is dirty: inside a dirty chunk, the byte in `data`;
otherwise zero at or beyond `zero_from` (a truncation cut it off), else the clean byte at
`base_version`; nothing exists at or beyond `length`.  A chunk becomes dirty whole: the
first write into it needs its clean content (`needs_base`) unless it lies entirely past
what the base version still contributes.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from afsfuse.cache.base import FidKey, check_cell_name, make_private_dir


@dataclass(frozen=True)
class DirtyFile:
    """A snapshot of one dirty file's state."""

    fid: FidKey
    base_version: int
    length: int
    zero_from: int
    chunk_size: int
    chunks: frozenset[int]

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


class DirtyStore:
    """All dirty files of one cache directory.  Thread-safe; state is kept in memory and
    written through, so `get` and `list` never touch the disk."""

    def __init__(self, path: Path, chunk_size: int) -> None:
        self.path = path
        self.chunk_size = chunk_size
        make_private_dir(path)
        self._lock = threading.Lock()
        self._files: dict[FidKey, DirtyFile] = {}
        self._load()

    def _load(self) -> None:
        for cell_dir in self.path.iterdir():
            for file_dir in cell_dir.iterdir():
                try:
                    state = json.loads((file_dir / "state.json").read_text())
                except FileNotFoundError:
                    shutil.rmtree(file_dir)  # died before its first state was written
                    continue
                volume, vnode, unique = (int(part) for part in file_dir.name.split("."))
                fid = FidKey(cell_dir.name, volume, vnode, unique)
                length = os.stat(file_dir / "data").st_size
                chunk_size = state["chunk_size"]
                # A truncation cut short between the data and the state: finish it here.
                self._files[fid] = DirtyFile(
                    fid,
                    state["base_version"],
                    length,
                    min(state["zero_from"], length),
                    chunk_size,
                    frozenset(i for i in state["chunks"] if i * chunk_size < length),
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
        }
        directory = self._dir(dirty.fid)
        tmp = directory / "state.tmp"
        tmp.write_text(json.dumps(state))
        os.replace(tmp, directory / "state.json")
        self._files[dirty.fid] = dirty

    def get(self, fid: FidKey) -> DirtyFile | None:
        return self._files.get(fid)

    def list(self) -> list[DirtyFile]:
        """Every dirty file, e.g. to store what a previous run left behind."""
        with self._lock:
            return list(self._files.values())

    def begin(self, fid: FidKey, base_version: int, length: int) -> DirtyFile:
        """Start tracking local changes to `fid`, whose clean content is `length` bytes at
        `base_version`.  If `fid` is dirty already, its existing state is returned unchanged
        (the caller compares `base_version`)."""
        with self._lock:
            existing = self._files.get(fid)
            if existing is not None:
                return existing
            directory = self._dir(fid)
            shutil.rmtree(directory, ignore_errors=True)
            make_private_dir(directory.parent)
            directory.mkdir(mode=0o700)
            with open(directory / "data", "xb") as data:
                os.ftruncate(data.fileno(), length)  # sparse: the base's bytes are not here
            dirty = DirtyFile(fid, base_version, length, length, self.chunk_size, frozenset())
            self._save(dirty)
            return dirty

    def write(
        self, fid: FidKey, offset: int, data: bytes, bases: Mapping[int, bytes] | None = None
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
            known_end = min(dirty.length, dirty.zero_from)
            first, last = offset // size, (end - 1) // size
            new_chunks = [i for i in range(first, last + 1) if i not in dirty.chunks]
            updated = replace(dirty, length=length, chunks=dirty.chunks | set(new_chunks))
            fd = os.open(self._data_path(fid), os.O_WRONLY)
            try:
                for index in new_chunks:
                    # A newly dirty chunk is written whole: no stale byte survives in it.
                    start = index * size
                    content = bytearray(min(size, length - start))
                    base = bases.get(index, b"")[: max(0, known_end - start)]
                    content[: len(base)] = base
                    lo, hi = max(offset, start), min(end, start + len(content))
                    content[lo - start : hi - start] = data[lo - offset : hi - offset]
                    os.pwrite(fd, content, start)
                for index in range(first, last + 1):
                    if index in dirty.chunks:
                        start = index * size
                        lo, hi = max(offset, start), min(end, start + size)
                        os.pwrite(fd, data[lo - offset : hi - offset], lo)
            finally:
                os.close(fd)
            if new_chunks:
                self._save(updated)
            else:
                self._files[fid] = updated
            return updated

    def read_chunk(self, fid: FidKey, index: int) -> bytes:
        """The content of dirty chunk `index` (short for the last chunk)."""
        with self._lock:
            dirty = self._current(fid)
            if index not in dirty.chunks:
                raise KeyError(f"chunk {index} of {fid} is not dirty")
            start = index * dirty.chunk_size
            want = min(dirty.chunk_size, dirty.length - start)
            fd = os.open(self._data_path(fid), os.O_RDONLY)
            try:
                content = os.pread(fd, want, start)
            finally:
                os.close(fd)
        return content.ljust(want, b"\0")  # a sparse tail reads short

    def truncate(self, fid: FidKey, length: int) -> DirtyFile:
        """Set the length: dirty chunks past it go, and the clean bytes past it will not
        show through again if the file grows later (`zero_from`)."""
        with self._lock:
            dirty = self._current(fid)
            chunks = frozenset(i for i in dirty.chunks if i * dirty.chunk_size < length)
            updated = replace(
                dirty, length=length, zero_from=min(dirty.zero_from, length), chunks=chunks
            )
            with open(self._dir(fid) / "data", "r+b") as file:
                os.ftruncate(file.fileno(), length)
            self._save(updated)
            return updated

    def sync(self, fid: FidKey) -> None:
        """Make `fid`'s dirty data durable across a power loss too (for fsync)."""
        with self._lock:
            self._current(fid)
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

    def discard(self, fid: FidKey) -> None:
        """Forget `fid`'s dirty data: it is stored on the fileserver (or given up on)."""
        with self._lock:
            if self._files.pop(fid, None) is None:
                return
            directory = self._dir(fid)
            (directory / "state.json").unlink()  # from here on it is not dirty
            shutil.rmtree(directory)

    def _current(self, fid: FidKey) -> DirtyFile:
        dirty = self._files.get(fid)
        if dirty is None:
            raise KeyError(f"{fid} is not dirty")
        return dirty
