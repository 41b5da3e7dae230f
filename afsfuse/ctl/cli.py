"""`afsfuse-ctl`: talk to a running afsfuse mount (tokens, sysname, statistics).

Output follows the OpenAFS commands of the same names; --json prints the daemon's replies
for scripts.  Exit status: 0 on success, 1 when something was refused or failed, 2 for
usage errors.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from afsfuse.ctl.client import ControlClient, ControlFailed, MountNotFound, find_control_socket
from afsfuse.ctl.protocol import token_to_wire
from afsfuse.keyring import TokenError, token_from_ccache

PROG = "afsfuse-ctl"
_DESCRIPTION = "Talk to a running afsfuse mount: tokens, sysname, statistics."


class _Failed(Exception):
    """A command that ran but did not fully succeed; already reported."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        path = args.socket or find_control_socket(args.mount)
        with ControlClient(path) as client:
            result = args.command(client, args)
    except MountNotFound as error:
        return _fail(str(error))
    except ControlFailed as error:
        reason = "not allowed: " if error.code == "EPERM" else ""
        return _fail(f"{args.name}: {reason}{error.message}")
    except _Failed:
        return 1
    except OSError as error:
        return _fail(f"{args.name}: lost the daemon: {error}")
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def _fail(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=_DESCRIPTION)
    _add_common_options(parser, {"mount": None, "socket": None, "json": False, "uid": None})
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    def command(name: str, function: Any, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        # Also accepted after the command name; absent there, they keep the value from before.
        _add_common_options(
            sub, dict.fromkeys(("mount", "socket", "json", "uid"), argparse.SUPPRESS)
        )
        sub.set_defaults(command=function, name=name)
        return sub

    aklog = command("aklog", _aklog, "get tokens from your Kerberos tickets and hand them over")
    aklog.add_argument("cells", nargs="*", metavar="CELL", help="default: the mount's own cell")
    aklog.add_argument("-c", "--cell", action="append", default=[], help="a cell (repeatable)")
    aklog.add_argument("-k", "--realm", help="the Kerberos realm of the cell's afs principal")
    command("tokens", _tokens, "list your tokens")
    unlog = command("unlog", _unlog, "discard your tokens")
    unlog.add_argument("cells", nargs="*", metavar="CELL", help="default: all cells")
    sysname = command("sysname", _sysname, "show the @sys list, or set it (root only)")
    sysname.add_argument("names", nargs="*", metavar="NAME")
    command("stats", _stats, "show the daemon's statistics")
    command("wscell", _wscell, "show the mount's own cell")
    return parser


def _add_common_options(parser: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
    parser.add_argument(
        "--mount", metavar="MOUNTPOINT", default=defaults["mount"],
        help="the afsfuse mount to talk to (default: the only one, else /afs)",
    )  # fmt: skip
    parser.add_argument(
        "--socket", metavar="PATH", default=defaults["socket"],
        help="talk to this control socket directly",
    )  # fmt: skip
    parser.add_argument(
        "--json", action="store_true", default=defaults["json"],
        help="print the daemon's replies as JSON",
    )  # fmt: skip
    parser.add_argument(
        "--uid", type=int, default=defaults["uid"],
        help="act for this uid (root only, e.g. for a service account)",
    )  # fmt: skip


def _aklog(client: ControlClient, args: argparse.Namespace) -> list[Any]:
    cells = [*args.cells, *args.cell] or [client.call("wscell")["cell"]]
    results, failed = [], False
    for cell in dict.fromkeys(cell.lower() for cell in cells):
        try:
            # Kerberos runs here, in the caller's process with the caller's ticket cache.
            token = token_from_ccache(cell, None, args.realm)
        except TokenError as error:
            print(f"{PROG}: aklog: no token for {cell}: {error}", file=sys.stderr)
            failed = True
            continue
        results.append(client.call("settoken", uid=args.uid, token=token_to_wire(token)))
    if failed:
        raise _Failed
    return results


def _tokens(client: ControlClient, args: argparse.Namespace) -> Any:
    result = client.call("tokens", uid=args.uid)
    if not args.json:
        print("\nTokens held by the Cache Manager:\n")
        now = time.time()
        for token in result["tokens"]:
            who = (
                f"AFS ID {token['viceid']}"
                if token["viceid"] is not None
                else f"Unix UID {result['uid']}"
            )
            expiry = (
                f"Expires {time.ctime(token['end'])[4:16]}"
                if token["end"] > now
                else ">> Expired <<"
            )
            print(f"User's ({who}) rxkad tokens for {token['cell']} [{expiry}]")
        print("   --End of list--")
    return result


def _unlog(client: ControlClient, args: argparse.Namespace) -> list[Any]:
    if not args.cells:
        return [client.call("unlog", uid=args.uid)]
    return [client.call("unlog", uid=args.uid, cell=cell) for cell in args.cells]


def _sysname(client: ControlClient, args: argparse.Namespace) -> Any:
    result = client.call("sysname", names=args.names or None)
    if not args.json:
        names = result["names"]
        quoted = " ".join(f"'{name}'" for name in names)
        print(f"Current sysname {'is' if len(names) == 1 else 'list is'} {quoted}")
    return result


def _stats(client: ControlClient, args: argparse.Namespace) -> Any:
    result = client.call("stats")
    if not args.json:
        for name, value in _flatten(result["stats"]):
            print(f"{name}: {value}")
    return result


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if not isinstance(value, dict):
        return [(prefix, value)]
    return [
        item
        for key in sorted(value)
        for item in _flatten(value[key], f"{prefix}.{key}" if prefix else str(key))
    ]


def _wscell(client: ControlClient, args: argparse.Namespace) -> Any:
    result = client.call("wscell")
    if not args.json:
        print(f"This workstation belongs to cell '{result['cell']}'")
    return result


if __name__ == "__main__":
    sys.exit(main())
