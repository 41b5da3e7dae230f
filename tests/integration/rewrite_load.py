"""Writers that rewrite files in place and readers that read them whole, each a plain program
on a mount (`python3 rewrite_load.py write|read ...`), reporting one JSON line per write or
read on standard output.

Every page (4 KiB) of every version describes itself: `name:version:page:` and then a fill
byte that depends on the version.  A reader checks each page of what it read against the
page of that version at that offset, so what it reports is which version each run of pages
came from, and any page no version had (zeros, shifted or mixed bytes).

Times are CLOCK_MONOTONIC, the same for every process on the machine.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from itertools import count

PAGE = 4096
#: Lengths versions take in turn: 3-5 MB, several 1 MiB chunks, ends inside and on pages and
#: chunks, so a version change can shorten or lengthen a file under a reader.
LENGTHS = (3_146_728, 4_194_304, 3_600_000, 4_731_004, 5_000_000, 3_900_000, 4_194_404)
WRITE_SIZE = 64 * 1024
READ_SIZE = 128 * 1024


def length_of(name: str, version: int) -> int:
    return LENGTHS[(version + sum(name.encode())) % len(LENGTHS)]


def page(name: str, version: int, index: int) -> bytes:
    fill = b"abcdefghijklmnopqrstuvwxyz"[version % 26 : version % 26 + 1]
    return f"{name}:{version}:{index}:".encode().ljust(PAGE, fill)


def content(name: str, version: int) -> bytes:
    length = length_of(name, version)
    return b"".join(page(name, version, i) for i in range(-(-length // PAGE)))[:length]


def write_version(path: str, name: str, version: int) -> None:
    data = content(name, version)
    with open(path, "wb") as f:
        for start in range(0, len(data), WRITE_SIZE):
            f.write(data[start : start + WRITE_SIZE])


def fill_of(version: int) -> int:
    return page("", version, 0)[-1]


def _version_of(name: str, piece: bytes, index: int) -> int | None:
    fields = piece.split(b":", 3)
    if len(fields) == 4 and fields[0] == name.encode() and fields[2] == str(index).encode():
        return int(fields[1]) if fields[1].isdigit() else None
    return None


def runs_of(name: str, data: bytes) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """[version, first page, pages] runs; [page, version, next version] for pages where one
    version ends and the next goes on (the file grew while being read); and the pages that
    belong to no version."""
    runs: list[list[int]] = []
    joins: list[list[int]] = []
    bad: list[int] = []
    pages = -(-len(data) // PAGE)
    for index in range(pages):
        piece = data[index * PAGE : (index + 1) * PAGE]
        version = _version_of(name, piece, index)
        if version is None:
            bad.append(index)
            continue
        if page(name, version, index)[: len(piece)] != piece:
            cut = length_of(name, version) - index * PAGE
            tail = piece[cut:]
            if not 0 < cut < len(piece) or piece[:cut] != page(name, version, index)[:cut]:
                bad.append(index)
                continue
            following = data[(index + 1) * PAGE : (index + 2) * PAGE]
            later = _version_of(name, following, index + 1) if following else None
            if later is None or fill_of(later) != tail[0]:
                later = next(v for v in range(version + 1, version + 27) if fill_of(v) == tail[0])
            if tail != page(name, later, index)[cut : len(piece)]:
                bad.append(index)
                continue
            joins.append([index, version, later])
            version = later
        if runs and runs[-1][0] == version and runs[-1][1] + runs[-1][2] == index:
            runs[-1][2] += 1
        else:
            runs.append([version, index, 1])
    return runs, joins, bad


def describe(piece: bytes) -> str:
    """A page no version had, in short: how it begins and where its bytes change."""
    changes = [i for i in range(1, len(piece)) if piece[i] != piece[i - 1]][-6:]
    return f"{piece[:24]!r} ... {[(i, chr(piece[i])) for i in changes]} ({len(piece)} bytes)"


def read_whole(path: str) -> bytes:
    """The file read to its end as cat reads it: one read(2) of READ_SIZE at a time, until
    the first that returns nothing.  A buffered f.read() would not stop there: it ends a
    read(2) anywhere (its buffer is st_blksize), returns what it has when one of them meets
    the end of the file, and the next f.read() reads on past that end, into whatever version
    has replaced the file by then, from inside a page."""
    parts = []
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(READ_SIZE):
            parts.append(chunk)
    return b"".join(parts)


def report(lock: threading.Lock, **fields: object) -> None:
    with lock:
        sys.stdout.write(json.dumps(fields) + "\n")


def writer(directory: str, name: str, until: float, lock: threading.Lock) -> None:
    for version in count(1):
        if time.monotonic() >= until:
            return
        began = time.monotonic()
        try:
            write_version(os.path.join(directory, name), name, version)
        except OSError as e:
            report(lock, kind="error", role="write", name=name, began=began, error=str(e))
            return
        report(lock, kind="write", name=name, version=version, began=began, done=time.monotonic())


def reader(directory: str, names: list[str], until: float, lock: threading.Lock) -> None:
    for turn in count():
        if time.monotonic() >= until:
            return
        name = names[turn % len(names)]
        began = time.monotonic()
        try:
            data = read_whole(os.path.join(directory, name))
        except OSError as e:
            report(lock, kind="error", role="read", name=name, began=began, error=str(e))
            continue
        done = time.monotonic()
        runs, joins, bad = runs_of(name, data)
        first_bad = describe(data[bad[0] * PAGE : (bad[0] + 1) * PAGE]) if bad else ""
        report(
            lock, kind="read", name=name, began=began, done=done, length=len(data), runs=runs,
            joins=joins, bad=bad[:8], first_bad=first_bad,
        )  # fmt: skip


def main(argv: list[str]) -> None:
    """write DIR SECONDS NAME...: one writer per name; read DIR SECONDS THREADS NAME..."""
    mode, directory, seconds = argv[0], argv[1], float(argv[2])
    until = time.monotonic() + seconds
    lock = threading.Lock()
    if mode == "write":
        jobs = [(writer, (directory, name, until, lock)) for name in argv[3:]]
    else:
        names = argv[4:]
        jobs = [
            (reader, (directory, names[i:] + names[:i], until, lock)) for i in range(int(argv[3]))
        ]
    threads = [threading.Thread(target=fn, args=args) for fn, args in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main(sys.argv[1:])
