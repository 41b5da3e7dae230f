"""Local directory edits: our own change to a directory, made to the listing we hold.

When a call that changes a directory (create, remove, rename...) answers with a data version
exactly one past the listing held, the fileserver made that change and nothing else, so the
same edit to the listing gives the directory's new contents (fs/directories.py, `edit_dir`).
"""

from __future__ import annotations

from collections.abc import Callable

from afsfuse.fs import dir as afsdir

#: A parsed directory listing: entry names to (vnode, unique).
Listing = dict[bytes, afsdir.DirEntry]
#: A change made to a parsed directory listing: our own change, as the fileserver made it.
ListingEdit = Callable[[Listing], None]


def adding(name: bytes, vnode: int, unique: int) -> ListingEdit:
    def add(entries: Listing) -> None:
        entries[name] = afsdir.DirEntry(vnode, unique)

    return add


def removing(name: bytes) -> ListingEdit:
    def remove(entries: Listing) -> None:
        del entries[name]

    return remove


def renaming(old: bytes, new: bytes) -> ListingEdit:
    def rename(entries: Listing) -> None:
        entries[new] = entries.pop(old)

    return rename
