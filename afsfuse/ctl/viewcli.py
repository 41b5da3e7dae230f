"""`afsfuse-ctl cells`, `servers`, `volumes`, `calls`, `peers`, `conns`, `cache`,
`tokens --all` and `metrics`: a table for people (with --json, the daemon's reply as it is).

Columns follow kAFS's /proc/fs/afs and /proc/net/rxrpc files where those have one; times
are shown as durations (ms, s, m, h), sizes in binary units.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from afsfuse.ctl.client import ControlClient

Row = Sequence[object]
#: A cell shown right-aligned: a number, a duration or a size (or "-" for none).
_NUMBER = re.compile(r"-?[0-9.]+(ms|s|m|h|K|M|G|T)?\Z|-\Z")


def table(headers: Sequence[str], rows: Sequence[Row]) -> str:
    """Columns as wide as their widest cell; numbers to the right, text to the left."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, text in enumerate(row):
            widths[i] = max(widths[i], len(text))
    numeric = [
        all(_NUMBER.match(row[i]) for row in cells) and any(row[i] != "-" for row in cells)
        for i in range(len(headers))
    ]

    def line(texts: Sequence[str]) -> str:
        parts = [
            text.rjust(width) if right else text.ljust(width)
            for text, width, right in zip(texts, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(row) for row in cells)])


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def duration(seconds: float | None) -> str:
    """12ms, 3.4s, 5m, 2h: short, for a table column."""
    if seconds is None:
        return "-"
    if abs(seconds) < 1:
        return f"{seconds * 1000:.1f}ms" if abs(seconds) < 0.01 else f"{seconds * 1000:.0f}ms"
    if abs(seconds) < 100:
        return f"{seconds:.1f}s"
    if abs(seconds) < 6000:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def size(count: int) -> str:
    """Bytes in binary units: 512, 1.5K, 64M, 2.0G."""
    value = float(count)
    for unit in ("", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            if not unit:
                return str(count)
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _show(args: argparse.Namespace, text: Callable[[], str]) -> None:
    if not args.json:
        print(text())


def cells(client: ControlClient, args: argparse.Namespace) -> Any:
    result = client.call("cells")
    rows = [
        (
            cell["name"] + (" (home)" if cell["home"] else ""),
            cell["source"],
            " ".join(cell["vlservers"]),
            " ".join(cell["aliases"]) or "-",
        )
        for cell in result["cells"]
    ]
    _show(args, lambda: table(("CELL", "FROM", "DATABASE SERVERS", "ALIASES"), rows))
    return result


def servers(client: ControlClient, args: argparse.Namespace) -> Any:
    result = client.call("servers")
    rows = []
    for server in result["servers"]:
        state = "up" if server["up"] else f"down {duration(server['down_for'])}"
        rows.append(
            (
                server["kind"],
                server["address"],
                server["cell"] or "-",
                state,
                duration(server["rtt"]),
                server["rank"],
                server["calls"],
                server["errors"],
                server["last_error"] or "-",
            )
        )
    headers = ("TYPE", "ADDRESS", "CELL", "STATE", "RTT", "RANK", "CALLS", "ERRORS", "LAST ERROR")
    _show(args, lambda: table(headers, rows))
    return result


def volumes(client: ControlClient, args: argparse.Namespace) -> Any:
    result = client.call("volumes")
    rows = [
        (
            volume["cell"],
            volume["name"],
            volume["id"],
            volume["type"].upper(),
            ", ".join(volume["sites"]) or "-",
            volume["in_use"] or "none up",
            volume["files"],
            volume["callbacks"],
            duration(volume["callback_expires"]),
        )
        for volume in result["volumes"]
    ]
    headers = ("CELL", "VOLUME", "ID", "TYPE", "SITES", "IN USE", "FILES", "CALLBACKS", "CB ENDS")
    _show(args, lambda: table(headers, rows))
    return result


def calls(client: ControlClient, args: argparse.Namespace) -> Any:
    result = client.call("calls")
    rows = [
        (
            call["server"],
            call["service"],
            call["rpc"],
            call["direction"],
            call["state"],
            duration(call["age"]),
            size(call["bytes_sent"]),
            size(call["bytes_received"]),
            f"{call['cwind']}/{call['twind']}/{call['rwind']}",
            call["in_flight"],
            duration(call["quiet"]),
        )
        for call in result["calls"]
    ]
    headers = (
        "SERVER", "SERVICE", "RPC", "DIR", "STATE", "AGE", "SENT", "RECEIVED",
        "CWND/TWND/RWND", "IN FLIGHT", "QUIET",
    )  # fmt: skip
    _show(args, lambda: table(headers, rows))
    return result


def peers(client: ControlClient, args: argparse.Namespace) -> Any:
    result = client.call("peers")
    rows = [
        (
            peer["address"],
            duration(peer["rtt"]),
            duration(peer["rtt_deviation"]),
            duration(peer["rto"]),
            peer["max_packet"],
            peer["connections"],
            peer["calls"],
            peer["data_sent"],
            peer["resends"],
            size(peer["bytes_sent"]),
            size(peer["bytes_received"]),
            duration(peer["heard_ago"]),
        )
        for peer in result["peers"]
    ]
    headers = (
        "ADDRESS", "RTT", "RTTVAR", "RTO", "MTU", "CONNS", "CALLS", "DATA PKTS", "RESENT",
        "SENT", "RECEIVED", "LAST HEARD",
    )  # fmt: skip
    _show(args, lambda: table(headers, rows))
    return result


def conns(client: ControlClient, args: argparse.Namespace) -> Any:
    result = client.call("conns")
    rows = [
        (
            conn["address"],
            conn["service"],
            conn["direction"],
            f"{conn['epoch']:08x}:{conn['cid']:08x}",
            conn["security"],
            conn["calls_made"],
            conn["calls_live"],
            conn["serial"],
            duration(conn["idle"]),
            conn["error"],
        )
        for conn in result["conns"]
    ]
    headers = (
        "ADDRESS", "SERVICE", "DIR", "EPOCH:CID", "SECURITY", "CALLS", "LIVE", "SERIAL",
        "IDLE", "ERROR",
    )  # fmt: skip
    _show(args, lambda: table(headers, rows))
    return result


def cache(client: ControlClient, args: argparse.Namespace) -> Any:
    result = client.call("cache")
    _show(args, lambda: cache_text(result["cache"]))
    return result


def cache_text(c: dict[str, Any]) -> str:
    """As `fs getcacheparms` begins, then the rest a line each."""
    blocks, limit = c["clean_bytes"] // 1024, c["clean_limit"] // 1024
    percent = 100 * c["clean_bytes"] // c["clean_limit"] if c["clean_limit"] else 0
    data = c["data_hits"] + c["data_misses"]
    status = c["status_hits"] + c["status_misses"]
    return "\n".join(
        [
            f"AFS using {percent}% of cache blocks ({blocks} of {limit} 1k blocks)",
            f"files cached:      {c['files']} (chunks of {size(c['chunk_size'])})",
            f"chunks in memory:  {size(c['memory_bytes'])} of {size(c['memory_limit'])}",
            f"dirty:             {c['dirty_files']} files, {size(c['dirty_bytes'])} "
            f"({size(c['dirty_memory_bytes'])} in memory, of {size(c['dirty_memory_limit'])})",
            f"unsent:            {c['unsent_files']} files whose store failed, to be tried again",
            f"leftovers:         {c['leftovers']} set aside, {size(c['leftover_bytes'])}",
            f"data hits:         {_rate(c['data_hits'], data)}",
            f"status hits:       {_rate(c['status_hits'], status)}",
        ]
    )


def _rate(hits: int, total: int) -> str:
    if not total:
        return "no reads yet"
    return f"{100 * hits / total:.1f}% ({hits} of {total})"


def tokens_all(client: ControlClient, args: argparse.Namespace) -> Any:
    result = client.call("tokens_all")
    now = time.time()
    rows = [
        (
            (f"uid {token['uid']}" if token["uid"] is not None else f"pag {token['pag']}")
            + (f"@{token['host']}" if token["host"] else ""),
            token["cell"],
            token["viceid"],
            token["client"],
            time.strftime("%Y-%m-%d %H:%M", time.localtime(token["end"]))
            if token["end"] > now
            else "expired",
        )
        for token in result["tokens"]
    ]
    headers = ("HOLDER", "CELL", "AFS ID", "PRINCIPAL", "EXPIRES")
    _show(args, lambda: table(headers, rows))
    return result


def metrics(client: ControlClient, args: argparse.Namespace) -> Any:
    result = client.call("metrics")
    if not args.json:
        print(result["text"], end="")
    return result
