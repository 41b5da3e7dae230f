"""`afsfuse mount MOUNTPOINT`: run the cache manager and serve it over FUSE.

One process, one trio run (the s3ql model): the root nursery holds the Rx endpoint (client
calls and the callback service on one UDP port), the cache manager's background work, the
invalidation worker, the control socket and `pyfuse3.main`.  SIGTERM, SIGINT and an
external `fusermount3 -u` all end in the same clean stop: FUSE session closed (unmounting
if still mounted), callbacks given back to the fileservers, cache closed.

Without --foreground the command returns once the mount is ready (exit status 0), or with
the error that prevented it (exit status 1), and the daemon carries on in the background.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import pyfuse3
import trio

from afsfuse.cache.store import CacheStore
from afsfuse.config import (
    CALLBACK_PORT,
    DEFAULT_CONFIG,
    Cells,
    ConfigError,
    MountConfig,
    build_config,
    load_cells,
    read_config_file,
)
from afsfuse.ctl.ops import LeftoverOps, StatsOps, SysnameOps, TokenOps
from afsfuse.ctl.pathops import PathOps
from afsfuse.ctl.protocol import control_socket_path
from afsfuse.ctl.server import Handlers, serve_control
from afsfuse.fs.cell import CellDB
from afsfuse.fs.manager import CacheManager, ManagerConfig
from afsfuse.fs.stats import Stats
from afsfuse.keyring.store import TokenStore
from afsfuse.keyring.token import Token
from afsfuse.keyring.viceid import with_viceid
from afsfuse.rx.driver import open_endpoint
from afsfuse.rx.interfaces.pt import PT
from afsfuse.rx.security import RXNULL
from afsfuse.vfs.operations import AfsOperations
from afsfuse.vfs.paths import MountPaths
from afsfuse.vl.dns import CellResolver, make_resolver

log = logging.getLogger("afsfuse")

#: Seconds given to GiveUpAllCallBacks at unmount.
GIVE_UP_TIMEOUT = 10.0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = _config(args)
        if config.foreground:
            _setup_logging(config, None)
        else:
            # What is wrong in the cell files is told at mount time, on the terminal.
            logging.basicConfig(level=logging.WARNING, format="afsfuse: %(levelname)s: %(message)s")
        cells = load_cells(config)
    except ConfigError as e:
        print(f"afsfuse: {e}", file=sys.stderr)
        return 2
    if config.foreground:
        return _run(config, cells, None)
    return _daemonize(config, cells)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="afsfuse", description="An AFS client over FUSE.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    mount = commands.add_parser("mount", help="mount AFS (normally on /afs)")
    mount.add_argument("mountpoint")
    mount.add_argument("--config", type=Path, help=f"settings file (default {DEFAULT_CONFIG})")
    mount.add_argument("--cellservdb", help="CellServDB (default /etc/openafs/CellServDB)")
    mount.add_argument("--thiscell", help="the home cell (default /etc/openafs/ThisCell)")
    mount.add_argument("--cache-dir", help="disk cache directory")
    mount.add_argument("--cache-size", help="disk cache size, e.g. 2G (default 1G)")
    mount.add_argument("--port", type=int, help="callback UDP port (default 7001 for root)")
    mount.add_argument("--sysname", action="append", help="@sys name (repeatable)")
    mount.add_argument("--security", choices=("clear", "auth", "crypt"), help="rxkad level")
    mount.add_argument("--max-tasks", type=int, help="FUSE requests served at once")
    mount.add_argument(
        "--dns-server", action="append", metavar="ADDRESS[:PORT]",
        help="nameserver for cell lookups (repeatable; default: the system's)",
    )  # fmt: skip
    mount.add_argument(
        "--dead-time", type=float, metavar="SECONDS",
        help="give up on a silent fileserver after this long and try another (default 12)",
    )  # fmt: skip
    mount.add_argument(
        "--server-timeout", type=float, metavar="SECONDS",
        help="an operation no fileserver answered fails with ETIMEDOUT after this long "
        "(default 120)",
    )  # fmt: skip
    mount.add_argument(
        "--store-retry", type=float, metavar="SECONDS",
        help="how often data whose store failed is tried again (default 30, doubling "
        "while it fails)",
    )  # fmt: skip
    mount.add_argument(
        "--no-xattrs", dest="xattrs", action="store_const", const=False,
        help="no afs.* extended attributes: ls -l and small writes cost fewer FUSE requests",
    )  # fmt: skip
    mount.add_argument("--log-file", help="log here (background default: syslog-less stderr)")
    mount.add_argument("--foreground", "-f", action="store_const", const=True)
    mount.add_argument("--debug", action="store_const", const=True)
    return parser


def _config(args: argparse.Namespace) -> MountConfig:
    path = args.config
    file_values = {}
    if path is not None or DEFAULT_CONFIG.exists():
        file_values = read_config_file(path or DEFAULT_CONFIG)
    options = {
        key: getattr(args, key)
        for key in (
            "cellservdb", "thiscell", "cache_dir", "cache_size", "port", "sysname",
            "security", "max_tasks", "log_file", "foreground", "debug", "dns_server",
            "dead_time", "server_timeout", "store_retry", "xattrs",
        )
    }  # fmt: skip
    return build_config(args.mountpoint, file_values, options)


def _setup_logging(config: MountConfig, stream: object) -> None:
    level = logging.DEBUG if config.debug else logging.INFO
    handler: logging.Handler
    if config.log_file is not None:
        handler = logging.FileHandler(config.log_file)
    else:
        handler = logging.StreamHandler(stream)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def _daemonize(config: MountConfig, cells: Cells) -> int:
    """Fork; the parent waits for the child to say the mount is ready (or why not)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            message = pipe.read().decode(errors="replace")
        if message == "ok":
            return 0
        print(f"afsfuse: {message or 'the daemon died before mounting'}", file=sys.stderr)
        return 1
    os.close(read_end)
    os.setsid()
    # Let go of the caller's terminal or pipes (a caller reading our output would otherwise
    # wait for the daemon's end); libfuse's own messages to fd 2 go to the log file.
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)
    if config.log_file is None:
        os.dup2(devnull, 2)
    else:
        log_fd = os.open(config.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.dup2(log_fd, 2)
        os.close(log_fd)
    os.close(devnull)
    _setup_logging(config, sys.stderr)
    os._exit(_run(config, cells, write_end))


def _run(config: MountConfig, cells: Cells, ready_fd: int | None) -> int:
    try:
        trio.run(_serve, config, cells, ready_fd)
    except BaseException as e:
        log.exception("afsfuse stopped with an error")
        _tell(ready_fd, f"mount failed: {e}")
        return 1
    return 0


def _tell(fd: int | None, message: str) -> None:
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.write(fd, message.encode())
        os.close(fd)


def _callback_port(port: int | None) -> int:
    """The given port, else 7001 for root when it is free, else any free port (0)."""
    if port is not None:
        return port
    if os.geteuid() != 0:
        return 0
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind(("0.0.0.0", CALLBACK_PORT))
    except OSError:
        log.info("port %d is taken; callbacks use an ephemeral port", CALLBACK_PORT)
        return 0
    finally:
        probe.close()
    return CALLBACK_PORT


def _mount_options(config: MountConfig) -> set[str]:
    options = set(pyfuse3.default_options)
    options.discard("default_permissions")  # AFS rights are checked here, per caller
    options |= {"fsname=AFS", "subtype=afsfuse", "noatime"}
    if os.geteuid() == 0:
        options.add("allow_other")
    return options


async def _serve(config: MountConfig, cells: Cells, ready_fd: int | None) -> None:
    cell_entries, this_cell, aliases = cells
    celldb = CellDB(
        cell_entries, this_cell, aliases, CellResolver(make_resolver(config.dns_server))
    )
    tokens = TokenStore()
    stats = Stats()
    manager_config = ManagerConfig(
        security=config.security,
        dead_time=config.dead_time,
        probe_timeout=min(ManagerConfig.probe_timeout, config.dead_time),
        rotation_timeout=config.server_timeout,
        store_retry=config.store_retry,
    )
    with CacheStore(config.resolved_cache_dir(), config.cache_size) as store:
        async with open_endpoint(port=_callback_port(config.port)) as endpoint:
            manager = CacheManager(manager_config, endpoint, celldb, store, tokens, stats)
            operations = AfsOperations(manager, config.sysname, xattrs=config.xattrs)

            async def fill_viceid(token: Token) -> Token:
                cell = await manager.cell(token.cell)
                if cell is None:
                    return token
                # The PT server runs on the database servers, beside the VL server.
                host = cell.vlservers[0][0]
                conn = endpoint.connect((host, PT.port), PT.service_id, RXNULL)
                return await with_viceid(token, conn)

            handlers = Handlers(
                TokenOps(tokens, this_cell, fill_viceid),
                SysnameOps(
                    lambda: [os.fsdecode(n) for n in operations.sysnames],
                    lambda names: setattr(operations, "sysnames", [os.fsencode(n) for n in names]),
                ),
                StatsOps(stats.snapshot),
                LeftoverOps(store.leftovers),
                PathOps(manager, MountPaths(operations, config.mountpoint)),
            )
            mountpoint = os.fspath(config.mountpoint)
            unmounted = False
            async with trio.open_nursery() as nursery:
                # Before the mount exists: the control server resolves the mountpoint's
                # path, which must not wait on the FUSE session this thread serves.
                control = functools.partial(serve_control, mountpoint=mountpoint)
                await nursery.start(control, control_socket_path(mountpoint), handlers)
                pyfuse3.init(operations, mountpoint, _mount_options(config))
                try:
                    await nursery.start(manager.run)
                    await nursery.start(operations.invalidator.run)
                    nursery.start_soon(_stop_on_signals)
                    nursery.start_soon(_raise_readahead, mountpoint)
                    log.info(
                        "afsfuse %s mounted on %s (cell %s, callback port %d)",
                        os.getpid(), mountpoint, this_cell, endpoint.port,
                    )  # fmt: skip
                    _tell(ready_fd, "ok")
                    await pyfuse3.main(min_tasks=4, max_tasks=config.max_tasks)
                    log.info("FUSE session ended; stopping")
                    unmounted = True
                finally:
                    with trio.CancelScope(shield=True), trio.move_on_after(GIVE_UP_TIMEOUT):
                        await manager.keep_unsent()
                        await manager.give_up_callbacks()
                    pyfuse3.close(unmount=True)
                    log.info("unmounted %s%s", mountpoint, "" if unmounted else " after an error")
                    nursery.cancel_scope.cancel()


#: The kernel's read-ahead on the mount, in KiB: its reads then reach us 1 MiB at a time
#: (FUSE's largest), several in flight, rather than 128 KiB, the default.
READ_AHEAD_KB = 4096


async def _raise_readahead(mountpoint: str) -> None:
    """Best effort (root only).  The kernel sets the mount's read-ahead from our answer to
    its INIT request, which pyfuse3.main sends first thing: so shortly after that.  The
    backing device is found in mountinfo, never by a stat of the mount, which this thread
    itself would have to answer."""
    await trio.sleep(0.5)
    try:
        with open("/proc/self/mountinfo") as f:
            devices = [line.split()[2] for line in f if line.split()[4] == mountpoint]
        if devices:
            Path(f"/sys/class/bdi/{devices[-1]}/read_ahead_kb").write_text(f"{READ_AHEAD_KB}\n")
    except OSError as e:
        log.debug("read-ahead of %s left as it is: %s", mountpoint, e)


async def _stop_on_signals() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("signal %d: unmounting", signum)
            pyfuse3.terminate()
            return
