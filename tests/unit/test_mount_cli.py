"""`afsfuse` as a person and mount(8) call it: the helper form, one-line failures with their
own exit statuses, --version."""

from __future__ import annotations

import fcntl
from pathlib import Path

import pytest

from afsfuse import __version__
from afsfuse.cli import main
from afsfuse.mounthelper import helper_argv, helper_form
from afsfuse.preflight import Exit


def test_mount_fuse3_calls_become_afsfuse_mount() -> None:
    argv = ["none", "/afs", "-o", "rw,nosuid,nodev,_netdev,cache-size=2G,sysname=a,sysname=b"]
    assert helper_form(argv)
    assert helper_argv(argv) == [
        "mount", "/afs", "--cache-size=2G", "--sysname=a", "--sysname=b",
    ]  # fmt: skip
    assert helper_argv(["AFS", "/afs", "-ono-xattrs,thiscell=x.org", "-n"]) == [
        "mount", "/afs", "--no-xattrs", "--thiscell=x.org",
    ]  # fmt: skip
    assert not helper_form(["mount", "/afs"])
    assert not helper_form(["--version"])
    with pytest.raises(ValueError, match="unknown mount option 'cache=1'"):
        helper_argv(["none", "/afs", "-o", "cache=1"])
    with pytest.raises(ValueError, match="read-only"):
        helper_argv(["none", "/afs", "-o", "ro"])


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out == f"afsfuse {__version__}\n"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.err or captured.out


def test_each_failure_is_one_line_with_its_own_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cellservdb = tmp_path / "CellServDB"
    cellservdb.write_text(">example.org\n192.0.2.1 #db\n")
    config = tmp_path / "afsfuse.toml"
    config.write_text('cache-size = "1G"\nsecurity = "none"\n')
    cells = ["--cellservdb", str(cellservdb), "--thiscell", "example.org"]
    cache = ["--cache-dir", str(tmp_path / "cache")]
    mountpoint = tmp_path / "afs"

    status, err = run(capsys, "mount", str(mountpoint), *cells, *cache)
    assert (status, err.count("\n")) == (Exit.MOUNTPOINT, 1)
    assert f"mount point {mountpoint} does not exist: create it" in err
    mountpoint.mkdir()

    status, err = run(capsys, "mount", str(mountpoint), *cells, "--config", str(config))
    assert (status, err) == (Exit.CONFIG, "afsfuse: security: security is one of clear, "
                             "auth, crypt\n")  # fmt: skip
    status, err = run(capsys, "mount", str(mountpoint), "--cellservdb", str(cellservdb))
    assert status == Exit.CONFIG and "no home cell" in err

    (tmp_path / "cache").mkdir()
    with open(tmp_path / "cache" / "lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        status, err = run(
            capsys,
            "none",
            str(mountpoint),
            "-o",
            f"thiscell=example.org,cellservdb={cellservdb},cache-dir={tmp_path / 'cache'}",
        )
    assert (status, err.count("\n")) == (Exit.CACHE, 1)
    assert "is in use by another afsfuse" in err

    status, out = run(capsys, "check-config", str(mountpoint), *cells, *cache)
    assert status == Exit.OK
    assert "home cell: example.org" in out and out.endswith("configuration ok\n")


def test_in_the_background_without_a_log_file_the_log_goes_to_syslog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import logging
    import socket

    from afsfuse import cli
    from afsfuse.config import build_config

    address = tmp_path / "log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as syslog:
        syslog.bind(str(address))
        syslog.settimeout(5)
        monkeypatch.setattr(cli, "SYSLOG_SOCKET", str(address))
        try:
            cli._setup_logging(build_config(tmp_path, {}, {}), None)
            logging.getLogger("afsfuse").info("mounted on /afs")
            message = syslog.recv(4096).decode()
        finally:
            logging.basicConfig(handlers=[logging.NullHandler()], force=True)
    # <30>: facility daemon (3), priority info (6).
    assert message.startswith("<30>afsfuse[") and message.endswith(
        "]: afsfuse: mounted on /afs\x00"
    )
