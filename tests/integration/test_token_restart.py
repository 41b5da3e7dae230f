"""Tokens outlive the daemon: alice's token, handed over with `afsfuse-ctl aklog`, is back
after the daemon is killed (as by a crash, before systemd's Restart=on-failure) and started
again on the same mount point, whose dead mount it detaches.  Neither the daemon's log nor
its disk cache ever holds the token."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from local_users import User, UserPython
from logins import alice_token_secrets
from mounting import afs_mount, process_gone, start_daemon

from afsfuse.testing.cell import Cell

pytestmark = pytest.mark.cell


def test_a_killed_daemon_restarted_has_the_users_tokens_back(
    cell: Cell,
    users: dict[str, User],
    user_python: UserPython,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    with afs_mount(cell, users, user_python, tmp_path / "cache") as mount:
        done = mount.ctl("alice", "aklog")
        assert done.returncode == 0, done.stderr
        before = json.loads(mount.ctl("alice", "--json", "tokens").stdout)["tokens"]
        assert [t["cell"] for t in before] == [cell.name]
        # The same token again from alice's ticket cache (its service ticket is cached there).
        secrets = alice_token_secrets(mount.user_env["alice"], cell.name)

        os.kill(mount.pid, signal.SIGKILL)
        assert process_gone(mount.pid, 10)
        # The dead mount is still there, as systemd would find it.
        assert f" {mount.path} " in Path("/proc/self/mountinfo").read_text()
        mount.pid = start_daemon(cell, mount.path, mount.cache, mount.log_file)

        after = json.loads(mount.ctl("alice", "--json", "tokens").stdout)["tokens"]
        assert after == before
        assert json.loads(mount.ctl("bob", "--json", "tokens").stdout)["tokens"] == []
        # In the background, the detach is told on the terminal of `afsfuse mount`.
        assert "detaching the mount of an afsfuse daemon that died" in capfd.readouterr().err
        assert "tokens of 1 user(s) taken back from the kernel keyring" in mount.log()

        # Unlog removes the kept token as well: the next restart has none.
        assert mount.ctl("alice", "unlog").returncode == 0
        os.kill(mount.pid, signal.SIGKILL)
        assert process_gone(mount.pid, 10)
        mount.pid = start_daemon(cell, mount.path, mount.cache, mount.log_file)
        assert json.loads(mount.ctl("alice", "--json", "tokens").stdout)["tokens"] == []

    for secret in secrets:
        assert secret not in mount.log_file.read_bytes()
        for path in mount.cache.rglob("*"):
            if path.is_file():
                assert secret not in path.read_bytes(), path
