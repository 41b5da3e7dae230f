"""How a dirty file is stored: the StoreData64 calls that make the fileserver's copy equal to
what the dirty store shows (afsfuse/cache/dirty.py).

The fileserver (viced StoreData_RXStyle) first cuts the file to FileLength when that is
shorter, then writes the data; the new length is the larger of that and Pos + Length, and a
call with no data and Pos past the end extends the file to Pos with a hole.  So:

- each run of consecutive dirty chunks is one call (split at `max_bytes`), sent whole: a
  dirty chunk holds every byte of its range;
- the first call carries FileLength = `zero_from`, so the bytes a local truncation cut off
  are gone on the server before anything is written past them (they read as zeros later);
- the others carry the final length, which never cuts anything;
- if no run reaches the final length (a truncation or an extension without writes), a last
  call with no data at Pos = length sets it.

Clean bytes below `zero_from` are never sent: the server has them already.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from afsfuse.cache.dirty import DirtyFile


@dataclass(frozen=True)
class StorePiece:
    """One StoreData64: bytes [pos, pos + length) from the dirty `chunks`, in order."""

    pos: int
    length: int
    file_length: int
    chunks: tuple[int, ...]


def store_plan(dirty: DirtyFile, max_bytes: int) -> list[StorePiece]:
    """The calls that store `dirty`, in the order they must be made."""
    size = dirty.chunk_size
    per_call = max(1, max_bytes // size)
    runs: list[list[int]] = []
    for index in sorted(dirty.chunks):
        if runs and runs[-1][-1] == index - 1 and len(runs[-1]) < per_call:
            runs[-1].append(index)
        else:
            runs.append([index])
    pieces = []
    for run in runs:
        start = run[0] * size
        end = min((run[-1] + 1) * size, dirty.length)
        pieces.append(StorePiece(start, end - start, dirty.length, tuple(run)))
    if not pieces or pieces[-1].pos + pieces[-1].length < dirty.length:
        pieces.append(StorePiece(dirty.length, 0, dirty.length, ()))
    pieces[0] = replace(pieces[0], file_length=dirty.zero_from)
    return pieces
