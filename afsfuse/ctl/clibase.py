"""What every `afsfuse-ctl` verb shares: how paths are sent, one request per path, and the
two ways a command fails (cli.py and fsverbs.py hold the verbs)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from afsfuse.ctl.client import ControlClient, ControlFailed

PROG = "afsfuse-ctl"


class Failed(Exception):
    """A command that ran but did not fully succeed; already reported."""


class Usage(Exception):
    """Arguments no daemon request can be made from."""


def object_path(path: str) -> str:
    """The path the daemon should walk: resolved here, as the caller and with the caller's
    rights (the daemon makes no syscalls on its own mount)."""
    return os.path.realpath(path)


def entry_path(path: str) -> str:
    """A path whose last name is itself the subject (a mount point, which the kernel shows
    as a directory, or a name to make): only the directories above it are resolved."""
    head, name = os.path.split(os.path.abspath(path))
    if name in ("", ".", ".."):
        raise Usage(f"{path!r} does not end in a name")
    return os.path.join(os.path.realpath(head), name)


def each(
    client: ControlClient,
    op: str,
    paths: Sequence[str],
    show: Callable[[str, Any], None],
    path_of: Callable[[str], str],
    **args: Any,
) -> list[Any]:
    """One request per path; every failure is reported, and the command then fails."""
    results, failed = [], False
    for path in paths:
        try:
            result = client.call(op, path=path_of(path), **args)
        except ControlFailed as error:
            print(f"{PROG}: {op}: {path}: {error.message}", file=sys.stderr)
            failed = True
            continue
        results.append(result)
        show(path, result)
    if failed:
        raise Failed
    return results
