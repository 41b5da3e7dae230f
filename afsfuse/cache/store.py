"""The persistent cache of clean data: file chunks, directory blobs and per-file records.

Everything clean lives in one diskcache `Cache` under a size bound, culled after each batch
of writes (diskcache's own culling costs several queries on every set), so the bound is
approximate by a batch.  Chunks and directory blobs are keyed by data version, so
a file that changed on the server can never be served from older bytes.

Each file with cached data has a record: the data version its data is at and which chunks
at that version are complete.  The record is the only authority for what may be served:
a chunk is written first and marked complete afterwards, so a chunk half-written when the
process died is never served, and after a restart the cache manager re-validates a file with
one FetchStatus and then serves what the record lists.  Records are evictable like data: a
lost record only costs a re-fetch.  A record is written with the data it describes, never
for a status alone: statuses live in memory, and writing each one to SQLite made listing a
large directory cost a transaction per entry.

Writers hand over many items at once (`put_many`): one transaction commits them all.

Why "least-recently-stored" eviction by default: diskcache's LRU turns every get into a
SQLite write transaction that also holds the write lock while the value file is read, which
serialises concurrent readers and costs about 100 us per hit here; repeated reads of a hot
file are absorbed by the kernel page cache anyway, so this cache mostly sees first reads.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import threading
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, Self, cast

import diskcache

# FidKey is also the cache manager's AfsFid (fs/vnode.py imports it from here).
from afsfuse.cache.base import FidKey as FidKey
from afsfuse.cache.base import check_cell_name, make_private_dir
from afsfuse.cache.dirty import DEFAULT_MEMORY_BUDGET, DirtyStore
from afsfuse.cache.leftovers import LeftoverStore

LAYOUT_VERSION = 1
DEFAULT_CHUNK_SIZE = 1 << 20
DEFAULT_EVICTION = "least-recently-stored"

_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """Parse a `--cache-size` value: bytes, or a number with K/M/G/T (binary units;
    "2G", "500M", "1.5GiB", "64kb")."""
    match = _SIZE_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a size: {text!r}")
    size = int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    if size <= 0:
        raise ValueError(f"size must be positive: {text!r}")
    return size


@dataclass(frozen=True)
class FileRecord:
    """Which chunks of one file are complete in the cache, all at `data_version`."""

    data_version: int
    chunks: frozenset[int] = frozenset()


@dataclass(frozen=True)
class CleanItem:
    """Clean data for the cache: chunk `index` of a file, or (index None) a directory."""

    fid: FidKey
    data_version: int
    index: int | None
    data: bytes


def _fid_prefix(fid: FidKey) -> str:
    return f"{check_cell_name(fid.cell)}/{fid.volume}/{fid.vnode}.{fid.unique}/"


def _chunk_key(prefix: str, data_version: int, index: int) -> str:
    return f"{prefix}c{data_version}.{index}"


def _dir_key(prefix: str, data_version: int) -> str:
    return f"{prefix}d{data_version}"


#: What diskcache's Disk.store returns: the size, mode, file name and value of a row.
_Row = tuple[int, int, str | None, object]


class _ChunkDisk(diskcache.Disk):  # type: ignore[misc]  # diskcache ships no types: Disk is Any
    """diskcache's own Disk writes a bytes value line by line (hundreds of writes for a
    random 64 KiB chunk) and spreads files over 65536 directories; this writes a value
    with one call into at most 256 directories, which halves the cost of a set here."""

    def filename(self, key: object = None, value: object = None) -> tuple[str, str]:
        name = secrets.token_hex(16) + ".val"
        filename = os.path.join(name[:2], name)
        return filename, os.path.join(self._directory, filename)

    def store(self, value: object, read: bool, key: object = None) -> _Row:
        if type(value) is not bytes or len(value) < self.min_file_size:
            return cast(_Row, super().store(value, read, key=key))  # diskcache: untyped
        filename, full_path = self.filename()
        try:
            file = open(full_path, "xb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            os.makedirs(os.path.dirname(full_path), exist_ok=True)
            file = open(full_path, "xb")  # noqa: SIM115 - closed below
        with file:
            file.write(value)
        return len(value), diskcache.core.MODE_BINARY, filename, None


class _Values(Protocol):
    """The part of diskcache.Cache used here, typed (diskcache ships no type information)."""

    size_limit: int

    def get(self, key: str) -> Any: ...  # whatever was stored under key
    def set(self, key: str, value: object, *, tag: str) -> bool: ...
    def delete(self, key: str) -> bool: ...
    def evict(self, tag: str) -> int: ...
    def iterkeys(self) -> Iterator[str]: ...
    def transact(self) -> AbstractContextManager[None]: ...
    def volume(self) -> int: ...
    def cull(self) -> int: ...
    def clear(self) -> int: ...
    def close(self) -> None: ...


#: SQLite's page cache per connection (diskcache opens one per thread; its default is 8192
#: pages, 32 MiB).  Reads go through SQLite's memory map of the database (diskcache maps
#: the first 64 MiB), not this cache; writes leave the pages they touched here after the
#: commit.  At the default, the worker threads held 35 MiB here under 4 parallel `tar x`.
SQLITE_CACHE_PAGES = 512


class CacheStore:
    """The on-disk cache of one afsfuse instance: clean data (`get_*`/`put_*`) plus the
    dirty store (`dirty`).  Synchronous and thread-safe; use `AsyncCacheStore` under trio.

    One process per directory: a second open of the same directory raises `BlockingIOError`.
    """

    #: The fewest file names `may_hold` keeps before it looks at the disk again.
    RESCAN_MIN = 10_000

    def __init__(
        self,
        path: str | os.PathLike[str],
        size_limit: int,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        eviction_policy: str = DEFAULT_EVICTION,
        dirty_memory: int = DEFAULT_MEMORY_BUDGET,
    ) -> None:
        if chunk_size <= 0 or chunk_size & (chunk_size - 1):
            raise ValueError(f"chunk size must be a power of two: {chunk_size}")
        self.path = Path(path)
        self.chunk_size = chunk_size
        make_private_dir(self.path)
        self._lock_file = open(self.path / "lock", "a")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            self._lock_file.close()
            raise
        self._clean: _Values = diskcache.Cache(
            str(self.path / "clean"),
            disk=_ChunkDisk,
            size_limit=size_limit,
            eviction_policy=eviction_policy,
            tag_index=True,
            statistics=False,
            cull_limit=0,  # put_many culls once per batch
            sqlite_cache_size=SQLITE_CACHE_PAGES,
        )
        self._check_layout()
        self._record_lock = threading.Lock()
        #: Key prefixes of the files with a record: a file not here has nothing cached, which
        #: the cache manager can know without a worker thread (every cold read asks).  May
        #: name a file whose record was evicted since: that only costs a look, and a new scan
        #: once it has twice the names it had at the last keeps it from growing forever.
        self._recorded = self._scan_recorded()
        self._rescan_at = max(2 * len(self._recorded), self.RESCAN_MIN)
        self.dirty = DirtyStore(self.path / "dirty", chunk_size, dirty_memory)
        self.leftovers = LeftoverStore(self.path / "leftovers")

    def _check_layout(self) -> None:
        """Chunk indexes mean nothing under another chunk size: start clean data afresh."""
        layout_path = self.path / "layout.json"
        layout = {"version": LAYOUT_VERSION, "chunk_size": self.chunk_size}
        try:
            current = json.loads(layout_path.read_text())
        except (OSError, ValueError):
            current = None
        if current != layout:
            self._clean.clear()
            tmp = layout_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(layout))
            os.replace(tmp, layout_path)

    def close(self) -> None:
        self._clean.close()
        self._lock_file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def size_limit(self) -> int:
        return self._clean.size_limit

    def clean_bytes(self) -> int:
        """Disk used by clean data and its index (what the size bound is held against)."""
        return self._clean.volume()

    def files_held(self) -> int:
        """Files with clean data cached (about: a record evicted lately may still count)."""
        return len(self._recorded)

    # Records and data

    def may_hold(self, fid: FidKey) -> bool:
        """False when nothing of `fid` is cached (no disk access: safe on an event loop)."""
        return _fid_prefix(fid) in self._recorded

    def get_record(self, fid: FidKey) -> FileRecord | None:
        return self._record(_fid_prefix(fid))

    def get_chunk(self, fid: FidKey, data_version: int, index: int) -> bytes | None:
        """Chunk `index` of `fid` at `data_version`, or None unless it is cached complete.
        The last chunk of a file may be shorter than the chunk size."""
        prefix = _fid_prefix(fid)
        record = self._record(prefix)
        if record is None or record.data_version != data_version or index not in record.chunks:
            return None
        return self._data(_chunk_key(prefix, data_version, index))

    def get_dir(self, fid: FidKey, data_version: int) -> bytes | None:
        return self._data(_dir_key(_fid_prefix(fid), data_version))

    # diskcache gives back whatever was stored, untyped: a record key holds a FileRecord
    # (written by _put only), a chunk or directory key bytes.

    def _record(self, prefix: str) -> FileRecord | None:
        return cast(FileRecord | None, self._clean.get(prefix + "r"))

    def _data(self, key: str) -> bytes | None:
        return cast(bytes | None, self._clean.get(key))

    def put_many(self, items: Iterable[CleanItem]) -> None:
        """Cache chunks (complete; a file's last may be short) and directories in one
        transaction.  Data at a data version other than the one a file's record holds
        replaces what the record lists: the older version's chunks and directory are
        deleted.  Each value's file is written before the transaction that indexes it and
        marks it complete commits."""
        items = list(items)
        for item in items:
            if item.index is not None and len(item.data) > self.chunk_size:
                raise ValueError(
                    f"chunk of {len(item.data)} bytes exceeds chunk size {self.chunk_size}"
                )
        with self._record_lock, self._clean.transact():
            for item in items:
                self._put(item)
        if self._clean.volume() > self.size_limit:  # cull() would first look for expiries
            self._clean.cull()

    def _put(self, item: CleanItem) -> None:
        prefix = _fid_prefix(item.fid)
        version = item.data_version
        old = self._record(prefix) if prefix in self._recorded else None
        if old is not None and old.data_version != version:
            self._delete_version(prefix, old)
            old = None
        record = old if old is not None else FileRecord(version)
        if item.index is None:
            self._clean.set(_dir_key(prefix, version), bytes(item.data), tag=prefix)
        else:
            self._clean.set(_chunk_key(prefix, version, item.index), bytes(item.data), tag=prefix)
            if item.index not in record.chunks:
                record = replace(record, chunks=record.chunks | {item.index})
        if record is not old:
            self._clean.set(prefix + "r", record, tag=prefix)
            self._recorded.add(prefix)
            if len(self._recorded) > self._rescan_at:
                self._recorded = self._scan_recorded()
                self._rescan_at = max(2 * len(self._recorded), self.RESCAN_MIN)

    def _scan_recorded(self) -> set[str]:
        return {key[:-1] for key in self._clean.iterkeys() if key.endswith("/r")}

    def _delete_version(self, prefix: str, record: FileRecord) -> None:
        for index in record.chunks:
            self._clean.delete(_chunk_key(prefix, record.data_version, index))
        self._clean.delete(_dir_key(prefix, record.data_version))

    # Invalidation (clean data only: dirty data is dropped by its store, never here)

    def drop_fid(self, fid: FidKey) -> int:
        """Forget everything cached for `fid`, every data version; returns items removed."""
        prefix = _fid_prefix(fid)
        with self._record_lock:
            self._recorded.discard(prefix)
            return self._clean.evict(prefix)

    def drop_volume(self, cell: str, volume: int) -> int:
        """Forget every file of a volume.  A key scan: rare (volume moved, released, gone)."""
        prefix = f"{check_cell_name(cell)}/{volume}/"
        removed = 0
        with self._record_lock:
            self._recorded = {p for p in self._recorded if not p.startswith(prefix)}
            for key in self._clean.iterkeys():
                if key.startswith(prefix) and self._clean.delete(key):
                    removed += 1
        return removed

    def clear(self) -> None:
        with self._record_lock:
            self._recorded = set()
            self._clean.clear()
