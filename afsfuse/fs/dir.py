"""The AFS directory format: what FetchData returns for a directory vnode.

A directory is a sequence of 2048-byte pages of 64 slots of 32 bytes.  Slot 0 of every page is
a page header (tag 1234 and a bitmap of used slots); page 0 also carries the allocation map
and the 128-bucket hash table in slots 1..12.  An entry takes one slot for its flag, hash-chain
link, vnode, unique and the first 20 name bytes, plus whole continuation slots for the rest of
the NUL-terminated name.

Reading follows the bitmaps, the way a readdir does, so it never depends on the hash chains;
`lookup` walks one chain for a single name without parsing the rest.

Policy for hostile or corrupt data: the whole directory is rejected with DirectoryError, never
partly listed (a partial listing silently hides files; kAFS does the same).  Corrupt means: a
size that is not a whole number of pages (or none, or more than 1023), a page whose tag is not
1234, a used slot whose name has no NUL before the end of its page, an empty or overlong name,
an entry whose continuation slots fall off its page or are not marked used, and a name that
appears twice.  Not checked, as neither OpenAFS's nor Linux's client checks them: the entry
flag byte, the allocation map and page count, and (when listing) the hash chains.  Entries
with vnode 0 are skipped: that is the old marking of a deleted entry, which OpenAFS also skips.
Names are returned as stored: whether a name with '/' can be shown is the FUSE layer's call.

Every function does work linear in the size of the blob.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterable
from typing import NamedTuple

PAGE_SIZE = 2048
SLOT_SIZE = 32
SLOTS_PER_PAGE = 64
HASH_BUCKETS = 128
PAGE_TAG = 1234
#: Pages beyond this one have no allocation-map byte (OpenAFS MAXPAGES).
ALLOMAP_PAGES = 128
#: The hard size limit of a directory (OpenAFS BIGMAXPAGES).
MAX_PAGES = 1023
#: Slots 0..12 of page 0 hold the directory header.
PAGE0_HEADER_SLOTS = 13
#: Longest name, without the NUL: AFSNAMEMAX.  The fileserver stores 256-byte names (seen on
#: the real cell), one more than Linux allows; the FUSE layer decides what to show.
NAME_MAX = 256
#: Offset of the name within an entry's first slot.
NAME_OFFSET = 12

_FLAG_FIRST = 1
# OpenAFS 1.8 clears a deleted entry as slots x sizeof(struct DirEntry), which is 28 bytes, not
# the 32 of a slot: the tail of a long name's later slots survives (seen in real directories).
_CLEARED_PER_SLOT = 28
_ALLOMAP_OFFSET = SLOT_SIZE  # after the 32-byte page header
_HASH_OFFSET = _ALLOMAP_OFFSET + ALLOMAP_PAGES
_HASH_TABLE = struct.Struct(f">{HASH_BUCKETS}H")
_PAGE_HEADER = struct.Struct(">HHB8s")
_ENTRY_HEAD = struct.Struct(">BBHII")
_FID = struct.Struct(">II")


class DirectoryError(ValueError):
    """The directory blob is corrupt; the message says where and how."""


class DirectoryFull(OSError):
    """No room for another entry (the fileserver answers EFBIG here)."""


class DirEntry(NamedTuple):
    """Where a name points, within the directory's own volume."""

    vnode: int
    unique: int


def name_hash(name: bytes) -> int:
    """The hash bucket (0..127) of a name, as every AFS implementation computes it."""
    h = 0
    for b in name:
        h = (h * 173 + b) & 0xFFFFFFFF
    bucket = h & (HASH_BUCKETS - 1)
    if bucket and h >= 0x80000000:
        bucket = HASH_BUCKETS - bucket
    return bucket


def name_slots(name_length: int) -> int:
    """Slots an entry with a name of this length occupies (OpenAFS's rounding, 4 bytes spare)."""
    return 1 + ((name_length + 1 + 15) >> 5)


def _check_size(data: bytes | bytearray) -> int:
    size = len(data)
    if size == 0 or size % PAGE_SIZE:
        raise DirectoryError(f"directory size {size} is not a positive multiple of {PAGE_SIZE}")
    pages = size // PAGE_SIZE
    if pages > MAX_PAGES:
        raise DirectoryError(f"directory has {pages} pages, more than {MAX_PAGES}")
    return pages


def _page_bitmap(data: bytes | bytearray, page: int) -> int:
    """The page's used-slot bitmap as an int (bit i = slot i), after checking its tag."""
    _, tag, _, bitmap = _PAGE_HEADER.unpack_from(data, page * PAGE_SIZE)
    if tag != PAGE_TAG:
        raise DirectoryError(f"page {page} has tag {tag}, not {PAGE_TAG}")
    return int.from_bytes(bitmap, "little")


def _entry_name(data: bytes | bytearray, blob: int) -> bytes:
    """The name of the entry in slot `blob`, checked to end inside its page."""
    start = blob * SLOT_SIZE + NAME_OFFSET
    page_end = (blob // SLOTS_PER_PAGE + 1) * PAGE_SIZE
    end = data.find(b"\0", start, page_end)
    if end < 0:
        raise DirectoryError(f"entry at slot {blob}: name runs off the end of its page")
    if end == start:
        raise DirectoryError(f"entry at slot {blob}: empty name")
    if end - start > NAME_MAX:
        raise DirectoryError(f"entry at slot {blob}: name of {end - start} bytes is too long")
    return bytes(data[start:end])


def parse_directory(data: bytes | bytearray) -> dict[bytes, DirEntry]:
    """All entries, '.' and '..' included, in directory (slot) order."""
    pages = _check_size(data)
    entries: dict[bytes, DirEntry] = {}
    unpack_fid = _FID.unpack_from
    for page in range(pages):
        bitmap = _page_bitmap(data, page)
        slot = PAGE0_HEADER_SLOTS if page == 0 else 1
        while slot < SLOTS_PER_PAGE:
            if not (bitmap >> slot) & 1:
                slot += 1
                continue
            blob = page * SLOTS_PER_PAGE + slot
            name = _entry_name(data, blob)
            used = name_slots(len(name))
            if slot + used > SLOTS_PER_PAGE:
                raise DirectoryError(f"entry at slot {blob}: {used} slots overrun its page")
            wanted = ((1 << used) - 1) << slot
            if bitmap & wanted != wanted:
                raise DirectoryError(f"entry at slot {blob}: continuation slots marked free")
            vnode, unique = unpack_fid(data, blob * SLOT_SIZE + 4)
            if vnode:
                if name in entries:
                    raise DirectoryError(f"entry at slot {blob}: name {name!r} appears twice")
                entries[name] = DirEntry(vnode, unique)
            slot += used
    return entries


def lookup(data: bytes | bytearray, name: bytes) -> DirEntry | None:
    """Find one name through the hash table, without parsing the whole directory.

    Every slot on the chain is checked as parse_directory checks it, and a chain longer than
    the directory has slots (a loop) is corrupt.
    """
    pages = _check_size(data)
    bitmaps: dict[int, int] = {}
    blob = _HASH_TABLE.unpack_from(data, _HASH_OFFSET)[name_hash(name)]
    for _ in range(pages * SLOTS_PER_PAGE):
        if blob == 0:
            return None
        page, slot = divmod(blob, SLOTS_PER_PAGE)
        if page >= pages or slot == 0 or (page == 0 and slot < PAGE0_HEADER_SLOTS):
            raise DirectoryError(f"hash chain for {name!r} points to slot {blob}: no entry there")
        if page not in bitmaps:
            bitmaps[page] = _page_bitmap(data, page)
        if not (bitmaps[page] >> slot) & 1:
            raise DirectoryError(f"hash chain for {name!r} points to free slot {blob}")
        stored = _entry_name(data, blob)
        _, _, next_blob, vnode, unique = _ENTRY_HEAD.unpack_from(data, blob * SLOT_SIZE)
        if stored == name and vnode:
            return DirEntry(vnode, unique)
        blob = next_blob
    raise DirectoryError(f"hash chain for {name!r} loops")


class DirectoryBuilder:
    """Writes a directory exactly as the OpenAFS fileserver does (dir.c MakeDir/Create/Delete).

    The same first-fit slot allocation, page growth, allocation map and head-of-chain hash
    insertion, and deletion that unlinks the entry, clears it and frees its slots, so a builder
    fed the same operations produces the fileserver's bytes.  For tests and fake servers.
    """

    def __init__(self, me: DirEntry | None = None, parent: DirEntry | None = None) -> None:
        """An empty directory; with `me` and `parent`, '.' and '..' are added as MakeDir does."""
        self._data = bytearray(PAGE_SIZE)
        _PAGE_HEADER.pack_into(
            self._data, 0, 1, PAGE_TAG, SLOTS_PER_PAGE - PAGE0_HEADER_SLOTS, b"\xff\x1f"
        )
        self._data[_ALLOMAP_OFFSET] = SLOTS_PER_PAGE - PAGE0_HEADER_SLOTS
        self._data[_ALLOMAP_OFFSET + 1 : _HASH_OFFSET] = bytes([SLOTS_PER_PAGE]) * (
            ALLOMAP_PAGES - 1
        )
        if (me is None) != (parent is None):
            raise ValueError("give both me and parent, or neither")
        if me is not None and parent is not None:
            self.add(b".", *me)
            self.add(b"..", *parent)

    def to_bytes(self) -> bytes:
        return bytes(self._data)

    def add(self, name: bytes, vnode: int, unique: int) -> None:
        """Create an entry; ValueError for a name the fileserver refuses or already has."""
        if not name or b"\0" in name or len(name) > NAME_MAX:
            raise ValueError(f"bad directory entry name {name!r}")
        if self._find(name) is not None:
            raise ValueError(f"{name!r} already exists")
        blob = self._allocate(name_slots(len(name)))
        offset = blob * SLOT_SIZE
        self._data[offset] = _FLAG_FIRST
        _FID.pack_into(self._data, offset + 4, vnode, unique)
        start = offset + NAME_OFFSET
        self._data[start : start + len(name) + 1] = name + b"\0"
        bucket_at = _HASH_OFFSET + 2 * name_hash(name)
        self._data[offset + 2 : offset + 4] = self._data[bucket_at : bucket_at + 2]
        struct.pack_into(">H", self._data, bucket_at, blob)

    def remove(self, name: bytes) -> None:
        """Delete an entry (KeyError if absent)."""
        found = self._find(name)
        if found is None:
            raise KeyError(name)
        link_at, blob = found
        offset = blob * SLOT_SIZE
        self._data[link_at : link_at + 2] = self._data[offset + 2 : offset + 4]
        page, slot = divmod(blob, SLOTS_PER_PAGE)
        used = name_slots(len(name))
        if page < ALLOMAP_PAGES:
            self._data[_ALLOMAP_OFFSET + page] += used
        cleared = used * _CLEARED_PER_SLOT
        self._data[offset : offset + cleared] = bytes(cleared)
        bitmap = self._bitmap(page) & ~(((1 << used) - 1) << slot)
        self._set_bitmap(page, bitmap)

    def _find(self, name: bytes) -> tuple[int, int] | None:
        """(offset of the link that points at the entry, its blob), or None."""
        link_at = _HASH_OFFSET + 2 * name_hash(name)
        blob = struct.unpack_from(">H", self._data, link_at)[0]
        while blob:
            offset = blob * SLOT_SIZE
            if _entry_name(self._data, blob) == name:
                return link_at, blob
            link_at = offset + 2
            blob = struct.unpack_from(">H", self._data, link_at)[0]
        return None

    @property
    def _pages(self) -> int:
        return len(self._data) // PAGE_SIZE

    def _bitmap(self, page: int) -> int:
        at = page * PAGE_SIZE + 5
        return int.from_bytes(self._data[at : at + 8], "little")

    def _set_bitmap(self, page: int, bitmap: int) -> None:
        at = page * PAGE_SIZE + 5
        self._data[at : at + 8] = bitmap.to_bytes(8, "little")

    def _set_page_count(self, count: int) -> None:
        struct.pack_into(">H", self._data, 0, count)

    def _add_page(self, page: int) -> None:
        assert page == self._pages, "the fileserver grows directories one page at a time"
        self._data += bytes(PAGE_SIZE)
        _PAGE_HEADER.pack_into(
            self._data, page * PAGE_SIZE, 0, PAGE_TAG, SLOTS_PER_PAGE - 1, b"\x01"
        )

    def _allocate(self, wanted: int) -> int:
        """First fit: the first page whose map says it has room, the lowest free run in it."""
        run = (1 << wanted) - 1
        for page in range(MAX_PAGES):
            if page < ALLOMAP_PAGES:
                free = self._data[_ALLOMAP_OFFSET + page]
                if free < wanted:
                    continue
                if free == SLOTS_PER_PAGE:
                    self._add_page(page)
                    self._data[_ALLOMAP_OFFSET + page] = SLOTS_PER_PAGE - 1
                    self._set_page_count(page + 1)
            else:
                if struct.unpack_from(">H", self._data, 0)[0] == 0:
                    self._set_page_count(ALLOMAP_PAGES)
                if page >= self._pages:
                    self._add_page(page)
                    self._set_page_count(page + 1)
            bitmap = self._bitmap(page)
            for slot in range(SLOTS_PER_PAGE - wanted + 1):
                if not bitmap & (run << slot):
                    if page < ALLOMAP_PAGES:
                        self._data[_ALLOMAP_OFFSET + page] -= wanted
                    self._set_bitmap(page, bitmap | (run << slot))
                    return page * SLOTS_PER_PAGE + slot
        raise DirectoryFull(errno.EFBIG, "directory is full")


def build_directory(entries: Iterable[tuple[bytes, int, int]]) -> bytes:
    """A directory holding these (name, vnode, unique) entries, created in this order."""
    builder = DirectoryBuilder()
    for name, vnode, unique in entries:
        builder.add(name, vnode, unique)
    return builder.to_bytes()
