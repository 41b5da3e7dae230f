"""`afsfuse-ctl aklog --renew`, run by alice in the background against a real mount: each
`kinit -R` of her renewable ticket reaches the daemon as a token that ends later; kdestroy
ends the renewer with a line saying so, and SIGTERM ends it cleanly.  It never prints the
token's ticket or session key."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from local_users import User, UserPython, as_user
from logins import alice_token_secrets
from mounting import Mount, afs_mount

from afsfuse.testing.cell import USERS, Cell

pytestmark = pytest.mark.cell

DEADLINE = 30.0


def as_alice(mount: Mount, *argv: str, stdin: str | None = None) -> None:
    env = {"PATH": "/usr/bin:/bin", **mount.user_env["alice"]}
    done = subprocess.run(
        [*as_user(mount.local["alice"]), *argv], input=stdin, env=env, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, (argv, done.stderr)


def alices_token_end(mount: Mount) -> int | None:
    done = mount.ctl("alice", "--json", "tokens")
    assert done.returncode == 0, done.stderr
    tokens = json.loads(done.stdout)["tokens"]
    return tokens[0]["end"] if tokens else None


def wait_for(what: str, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {DEADLINE} s"
        time.sleep(0.1)


@contextmanager
def renewer(mount: Mount) -> Iterator[subprocess.Popen[str]]:
    """`afsfuse-ctl aklog --renew` as alice, looking at her ticket cache 5 times a second;
    killed by its own pid at the end if still there."""
    argv = [
        *as_user(mount.local["alice"]), mount.python.interpreter, "-m", "afsfuse.ctl.cli",
        "--mount", str(mount.path), "aklog", "--renew", "--interval", "0.2",
    ]  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", **mount.python.env, **mount.user_env["alice"]}
    # setpriv execs the interpreter: the pid is the renewer's own.
    process = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


def watching(process: subprocess.Popen[str]) -> None:
    """Wait for the renewer to say it is in its loop (SIGTERM is handled from then on)."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], DEADLINE)
    assert ready, "the renewer never said it was renewing"
    line = process.stdout.readline()
    assert line.startswith("afsfuse-ctl: aklog: renewing: the ticket cache is looked at every"), (
        line,
        process.poll(),
    )


def test_aklog_renew_hands_over_a_later_token_after_each_kinit_r(
    cell: Cell,
    users: dict[str, User],
    user_python: UserPython,
    tmp_path: Path,
) -> None:
    with afs_mount(cell, users, user_python, tmp_path / "cache") as mount:
        # A short, renewable ticket: each renewal moves its end (and the token's) later.
        as_alice(mount, "kinit", "-l", "10m", "-r", "1h", "alice", stdin=USERS["alice"] + "\n")
        with renewer(mount) as process:
            wait_for("token", lambda: alices_token_end(mount) is not None)
            first = alices_token_end(mount)
            assert first is not None
            watching(process)
            renewed = first
            for _ in range(2):
                time.sleep(1.1)  # ticket times are whole seconds
                as_alice(mount, "kinit", "-R")
                wait_for("later token", lambda: (alices_token_end(mount) or 0) > renewed)  # noqa: B023
                renewed = alices_token_end(mount) or 0
            assert renewed >= first + 2
            secrets = alice_token_secrets(mount.user_env["alice"], cell.name)

            as_alice(mount, "kdestroy")
            assert process.wait(timeout=DEADLINE) == 0
            out, err = process.communicate(timeout=10)
        assert "the Kerberos ticket cache is gone (kdestroy?): no more renewals" in err, err
        assert out.count(f"aklog: new token for {cell.name}, expires") == 2, out
        for secret in secrets:
            assert secret.decode(errors="replace") not in out + err
        # The token handed over stays until it expires, as after OpenAFS's kdestroy.
        assert alices_token_end(mount) == renewed

        as_alice(mount, "kinit", "-l", "10m", "-r", "1h", "alice", stdin=USERS["alice"] + "\n")
        with renewer(mount) as process:
            watching(process)
            os.kill(process.pid, signal.SIGTERM)
            assert process.wait(timeout=DEADLINE) == 0
            assert "Traceback" not in process.communicate(timeout=10)[1]
