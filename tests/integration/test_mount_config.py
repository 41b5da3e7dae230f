"""`afsfuse mount` with the configuration files sites have.  A CellServDB it cannot use, or
garbage in OpenAFS's or kAFS's files: the real command fails before mounting anything, with
one line on stderr that names the file (and the line) and what is wrong.  A malformed line
in an otherwise good CellServDB is only a warning, as in OpenAFS.  OpenAFS's cacheinfo,
ThisCell and CellServDB, or kAFS's client.conf alone, mount the real cell."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest
from mounting import BIN, daemon_pid, no_client_files, stop_daemon

from afsfuse.testing.cell import Cell

HOME = "home.afsfuse.example"


def mount(tmp_path: Path, cellservdb: Path, thiscell: str) -> subprocess.CompletedProcess[str]:
    mountpoint = tmp_path / "afs"
    mountpoint.mkdir(exist_ok=True)
    argv = [
        BIN / "afsfuse", "mount", str(mountpoint), "--cellservdb", str(cellservdb),
        "--thiscell", thiscell, "--cache-dir", str(tmp_path / "cache"),
        "--log-file", str(tmp_path / "afsfuse.log"), *no_client_files(tmp_path),
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


def afsfuse(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BIN / "afsfuse", *argv], capture_output=True, text=True, timeout=60)


@pytest.mark.cell
def test_openafs_files_alone_mount_where_cacheinfo_says(cell: Cell, tmp_path: Path) -> None:
    """As on a machine that ran openafs-client: no mount point, cache or cell on the
    command line."""
    openafs, mountpoint, cache = tmp_path / "openafs", tmp_path / "afs", tmp_path / "cache"
    openafs.mkdir()
    mountpoint.mkdir()
    (openafs / "cacheinfo").write_text(f"{mountpoint}:{cache}:65536\n")
    (openafs / "ThisCell").write_text(f"{cell.name}\n")
    (openafs / "CellServDB").write_bytes(cell.cellservdb.read_bytes())
    (openafs / "afs.conf.client").write_text("AFS_CLIENT=true\nAFS_CRYPT=false\nAFS_DYNROOT=Yes\n")
    where = ["--openafs-dir", str(openafs), "--kafs-config", str(tmp_path / "none")]

    checked = afsfuse("check-config", *where)
    assert checked.returncode == 0, checked.stderr
    assert f"read {openafs}/afs.conf.client: security = clear; not followed: AFS_CLIENT" in (
        checked.stdout.splitlines()
    )
    assert f"cache: {cache} (to be created), 64 MiB" in checked.stdout
    done = afsfuse("mount", *where, "--log-file", str(tmp_path / "afsfuse.log"))
    assert done.returncode == 0, done.stderr
    try:
        assert cell.name in os.listdir(mountpoint)
        assert os.path.isdir(mountpoint / cell.name)  # root.cell, through the VL server
        assert (cache / "lock").exists()
    finally:
        stop_daemon(mountpoint, daemon_pid(mountpoint))


@pytest.mark.cell
def test_kafs_client_conf_alone_mounts_the_cell(cell: Cell, tmp_path: Path) -> None:
    """As on a machine set up for kAFS: the cell and home cell from client.d, its VL server
    under a name with the port written out."""
    client_d = tmp_path / "client.d"
    client_d.mkdir()
    (client_d / "site.conf").write_text(
        f"[defaults]\n\tthiscell = {cell.name}\n\tsysname = testsys\n[cells]\n"
        f'{cell.name} = {{\n\tdescription = "the test cell"\n\tservers = {{\n'
        f"\t\tudp/db.{cell.name}:7003 = {{\n\t\t\taddress = {cell.db_server.addr}\n"
        "\t\t}\n\t}\n}\n"
    )
    (tmp_path / "client.conf").write_text("includedir client.d\n")
    mountpoint = tmp_path / "afs"
    mountpoint.mkdir()
    argv = [
        "mount", str(mountpoint), "--openafs-dir", str(tmp_path / "no-openafs"),
        "--kafs-config", str(tmp_path / "client.conf"), "--cache-dir", str(tmp_path / "cache"),
        "--log-file", str(tmp_path / "afsfuse.log"),
    ]  # fmt: skip
    done = afsfuse(*argv)
    assert done.returncode == 0, done.stderr
    try:
        assert cell.name in os.listdir(mountpoint)
        assert os.path.isdir(mountpoint / cell.name)
    finally:
        stop_daemon(mountpoint, daemon_pid(mountpoint))
    checked = afsfuse("check-config", *argv[1:])
    assert f"home cell: {cell.name} (from {client_d}/site.conf:2)" in checked.stdout
    assert f"cells: 1 known from {tmp_path}/client.conf," in checked.stdout
    assert (
        f"read {tmp_path}/client.conf: thiscell = {cell.name}; sysname = testsys; 1 cell(s); "
        f"with {client_d}/site.conf"
    ) in checked.stdout.splitlines()


GARBAGE = {
    "afs.conf.client": ("AFS_CRYPT=true\nmodprobe openafs\n", ":2: not a NAME=value line"),
    "cacheinfo": ("/afs:/var/cache/openafs\n", ":1: not MOUNTPOINT:CACHEDIR:SIZE"),
    "client.conf": ("[cells]\nexample.org = {\n\tservers\n}\n", ":3: expected 'key = value'"),
}


@pytest.mark.parametrize("name", GARBAGE)
def test_garbage_in_a_client_file_stops_the_mount_in_one_line(name: str, tmp_path: Path) -> None:
    text, problem = GARBAGE[name]
    openafs = tmp_path / "openafs"
    openafs.mkdir()
    path = (tmp_path if name == "client.conf" else openafs) / name
    path.write_text(text)
    mountpoint = tmp_path / "afs"
    mountpoint.mkdir()
    done = afsfuse(
        "mount", str(mountpoint), "--openafs-dir", str(openafs),
        "--kafs-config", str(tmp_path / "client.conf"), "--thiscell", HOME,
    )  # fmt: skip
    assert (done.returncode, done.stderr.count("\n")) == (78, 1), done.stderr
    assert done.stderr.startswith(f"afsfuse: {path}{problem}")
    assert not os.path.ismount(mountpoint)


def test_a_cache_directory_afsd_used_is_refused_at_mount(tmp_path: Path) -> None:
    afsd_cache = tmp_path / "openafs-cache"
    afsd_cache.mkdir()
    for name in ("CacheItems", "VolumeItems", "V0", "V1"):
        (afsd_cache / name).write_bytes(b"")
    openafs = tmp_path / "openafs"
    openafs.mkdir()
    (openafs / "ThisCell").write_text(f"{HOME}\n")
    settings = tmp_path / "afsfuse.toml"
    settings.write_text(f'cache-dir = "{afsd_cache}"\n')
    done = afsfuse(
        "mount", str(tmp_path), "--config", str(settings), "--openafs-dir", str(openafs),
        "--kafs-config", str(tmp_path / "x"),
    )  # fmt: skip
    assert (done.returncode, done.stderr.count("\n")) == (4, 1), done.stderr
    assert f"cache directory {afsd_cache} is OpenAFS afsd's" in done.stderr
    assert sorted(os.listdir(afsd_cache)) == ["CacheItems", "V0", "V1", "VolumeItems"]
