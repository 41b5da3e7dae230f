"""The benchmark's bookkeeping: /proc readings, medians with failures, the printed table."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from clients import daemon_usage
from fetch import fetch_core, store_core
from profile_summary import summarise
from run import Run, Series, chosen_workloads, render, short_failure
from wan import CREATES, KEYS, plan
from workloads import workloads


def test_daemon_usage_reads_this_process() -> None:
    sum(i * i for i in range(200_000))  # some CPU of our own
    usage = daemon_usage(os.getpid())
    times = os.times()
    assert 0 < usage.cpu_seconds <= times.user + times.system + 0.02
    assert usage.peak_rss_kib > 1024  # a Python process holds more than 1 MiB


def test_core_benches_move_the_whole_stream() -> None:
    """--core: every byte goes through one call each way (1412 user bytes per packet)."""
    size = 100_000
    assert fetch_core(size) == -(-size // 1412)  # fetch_core checks the call reached EOF
    assert store_core(size) >= -(-size // 1412)  # DATA packets, and the ACKs it answers


def test_one_failed_run_fails_the_series() -> None:
    series = Series([Run(1.0), Run(3.0), Run(2.0)])
    assert series.median() == 2.0 and series.failure is None
    series.runs.append(Run(None, error="WorkloadFailed: ls exit 2: ls: x: Input/output error"))
    assert series.median() is None
    assert series.failure is not None and "Input/output error" in series.failure


def test_short_failure_keeps_program_and_errno_text() -> None:
    error = "WorkloadFailed: cp exit 1: cp: cannot create regular file '/m/x': Permission denied"
    assert short_failure(error) == "failed: cp: Permission denied"
    assert short_failure("WorkloadFailed: read 5 bytes of 7") == "failed: read 5 bytes of 7"
    assert short_failure("not available: /usr/sbin/afsd.fuse is not installed") == (
        "failed: not available"
    )
    died = "daemon died (SIGSEGV): WorkloadFailed: python3 exit 1: ... [Errno 107] Transport"
    assert short_failure(died) == "failed: daemon died (SIGSEGV)"


def test_on_server_median_leaves_out_runs_without_it() -> None:
    series = Series([Run(1.0, on_server_seconds=1.5), Run(2.0, on_server_seconds=2.5)])
    assert series.median("on_server_seconds") == 2.0
    assert Series([Run(1.0)]).median("on_server_seconds") is None


def _entry(
    seconds: float | None,
    cpu: float | None = 0.5,
    failed: str | None = None,
    on_server: float | None = None,
) -> dict:
    return {
        "median_seconds": seconds,
        "median_on_server_seconds": on_server,
        "median_cpu_seconds": cpu,
        "failed": failed,
        "runs": [],
    }


def test_table_has_ratio_rate_failure_and_daemon_rows() -> None:
    meta = {"afsd_fuse_version": "1.8.9", "afsfuse_commit": "abc", "mode": "quick",
            "rounds": 1, "big_mb": 64}  # fmt: skip
    result = {
        "meta": meta,
        "workloads": [
            {
                "key": "cold-read",
                "title": "cold read",
                "bytes": 100_000_000,
                "clients": {
                    "afsd.fuse": _entry(4.0),
                    "afsfuse": _entry(2.0),
                    "afsfuse crypt": _entry(2.5),
                },
            },
            {
                "key": "write",
                "title": "write",
                "bytes": None,
                "on_server": True,
                "clients": {
                    "afsd.fuse": _entry(1.0, on_server=2.0),
                    "afsfuse": _entry(
                        None, None, "WorkloadFailed: cp exit 1: cp: x: Function not implemented"
                    ),
                    "afsfuse crypt": _entry(3.0, on_server=3.25),
                },
            },
            {
                "key": "create",
                "title": "create",
                "bytes": None,
                "on_server": True,
                "clients": {
                    "afsd.fuse": _entry(1.0, on_server=4.0),
                    "afsfuse": _entry(2.0, on_server=2.0),
                },
            },
        ],
        "daemons": {
            "afsd.fuse": [{"cpu_seconds": 6.0, "peak_rss_kib": 25 * 1024}],
            "afsfuse": [{"cpu_seconds": 14.0, "peak_rss_kib": 62 * 1024}],
            "afsfuse crypt": [{"cpu_seconds": 15.0, "peak_rss_kib": None}],
        },
    }
    lines = render(result).splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[1:]]
    header, rows = cells[0], {row[0]: row for row in cells[2:]}
    assert header[:8] == ["workload", "afsd.fuse", "afsfuse", "time ratio", "afsd.fuse on server",
                          "afsfuse on server", "ratio on server", "afsfuse crypt"]  # fmt: skip
    assert rows["cold read"][1:8] == ["4.00 s (25 MB/s)", "2.00 s (50 MB/s)", "0.50", "", "", "",
                                      "2.50 s (40 MB/s)"]  # fmt: skip
    assert rows["write"][2:8] == ["failed: cp: Function not implemented", "failed", "2.00 s",
                                  "failed: cp: Function not implemented", "failed",
                                  "3.00 s, 3.25 s on server"]  # fmt: skip
    assert rows["create"][1:7] == ["1.00 s", "2.00 s", "2.00", "4.00 s", "2.00 s", "0.50"]
    assert rows["daemon peak RSS"][1:8] == ["25.0 MiB", "62.0 MiB", "", "", "", "", "-"]
    assert rows["daemon CPU per round"][1:3] == ["6.0 s", "14.0 s"]


def test_profile_summary_ranks_own_and_inclusive_samples(tmp_path: Path) -> None:
    stacks = tmp_path / "afsfuse-0-create.txt"
    stacks.write_text(
        "thread (1): MainThread;run (trio/_run.py:10);create (afsfuse/x.py:5) 6\n"
        "thread (1): MainThread;run (trio/_run.py:10);create (afsfuse/x.py:7);send (rx.py:3) 3\n"
        "thread (1): MainThread;run (trio/_run.py:12);epoll_wait (io.py:1) 1\n"
    )
    text = summarise(stacks, top=2)
    lines = text.splitlines()
    assert lines[0] == "afsfuse-0-create.txt: 10 samples"
    own = lines[lines.index("  top 2 by own samples:") + 1 :][:2]
    assert own == ["     60.0%  create (afsfuse/x.py)", "     30.0%  send (rx.py)"]
    inclusive = lines[lines.index("  top 2 by inclusive samples:") + 1 :]
    assert inclusive == ["    100.0%  thread (1): MainThread", "    100.0%  run (trio/_run.py)"]


def test_the_wan_plan_holds_its_four_workloads_and_fewer_creates() -> None:
    chosen = plan()
    assert sorted(w.key for w in chosen) == sorted(KEYS)
    create = next(w for w in chosen if w.key == "create")
    assert create.title == f"create {CREATES} small files"


def test_only_runs_what_the_chosen_workloads_use_first(capsys) -> None:
    everything = workloads((1000,))
    chosen = chosen_workloads(everything, ["find-ls", "second-read"])
    assert [w.key for w in chosen] == ["cold-read", "second-read", "tar-x", "find-ls"]
    assert "also running tar-x: find-ls uses what it leaves" in capsys.readouterr().out
    assert [w.key for w in chosen_workloads(everything, ["create"])] == ["create"]
    with pytest.raises(SystemExit, match="no workload tar-y"):
        chosen_workloads(everything, ["tar-x", "tar-y"])
