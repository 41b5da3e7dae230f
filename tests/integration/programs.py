"""Programs run on a mount the way the mount tests run them, and waiting for what they
cause to reach another mount."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from local_users import as_user
from mounting import Mount


def run(mount: Mount, *argv: str, **kw) -> subprocess.CompletedProcess[bytes]:
    """Mount.run without raising: `ok` checks, with the program's error output."""
    return mount.run(*argv, check=False, **kw)


def ok(done: subprocess.CompletedProcess[bytes]) -> subprocess.CompletedProcess[bytes]:
    assert done.returncode == 0, (done.args, done.stderr.decode(errors="replace"))
    return done


def feed(mount: Mount, path: Path, data: bytes, user: str = "alice"):
    """`cat > path` as `user`, with `data` on its standard input."""
    env = {"PATH": "/usr/bin:/bin", **mount.user_env[user]}
    argv = [*as_user(mount.local[user]), "sh", "-c", 'cat > "$1"', "sh", str(path)]
    return subprocess.run(argv, input=data, env=env, capture_output=True, timeout=120)


def eventually(check, seconds: float = 10.0) -> None:
    """Callbacks travel asynchronously: give the other mount a moment."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            assert check()
            return
        except (AssertionError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
