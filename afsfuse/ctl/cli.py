"""`afsfuse-ctl`: talk to a running afsfuse mount (tokens, sysname, statistics, ACLs,
quotas, mount points, flushes, and views of what the client is doing: ctl/viewcli.py).

Output follows the OpenAFS commands of the same names; --json prints the daemon's replies
for scripts.  Exit status: 0 on success, 1 when something was refused or failed, 2 for
usage errors.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any

from afsfuse import __version__
from afsfuse.ctl import pagsh, renew, viewcli
from afsfuse.ctl.clibase import PROG, Failed, Usage, each, entry_path, object_path
from afsfuse.ctl.client import ControlClient, ControlFailed, MountNotFound, find_control_socket
from afsfuse.ctl.fsverbs import add_paths, add_verbs, given
from afsfuse.ctl.protocol import token_to_wire
from afsfuse.keyring import TokenError, token_from_ccache

_DESCRIPTION = (
    "Talk to a running afsfuse mount: tokens, sysname, statistics, ACLs, quotas, mount points,"
    " flushes; see what it is doing: cells, servers, volumes, calls, peers, conns, cache,"
    " metrics."
)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        path = args.socket or find_control_socket(args.mount)
        if args.name == "pagsh":
            return pagsh.run(path, args.argv)
        with ControlClient(path) as client:
            result = args.command(client, args)
    except MountNotFound as error:
        return _fail(str(error))
    except ControlFailed as error:
        reason = "not allowed: " if error.code == "EPERM" else ""
        return _fail(f"{args.name}: {reason}{error.message}")
    except Failed:
        return 1
    except Usage as error:
        print(f"{PROG}: {args.name}: {error}", file=sys.stderr)
        return 2
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
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _add_common_options(parser, {"mount": None, "socket": None, "json": False, "uid": None})
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    def command(
        name: str, function: Any, help: str, aliases: Sequence[str] = ()
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help, aliases=list(aliases))
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
    aklog.add_argument(
        "--renew", action="store_true",
        help="then stay (in the foreground) and hand over fresh tokens whenever the Kerberos "
        "ticket is renewed or replaced, until SIGTERM, SIGINT or kdestroy",
    )  # fmt: skip
    aklog.add_argument(
        "--interval", type=float, default=renew.DEFAULT_INTERVAL, metavar="SECONDS",
        help=f"with --renew, how often to look at the ticket cache "
        f"(default {renew.DEFAULT_INTERVAL:g})",
    )  # fmt: skip
    tokens = command("tokens", _tokens, "list your tokens")
    tokens.add_argument("--all", action="store_true", help="every user's tokens (root only)")
    unlog = command("unlog", _unlog, "discard your tokens")
    unlog.add_argument("cells", nargs="*", metavar="CELL", help="default: all cells")
    pag_shell = command(
        "pagsh", None,
        "run a command (default: your shell) in a new PAG: it and everything it starts use "
        "the PAG's tokens, and no other process can",
    )  # fmt: skip
    pag_shell.add_argument("argv", nargs=argparse.REMAINDER, metavar="COMMAND [ARG...]")
    command("getpag", _getpag, "show the PAG you are in")
    command("pags", _pags, "list the PAGs you started (root: all), with their tokens' cells")
    discard = command(
        "discard", _discard,
        "drop tokens (root only): a uid's (--uid, with the PAGs it started), a PAG's, a "
        "remote host's, or all",
    )  # fmt: skip
    discard.add_argument("--pag", type=_number, metavar="PAG", help="a PAG's tokens")
    discard.add_argument("--host", metavar="ADDRESS", help="a remote rmtsys host's users' tokens")
    discard.add_argument("--all", action="store_true", help="every token")
    sysname = command("sysname", _sysname, "show the @sys list, or set it (root only)")
    sysname.add_argument("names", nargs="*", metavar="NAME")
    command("stats", _stats, "show the daemon's statistics")
    for name, function, text in _VIEWS:
        command(name, function, text)
    command("wscell", _wscell, "show the mount's own cell")
    listacl = command(
        "listacl", _listacl, "show the access control list of directories", aliases=["la"]
    )
    add_paths(listacl)
    setacl = command("setacl", _setacl, "change a directory's access control list", aliases=["sa"])
    setacl.add_argument("path", metavar="PATH")
    setacl.add_argument(
        "acl", nargs="+", metavar="WHO RIGHTS",
        help="pairs: a user or group and rlidwka letters, or read, write, all, none",
    )  # fmt: skip
    setacl.add_argument("-clear", "--clear", action="store_true", help="start from an empty list")
    setacl.add_argument(
        "-negative", "--negative", action="store_true", help="edit the negative rights"
    )
    listquota = command(
        "listquota", _listquota, "show the quota and usage of volumes", aliases=["lq"]
    )
    add_paths(listquota)
    setquota = command(
        "setquota", _setquota, "set the quota of the volume a path is in", aliases=["sq"]
    )
    setquota.add_argument("path", metavar="PATH")
    setquota.add_argument(
        "max", type=int, metavar="KB", help="the quota in kilobytes (0: no limit)"
    )
    flush = command("flush", _flush, "forget what is cached of files and directories")
    add_paths(flush, dot=False)
    flushvolume = command(
        "flushvolume", _flushvolume, "forget what is cached of the volumes paths are in"
    )
    add_paths(flushvolume)
    command("flushall", _flushall, "forget everything cached (root only)")
    mkmount = command("mkmount", _mkmount, "make a mount point for a volume")
    mkmount.add_argument("dir", metavar="DIR")
    mkmount.add_argument("volume", metavar="VOLUME")
    mkmount.add_argument("-cell", "--cell", help="the volume's cell (default: the directory's)")
    mkmount.add_argument("-rw", "--rw", action="store_true", help="always the read/write volume")
    lsmount = command("lsmount", _lsmount, "show which volume a mount point leads to")
    add_paths(lsmount, "dir", dot=False)
    rmmount = command("rmmount", _rmmount, "remove a mount point")
    add_paths(rmmount, "dir", dot=False)
    leftovers = command(
        "leftovers", _leftovers,
        "unsent data set aside because the file changed on the server: list (default), "
        "restore ID DEST (copy it to DEST, then forget it), discard ID",
    )  # fmt: skip
    leftovers.add_argument("action", nargs="?", default="list", choices=_LEFTOVER_ACTIONS)
    leftovers.add_argument("id", nargs="?", metavar="ID")
    leftovers.add_argument("dest", nargs="?", metavar="DEST", help="where restore writes")
    leftovers.add_argument("--force", action="store_true", help="restore over an existing DEST")
    leftovers.add_argument("--keep", action="store_true", help="keep it after a restore")
    add_verbs(command)
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
    if args.renew and not args.interval > 0:
        raise Usage("--interval must be more than 0 seconds")
    cells = [*args.cells, *args.cell] or [client.call("wscell")["cell"]]
    cells = list(dict.fromkeys(cell.lower() for cell in cells))
    results, failed = _hand_over(client, cells, args)
    if failed:
        raise Failed
    if args.renew:
        client.close()  # each renewal reaches the daemon afresh: it may have restarted

        def again() -> bool:
            try:
                with ControlClient(client.path) as fresh:
                    done, failed = _hand_over(fresh, cells, args)
            except (MountNotFound, ControlFailed, OSError) as error:
                print(f"{PROG}: aklog: cannot hand over the tokens: {error}", file=sys.stderr)
                return False
            for reply in done:
                token = reply["token"]
                print(f"{PROG}: aklog: new token for {token['cell']}, expires "
                      f"{time.ctime(token['end'])}", flush=True)  # fmt: skip
            return not failed

        renew.watch(again, interval=args.interval, prog=PROG)
    return results


def _hand_over(
    client: ControlClient, cells: list[str], args: argparse.Namespace
) -> tuple[list[Any], bool]:
    """A token for each cell from the caller's ticket cache, handed to the daemon; the
    daemon's replies, and whether some cell got none (said on stderr)."""
    results, failed = [], False
    for cell in cells:
        try:
            # Kerberos runs here, in the caller's process with the caller's ticket cache.
            token = token_from_ccache(cell, None, args.realm)
        except TokenError as error:
            print(f"{PROG}: aklog: no token for {cell}: {error}", file=sys.stderr)
            failed = True
            continue
        results.append(client.call("settoken", uid=args.uid, token=token_to_wire(token)))
    return results, failed


_VIEWS = (
    ("cells", viewcli.cells, "cells known: database servers, where they came from, aliases"),
    ("servers", viewcli.servers, "file and database servers: up or down, round trip, calls"),
    ("volumes", viewcli.volumes, "volumes located: sites, the one in use, callbacks held"),
    ("calls", viewcli.calls, "Rx calls under way: server, RPC, age, bytes, windows"),
    ("peers", viewcli.peers, "what Rx measured of each remote address: round trip, timeout"),
    ("conns", viewcli.conns, "Rx connections, both ways"),
    ("cache", viewcli.cache, "disk cache use, dirty and unsent data, leftovers, hit rates"),
    ("metrics", viewcli.metrics, "all of these figures as Prometheus text"),
)


def _tokens(client: ControlClient, args: argparse.Namespace) -> Any:
    if args.all:
        return viewcli.tokens_all(client, args)
    result = client.call("tokens", uid=args.uid)
    if not args.json:
        print("\nTokens held by the Cache Manager:\n")
        now = time.time()
        for token in result["tokens"]:
            # As OpenAFS's tokens: a token without an AFS id shows no owner.
            whose = (
                f"User's (AFS ID {token['viceid']}) rxkad tokens"
                if token["viceid"] is not None
                else "RxkadTokens"
            )
            expiry = (
                f"Expires {time.ctime(token['end'])[4:16]}"
                if token["end"] > now
                else ">> Expired <<"
            )
            print(f"{whose} for {token['cell']} [{expiry}]")
        print("   --End of list--")
    return result


def _unlog(client: ControlClient, args: argparse.Namespace) -> list[Any]:
    if not args.cells:
        return [client.call("unlog", uid=args.uid)]
    return [client.call("unlog", uid=args.uid, cell=cell) for cell in args.cells]


def _number(text: str) -> int:
    """A PAG number, in decimal or 0x hexadecimal."""
    return int(text, 0)


def _getpag(client: ControlClient, args: argparse.Namespace) -> Any:
    result = client.call("getpag")
    if not args.json:
        print("not in a PAG" if result["pag"] is None else f"PAG {result['pag']:#x}")
    return result


def _pags(client: ControlClient, args: argparse.Namespace) -> Any:
    result = client.call("pags")
    if not args.json:
        for entry in result["pags"]:
            kept = f"keeper pid {entry['pid']} (uid {entry['uid']})" if entry["pid"] else "groups"
            cells = " ".join(entry["cells"]) or "no tokens"
            print(f"PAG {entry['pag']:#x}  {kept}  {cells}")
    return result


def _discard(client: ControlClient, args: argparse.Namespace) -> Any:
    chosen = {
        name: value
        for name, value in (("user", args.uid), ("pag", args.pag), ("host", args.host))
        if value is not None
    }
    if args.all:
        chosen["all"] = True
    if len(chosen) != 1:
        raise Usage("say whose tokens: one of --uid, --pag, --host or --all")
    return client.call("discard", **chosen)


def _sysname(client: ControlClient, args: argparse.Namespace) -> Any:
    result = client.call("sysname", names=args.names or None)
    if not args.json:
        names = result["names"]
        quoted = " ".join(f"'{name}'" for name in names)
        print(f"Current sysname {'is' if len(names) == 1 else 'list is'} {quoted}")
    return result


_LEFTOVER_ACTIONS = ("list", "restore", "discard")


def _leftovers(client: ControlClient, args: argparse.Namespace) -> Any:
    if args.action == "list":
        result = client.call("leftovers")
        if not args.json:
            for item in result["leftovers"]:
                print(_leftover_line(item))
        return result
    if args.id is None:
        raise Usage(f"{args.action} needs the leftover's ID")
    if args.action == "discard":
        return client.call("leftover_discard", id=args.id)
    if args.dest is None:
        raise Usage("restore needs the leftover's ID and a DEST to write it to")
    item, fd = client.call_with_fd("leftover_open", id=args.id)
    try:
        with os.fdopen(fd, "rb") as source:
            fd = -1
            flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if args.force else os.O_EXCL)
            with open(os.open(args.dest, flags, 0o600), "wb") as target:
                shutil.copyfileobj(source, target, 1 << 20)
                target.flush()
                os.fsync(target.fileno())
    finally:
        if fd >= 0:
            os.close(fd)
    if item["missing"]:
        unknown = sum(end - start for start, end in item["missing"])
        print(
            f"{PROG}: leftovers: {unknown} bytes of {args.dest} are zeros: their old content "
            "was no longer known",
            file=sys.stderr,
        )
    if not args.keep:
        with ControlClient(client.path) as again:
            again.call("leftover_discard", id=args.id)
    if not args.json:
        print(f"{args.id}: {item['size']} bytes written to {args.dest}")
    return item


def _leftover_line(item: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(item["created"]))
    fid = f"{item['volume']}.{item['vnode']}.{item['unique']}"
    return (
        f"{item['id']}  {item['size']} bytes  {when}  {item['cell']} fid {fid}  "
        f"uid {item['uid']}: {item['reason']}"
    )


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


def _listacl(client: ControlClient, args: argparse.Namespace) -> list[Any]:
    def show(path: str, result: Any) -> None:
        if args.json:
            return
        print(f"Access list for {path} is")
        for title, key in (("Normal rights", "positive"), ("Negative rights", "negative")):
            if result[key]:
                print(f"{title}:")
                for who, rights in result[key]:
                    print(f"  {who} {rights}")

    return each(client, "listacl", given(args), show, object_path)


def _setacl(client: ControlClient, args: argparse.Namespace) -> Any:
    if len(args.acl) % 2:
        print(f"{PROG}: setacl: WHO and RIGHTS come in pairs", file=sys.stderr)
        raise Failed
    entries = [list(pair) for pair in zip(args.acl[::2], args.acl[1::2], strict=True)]
    return client.call(
        "setacl", path=object_path(args.path), entries=entries,
        clear=args.clear, negative=args.negative,
    )  # fmt: skip


def _listquota(client: ControlClient, args: argparse.Namespace) -> list[Any]:
    """fs listquota's table, column for column."""
    if not args.json:
        heading = ("Volume Name", "      Quota", "       Used", " %Used", "  Partition")
        print("{:<25}{:<11}{:<11}{:<7}{:<11}".format(*heading))

    def show(path: str, result: Any) -> None:
        if args.json:
            return
        quota, used = result["quota"], result["used"]
        size, free = result["partition_size"], result["partition_free"]
        limits = f" {quota:10d} {used:10d}" if quota else f"   no limit {used:10d}"
        share = 100.0 * used / quota if quota else 0.0
        partition = 100.0 - 100.0 * free / size if size else 0.0
        warn = share > 90.0 or partition > 97.0
        marks = ["<<" if share > 90.0 else "  ", "<<" if partition > 97.0 else "  "]
        line = (
            f"{result['volume']:<25.25}{limits}{share:5.0f}%{marks[0]}{partition:9.0f}%{marks[1]}"
        )
        print(line + ("  <<WARNING" if warn else ""))

    return each(client, "listquota", given(args), show, object_path)


def _setquota(client: ControlClient, args: argparse.Namespace) -> Any:
    return client.call("setquota", path=object_path(args.path), max=args.max)


def _flush(client: ControlClient, args: argparse.Namespace) -> list[Any]:
    return each(client, "flush", given(args), lambda path, result: None, object_path)


def _flushvolume(client: ControlClient, args: argparse.Namespace) -> list[Any]:
    return each(client, "flushvolume", given(args), lambda path, result: None, object_path)


def _flushall(client: ControlClient, args: argparse.Namespace) -> Any:
    return client.call("flushall")


def _mkmount(client: ControlClient, args: argparse.Namespace) -> Any:
    return client.call(
        "mkmount", path=entry_path(args.dir), volume=args.volume, cell=args.cell, rw=args.rw
    )


def _lsmount(client: ControlClient, args: argparse.Namespace) -> list[Any]:
    def show(path: str, result: Any) -> None:
        if not args.json:
            print(f"'{path}' is a mount point for volume '{result['mountpoint']}'")

    return each(client, "lsmount", given(args), show, entry_path)


def _rmmount(client: ControlClient, args: argparse.Namespace) -> list[Any]:
    return each(client, "rmmount", given(args), lambda path, result: None, entry_path)


if __name__ == "__main__":
    sys.exit(main())
