"""Real afsfuse mounts for integration tests, shared by the test_mount_* modules.

A mount is a separate daemon process (`afsfuse mount`, backgrounded): no syscall on the
mount ever comes from a thread that serves it.  Programs run on it as root (no token:
anonymous) or as the local users afsfuse-alice and afsfuse-bob (setpriv), each with a
Kerberos ticket cache of their own from the real kinit; `ctl(user, "aklog")` turns that into
a token in the daemon.  Everything the local users need lives in a 0755 directory of its own,
since pytest's tmp_path is closed to them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local_users import User, UserPython, as_user
from logins import kinit

from afsfuse.ctl.protocol import SYSTEM_DIR, mount_key
from afsfuse.keyring.kernel import forget_keep
from afsfuse.testing.cell import Cell

BIN = Path(sys.executable).parent
SYSNAME = "testsys"


def acl(*lines: str) -> bytes:
    """OldStoreACL text granting the admins everything, plus `lines` ("user rights")."""
    entries = ["system:administrators 127", *lines]
    return (f"{len(entries)}\n0\n" + "".join(f"{line}\n" for line in entries)).encode() + b"\0"


@dataclass
class Mount:
    path: Path
    pid: int
    cell: str
    user_env: dict[str, dict[str, str]]
    python: UserPython
    local: dict[str, User]
    cache: Path
    log_file: Path

    def run(self, *argv: str, user: str | None = None, check: bool = True, timeout: float = 120):
        """A program, as root or as a local user (with that user's Kerberos environment)."""
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C"}
        command = list(argv)
        if user is not None:
            env.update(self.user_env[user])
            command = [*as_user(self.local[user]), *command]
        return subprocess.run(command, env=env, capture_output=True, timeout=timeout, check=check)

    def ctl(self, user: str | None, *args: str) -> subprocess.CompletedProcess[bytes]:
        """afsfuse-ctl for this mount, as a local user or (None) as root."""
        if user is None:
            argv = [sys.executable, "-m", "afsfuse.ctl.cli", "--mount", str(self.path), *args]
            env = {"PATH": "/usr/bin:/bin"}
            return subprocess.run(argv, env=env, capture_output=True, timeout=60)
        env = {"PATH": "/usr/bin:/bin", **self.python.env, **self.user_env[user]}
        argv = [self.python.interpreter, "-m", "afsfuse.ctl.cli", "--mount", str(self.path), *args]
        return subprocess.run(
            [*as_user(self.local[user]), *argv], env=env, capture_output=True, timeout=60
        )

    def stats(self) -> dict[str, Any]:
        """The daemon's counters (`afsfuse-ctl stats --json`)."""
        done = self.ctl(None, "stats", "--json")
        assert done.returncode == 0, done.stderr.decode()
        return json.loads(done.stdout)["stats"]

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")


def daemon_pid(mountpoint: Path) -> int:
    registry = SYSTEM_DIR / f"{mount_key(mountpoint)}.json"
    return int(json.loads(registry.read_text())["pid"])


def process_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def start_daemon(
    cell: Cell,
    mountpoint: Path,
    cache: Path,
    log_file: Path,
    *,
    sysnames: Sequence[str] = (SYSNAME,),
    extra_args: Sequence[str] = (),
) -> int:
    """`afsfuse mount` in the background; returns once mounted, with the daemon's pid."""
    argv = [
        BIN / "afsfuse", "mount", str(mountpoint), "--cellservdb", str(cell.cellservdb),
        "--thiscell", cell.name, "--cache-dir", str(cache), "--log-file", str(log_file),
        "--debug", *(f"--sysname={name}" for name in sysnames),
        *no_client_files(log_file.parent), *extra_args,
    ]  # fmt: skip
    subprocess.run(argv, check=True, timeout=60)
    return daemon_pid(mountpoint)


def no_client_files(scratch: Path) -> list[str]:
    """Options that keep a mount from the machine's own OpenAFS and kAFS files (an
    openafs-client's cacheinfo would set its cache size): empty places in scratch."""
    empty = scratch / "no-client-files"
    empty.mkdir(exist_ok=True)
    return ["--openafs-dir", str(empty), "--kafs-config", str(empty / "client.conf")]


def stop_daemon(mountpoint: Path, pid: int) -> None:
    """Unmount and wait for the daemon to exit; safe to call on a stopped mount.

    `/` is a private mount here, so every process a cell starts in a namespace of its own
    (`ip netns exec ... unshare --mount`) while a mount exists keeps a copy of it, and the
    daemon goes on serving that copy after `fusermount3 -u`.  SIGTERM then stops it cleanly
    (as an administrator would); failing that, it is killed and the mount detached.
    """
    if os.path.ismount(mountpoint):
        subprocess.run(["fusermount3", "-u", str(mountpoint)], check=False, timeout=30)
    if process_gone(pid, 3):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not process_gone(pid, 30):
        os.kill(pid, signal.SIGKILL)
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def user_environments(
    cell: Cell, users: dict[str, User], public: Path
) -> dict[str, dict[str, str]]:
    """A ticket cache per local user (from the real kinit) in `public`, and the environment
    that names it."""
    krb5_conf = public / "krb5.conf"
    shutil.copy(cell.env()["KRB5_CONFIG"], krb5_conf)
    krb5_conf.chmod(0o644)
    user_env = {}
    for short, user in users.items():
        home = public / user.name
        home.mkdir(mode=0o700, exist_ok=True)
        kinit(cell, short, home / "krb5cc")
        os.chown(home, user.uid, user.gid)
        os.chown(home / "krb5cc", user.uid, user.gid)
        user_env[short] = {"KRB5_CONFIG": str(krb5_conf), "KRB5CCNAME": f"FILE:{home}/krb5cc"}
    return user_env


@contextmanager
def afs_mount(
    cell: Cell,
    users: dict[str, User],
    user_python: UserPython,
    cache: Path,
    *,
    sysnames: Sequence[str] = (SYSNAME,),
    extra_args: Sequence[str] = (),
) -> Iterator[Mount]:
    """A mount of `cell` with its disk cache in `cache` (a temporary path of the test's),
    unmounted at the end; the daemon log's path is printed then."""
    public = Path(tempfile.mkdtemp(prefix="afsfuse-mount-"))
    public.chmod(0o755)
    mountpoint = public / "afs"
    mountpoint.mkdir()
    mountpoint.chmod(0o755)
    # Beside the cache, in pytest's temporary directory: kept for a look after a failure,
    # and removed with the runs pytest no longer keeps.
    daemon_dir = cache.with_name(f"{cache.name}-daemon")
    daemon_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    log_file = daemon_dir / "afsfuse.log"
    pid = start_daemon(cell, mountpoint, cache, log_file, sysnames=sysnames, extra_args=extra_args)
    mount = Mount(mountpoint, pid, cell.name, {}, user_python, users, cache, log_file)
    try:
        mount.user_env = user_environments(cell, users, public)
        yield mount
    finally:
        stop_daemon(mountpoint, mount.pid)
        forget_keep(mount_key(mountpoint))  # the tokens the daemon kept for a restart
        shutil.rmtree(public, ignore_errors=True)
        print(f"daemon log: {log_file}")
