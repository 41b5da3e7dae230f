"""`afsfuse-ctl pagsh [COMMAND [ARG...]]`: run a command (the user's shell by default) in a
new PAG, without privileges (keyring/pag.py says what a PAG is here).

Three processes:

- the front, this command: waits for the command's exit status and exits with it.  Like a
  shell waiting for a job, it ignores SIGINT and SIGQUIT meanwhile; the command gets them.
- the keeper, forked from the front: makes itself the child subreaper of what it starts,
  asks the daemon to make it a PAG's keeper (the daemon believes the kernel about which
  process asks, never the request), forks the command, and then reaps orphans until it has
  no descendant left, which ends the PAG.  It moves to a process group of its own and lets
  go of the terminal, the caller's files and the working directory, so that it holds no
  pipe, terminal or mount open and ^C or ^Z never reach it.
- the command, in the caller's process group and terminal as any job (job control works).

So a PAG outlives its command while anything started in it still runs (`nohup job &`, tmux
or screen started inside), and a `$(afsfuse-ctl pagsh -- cmd)` returns when cmd does.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import sys
from pathlib import Path

from afsfuse.ctl.clibase import PROG
from afsfuse.ctl.client import ControlClient, ControlFailed, MountNotFound

PR_SET_CHILD_SUBREAPER = 36
#: Signals the front ignores while it waits, and the keeper for good.
_WAITING = (signal.SIGINT, signal.SIGQUIT)
_KEEPER = (*_WAITING, signal.SIGHUP)
#: What Python ignores at start, which a command must not inherit.
_RESTORE = (*_KEEPER, signal.SIGPIPE, signal.SIGXFSZ)


def run(socket: Path, argv: list[str]) -> int:
    """Run argv in a new PAG; its exit status (128 + N when killed by signal N)."""
    if argv[:1] == ["--"]:
        argv = argv[1:]
    argv = argv or [os.environ.get("SHELL") or "/bin/sh"]
    reader, writer = os.pipe()
    keeper = os.fork()
    if keeper == 0:
        status = 1
        try:
            os.close(reader)
            status = _keep(socket, argv, writer)
        finally:
            os._exit(status)
    os.close(writer)
    saved = [signal.signal(number, signal.SIG_IGN) for number in _WAITING]
    try:
        with os.fdopen(reader, "r") as news:
            lines = news.read().splitlines()
    finally:
        for number, handler in zip(_WAITING, saved, strict=True):
            signal.signal(number, handler)
    for line in lines:
        kind, _, text = line.partition(" ")
        if kind == "error":
            print(f"{PROG}: pagsh: {text}", file=sys.stderr)
            return 1
        if kind == "exit":
            return int(text)
    print(f"{PROG}: pagsh: the PAG's keeper ended before the command", file=sys.stderr)
    return 1


def _keep(socket: Path, argv: list[str], writer: int) -> int:
    for number in _KEEPER:
        signal.signal(number, signal.SIG_IGN)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        return _tell(writer, f"error cannot keep a PAG: {os.strerror(ctypes.get_errno())}")
    try:
        with ControlClient(socket) as client:
            pag = client.call("setpag")["pag"]
    except ControlFailed as e:
        return _tell(writer, f"error {e.message}")
    except MountNotFound as e:
        return _tell(writer, f"error {e}")
    except OSError as e:
        return _tell(writer, f"error lost the daemon: {e}")
    _tell(writer, f"pag {pag}")
    command = os.fork()
    if command == 0:
        _exec(argv, writer)
    os.setpgid(0, 0)
    _let_go()
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return 0  # no descendant left: the PAG ends with this process
        if pid == command:
            code = os.waitstatus_to_exitcode(status)
            _tell(writer, f"exit {code if code >= 0 else 128 - code}")
            os.close(writer)


def _exec(argv: list[str], writer: int) -> None:
    try:
        os.close(writer)
        for number in _RESTORE:
            signal.signal(number, signal.SIG_DFL)
        os.execvp(argv[0], argv)
    except OSError as e:
        print(f"{PROG}: pagsh: {argv[0]}: {e.strerror}", file=sys.stderr)
        os._exit(127 if e.errno == errno.ENOENT else 126)
    finally:
        os._exit(127)


def _let_go() -> None:
    """Hold no terminal, pipe or directory of the caller's."""
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def _tell(writer: int, line: str) -> int:
    os.write(writer, f"{line}\n".encode())
    return 1
