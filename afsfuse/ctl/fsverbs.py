"""`afsfuse-ctl` verbs named, taking and printing as `fs` does: whereis, examine, getfid,
whichcell, diskfree, quota, setvol, flushmount, copyacl, cleanacl, getcalleraccess,
checkservers, checkvolumes, listcells, listaliases, newcell, newalias, getcellstatus,
setcell, getserverprefs, setserverprefs, getcacheparms, nukenfscreds.

Each asks the daemon the control op that also serves the matching pioctl over rmtsys
(ctl/pioctl.py), so what `fs` prints through rmtsys and what these print agree.  As in
`fs`, a verb that takes paths takes them as arguments or after -path, `.` by default.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Callable
from typing import Any

from afsfuse.ctl.clibase import PROG, Failed, Usage, each, entry_path, object_path
from afsfuse.ctl.client import ControlClient, ControlFailed
from afsfuse.fs.acl import Acl, rights_to_letters

Command = Callable[..., argparse.ArgumentParser]


def add_verbs(command: Command) -> None:
    """Register the verbs with `command(name, function, help, aliases=...)`."""
    for name, function, help, aliases in (
        ("whereis", _whereis, "show the fileservers holding the volumes paths are in", []),
        ("examine", _examine, "show the fid and volume status of paths", ["listvol", "lv"]),
        ("whichcell", _whichcell, "show the cell paths are in", []),
        ("diskfree", _diskfree, "show the space on the partitions of volumes", ["df"]),
        ("quota", _quota, "show how much of their quota volumes use", []),
        ("getcalleraccess", _getcalleraccess, "show your rights on paths", ["gca"]),
        ("cleanacl", _cleanacl, "remove the entries of deleted users from ACLs", []),
    ):
        add_paths(command(name, function, help, aliases=aliases))
    getfid = command("getfid", _getfid, "show the AFS fid of paths")
    add_paths(getfid)
    getfid.add_argument(
        "-literal", "--literal", action="store_true",
        help="of a mount point or symbolic link itself, not what it leads to",
    )  # fmt: skip
    add_paths(
        command("flushmount", _flushmount, "forget what is cached of mount points themselves")
    )
    setvol = command(
        "setvol", _setvol, "set the quota or offline message of volumes", aliases=["sv"]
    )
    add_paths(setvol)
    setvol.add_argument("-max", "--max", type=int, metavar="KB", help="quota (0: no limit)")
    setvol.add_argument("-offlinemsg", "--offlinemsg", metavar="TEXT", help="offline message")
    copyacl = command("copyacl", _copyacl, "copy an ACL to other directories", aliases=["ca"])
    copyacl.add_argument("fromdir", metavar="FROMDIR")
    copyacl.add_argument("todir", nargs="+", metavar="TODIR")
    copyacl.add_argument("-clear", "--clear", action="store_true", help="replace, not merge")
    checkservers = command("checkservers", _checkservers, "show which fileservers are down")
    checkservers.add_argument("-cell", "--cell", help="a cell to check")
    checkservers.add_argument("-all", "--all", action="store_true", help="every cell")
    checkservers.add_argument("-fast", "--fast", action="store_true", help="ask no server")
    checkservers.add_argument(
        "-interval", "--interval", type=int, metavar="SECONDS",
        help="show (0) or set (root) how often down servers are probed",
    )  # fmt: skip
    command("checkvolumes", _checkvolumes, "look volumes up again", aliases=["checkbackups"])
    listcells = command("listcells", _listcells, "show the cells and their database servers")
    listcells.add_argument("-numeric", "--numeric", action="store_true", help="addresses only")
    command("listaliases", _listaliases, "show the cell aliases")
    newalias = command("newalias", _newalias, "give a cell another name (root only)")
    newalias.add_argument("alias", metavar="ALIAS")
    newalias.add_argument("cell", metavar="CELL")
    newcell = command(
        "newcell", _newcell, "add a cell and its database servers, until the daemon ends (root)"
    )
    newcell.add_argument("cell", metavar="CELL")
    newcell.add_argument("servers", nargs="+", metavar="SERVER")
    newcell.add_argument(
        "-linkedcell", "--linkedcell", metavar="CELL", help="the cell it is linked to"
    )
    setcell = command("setcell", _setcell, "set whether setuid is honoured in cells (root)")
    setcell.add_argument("cells", nargs="*", metavar="CELL")
    setcell.add_argument("-cell", "--cell", dest="more_cells", nargs="+", default=[])
    setcell.add_argument("-suid", "--suid", action="store_true", help="allow setuid programs")
    setcell.add_argument("-nosuid", "--nosuid", action="store_true", help="disallow (default)")
    cellstatus = command("getcellstatus", _getcellstatus, "show whether setuid works in cells")
    cellstatus.add_argument("cells", nargs="+", metavar="CELL")
    getprefs = command(
        "getserverprefs", _getserverprefs, "show server ranks (lowest first)", aliases=["gp"]
    )
    getprefs.add_argument("-numeric", "--numeric", action="store_true", help="addresses only")
    getprefs.add_argument("-vlservers", "--vlservers", action="store_true", help="VL servers")
    setprefs = command(
        "setserverprefs",
        _setserverprefs,
        "rank fileservers, VL servers (root only)",
        aliases=["sp"],
    )
    setprefs.add_argument("-servers", "--servers", nargs="+", default=[], metavar="HOST RANK")
    setprefs.add_argument("-vlservers", "--vlservers", nargs="+", default=[], metavar="HOST RANK")
    command("getcacheparms", _getcacheparms, "show the disk cache's size and use")
    nuke = command("nukenfscreds", _nukenfscreds, "discard the tokens of a remote host (root)")
    nuke.add_argument("-addr", "--addr", required=True, metavar="HOST", help="the host")


def add_paths(parser: argparse.ArgumentParser, switch: str = "path", dot: bool = True) -> None:
    """Paths as fs takes them: as arguments, or after -path (-dir); with dot, the current
    directory when none is given, else at least one is needed."""
    metavar = switch.upper()
    parser.add_argument("paths", nargs="*", metavar=metavar, help="default: ." if dot else None)
    parser.add_argument(
        f"-{switch}", f"--{switch}", dest="more_paths", nargs="+", default=[], metavar=metavar
    )
    parser.set_defaults(dot_default=dot)


def given(args: argparse.Namespace) -> list[str]:
    """The paths a verb was given (see add_paths)."""
    paths = [*args.paths, *args.more_paths]
    if not paths and not args.dot_default:
        raise Usage("no path given")
    return paths or ["."]


def _quiet(
    args: argparse.Namespace, show: Callable[[str, Any], None]
) -> Callable[[str, Any], None]:
    return (lambda path, result: None) if args.json else show


def _host(address: str, numeric: bool = False) -> str:
    """A host as fs names it (hostutil_GetNameByINet): its name, else its address."""
    if numeric:
        return address
    try:
        return socket.gethostbyaddr(address)[0]
    except OSError:
        return address


def _whereis(client: ControlClient, args: argparse.Namespace) -> list[Any]:
    def show(path: str, result: Any) -> None:
        hosts = result["servers"]
        plural = "" if len(hosts) == 1 else "s"
        print(f"File {path} is on host{plural} " + "".join(f"{_host(h)} " for h in hosts))

    return each(client, "whereis", given(args), _quiet(args, show), object_path)


def _getfid(client: ControlClient, args: argparse.Namespace) -> list[Any]:
    def show(path: str, fid: Any) -> None:
        print(
            f"File {path} ({fid['volume']}.{fid['vnode']}.{fid['unique']}) located in cell {fid['cell']}"
        )

    if args.literal:
        return each(client, "getfid", given(args), _quiet(args, show), entry_path, literal=True)
    return each(client, "getfid", given(args), _quiet(args, show), object_path)


def _whichcell(client: ControlClient, args: argparse.Namespace) -> list[Any]:
    def show(path: str, result: Any) -> None:
        print(f"File {path} lives in cell '{result['cell']}'")

    return each(client, "whichcell", given(args), _quiet(args, show), object_path)


def _examine(client: ControlClient, args: argparse.Namespace) -> list[Any]:
    def show(path: str, status: Any) -> None:
        fid = client.call("getfid", path=object_path(path))
        volume = fid["volume"]
        print(f"File {path} ({volume}.{fid['vnode']}.{fid['unique']}) contained in volume {volume}")
        print(f"Volume status for vid = {status['volume_id']} named {status['volume']}")
        if status["offline_message"]:
            print(f"Current offline message is {status['offline_message']}")
        print(f"Current disk quota is {status['quota'] or 'unlimited'}")
        print(f"Current blocks used are {status['used']}")
        print(
            f"The partition has {status['partition_free']} blocks available out of "
            f"{status['partition_size']}\n"
        )

    return each(client, "listquota", given(args), _quiet(args, show), object_path)


def _diskfree(client: ControlClient, args: argparse.Namespace) -> list[Any]:
    if not args.json:
        print(f"{'Volume Name':<25}{'kbytes':>10}{'used':>10}{'avail':>10}{'%used':>6}")

    def show(path: str, status: Any) -> None:
        size, free = status["partition_size"], status["partition_free"]
        used = 100.0 - 100.0 * free / size if size else 0.0
        warn = "<<  <<WARNING" if used > 90.0 else "  "
        print(f"{status['volume']:<25.25}{size:10d}{size - free:10d}{free:10d} {used:4.0f}%{warn}")

    return each(client, "listquota", given(args), _quiet(args, show), object_path)


def _quota(client: ControlClient, args: argparse.Namespace) -> list[Any]:
    def show(path: str, status: Any) -> None:
        share = 100.0 * status["used"] / status["quota"] if status["quota"] else 0.0
        print(f"{share:2.0f}% of quota used.")

    return each(client, "listquota", given(args), _quiet(args, show), object_path)


def _getcalleraccess(client: ControlClient, args: argparse.Namespace) -> list[Any]:
    def show(path: str, result: Any) -> None:
        print(f"Callers access to {path} is {rights_to_letters(result['rights'])}")

    return each(client, "getcalleraccess", given(args), _quiet(args, show), object_path)


def _flushmount(client: ControlClient, args: argparse.Namespace) -> list[Any]:
    return each(client, "flushmount", given(args), lambda path, result: None, entry_path)


def _setvol(client: ControlClient, args: argparse.Namespace) -> list[Any]:
    if args.max is None and args.offlinemsg is None:
        raise Usage("give -max or -offlinemsg")
    return each(
        client, "setquota", given(args), lambda path, result: None, object_path,
        max=args.max, offline_message=args.offlinemsg,
    )  # fmt: skip


def _copyacl(client: ControlClient, args: argparse.Namespace) -> list[Any]:
    """As fs copyacl: the source's entries set over (or, with -clear, instead of) each
    target's, negative ones too."""
    source = Acl.parse(client.call("listacl", path=object_path(args.fromdir))["text"])
    results, failed = [], False
    for target in args.todir:
        path = object_path(target)
        acl = Acl() if args.clear else Acl.parse(client.call("listacl", path=path)["text"])
        acl.positive.update(source.positive)
        acl.negative.update(source.negative)
        try:
            results.append(client.call("setacl", path=path, text=acl.format()))
        except Exception as error:
            print(f"{PROG}: copyacl: {target}: {error}", file=sys.stderr)
            failed = True
    if failed:
        raise Failed
    return results


def _deleted_user(name: str) -> bool:
    """An entry the fileserver names by number: its user or group no longer exists (no
    PT name is all digits)."""
    return name.lstrip("-").isdigit()


def _cleanacl(client: ControlClient, args: argparse.Namespace) -> list[Any]:
    results = []
    for path in given(args):
        acl = Acl.parse(client.call("listacl", path=object_path(path))["text"])
        gone = [n for side in (acl.positive, acl.negative) for n in side if _deleted_user(n)]
        if not gone:
            if not args.json:
                print(f"Access list for {path} is fine.")
            results.append({"path": path, "removed": []})
            continue
        for side in (acl.positive, acl.negative):
            for name in [n for n in side if _deleted_user(n)]:
                del side[name]
        client.call("setacl", path=object_path(path), text=acl.format())
        results.append({"path": path, "removed": gone})
        if not args.json:
            print(f"Access list for {path} is now")
            for title, side in (("Normal rights", acl.positive), ("Negative rights", acl.negative)):
                if side:
                    print(f"{title}:")
                    for name, rights in side.items():
                        print(f"  {name} {rights_to_letters(rights)}")
    return results


def _checkservers(client: ControlClient, args: argparse.Namespace) -> Any:
    if args.interval is not None:
        interval = max(0, min(args.interval, 600))
        result = client.call("checkservers", interval=interval)
        if not args.json:
            if interval:
                print(
                    f"The new down server probe interval ({interval} secs) is now in effect "
                    f"(old interval was {result['interval']} secs)"
                )
            else:
                print(f"The current down server probe interval is {result['interval']} secs")
        return result
    result = client.call("checkservers", cell=args.cell, fast=args.fast, all=args.all)
    if not args.json:
        if not result["down"]:
            print("All servers are running.")
        else:
            names = "".join(f" {_host(host)}" for host in result["down"])
            print(f"These servers unavailable due to network or server problems:{names}.")
    if result["down"]:
        raise Failed
    return result


def _checkvolumes(client: ControlClient, args: argparse.Namespace) -> Any:
    result = client.call("checkvolumes")
    if not args.json:
        print("All volumeID/name mappings checked.")
    return result


def _listcells(client: ControlClient, args: argparse.Namespace) -> Any:
    result = client.call("listcells")
    if not args.json:
        for cell in result["cells"]:
            hosts = "".join(f" {_host(h, args.numeric)}" for h in cell["servers"])
            print(f"Cell {cell['name']} on hosts{hosts}.")
    return result


def _listaliases(client: ControlClient, args: argparse.Namespace) -> Any:
    result = client.call("listaliases")
    if not args.json:
        for alias, cell in result["aliases"]:
            print(f"Alias {alias} for cell {cell}")
    return result


def _newalias(client: ControlClient, args: argparse.Namespace) -> Any:
    try:
        return client.call("newalias", alias=args.alias, cell=args.cell)
    except ControlFailed as error:
        if error.code != "EEXIST":
            raise
        print(f"{PROG}: cell name `{args.alias}' in use by an existing cell.", file=sys.stderr)
        raise Failed from None


def _newcell(client: ControlClient, args: argparse.Namespace) -> Any:
    servers = []
    for host in args.servers:
        try:
            servers.append(socket.gethostbyname(host))
        except OSError:
            print(f"{PROG}: Host {host} not found in host table, skipping it.", file=sys.stderr)
    return client.call("newcell", cell=args.cell, servers=servers, linked_cell=args.linkedcell)


def _setcell(client: ControlClient, args: argparse.Namespace) -> list[Any]:
    if args.suid and args.nosuid:
        raise Usage("Cannot specify both -suid and -nosuid.")
    cells = [*args.cells, *args.more_cells]
    if not cells:
        raise Usage("no cell given")
    return [client.call("setcell", cell=cell, setuid=args.suid) for cell in cells]


def _getcellstatus(client: ControlClient, args: argparse.Namespace) -> list[Any]:
    results = []
    for cell in args.cells:
        result = client.call("getcellstatus", cell=cell)
        results.append(result)
        if not args.json:
            setuid = "setuid allowed" if result["setuid"] else "no setuid allowed"
            print(f"Cell {result['cell']} status: {setuid}")
    return results


def _getserverprefs(client: ControlClient, args: argparse.Namespace) -> Any:
    result = client.call("getserverprefs", vlservers=args.vlservers)
    if not args.json:
        for address, rank in result["servers"]:
            print(f"{_host(address, args.numeric):<50} {rank:5d}")
    return result


def _pairs(words: list[str]) -> list[list[Any]]:
    if len(words) % 2:
        raise Usage("servers and ranks come in pairs")
    try:
        return [
            [socket.gethostbyname(host), min(int(rank), 0xFFFF)]
            for host, rank in zip(words[::2], words[1::2], strict=True)
        ]
    except (OSError, ValueError) as error:
        raise Usage(f"not HOST RANK pairs: {error}") from None


def _setserverprefs(client: ControlClient, args: argparse.Namespace) -> list[Any]:
    results = []
    if args.servers:
        results.append(client.call("setserverprefs", servers=_pairs(args.servers)))
    if args.vlservers:
        results.append(
            client.call("setserverprefs", servers=_pairs(args.vlservers), vlservers=True)
        )
    return results


def _getcacheparms(client: ControlClient, args: argparse.Namespace) -> Any:
    result = client.call("getcacheparms")
    if not args.json:
        print(
            f"AFS using {result['used']} of the cache's available {result['blocks']} 1K byte "
            "blocks."
        )
    return result


def _nukenfscreds(client: ControlClient, args: argparse.Namespace) -> Any:
    try:
        host = socket.gethostbyname(args.addr)
    except OSError:
        raise Usage(f"host {args.addr} not found") from None
    return client.call("discard", host=host)
