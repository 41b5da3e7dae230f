"""`afsfuse mount` with a CellServDB it cannot use: the real command fails before mounting
anything, with one line on stderr that names the file (and the line) and what is wrong.  A
malformed line in an otherwise good file is only a warning, as in OpenAFS."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest
from mounting import BIN, daemon_pid, stop_daemon

from afsfuse.testing.cell import Cell

HOME = "home.afsfuse.example"


def mount(tmp_path: Path, cellservdb: Path, thiscell: str) -> subprocess.CompletedProcess[str]:
    mountpoint = tmp_path / "afs"
    mountpoint.mkdir(exist_ok=True)
    argv = [
        BIN / "afsfuse", "mount", str(mountpoint), "--cellservdb", str(cellservdb),
        "--thiscell", thiscell, "--cache-dir", str(tmp_path / "cache"),
        "--log-file", str(tmp_path / "afsfuse.log"),
    ]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


BAD_FILES = {
    "random bytes": (random.Random(8).randbytes(4096), "not a text file"),
    "empty": (b"", "is empty"),
    "comments only": (b"# nothing here\n\n", "no '>cell' line"),
    "no home cell": (
        b">other.example #o\n192.0.2.1 #db.other.example\n",
        f"no entry for the home cell {HOME}",
    ),
    "home cell without servers": (
        f">{HOME} #home\n>other.example #o\n192.0.2.1 #db.other.example\n".encode(),
        f":1: home cell {HOME} has no usable server",
    ),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_an_unusable_cellservdb_fails_before_mounting(case: str, tmp_path: Path) -> None:
    content, problem = BAD_FILES[case]
    cellservdb = tmp_path / "CellServDB"
    cellservdb.write_bytes(content)
    done = mount(tmp_path, cellservdb, HOME)
    if done.returncode == 0:
        stop_daemon(tmp_path / "afs", daemon_pid(tmp_path / "afs"))
    assert done.returncode != 0, (case, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and str(cellservdb) in lines[0] and problem in lines[0], lines
    assert not os.path.ismount(tmp_path / "afs")


@pytest.mark.cell
def test_a_malformed_line_is_a_warning_naming_file_and_line(cell: Cell, tmp_path: Path) -> None:
    cellservdb = tmp_path / "CellServDB"
    cellservdb.write_text(cell.cellservdb.read_text() + "not-an-address #junk\n")
    junk_line = len(cellservdb.read_text().splitlines())
    done = mount(tmp_path, cellservdb, cell.name)
    assert done.returncode == 0, done.stderr
    try:
        assert f"{cellservdb}:{junk_line}:" in done.stderr
        assert cell.name in os.listdir(tmp_path / "afs")
    finally:
        stop_daemon(tmp_path / "afs", daemon_pid(tmp_path / "afs"))
