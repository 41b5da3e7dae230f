"""afsfuse deployed as an administrator deploys it: the systemd unit's own command lines,
an fstab line, `mount -t fuse.afsfuse`, on the real test cell.

Everything runs in a private mount namespace of the test's own, where `/usr/bin/afsfuse`
is this checkout's, `/etc/afsfuse/afsfuse.toml` and `/etc/openafs/{CellServDB,ThisCell}`
describe the test cell, and mounts on `/afs` stay inside: the unit file's lines run word
for word, and nothing on the host changes.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mounting import BIN, daemon_pid, process_gone

from afsfuse.testing.cell import Cell

pytestmark = pytest.mark.cell

UNIT = Path(__file__).parents[2] / "systemd" / "afsfuse.service"
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Namespace:
    """A private mount namespace, held open by a process of ours; commands enter it."""

    holder: subprocess.Popen[bytes]
    root: Path

    def argv(self, *argv: str | os.PathLike[str]) -> list[str]:
        return ["nsenter", "-t", str(self.holder.pid), "-m", "--", *map(os.fspath, argv)]

    def run(self, *argv: str | os.PathLike[str], env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:  # fmt: skip
        return subprocess.run(
            self.argv(*argv), env={"PATH": PATH, **(env or {})}, capture_output=True,
            text=True, timeout=timeout,
        )  # fmt: skip

    def mounted(self, path: str) -> bool:
        return f" {path} " in self.run("cat", "/proc/self/mountinfo").stdout


@pytest.fixture
def namespace(cell: Cell, tmp_path: Path) -> Iterator[Namespace]:
    etc = tmp_path / "etc"
    (etc / "openafs").mkdir(parents=True)
    (etc / "afsfuse").mkdir()
    (etc / "openafs" / "CellServDB").write_bytes(cell.cellservdb.read_bytes())
    (etc / "openafs" / "ThisCell").write_text(f"{cell.name}\n")
    (etc / "afsfuse" / "afsfuse.toml").write_text(
        f'cache-dir = "{tmp_path / "cache"}"\nsysname = ["testsys"]\nsecurity = "clear"\n'
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "afsfuse").symlink_to(BIN / "afsfuse")
    assert Path("/afs").is_dir(), "openafs-client (installed by make deps) makes /afs"
    holder = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", "echo; exec sleep 600"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    ns = Namespace(holder, tmp_path)
    try:
        # Only once the holder is in its own namespace may anything be mounted through it.
        assert holder.stdout is not None and holder.stdout.readline() == b"\n"
        own = os.readlink(f"/proc/{holder.pid}/ns/mnt")
        assert own != os.readlink("/proc/self/ns/mnt")
        for argv in (
            ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={bin_dir}:/usr/bin", "/usr/bin"],
            ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={etc}:/etc", "/etc"],
        ):
            done = ns.run(*argv)
            assert done.returncode == 0, done.stderr
        yield ns
    finally:
        if ns.mounted("/afs"):
            ns.run("umount", "-l", "/afs")
        holder.kill()
        holder.wait()


def unit_lines(key: str) -> list[list[str]]:
    """The unit's command lines for key (ExecStart, ...), split as systemd splits them."""
    lines = [line.partition("=")[2] for line in UNIT.read_text().splitlines()]
    keys = [line.partition("=")[0] for line in UNIT.read_text().splitlines()]
    commands = [shlex.split(value) for k, value in zip(keys, lines, strict=True) if k == key]
    # A leading "-" lets the unit go on when the command fails; the command is the rest.
    return [[argv[0].lstrip("-"), *argv[1:]] for argv in commands]


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    """The unit as installed (commands in /usr/bin) is valid; only the executable's
    absence on this host may be reported."""
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace("/usr/bin/afsfuse", str(BIN / "afsfuse")))
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    ours = [line for line in done.stderr.splitlines() if UNIT.name in line]
    assert ours == [], done.stderr
    assert "Type=notify" in UNIT.read_text()


def test_the_units_command_lines_mount_and_tell_systemd_once_it_answers(
    namespace: Namespace, cell: Cell
) -> None:
    (pre,) = unit_lines("ExecStartPre")
    (start,) = unit_lines("ExecStart")
    (stop,) = unit_lines("ExecStop")
    checked = namespace.run(*pre)
    assert checked.returncode == 0, checked.stderr
    assert f"home cell: {cell.name}" in checked.stdout

    notify = namespace.root / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(os.fspath(notify))
        listener.settimeout(60)
        # JOURNAL_STREAM says stderr is the journal's, as systemd sets it for the unit.
        env = {"PATH": PATH, "NOTIFY_SOCKET": os.fspath(notify), "JOURNAL_STREAM": "0:0"}
        daemon = subprocess.Popen(
            namespace.argv(*start), env=env, stderr=subprocess.PIPE, text=True
        )
        try:
            ready = listener.recv(4096).decode()
            assert "READY=1" in ready
            # Another process, in another shell, uses the mount at once.
            listing = namespace.run("ls", "/afs")
            assert cell.name in listing.stdout.split(), listing
            # The cell's root.cell, from its fileserver (anonymous may not list it).
            kind = namespace.run("stat", "-c", "%F", f"/afs/{cell.name}")
            assert kind.stdout == "directory\n", kind.stderr
            stopped = namespace.run(*stop)
            assert stopped.returncode == 0, stopped.stderr
            assert "STOPPING=1" in listener.recv(4096).decode()
            assert daemon.wait(timeout=60) == 0
        finally:
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(timeout=30)
    log = daemon.stderr.read() if daemon.stderr else ""
    # Each line starts with its syslog priority for the journal: <6> is info.
    assert any(line.startswith("<6>afsfuse: ") and "mounted on /afs" in line
               for line in log.splitlines()), log  # fmt: skip


def test_without_a_home_cell_the_unit_stops_with_one_line_and_no_retry(
    namespace: Namespace,
) -> None:
    (pre,) = unit_lines("ExecStartPre")
    (start,) = unit_lines("ExecStart")
    assert namespace.run("mount", "-t", "tmpfs", "tmpfs", "/etc/openafs").returncode == 0
    for argv in (pre, start):
        done = namespace.run(*argv)
        assert done.returncode == 78, done
        assert (
            done.stderr == "afsfuse: no home cell: give --thiscell or write /etc/openafs/ThisCell\n"
        )
    prevent = UNIT.read_text().partition("RestartPreventExitStatus=")[2].split("\n")[0]
    assert "78" in prevent.split()
    assert not namespace.mounted("/afs")


def test_an_fstab_line_mounts_with_mount_a_and_mount_t(namespace: Namespace, cell: Cell) -> None:
    log_file = namespace.root / "fstab.log"
    fstab = namespace.root / "fstab"
    options = f"_netdev,cache-size=64M,no-xattrs,log-file={log_file}"
    fstab.write_text(f"none  /afs  fuse.afsfuse  {options}  0  0\n")
    done = namespace.run("mount", "-a", "-T", fstab)
    assert done.returncode == 0, done.stderr
    assert namespace.mounted("/afs")
    assert cell.name in namespace.run("ls", "/afs").stdout.split()
    assert namespace.run("getfattr", "-n", "afs.cell", f"/afs/{cell.name}").returncode != 0
    pid = daemon_pid(Path("/afs"))
    assert namespace.run("umount", "/afs").returncode == 0
    assert process_gone(pid, 30)

    done = namespace.run("mount", "-t", "fuse.afsfuse", "-o", "cache-size=64M", "none", "/afs")
    assert done.returncode == 0, done.stderr
    assert cell.name in namespace.run("ls", "/afs").stdout.split()
    # A second mount on the same place is refused in one line, with its own status.
    again = namespace.run("afsfuse", "none", "/afs", "-o", "rw,nosuid")
    assert (again.returncode, again.stderr.count("\n")) == (3, 1), again
    assert "already has a filesystem (fuse.afsfuse) mounted on it" in again.stderr
    pid = daemon_pid(Path("/afs"))
    assert namespace.run("umount", "/afs").returncode == 0
    assert process_gone(pid, 30)
