"""Leftovers: unsent data set aside because the fileserver's copy changed under it.

Data a program wrote is stored only over the data version it was written over.  When
another client stored the file meanwhile (found at a store, or when a run before this one
left data behind), ours is moved here instead of being written over theirs, and kept until
its writer restores or discards it (`afsfuse-ctl leftovers`):

    leftovers/<id>/data        the file as this client had it
    leftovers/<id>/info.json   which file it was, who wrote it, why it is here, and the
                               byte ranges whose content was not known (zeros in `data`)

A range is unknown where the file kept bytes of the old version that were neither written
here nor still in the clean cache: the server no longer has that version to ask.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from afsfuse.cache.base import FidKey, make_private_dir
from afsfuse.cache.dirty import DirtyStore

#: What an id looks like: nothing that could name another path.
_ID = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+-[0-9]+(-[0-9]+)?")


@dataclass(frozen=True)
class Leftover:
    id: str
    cell: str
    volume: int
    vnode: int
    unique: int
    size: int
    #: The writer's uid and PAG (None: not known).
    uid: int | None
    pag: int | None
    #: The data version it was written over, and the one the fileserver had instead.
    written_over: int
    server_version: int | None
    reason: str
    created: float
    #: [start, end) byte ranges of `data` that are zeros because their content is unknown.
    missing: tuple[tuple[int, int], ...]

    @property
    def fid(self) -> FidKey:
        return FidKey(self.cell, self.volume, self.vnode, self.unique)


class LeftoverStore:
    """The leftovers of one cache directory.  Thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = path
        make_private_dir(path)
        self._lock = threading.Lock()

    def set_aside(
        self,
        dirty_store: DirtyStore,
        fid: FidKey,
        *,
        reason: str,
        server_version: int | None,
        clean_chunk: Callable[[int], bytes | None],
    ) -> Leftover:
        """Move `fid`'s dirty data here; `clean_chunk(index)` gives a chunk of the version
        it was written over, where still known, for the bytes the writer did not change."""
        with self._lock:
            stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
            base = f"{fid.volume}.{fid.vnode}.{fid.unique}-{stamp}"
            ident, n = base, 1
            while (self.path / ident).exists():
                n += 1
                ident = f"{base}-{n}"
            directory = self.path / ident
            dirty = dirty_store.set_aside(fid, directory)
        missing: list[tuple[int, int]] = []
        size = dirty.chunk_size
        kept_end = min(dirty.length, dirty.zero_from)
        with open(directory / "data", "r+b") as data:
            for index in range((kept_end + size - 1) // size):
                if index in dirty.chunks:
                    continue
                start, end = index * size, min((index + 1) * size, kept_end)
                clean = clean_chunk(index)
                if clean is None or len(clean) < end - start:
                    missing.append((start, end))
                    continue
                os.pwrite(data.fileno(), clean[: end - start], start)
        leftover = Leftover(
            id=ident,
            cell=fid.cell,
            volume=fid.volume,
            vnode=fid.vnode,
            unique=fid.unique,
            size=dirty.length,
            uid=dirty.writer[0] if dirty.writer else None,
            pag=dirty.writer[1] if dirty.writer else None,
            written_over=dirty.base_version,
            server_version=server_version,
            reason=reason,
            created=time.time(),
            missing=tuple(_merged(missing)),
        )
        tmp = directory / "info.tmp"
        tmp.write_text(json.dumps(asdict(leftover)))
        os.replace(tmp, directory / "info.json")
        return leftover

    def list(self) -> list[Leftover]:
        found = []
        for directory in sorted(self.path.iterdir()):
            try:
                found.append(self._read(directory.name))
            except (OSError, ValueError, TypeError, KeyError):
                continue  # being written, or not ours
        return found

    def get(self, ident: str) -> Leftover:
        """KeyError if there is no such leftover."""
        if not _ID.fullmatch(ident):
            raise KeyError(ident)
        try:
            return self._read(ident)
        except (OSError, ValueError, TypeError) as e:
            raise KeyError(ident) from e

    def open(self, ident: str) -> int:
        """A read-only descriptor of the leftover's data (the caller closes it)."""
        self.get(ident)
        return os.open(self.path / ident / "data", os.O_RDONLY | os.O_CLOEXEC)

    def discard(self, ident: str) -> None:
        self.get(ident)
        with self._lock:
            shutil.rmtree(self.path / ident)

    def _read(self, ident: str) -> Leftover:
        info = json.loads((self.path / ident / "info.json").read_text())
        info["missing"] = tuple(tuple(r) for r in info["missing"])
        return Leftover(**info)


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in ranges:
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out
