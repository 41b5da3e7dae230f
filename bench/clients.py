"""The clients under test, each a small adapter: mount, unmount, the daemon's PID.

Every daemon runs in the foreground in its own session, so it is ours to watch (/proc) and
to stop by its PID.  A mount is ready when the kernel lists it and the benchmark's big
file (`ready_path`) answers a `stat`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

#: Disk cache size for both clients, in KiB (cacheinfo's unit).
CACHE_KIB = 1 << 20
MOUNT_TIMEOUT = 90.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
AFSFUSE_BIN = Path(sys.executable).parent


class ClientError(RuntimeError):
    """A client could not be mounted, used or stopped."""


@dataclass(frozen=True)
class CellInfo:
    name: str
    cellservdb: Path
    krb5_config: Path


@dataclass
class Usage:
    cpu_seconds: float
    peak_rss_kib: int


def daemon_usage(pid: int) -> Usage:
    """CPU seconds (user + system, all threads) and peak RSS (VmHWM) of a live process."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name may hold spaces; the fields after its ')' are fixed.
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return Usage(cpu, hwm)


def _is_mounted(path: Path) -> bool:
    target = os.fspath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


class Client:
    """One client: a daemon serving `mountpoint`; subclasses say how to start it."""

    name = ""
    log_name = "daemon.log"

    def __init__(self, cell: CellInfo, workdir: Path) -> None:
        self.cell = cell
        self.workdir = workdir
        self.mountpoint = workdir / "mnt"
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen | None = None
        self.cache: Path | None = None
        #: CPU seconds of daemons already stopped in this round, and the highest VmHWM seen.
        self.spent_cpu = 0.0
        self.peak_rss_kib = 0

    @property
    def top(self) -> Path:
        """The benchmark's directory as this client shows it."""
        return self.mountpoint / self.cell.name / "test" / "bench"

    @property
    def pid(self) -> int:
        if self.process is None or self.process.poll() is not None:
            raise ClientError(f"{self.name} is not running")
        return self.process.pid

    def argv(self, cache: Path) -> list[str]:
        raise NotImplementedError

    def ready_path(self) -> Path:
        """What must answer a `stat` once the mount is ready."""
        return self.top / "big.bin"

    def after_mount(self) -> None:
        """Anything a client needs once mounted (tokens)."""

    def usage(self) -> Usage:
        """The round so far: stopped daemons plus the live one."""
        live = daemon_usage(self.pid)
        self.peak_rss_kib = max(self.peak_rss_kib, live.peak_rss_kib)
        return Usage(self.spent_cpu + live.cpu_seconds, self.peak_rss_kib)

    def new_round(self) -> None:
        self.spent_cpu = 0.0
        self.peak_rss_kib = 0

    def mount(self, cache: Path) -> None:
        if _is_mounted(self.mountpoint):
            raise ClientError(f"{self.mountpoint} is already mounted")
        argv = self.argv(cache)
        if not os.access(argv[0], os.X_OK):
            raise ClientError(f"not available: {argv[0]} is not installed")
        cache.mkdir(parents=True, exist_ok=True)
        self.cache = cache
        log = open(self.workdir / self.log_name, "ab")  # noqa: SIM115 - handed to the daemon
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.workdir,
        )
        log.close()
        try:
            self._wait_ready()
            self.after_mount()
        except BaseException:
            self.unmount()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + MOUNT_TIMEOUT
        last = "not mounted"
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise ClientError(f"{self.name} exited before mounting: {self.log_tail()}")
            if _is_mounted(self.mountpoint):
                probe = subprocess.run(
                    ["stat", "-c", "%s", os.fspath(self.ready_path())],
                    capture_output=True, text=True, timeout=MOUNT_TIMEOUT, check=False,
                )  # fmt: skip
                if probe.returncode == 0:
                    return
                last = probe.stderr.strip()
            time.sleep(0.2)
        raise ClientError(f"{self.name} not ready after {MOUNT_TIMEOUT:.0f} s: {last}")

    def unmount(self) -> None:
        """fusermount3 -u, then the daemon must go: SIGTERM, at last SIGKILL, by its PID."""
        process = self.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ClientError, OSError):
                self.usage()
        if _is_mounted(self.mountpoint):
            done = subprocess.run(
                ["fusermount3", "-u", os.fspath(self.mountpoint)], capture_output=True, check=False
            )
            if done.returncode != 0:
                subprocess.run(["umount", "-l", os.fspath(self.mountpoint)], check=False)
        if process is None:
            return
        cpu_before_exit = self._last_cpu(process)
        for sig, grace in ((None, self.exit_grace), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
            if sig is not None and process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=grace)
                break
        self.spent_cpu += cpu_before_exit
        self.process = None

    #: Seconds the daemon gets to leave by itself once unmounted.
    exit_grace = 20.0

    @staticmethod
    def _last_cpu(process: subprocess.Popen) -> float:
        try:
            return daemon_usage(process.pid).cpu_seconds
        except OSError:
            return 0.0

    def remount(self) -> None:
        """Stop and start again on the same cache directory."""
        assert self.cache is not None
        cache = self.cache
        self.unmount()
        self.mount(cache)

    def log_tail(self) -> str:
        """The daemon's last word: its final error, or the exception ending a traceback."""
        try:
            text = (self.workdir / self.log_name).read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        lines = text.strip().splitlines()
        return lines[-1].strip() if lines else "(empty log)"


class AfsdFuse(Client):
    """OpenAFS's afsd.fuse: anonymous only; its config dir holds CellServDB, ThisCell and
    cacheinfo.  It does not leave by itself after an unmount, hence the short grace."""

    name = "afsd.fuse"
    binary = Path("/usr/sbin/afsd.fuse")
    exit_grace = 2.0

    def argv(self, cache: Path) -> list[str]:
        conf = self.workdir / "conf"
        conf.mkdir(exist_ok=True)
        (conf / "CellServDB").write_text(self.cell.cellservdb.read_text())
        (conf / "ThisCell").write_text(self.cell.name + "\n")
        (conf / "cacheinfo").write_text(f"{self.mountpoint}:{cache}:{CACHE_KIB}\n")
        return [
            os.fspath(self.binary), "-confdir", os.fspath(conf), "-cachedir", os.fspath(cache),
            "-mountdir", os.fspath(self.mountpoint), "-dynroot", "-fakestat", "-f",
        ]  # fmt: skip


class Afsfuse(Client):
    """afsfuse, anonymous: rxnull to the fileservers."""

    name = "afsfuse"

    def argv(self, cache: Path) -> list[str]:
        return [
            os.fspath(AFSFUSE_BIN / "afsfuse"), "mount", os.fspath(self.mountpoint),
            "--cellservdb", os.fspath(self.cell.cellservdb), "--thiscell", self.cell.name,
            "--cache-dir", os.fspath(cache), "--cache-size", f"{CACHE_KIB}K",
            "--security", "crypt", "--foreground",
        ]  # fmt: skip


class AfsfuseCrypt(Afsfuse):
    """afsfuse with alice's token (kinit, then `afsfuse-ctl aklog`): rxkad crypt."""

    name = "afsfuse crypt"
    user = "alice"
    password = "alice-pw"

    def after_mount(self) -> None:
        ccache = self.workdir / "ccache"
        env = {
            **os.environ,
            "KRB5_CONFIG": os.fspath(self.cell.krb5_config),
            "KRB5CCNAME": f"FILE:{ccache}",
        }
        if not ccache.exists():
            subprocess.run(
                ["kinit", self.user], input=self.password + "\n", env=env, text=True,
                capture_output=True, check=True, timeout=30,
            )  # fmt: skip
        aklog = subprocess.run(
            [os.fspath(AFSFUSE_BIN / "afsfuse-ctl"), "--mount", os.fspath(self.mountpoint),
             "aklog"],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if aklog.returncode != 0:
            raise ClientError(f"afsfuse-ctl aklog failed: {aklog.stderr.strip()}")


class AfsfuseNoXattrs(Afsfuse):
    """afsfuse, anonymous, mounted with --no-xattrs: the kernel asks for no extended
    attributes at all, as with afsd.fuse."""

    name = "afsfuse no-xattrs"

    def argv(self, cache: Path) -> list[str]:
        return [*super().argv(cache), "--no-xattrs"]


CLIENTS: tuple[type[Client], ...] = (AfsdFuse, Afsfuse, AfsfuseCrypt, AfsfuseNoXattrs)
