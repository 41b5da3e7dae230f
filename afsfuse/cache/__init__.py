"""The persistent on-disk cache: clean file chunks, directory blobs and per-file records
under a size bound (diskcache), and dirty data that is never evicted (plain files)."""

from afsfuse.cache.aio import AsyncCacheStore, AsyncDirtyStore, CleanWriter
from afsfuse.cache.base import FidKey
from afsfuse.cache.dirty import BaseNeeded, DirtyFile, DirtyStore
from afsfuse.cache.store import DEFAULT_CHUNK_SIZE, CacheStore, CleanItem, FileRecord, parse_size

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "AsyncCacheStore",
    "AsyncDirtyStore",
    "BaseNeeded",
    "CacheStore",
    "CleanItem",
    "CleanWriter",
    "DirtyFile",
    "DirtyStore",
    "FidKey",
    "FileRecord",
    "parse_size",
]
