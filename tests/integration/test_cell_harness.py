"""The test-cell harness, checked with OpenAFS's and MIT Kerberos's own tools."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from afsfuse.testing.cell import Cell

pytestmark = pytest.mark.cell


def run(argv: list[str], env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=120, env=env, check=False, **kw
    )


def test_vldb_lists_the_root_volumes(cell: Cell) -> None:
    out = cell.exec("vos", "listvldb", "-localauth")
    assert "root.afs" in out
    assert "root.cell" in out
    assert "test" in out.split()


def test_test_volume_has_no_quota(cell: Cell) -> None:
    out = cell.exec("vos", "examine", "test", "-localauth")
    assert "MaxQuota          0 K" in out or "MaxQuota 0 K" in " ".join(out.split())


def test_pts_knows_the_users(cell: Cell) -> None:
    for user in ("alice", "bob", "admin"):
        out = cell.exec("pts", "examine", user, "-localauth")
        assert f"Name: {user}" in out
    members = cell.exec("pts", "membership", "system:administrators", "-localauth")
    assert "admin" in members.split()


def test_the_cell_environment_is_complete(cell: Cell) -> None:
    env = cell.env()
    assert env["AFSCELL_VLSERVERS"] == cell.db_server.addr
    csdb = Path(env["AFSCELL_CELLSERVDB"]).read_text()
    assert csdb.startswith(f">{cell.name}")
    assert cell.db_server.addr in csdb
    assert os.access(env["AFSCELL_EXEC"], os.X_OK)
    assert Path(env["KRB5_CONFIG"]).is_file()


def test_kinit_alice_gets_a_ticket(cell: Cell, tmp_path: Path) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "KRB5_CONFIG": cell.env()["KRB5_CONFIG"],
        "KRB5CCNAME": f"FILE:{tmp_path / 'ccache'}",
    }
    kinit = run(["kinit", "alice"], env=env, input="alice-pw\n")
    assert kinit.returncode == 0, kinit.stderr
    klist = run(["klist"], env=env)
    assert f"alice@{cell.realm}" in klist.stdout
    assert f"krbtgt/{cell.realm}@{cell.realm}" in klist.stdout


def test_wrong_password_is_refused(cell: Cell, tmp_path: Path) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "KRB5_CONFIG": cell.env()["KRB5_CONFIG"],
        "KRB5CCNAME": f"FILE:{tmp_path / 'ccache'}",
    }
    assert run(["kinit", "alice"], env=env, input="not-her-password\n").returncode != 0


def test_rxdebug_reaches_the_fileserver(cell: Cell) -> None:
    out = run(["rxdebug", cell.servers[0].addr, "7000", "-version"])
    assert out.returncode == 0
    assert "AFS version" in out.stdout
    assert "OpenAFS" in out.stdout


def test_bos_status_shows_every_instance_running(cell: Cell) -> None:
    out = cell.exec("bos", "status", cell.db_server.addr, "-localauth")
    for instance in ("ptserver", "vlserver", "fs"):
        assert f"Instance {instance}, currently running normally." in out or (
            instance == "fs" and "Instance fs, currently running normally." in out
        ), out
    assert "Auxiliary status is: file server running." in out


def test_no_noauth_file(cell: Cell) -> None:
    for server in cell.servers:
        assert not (server.path("etc") / "server" / "NoAuth").exists()
    # Without -localauth and without a token, an administrative change is refused.
    out = subprocess.run(
        cell.db_server.wrap(["pts", "createuser", "mallory", "-noauth"]),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode != 0


def test_two_fileservers_hold_ro_sites(cell2: Cell) -> None:
    out = cell2.exec("vos", "examine", "root.cell", "-localauth")
    ro_servers = [line for line in out.splitlines() if "RO Site" in line]
    assert len(ro_servers) == 2, out
    for server in cell2.servers:
        listing = cell2.exec("vos", "listvol", server.addr, "-localauth")
        assert "root.cell.readonly" in listing


def _harness(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "afsfuse.testing.cell", "run", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw,
    )  # fmt: skip


# Run inside the cell by the tests below: report the run's id and every process in its
# server namespaces, so the test can check afterwards that exactly those are gone.
REPORT = (
    'echo "RUN $AFSCELL_RUN_ID $AFSCELL_DIR $AFSCELL_VLSERVERS"; '
    'for ns in $(ip netns list | grep -o "afsfuse-$AFSCELL_RUN_ID-[0-9]*"); do '
    'echo "PIDS $(ip netns pids $ns | tr "\\n" " ")"; done; '
    'echo "PIDS $(cat "$AFSCELL_DIR/kdc/krb5kdc.pid")"'
)


class RunReport:
    """What one harness run said about itself while it was up."""

    def __init__(self, out: str) -> None:
        run_line = next(ln for ln in out.splitlines() if ln.startswith("RUN "))
        _, self.run_id, self.workdir, self.vlserver = run_line.split()
        self.pids = [
            int(p) for ln in out.splitlines() if ln.startswith("PIDS ") for p in ln.split()[1:]
        ]

    def assert_gone(self) -> None:
        assert not Path(self.workdir).exists(), "scratch directory left behind"
        assert self.run_id not in run(["ip", "netns", "list"]).stdout, "namespace left behind"
        assert self.run_id not in run(["ip", "-o", "link"]).stdout, "link left behind"
        assert self.vlserver not in run(["ip", "-4", "-o", "addr"]).stdout
        alive = [p for p in self.pids if Path(f"/proc/{p}").exists()]
        assert not alive, f"processes of the run still alive: {alive}"


def test_two_runs_at_once_and_nothing_left_behind() -> None:
    """Two concurrent harness runs both work; afterwards no namespace, link or process stays."""
    script = f'"$AFSCELL_EXEC" vos listvldb -localauth && {REPORT}'
    runs = [_harness(["--", "sh", "-c", script]) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in runs]
    for p, (out, err) in zip(runs, outputs, strict=True):
        assert p.returncode == 0, err
        assert "root.cell" in out
    reports = [RunReport(out) for out, _ in outputs]
    assert reports[0].vlserver != reports[1].vlserver, "two runs must use different subnets"
    for report in reports:
        assert len(report.pids) >= 5, "the report should list bosserver, its servers and the KDC"
        report.assert_gone()


def test_exit_status_and_teardown_after_failure() -> None:
    """The harness returns the command's status and cleans up when the command fails."""
    p = _harness(["--", "sh", "-c", f"{REPORT}; exit 7"])
    out, err = p.communicate(timeout=600)
    assert p.returncode == 7, err
    RunReport(out).assert_gone()


def test_interrupted_harness_tears_down() -> None:
    """SIGINT to the harness while the command runs still removes everything it made."""
    p = _harness(["--", "sh", "-c", f"{REPORT}; echo READY; exec sleep 300"])
    assert p.stdout is not None
    lines = []
    while not lines or lines[-1] != "READY":
        lines.append(p.stdout.readline().strip())
    report = RunReport("\n".join(lines))
    assert report.run_id in run(["ip", "netns", "list"]).stdout
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=120) == 130
    report.assert_gone()
