"""What the clean and the dirty store share: how files are named, how directories are made."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

#: The largest file the cache can hold while it is being written: a dirty file is one sparse
#: file at its own offsets, and ext4 (4 KiB blocks), the smallest limit of the usual cache
#: filesystems, stops at 16 TiB - 4 KiB.  The AFS protocol allows up to 2**63 - 1.
MAX_FILE_SIZE = (1 << 44) - 4096


class FidKey(NamedTuple):
    """A file within a cell: what everything in the cache is filed under."""

    cell: str
    volume: int
    vnode: int
    unique: int


def check_cell_name(cell: str) -> str:
    """Cell names become key and path components, so refuse anything that could escape."""
    if not cell or "/" in cell or "\0" in cell or cell.startswith("."):
        raise ValueError(f"bad cell name: {cell!r}")
    return cell


def make_private_dir(path: Path) -> None:
    """Create `path` (and parents) readable by us only: the cache holds other users' data."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
