"""`afsfuse mount MOUNTPOINT`: run the cache manager and serve it over FUSE.

One process, one trio run (the s3ql model): the root nursery holds the Rx endpoint (client
calls and the callback service on one UDP port), the cache manager's background work, the
invalidation worker, the control socket and `pyfuse3.main`.  SIGTERM, SIGINT and an
external `fusermount3 -u` all end in the same clean stop: FUSE session closed (unmounting
if still mounted), callbacks given back to the fileservers, cache closed.

Without --foreground the command returns once the mount is ready (exit status 0), or with
the error that prevented it (exit status 1), and the daemon carries on in the background.

Somewhat over 500 lines: this is where every part of the daemon is made and wired to the
others, which reads best in one place.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import logging.handlers
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Sequence
from pathlib import Path
from typing import Any, TextIO

import pyfuse3
import trio

from afsfuse import __version__, preflight
from afsfuse.cache.store import CacheStore
from afsfuse.config import (
    CALLBACK_PORT,
    DEFAULT_CONFIG,
    SECURITY_LEVELS,
    Cells,
    ConfigError,
    MountConfig,
    build_config,
    read_client_files,
    read_config_file,
)
from afsfuse.ctl import metrics
from afsfuse.ctl.cellops import CellOps
from afsfuse.ctl.ops import LeftoverOps, StatsOps, SysnameOps, TokenOps, ViewOps
from afsfuse.ctl.pagops import PagOps
from afsfuse.ctl.pathops import PathOps
from afsfuse.ctl.protocol import control_socket_path, mount_key
from afsfuse.ctl.rmtsys import RmtsysService
from afsfuse.ctl.scrape import Render, serve_metrics
from afsfuse.ctl.server import Handlers, PagOf, serve_control
from afsfuse.ctl.sockowner import sender_uid
from afsfuse.fs.cell import CellDB
from afsfuse.fs.manager import CacheManager, ManagerConfig
from afsfuse.fs.stats import Stats
from afsfuse.keyring.callers import track_callers
from afsfuse.keyring.kernel import forget_keep, open_keep
from afsfuse.keyring.store import TokenStore
from afsfuse.keyring.token import Token
from afsfuse.keyring.viceid import with_viceid
from afsfuse.malloc import tune as tune_malloc
from afsfuse.mounthelper import helper_argv, helper_form
from afsfuse.preflight import Exit, MountError
from afsfuse.rx.driver import open_endpoint
from afsfuse.rx.interfaces.pt import PT
from afsfuse.rx.security import RXNULL
from afsfuse.vfs.operations import AfsOperations
from afsfuse.vfs.paths import MountPaths
from afsfuse.vl.dns import CellResolver, make_resolver

# mypy finds the checkout's systemd/ (unit files) before the package; it has no types anyway.
from systemd import daemon  # type: ignore[attr-defined]

log = logging.getLogger("afsfuse")

#: Seconds given to GiveUpAllCallBacks at unmount.
GIVE_UP_TIMEOUT = 10.0


def main(argv: Sequence[str] | None = None) -> int:
    tune_malloc()
    argv = list(sys.argv[1:] if argv is None else argv)
    if helper_form(argv):
        try:
            argv = helper_argv(argv)
        except ValueError as e:
            print(f"afsfuse: {e}", file=sys.stderr)
            return Exit.USAGE
    args = _parser().parse_args(argv)
    try:
        config = _config(args)
        if config.foreground:
            _setup_logging(config, sys.stderr)
        else:
            # What is wrong in the cell files is told at mount time, on the terminal.
            logging.basicConfig(level=logging.WARNING, format="afsfuse: %(levelname)s: %(message)s")
        cells, found = preflight.check(config, mounting=args.command == "mount")
    except ConfigError as e:
        return _fail(Exit.CONFIG, str(e))
    except MountError as e:
        return _fail(e.status, str(e))
    if args.command == "check-config":
        print("\n".join(found))
        print("configuration ok")
        return Exit.OK
    if config.foreground:
        return _run(config, cells, None)
    return _daemonize(config, cells)


def _fail(status: Exit, message: str) -> int:
    print(f"afsfuse: {message}", file=sys.stderr)
    return status


#: What `afsfuse mount` takes, as (option, keyword arguments of add_argument).
_MOUNT_OPTIONS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("--config",), {"type": Path, "metavar": "FILE",
        "help": f"settings file (default {DEFAULT_CONFIG}, if it exists)"}),
    (("--cellservdb",), {"metavar": "FILE",
        "help": "the cells' database servers, this file alone (default: CellServDB, "
        "CellServDB.local in the OpenAFS directory, and kAFS's cells)"}),
    (("--thiscell",), {"metavar": "CELL",
        "help": "the home cell (default: the one in /etc/openafs/ThisCell)"}),
    (("--openafs-dir",), {"metavar": "DIR",
        "help": "where OpenAFS's client files are: CellServDB, ThisCell, CellAlias, "
        "afs.conf.client, cacheinfo (default /etc/openafs)"}),
    (("--kafs-config",), {"metavar": "FILE",
        "help": "kAFS's client configuration (default /etc/kafs/client.conf)"}),
    (("--cache-dir",), {"metavar": "DIR",
        "help": "disk cache directory, one per mount (default /var/cache/afsfuse for root, "
        "~/.cache/afsfuse otherwise)"}),
    (("--cache-size",), {"metavar": "SIZE", "help": "disk cache size, e.g. 2G (default 1G)"}),
    (("--port",), {"type": int, "help": "callback UDP port (default: 7001 for root when free, "
        "else any free port)"}),
    (("--sysname",), {"action": "append", "metavar": "NAME",
        "help": "what @sys expands to, first match wins (repeatable)"}),
    (("--security",), {"choices": SECURITY_LEVELS,
        "help": "rxkad level for calls with a token (default crypt)"}),
    (("--max-tasks",), {"type": int, "metavar": "N",
        "help": "FUSE requests served at once (default 256)"}),
    (("--dns-server",), {"action": "append", "metavar": "ADDRESS[:PORT]",
        "help": "nameserver for cell lookups (repeatable; default: the system's)"}),
    (("--dead-time",), {"type": float, "metavar": "SECONDS",
        "help": "give up on a silent fileserver after this long and try another (default 12)"}),
    (("--server-timeout",), {"type": float, "metavar": "SECONDS",
        "help": "an operation no fileserver answered fails with ETIMEDOUT after this long "
        "(default 120)"}),
    (("--store-retry",), {"type": float, "metavar": "SECONDS",
        "help": "how often data whose store failed is tried again (default 30, doubling "
        "while it fails)"}),
    (("--no-dns",), {"dest": "dns", "action": "store_const", "const": False,
        "help": "never look cells up in DNS: only the cells the files list are known"}),
    (("--metrics-listen",), {"metavar": "ADDRESS:PORT|PATH",
        "help": "serve Prometheus metrics (GET /metrics) on this TCP address or unix socket "
        "(default: nowhere)"}),
    (("--no-xattrs",), {"dest": "xattrs", "action": "store_const", "const": False,
        "help": "no afs.* extended attributes: ls -l and small writes cost fewer FUSE "
        "requests"}),
    (("--rmtsys",), {"metavar": "ADDRESS[:PORT]",
        "help": "serve OpenAFS's fs, tokens, aklog and unlog (rmtsys) here (root's mount: "
        "127.0.0.1:7009 by default; a user's mount: only when given)"}),
    (("--no-rmtsys",), {"dest": "rmtsys", "action": "store_const", "const": False,
        "help": "no rmtsys service"}),
    (("--rmtsys-allow",), {"action": "append", "metavar": "CIDR",
        "help": "also serve rmtsys to hosts in this network (repeatable; their users are "
        "who their host says)"}),
    (("--log-file",), {"metavar": "FILE", "help": "log here (default: stderr in the "
        "foreground, which systemd sends to the journal; syslog in the background)"}),
    (("--foreground", "-f"), {"action": "store_const", "const": True,
        "help": "stay in the foreground (as under systemd) instead of returning once mounted"}),
    (("--debug",), {"action": "store_const", "const": True, "help": "log every call"}),
]  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="afsfuse",
        description="An AFS client over FUSE.",
        epilog="Exit status: 0 mounted, 1 the daemon failed, 2 usage, 3 mount point, "
        "4 cache directory, 5 FUSE, 6 callback port, 78 configuration (see afsfuse(8)).",
    )
    parser.add_argument("--version", action="version", version=f"afsfuse {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    mount = commands.add_parser(
        "mount", help="mount AFS (normally on /afs)", description="Mount AFS."
    )
    mount.add_argument("mountpoint", type=Path, nargs="?",
                       help="where to mount (default: cacheinfo's, else /afs)")  # fmt: skip
    check = commands.add_parser(
        "check-config",
        help="check the configuration and whatever a mount needs, then say what was found",
        description="Check what `afsfuse mount` would check before mounting, and mount "
        "nothing.  Takes the same options.",
    )
    check.add_argument("mountpoint", type=Path, nargs="?",
                       help="the mount point to check (default: as for mount)")  # fmt: skip
    for sub in (mount, check):
        for names, kwargs in _MOUNT_OPTIONS:
            sub.add_argument(*names, **kwargs)
    return parser


def _config(args: argparse.Namespace) -> MountConfig:
    path = args.config
    file_values = {}
    if path is not None or DEFAULT_CONFIG.exists():
        file_values = read_config_file(path or DEFAULT_CONFIG)
    options = {
        key: getattr(args, key)
        for key in (
            "openafs_dir", "kafs_config", "cellservdb", "thiscell", "cache_dir",
            "cache_size", "port", "sysname", "security", "max_tasks", "log_file",
            "foreground", "debug", "dns_server", "dead_time", "server_timeout",
            "store_retry", "xattrs", "dns", "rmtsys", "rmtsys_allow", "metrics_listen",
        )
    }  # fmt: skip
    found = read_client_files(file_values, options)
    return build_config(args.mountpoint, file_values, options, found)


#: syslog's facility for a file system daemon without one of its own.
SYSLOG_SOCKET = "/dev/log"


def _setup_logging(config: MountConfig, stream: TextIO | None) -> None:
    """A log file when given; else stderr (the journal's, under systemd: each line with its
    priority, no time stamp); else, in the background, syslog."""
    handler: logging.Handler
    formatter = logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s")
    if config.log_file is not None:
        # Names from requests may not be UTF-8 (surrogate escapes): logged escaped.
        handler = logging.FileHandler(config.log_file, errors="backslashreplace")
    elif stream is None:
        handler = logging.handlers.SysLogHandler(
            SYSLOG_SOCKET, logging.handlers.SysLogHandler.LOG_DAEMON
        )
        formatter = logging.Formatter("afsfuse[%(process)d]: %(name)s: %(message)s")
    elif "JOURNAL_STREAM" in os.environ:
        handler = logging.StreamHandler(stream)
        formatter = _JournalFormatter("%(name)s: %(message)s")
    else:
        handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    level = logging.DEBUG if config.debug else logging.INFO
    logging.basicConfig(level=level, handlers=[handler], force=True)


class _JournalFormatter(logging.Formatter):
    """Prefixes each line with its syslog priority (`<3>`), which journald reads from a
    service's stderr."""

    def format(self, record: logging.LogRecord) -> str:
        priority = logging.handlers.SysLogHandler.priority_map.get(record.levelname, "info")
        number = logging.handlers.SysLogHandler.priority_names[priority]
        return f"<{number}>{super().format(record)}"


def _daemonize(config: MountConfig, cells: Cells) -> int:
    """Fork; the parent waits for the child to say the mount answers (or why not)."""
    if config.log_file is None and not os.path.exists(SYSLOG_SOCKET):
        print(
            f"afsfuse: no syslog ({SYSLOG_SOCKET} is missing): the daemon's log is lost; "
            "give --log-file to keep it",
            file=sys.stderr,
        )
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            message = pipe.read().decode(errors="replace")
        if message == "ok" or message.startswith("ok\n"):
            for warning in message.splitlines()[1:]:
                print(f"afsfuse: warning: {warning}", file=sys.stderr)
            return Exit.OK
        status, _, text = message.partition(" ")
        if not status.isdigit():
            return _fail(Exit.FAILED, "the daemon died before mounting")
        return _fail(Exit(int(status)), text)
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
    _setup_logging(config, None)
    os._exit(_run(config, cells, write_end))


def _run(config: MountConfig, cells: Cells, ready_fd: int | None) -> int:
    try:
        trio.run(_serve, config, cells, ready_fd)
    except BaseException as e:
        status, message = _failure(e)
        log.exception("afsfuse stopped: %s", message)
        _tell(ready_fd, f"{status.value} {message}")
        if ready_fd is None:
            print(f"afsfuse: {message}", file=sys.stderr)
        return status
    return Exit.OK


def _failure(error: BaseException) -> tuple[Exit, str]:
    """The exit status and the one line for an exception out of the daemon's nursery."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    if isinstance(error, MountError):
        return error.status, str(error)
    if isinstance(error, ConfigError):
        return Exit.CONFIG, str(error)
    if isinstance(error, BlockingIOError):
        return Exit.CACHE, "the cache directory is in use by another afsfuse"
    if isinstance(error, KeyboardInterrupt):
        return Exit.FAILED, "interrupted"
    return Exit.FAILED, f"{type(error).__name__}: {error} (the log has the details)"


def _tell(fd: int | None, message: str) -> None:
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.write(fd, message.encode())
        os.close(fd)


async def _ready_when_answering(
    mountpoint: str, ready_fd: int | None, warnings: Sequence[str] = ()
) -> None:
    """Say the mount is ready once it answers a stat (from a worker thread: this thread
    serves it): to `afsfuse mount`'s parent, with what it should warn of, or to systemd
    (Type=notify)."""
    await trio.to_thread.run_sync(os.stat, mountpoint)
    _tell(ready_fd, "\n".join(["ok", *warnings]))
    daemon.notify(f"READY=1\nSTATUS=AFS mounted on {mountpoint}")


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


def _sees_every_file(address: str, port: int) -> bool:
    """cmdebug's cache entries are for root and the mount's owner, on this machine."""
    return sender_uid(address, port) in (0, os.geteuid())


def _mount_options(config: MountConfig) -> set[str]:
    options = set(pyfuse3.default_options)
    options.discard("default_permissions")  # AFS rights are checked here, per caller
    options |= {"fsname=AFS", "subtype=afsfuse", "noatime"}
    if os.geteuid() == 0:
        options.add("allow_other")
    return options


async def _serve(config: MountConfig, cells: Cells, ready_fd: int | None) -> None:
    cell_entries, this_cell, aliases = cells
    resolver = CellResolver(make_resolver(config.dns_server)) if config.dns else None
    celldb = CellDB(cell_entries, this_cell, aliases, resolver)
    keep_name = mount_key(config.mountpoint)
    keep = open_keep(keep_name)
    tokens = TokenStore(keep=keep)
    pags, callers = track_callers(tokens, keep)
    if tokens.holders():
        log.info("tokens of %d user(s) taken back from the kernel keyring", tokens.holders())
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
            operations = AfsOperations(
                manager, config.sysname, xattrs=config.xattrs, callers=callers
            )
            manager.debug_view.holders = operations.holders
            manager.cb_service.sees_every_file = _sees_every_file

            async def fill_viceid(token: Token) -> Token:
                cell = await manager.cell(token.cell)
                if cell is None:
                    return token
                # The PT server runs on the database servers, beside the VL server.
                host = cell.vlservers[0][0]
                conn = endpoint.connect((host, PT.port), PT.service_id, RXNULL)
                return await with_viceid(token, conn)

            def render_metrics() -> Awaitable[str]:
                return metrics.text(manager, stats, tokens)

            async def cache_usage() -> tuple[int, int]:
                used = await trio.to_thread.run_sync(store.clean_bytes)
                return store.size_limit // 1024, used // 1024

            paths = MountPaths(operations, config.mountpoint)
            handlers = Handlers(
                TokenOps(tokens, this_cell, fill_viceid),
                PagOps(tokens, pags, callers.forget),
                SysnameOps(
                    lambda: [os.fsdecode(n) for n in operations.sysnames],
                    lambda names: setattr(operations, "sysnames", [os.fsencode(n) for n in names]),
                ),
                StatsOps(stats.snapshot),
                LeftoverOps(store.leftovers),
                PathOps(manager, paths),
                CellOps(manager, cache_usage),
                ViewOps(manager, render_metrics),
            )
            mountpoint = os.fspath(config.mountpoint)
            unmounted = False
            rmtsys = _rmtsys_service(config, handlers, paths, callers.pag_of)
            async with rmtsys as warnings, trio.open_nursery() as nursery:
                # Before the mount exists: the control server resolves the mountpoint's
                # path, which must not wait on the FUSE session this thread serves.
                control = functools.partial(
                    serve_control, mountpoint=mountpoint, pag_of=callers.pag_of
                )
                await nursery.start(control, control_socket_path(mountpoint), handlers)
                pyfuse3.init(operations, mountpoint, _mount_options(config))
                try:
                    await nursery.start(manager.run)
                    await nursery.start(operations.invalidator.run)
                    await nursery.start(pags.run)
                    nursery.start_soon(_stop_on_signals)
                    nursery.start_soon(_raise_readahead, mountpoint)
                    if config.metrics_listen is not None:
                        nursery.start_soon(_metrics_listener, config.metrics_listen, render_metrics)
                    log.info(
                        "afsfuse %s mounted on %s (cell %s, callback port %d)",
                        os.getpid(), mountpoint, this_cell, endpoint.port,
                    )  # fmt: skip
                    nursery.start_soon(_ready_when_answering, mountpoint, ready_fd, warnings)
                    await pyfuse3.main(min_tasks=4, max_tasks=config.max_tasks)
                    log.info("FUSE session ended; stopping")
                    daemon.notify("STOPPING=1")
                    unmounted = True
                finally:
                    with trio.CancelScope(shield=True), trio.move_on_after(GIVE_UP_TIMEOUT):
                        await manager.keep_unsent()
                        await manager.give_up_callbacks()
                    pyfuse3.close(unmount=True)
                    if not tokens.holders() and not pags.live:
                        forget_keep(keep_name)  # kept tokens and PAGs stay for the next run
                    log.info("unmounted %s%s", mountpoint, "" if unmounted else " after an error")
                    nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def _rmtsys_service(
    config: MountConfig, handlers: Handlers, paths: MountPaths, pag_of: PagOf
) -> AsyncIterator[list[str]]:
    """Serve rmtsys on an Rx endpoint of its own while the context lasts; yields what to
    warn of: a port another mount holds is a warning (this mount runs without it), not a
    failure."""
    if config.rmtsys is None:
        yield []
        return
    host, port = config.rmtsys
    async with contextlib.AsyncExitStack() as stack:
        try:
            endpoint = await stack.enter_async_context(open_endpoint(host, port))
        except OSError as e:
            message = (
                f"rmtsys: cannot listen on {host}:{port} ({e.strerror}), so OpenAFS's tools "
                "cannot reach this mount; another afsfuse mount may have the port "
                "(--rmtsys ADDRESS:PORT picks another, --no-rmtsys turns it off)"
            )
            log.warning("%s", message)
            yield [message]
            return
        service = RmtsysService(
            handlers, paths, daemon_uid=os.geteuid(), allow=config.rmtsys_allow, pag_of=pag_of
        )
        service.install(endpoint)
        allowed = ", ".join(str(net) for net in config.rmtsys_allow) or "none"
        log.info("rmtsys on %s:%d (other hosts allowed: %s)", host, port, allowed)
        yield []


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


async def _metrics_listener(where: tuple[str, int] | Path, render: Render) -> None:
    """The admin's metrics listener; one that cannot listen is logged, and the mount
    carries on without it."""
    try:
        await serve_metrics(where, render)
    except OSError as e:
        log.error("no metrics listener at %s: %s", where, e.strerror or e)


async def _stop_on_signals() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("signal %d: unmounting", signum)
            pyfuse3.terminate()
            return
