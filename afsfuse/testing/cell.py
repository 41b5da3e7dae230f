"""A real, throwaway OpenAFS cell with Kerberos, for tests, benchmarks and the demo.

Each server machine of the cell is a network namespace joined to a per-run bridge on the
host (ubik and the fileserver refuse loopback addresses).  Every server process also runs in
a private mount namespace with the run's own directories bound over the fixed OpenAFS paths,
so the host's /etc/openafs, /var/lib/openafs, /var/log/openafs and /vicepa are never used.
The KDC runs on the host, listening on the bridge address.

    python -m afsfuse.testing.cell run [--fileservers N] [--delay I=RTT ...] [--jumbo] -- COMMAND

starts a cell, runs COMMAND with the cell described in its environment (see Cell.env),
tears everything down and exits with COMMAND's status.  --jumbo runs the cell's links at
MTU 9000 and its fileservers with -jumbo, so Rx may use packets of up to 8588 bytes and
jumbograms there.

A server may sit at a distance: `Cell(delays={0: 0.010})` (or `--delay 0=0.010`) puts a
delay line (afsfuse.testing.delay) adding a 10 ms round trip between the host and server 0,
and `cell.set_delay(0, rtt)` changes it while the cell runs.  Traffic between two servers
crosses both lines.

Over 500 lines: one harness that starts, populates and tears down a whole cell, every
step beside the cleanup that undoes it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import ipaddress
import json
import logging
import os
import random
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from afsfuse.testing.delay import DelayLine
from afsfuse.testing.kdc import KDC

log = logging.getLogger(__name__)

SERVER_BINARIES = Path("/usr/lib/openafs")
# The OpenAFS paths fixed at build time, each replaced by a per-server directory.
BOUND_PATHS = {
    "etc": "/etc/openafs",
    "lib": "/var/lib/openafs",
    "log": "/var/log/openafs",
    "vicepa": "/vicepa",
}
TEST_RANGE = ipaddress.IPv4Network("198.18.0.0/15")
STATE_DIR = Path("/run/afsfuse-cells")
USERS = {"alice": "alice-pw", "bob": "bob-pw", "admin": "admin-pw"}
START_TIMEOUT = 240.0
JUMBO_MTU = 9000


class CellError(RuntimeError):
    """The cell could not be started or a command in it failed."""


def _run(argv: Sequence[str], *, timeout: float = 60.0, check: bool = True, **kw: Any) -> str:
    """Run a host command and return its stdout; raise CellError with its output on failure."""
    proc = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, check=False, **kw
    )
    if check and proc.returncode != 0:
        raise CellError(
            f"{shlex.join(argv)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}".rstrip()
        )
    out: str = proc.stdout
    return out


@dataclass
class Server:
    """One server machine of the cell: a network namespace with its own OpenAFS paths."""

    index: int
    netns: str
    host_if: str
    addr: str
    root: Path
    bosserver: subprocess.Popen[bytes] | None = None
    line: DelayLine | None = None

    @property
    def name(self) -> str:
        return f"afs{self.index}"

    def path(self, key: str) -> Path:
        return self.root / key

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """argv run inside this server's network namespace with its OpenAFS paths bound."""
        binds = " && ".join(
            f"mount --bind {shlex.quote(str(self.path(k)))} {target}"
            for k, target in BOUND_PATHS.items()
        )
        # The new mount namespace starts as a copy of the host's.  A FUSE mount in that copy
        # (an afsfuse or afsd.fuse mount made before the cell started) would keep its daemon
        # serving after the host unmounts it, so the copy lets go of every FUSE mount first.
        drop_fuse = (
            "awk '$3 ~ /^fuse/ {print $2}' /proc/self/mounts"
            ' | while read -r m; do umount -l "$(printf "$m")"; done'
        )
        return [
            "ip", "netns", "exec", self.netns,
            "unshare", "--mount", "--propagation", "private",
            "sh", "-c", f'{drop_fuse}; {binds} && exec "$@"', "afscell-exec", *argv,
        ]  # fmt: skip


@dataclass
class Cell:
    """A running cell.  Use as a context manager; `stop` is safe to call more than once."""

    workdir: Path
    fileservers: int = 1
    #: Round trip in seconds added between the host and a server, by server index; only
    #: these servers get a delay line (0 makes one whose delay can be raised later).
    delays: dict[int, float] = field(default_factory=dict)
    name: str = "afsfuse.test"
    #: Links at MTU 9000 (the bridge and both ends of every veth), fileservers with -jumbo.
    jumbo: bool = False
    realm: str = ""
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))
    servers: list[Server] = field(default_factory=list)
    bridge: str = ""
    host_addr: str = ""
    kdc: KDC | None = None
    _stopped: bool = False

    def __post_init__(self) -> None:
        self.realm = self.realm or self.name.upper()
        self.workdir = Path(self.workdir)
        if not 1 <= self.fileservers <= 8:
            raise CellError("--fileservers must be between 1 and 8")
        for index, rtt in self.delays.items():
            if not 0 <= index < self.fileservers or rtt < 0:
                raise CellError(f"no server {index} to delay by {rtt} s")

    # -- what clients see ---------------------------------------------------------------

    @property
    def db_server(self) -> Server:
        return self.servers[0]

    @property
    def cellservdb(self) -> Path:
        return self.workdir / "CellServDB"

    @property
    def exec_path(self) -> Path:
        return self.workdir / "afscell-exec"

    def env(self) -> dict[str, str]:
        """The environment handed to commands run against this cell."""
        assert self.kdc is not None
        return {
            "AFSCELL_NAME": self.name,
            "AFSCELL_REALM": self.realm,
            "AFSCELL_VLSERVERS": self.db_server.addr,
            "AFSCELL_FILESERVERS": " ".join(s.addr for s in self.servers),
            "AFSCELL_CELLSERVDB": str(self.cellservdb),
            "AFSCELL_EXEC": str(self.exec_path),
            "AFSCELL_DIR": str(self.workdir),
            "AFSCELL_RUN_ID": self.run_id,
            "KRB5_CONFIG": str(self.kdc.krb5_config),
        }

    def exec(self, *argv: str, timeout: float = 120.0, check: bool = True, server: int = 0) -> str:
        """Run an OpenAFS tool on a server machine (with -localauth it acts as the cell admin)."""
        return _run(self.servers[server].wrap(argv), timeout=timeout, check=check)

    # -- life cycle ---------------------------------------------------------------------

    def __enter__(self) -> Cell:
        try:
            self.start()
        except CellError as exc:
            logs = self.logs()
            self.stop()
            raise CellError(f"{exc}\n{logs}") from exc
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if os.geteuid() != 0:
            raise CellError("the test cell needs root (network namespaces and bind mounts)")
        for tool in ("ip", "unshare", "bosserver", "asetkey", "krb5kdc"):
            if not shutil.which(tool) and not Path("/usr/sbin", tool).exists():
                raise CellError(f"{tool} is not installed; run `make deps` first")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._make_network()
        self._record_state()
        self._start_kdc()
        for server in self.servers:
            self._configure(server)
        for server in self.servers:
            self._start_bosserver(server)
        self._create_instances()
        self._wait_for_fileservers()
        self._populate()
        self._write_client_files()
        log.info("cell %s is up (servers %s)", self.name, " ".join(s.addr for s in self.servers))

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for server in reversed(self.servers):
            self._stop_server(server)
        if self.kdc is not None:
            with contextlib.suppress(Exception):
                self.kdc.stop()
        for server in self.servers:
            if server.line is not None:
                server.line.stop()
            _run(["ip", "netns", "del", server.netns], check=False)
            _run(["ip", "link", "del", server.host_if], check=False)
        if self.bridge:
            _run(["ip", "link", "del", self.bridge], check=False)
        with contextlib.suppress(FileNotFoundError):
            (STATE_DIR / f"{self.run_id}.json").unlink()

    # -- network ------------------------------------------------------------------------

    @property
    def mtu(self) -> int:
        return JUMBO_MTU if self.jumbo else 1500

    def _make_network(self) -> None:
        """A bridge on the host and one namespace per server, in a /24 nobody else uses."""
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        with open(STATE_DIR / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            subnet = self._free_subnet()
            hosts = list(subnet.hosts())
            self.host_addr = str(hosts[0])
            self.bridge = f"afb{self.run_id}"
            _run(["ip", "link", "add", "name", self.bridge, "type", "bridge"])
            _run(["ip", "addr", "add", f"{self.host_addr}/24", "dev", self.bridge])
            _run(["ip", "link", "set", self.bridge, "mtu", str(self.mtu), "up"])
        for i in range(1, self.fileservers + 1):
            server = Server(
                index=i,
                netns=f"afsfuse-{self.run_id}-{i}",
                host_if=f"afh{self.run_id}{i}",
                addr=str(hosts[i]),
                root=self.workdir / f"server{i}",
            )
            self.servers.append(server)
            peer = f"afn{self.run_id}{i}"
            _run(["ip", "netns", "add", server.netns])
            if i - 1 in self.delays:
                server.line = DelayLine(server.host_if, server.netns, peer, self.delays[i - 1])
                self._record_state()
            else:
                _run(["ip", "link", "add", server.host_if, "type", "veth", "peer", "name", peer])
                _run(["ip", "link", "set", peer, "netns", server.netns])
            mtu = ["mtu", str(self.mtu)]  # a delay line's TAP devices carry jumbo frames too
            _run(["ip", "link", "set", server.host_if, *mtu, "master", self.bridge, "up"])
            in_ns = ["ip", "netns", "exec", server.netns]
            _run([*in_ns, "ip", "addr", "add", f"{server.addr}/24", "dev", peer])
            _run([*in_ns, "ip", "link", "set", peer, *mtu, "up"])
            _run([*in_ns, "ip", "link", "set", "lo", "up"])

    @staticmethod
    def _free_subnet() -> ipaddress.IPv4Network:
        used = [
            ipaddress.ip_interface(m).network
            for m in re.findall(r"inet (\S+)", _run(["ip", "-4", "-o", "addr"]))
        ]
        candidates = list(TEST_RANGE.subnets(new_prefix=24))
        random.shuffle(candidates)
        for net in candidates:
            if not any(net.overlaps(u) for u in used):
                return net
        raise CellError("no free /24 left in 198.18.0.0/15")

    def _record_state(self) -> None:
        """Note what this run owns, so a later `gc` can clean up after a killed harness."""
        state = {
            "pid": os.getpid(),
            "bridge": self.bridge,
            "netns": [s.netns for s in self.servers],
            "links": [s.host_if for s in self.servers],
            "kdc": self.kdc.pid if self.kdc is not None else None,
            "delay_lines": [s.line.pid for s in self.servers if s.line is not None],
        }
        (STATE_DIR / f"{self.run_id}.json").write_text(json.dumps(state))

    # -- Kerberos -----------------------------------------------------------------------

    def _start_kdc(self) -> None:
        self.kdc = KDC(self.workdir / "kdc", self.realm, host=self.host_addr)
        self.kdc.start()
        self._record_state()
        for user, password in USERS.items():
            self.kdc.add_principal(user, password)
        self.kdc.add_principal(self._afs_principal)
        self.kdc.export_keytab(self._afs_principal, self.workdir / "rxkad.keytab")

    @property
    def _afs_principal(self) -> str:
        return f"afs/{self.name}@{self.realm}"

    def _keytab_kvno(self) -> int:
        out = _run(["klist", "-k", str(self.workdir / "rxkad.keytab")])
        for line in out.splitlines():
            fields = line.split()
            if len(fields) == 2 and fields[0].isdigit() and fields[1] == self._afs_principal:
                return int(fields[0])
        raise CellError(f"no key for {self._afs_principal} in the keytab:\n{out}")

    # -- OpenAFS servers ----------------------------------------------------------------

    def _configure(self, server: Server) -> None:
        for key in BOUND_PATHS:
            server.path(key).mkdir(parents=True, exist_ok=True)
        etc = server.path("etc")
        (etc / "server").mkdir(exist_ok=True)
        (server.path("lib") / "db").mkdir(exist_ok=True)
        (server.path("lib") / "local").mkdir(exist_ok=True)
        for d in (server.path("lib") / "db", server.path("lib") / "local"):
            d.chmod(0o700)
        (server.path("vicepa") / "AlwaysAttach").touch()
        csdb = self._cellservdb_text()
        for conf in (etc, etc / "server"):
            (conf / "ThisCell").write_text(self.name + "\n")
            (conf / "CellServDB").write_text(csdb)
        (etc / "server" / "UserList").write_text("admin\n")
        (etc / "server" / "krb.conf").write_text(self.realm + "\n")
        # The fixed path must exist as a mount point; its contents are never used.
        Path(BOUND_PATHS["vicepa"]).mkdir(exist_ok=True)
        kvno = self._keytab_kvno()
        _run(
            server.wrap(
                [
                    "asetkey", "add", "rxkad_krb5", str(kvno), "18",
                    str(self.workdir / "rxkad.keytab"), self._afs_principal,
                ]
            )
        )  # fmt: skip

    def _cellservdb_text(self) -> str:
        db = self.db_server
        return f">{self.name}\t#afsfuse test cell\n{db.addr}\t#{db.name}\n"

    def _start_bosserver(self, server: Server) -> None:
        out = open(server.root / "bosserver.out", "wb")  # noqa: SIM115 - kept for the process
        server.bosserver = subprocess.Popen(
            server.wrap(["/usr/sbin/bosserver", "-nofork"]),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        out.close()
        self._record_state()
        self._retry(
            lambda: self.exec("bos", "listhosts", "-server", server.addr, "-localauth"),
            f"bosserver on {server.addr}",
        )

    def _create_instances(self) -> None:
        db = self.db_server
        for name in ("ptserver", "vlserver"):
            self.exec(
                "bos", "create", "-server", db.addr, "-instance", name, "-type", "simple",
                "-cmd", str(SERVER_BINARIES / name), "-localauth",
            )  # fmt: skip
        self._wait_for_ubik()
        # A fileserver registers its addresses with the VLDB at start and retries only every
        # few minutes, so it starts once the database servers have elected a sync site.
        fileserver = str(SERVER_BINARIES / "fileserver") + (" -jumbo" if self.jumbo else "")
        for server in self.servers:
            self.exec(
                "bos", "create", "-server", server.addr, "-instance", "fs", "-type", "fs",
                "-cmd", fileserver,
                "-cmd", str(SERVER_BINARIES / "volserver"),
                "-cmd", str(SERVER_BINARIES / "salvager"), "-localauth",
            )  # fmt: skip

    def _wait_for_ubik(self) -> None:
        """ubik must elect a sync site and recover its database before it takes writes."""

        def elected() -> None:
            for port in ("7002", "7003"):
                out = _run(["udebug", self.db_server.addr, port], timeout=30)
                # "Recovery state 1f": sync site elected and its database up to date.
                if "I am sync site" not in out or "Recovery state 1f" not in out:
                    raise CellError(f"ubik on port {port} is not ready yet")

        self._retry(elected, "ubik elections")

    def _wait_for_fileservers(self) -> None:
        """Poll until every fileserver has registered its address in the VLDB."""

        def registered() -> None:
            out = self.exec("vos", "listaddrs", "-noresolve", "-localauth", timeout=30)
            missing = [s.addr for s in self.servers if s.addr not in out.split()]
            if missing:
                raise CellError(f"fileservers not yet registered: {missing}")

        self._retry(registered, "fileserver registration in the VLDB")

    def _populate(self) -> None:
        db = self.db_server
        self._retry(
            lambda: self.exec("vos", "create", db.addr, "a", "root.afs", "-localauth"),
            "vos create root.afs",
        )
        for volume in ("root.cell", "test"):
            self.exec("vos", "create", db.addr, "a", volume, "-localauth")
        self.exec("vos", "setfields", "test", "-maxquota", "0", "-localauth")
        for user in USERS:
            create = functools.partial(self.exec, "pts", "createuser", user, "-localauth")
            self._retry(create, f"pts createuser {user}")
        self.exec("pts", "adduser", "admin", "system:administrators", "-localauth")
        for volume in ("root.afs", "root.cell"):
            for server in self.servers:
                self.exec("vos", "addsite", server.addr, "a", volume, "-localauth")
            self.exec("vos", "release", volume, "-localauth", timeout=180)

    def _write_client_files(self) -> None:
        self.cellservdb.write_text(self._cellservdb_text())
        self.exec_path.write_text(
            "#!/bin/sh\n# Run a command on the cell's database server machine.\n"
            f'exec {shlex.join(self.db_server.wrap([]))} "$@"\n'
        )
        self.exec_path.chmod(0o755)

    def _stop_server(self, server: Server) -> None:
        """Stop a server machine: bos shutdown, then kill what is left in its namespace."""
        if server.bosserver is not None and server.bosserver.poll() is None:
            self.exec(
                "bos", "shutdown", "-server", server.addr, "-wait", "-localauth",
                timeout=60, check=False, server=server.index - 1,
            )  # fmt: skip
            server.bosserver.terminate()
            try:
                server.bosserver.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.bosserver.kill()
                server.bosserver.wait()
        for pid in _run(["ip", "netns", "pids", server.netns], check=False).split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)

    def delay_line(self, index: int) -> DelayLine:
        """Server `index`'s delay line (its counters, its round trip)."""
        line = self.servers[index].line
        if line is None:
            raise CellError(f"server {index} has no delay line: start the cell with delays")
        return line

    def set_delay(self, index: int, rtt: float) -> None:
        """Make server `index` (made with a delay line) `rtt` seconds of round trip away."""
        self.delay_line(index).set_rtt(rtt)

    def stop_fileserver(self, index: int) -> None:
        """Stop one fileserver (and volserver) through bos, as an operator would."""
        server = self.servers[index]
        self.exec(
            "bos", "stop", "-server", server.addr, "-instance", "fs", "-wait", "-localauth",
            server=index,
        )  # fmt: skip

    def start_fileserver(self, index: int) -> None:
        """Start a stopped fileserver and volserver; return once both answer again."""
        server = self.servers[index]
        self.exec(
            "bos", "start", "-server", server.addr, "-instance", "fs", "-localauth", server=index
        )

        def answering() -> None:
            status = self.exec("bos", "status", server.addr, "fs", "-localauth", server=index)
            if "file server running" not in status:
                raise CellError(f"fileserver on {server.addr} not running yet: {status}")
            self.exec("vos", "listpart", server.addr, "-localauth", timeout=30, server=index)

        self._retry(answering, f"fileserver and volserver on {server.addr}")

    def logs(self) -> str:
        """The tails of every server log, for failure reports."""
        parts = []
        for server in self.servers:
            for f in sorted(server.path("log").glob("*Log")):
                lines = f.read_text(errors="replace").splitlines()[-15:]
                parts.append(f"== {server.name} {f.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    @staticmethod
    def _retry(action: Callable[[], object], what: str, timeout: float = START_TIMEOUT) -> None:
        """Poll `action` until it stops raising CellError (ubik and servers start slowly)."""
        deadline = time.monotonic() + timeout
        delay = 0.2
        while True:
            try:
                action()
                return
            except (CellError, subprocess.TimeoutExpired) as exc:
                if time.monotonic() > deadline:
                    raise CellError(f"timed out waiting for {what}: {exc}") from exc
                time.sleep(delay)
                delay = min(delay * 1.5, 2.0)


@contextlib.contextmanager
def running_cell(
    fileservers: int = 1,
    name: str = "afsfuse.test",
    keep: bool = False,
    delays: dict[int, float] | None = None,
    jumbo: bool = False,
) -> Iterator[Cell]:
    """A cell in a fresh scratch directory, removed afterwards unless `keep`."""
    workdir = Path(tempfile.mkdtemp(prefix="afscell-"))
    workdir.chmod(0o755)
    try:
        with Cell(
            workdir, fileservers=fileservers, name=name, delays=delays or {}, jumbo=jumbo
        ) as cell:
            yield cell
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def collect_garbage() -> list[str]:
    """Remove namespaces and links left by harness runs whose process has died."""
    removed = []
    for record in STATE_DIR.glob("*.json"):
        state = json.loads(record.read_text())
        if Path(f"/proc/{state['pid']}").exists():
            continue
        for netns in state["netns"]:
            for pid in _run(["ip", "netns", "pids", netns], check=False).split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            _run(["ip", "netns", "del", netns], check=False)
        for link in [*state["links"], state["bridge"]]:
            _run(["ip", "link", "del", link], check=False)
        if state.get("kdc"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(state["kdc"], signal.SIGKILL)
        for pid in state.get("delay_lines", []):
            # A line ends with its harness (its stdin closes); one that did not is killed,
            # if the PID still names a delay line.
            with contextlib.suppress(OSError):
                if b"afsfuse.testing.delay" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
        record.unlink()
        removed.append(record.stem)
    return removed


def _raise_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m afsfuse.testing.cell", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="start a cell, run COMMAND, tear the cell down")
    run.add_argument("--fileservers", type=int, default=1)
    run.add_argument("--cell", default="afsfuse.test", help="cell name (default afsfuse.test)")
    run.add_argument("--keep", action="store_true", help="keep the scratch directory")
    run.add_argument(
        "--delay",
        action="append",
        default=[],
        metavar="INDEX=RTT",
        help="add RTT seconds of round trip to server INDEX (from 0); may be repeated",
    )
    run.add_argument("--jumbo", action="store_true", help="links at MTU 9000, fileserver -jumbo")
    run.add_argument("command", nargs="+", help="command to run (after --)")
    sub.add_parser("gc", help="clean up after harness runs that were killed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="afscell: %(message)s")
    if args.action == "gc":
        for run_id in collect_garbage():
            print(f"removed leftovers of run {run_id}")
        return 0
    try:
        delays = {int(i): float(rtt) for i, rtt in (d.split("=", 1) for d in args.delay)}
    except ValueError:
        parser.error("--delay takes INDEX=SECONDS, e.g. 0=0.010")
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        with running_cell(args.fileservers, args.cell, args.keep, delays, args.jumbo) as cell:
            env = {**os.environ, **cell.env()}
            child = subprocess.Popen(args.command, env=env)
            try:
                return child.wait()
            except KeyboardInterrupt:
                child.terminate()
                child.wait()
                return 130
    except CellError as exc:
        print(f"afscell: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
