"""The Debian package (`make deb`, built before the tests by `make test`) installed with
`apt install ./afsfuse_*.deb` into a fresh Debian 12 root made by mmdebstrap, then used from
there: `afsfuse --version`, its files, a mount of the real test cell by the installed
commands, and that root booted with systemd (systemd-nspawn), where the installed unit
mounts /afs and another shell uses it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from afsfuse.testing.cell import Cell

pytestmark = pytest.mark.cell

ROOT = Path(__file__).parents[2]
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def _deb() -> Path:
    debs = sorted((ROOT / "build" / "deb").glob("afsfuse_*.deb"))
    assert debs, "make test builds the package first (make deb)"
    return debs[-1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A Debian 12 root with the package installed by apt, as an administrator would."""
    root = tmp_path_factory.mktemp("debian12") / "root"
    deb = _deb()
    done = subprocess.run(
        [
            "mmdebstrap", "--variant=apt", "--quiet", "--include=systemd,systemd-sysv",
            f"--customize-hook=copy-in {deb} /tmp",
            f'--customize-hook=chroot "$1" apt-get install -y -q /tmp/{deb.name}',
            f'--customize-hook=rm "$1"/tmp/{deb.name}',
            "bookworm", str(root),
        ],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    try:
        assert done.returncode == 0, done.stderr[-3000:]
        yield root
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(root)], check=False)


def in_root(root: Path, script: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """A shell script in the installed root, with /dev and /proc, in a mount namespace of
    its own (nothing is left mounted)."""
    setup = f"mount --rbind /dev {root}/dev && mount -t proc proc {root}/proc && "
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         setup + f"exec chroot {root} /bin/sh -ec '{script}'"],
        capture_output=True, text=True, timeout=timeout,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"},
    )  # fmt: skip


#: Prints where the Rx core was loaded from: a .so when mypyc compiled it (setup.py).
RX_CORE_ORIGIN = '-c "import afsfuse.rx.core as m; print(m.__spec__.origin)"'


def test_the_package_installs_the_commands_unit_pages_and_settings(installed: Path) -> None:
    done = in_root(installed, "afsfuse --version; afsfuse-ctl --version")
    assert done.stdout == "afsfuse 0.1.0\nafsfuse-ctl 0.1.0\n", done.stderr
    done = in_root(installed, f"/opt/venvs/afsfuse/bin/python {RX_CORE_ORIGIN}")
    assert done.stdout.strip().endswith(".so"), (done.stdout, done.stderr)
    for path in (
        "lib/systemd/system/afsfuse.service",
        "etc/systemd/system/remote-fs.target.wants/afsfuse.service",
        "usr/share/man/man8/afsfuse.8.gz",
        "usr/share/man/man1/afsfuse-ctl.1.gz",
        "usr/share/man/man5/afsfuse.toml.5.gz",
        "usr/share/bash-completion/completions/afsfuse",
        "usr/share/bash-completion/completions/afsfuse-ctl",
        "etc/afsfuse/afsfuse.toml",
        "afs",
    ):
        assert os.path.lexists(installed / path), path  # links name paths inside the root
    status = (installed / "var/lib/dpkg/status").read_text()
    assert (
        "/etc/afsfuse/afsfuse.toml"
        in (installed / "var/lib/dpkg/info/afsfuse.conffiles").read_text()
    )
    assert "Package: afsfuse\nStatus: install ok installed" in status
    verify = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={installed}", "afsfuse.service"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert [line for line in verify.stderr.splitlines() if "afsfuse" in line] == []


def test_the_installed_commands_mount_the_cell(installed: Path, cell: Cell) -> None:
    _write_cell(installed, cell)
    script = (
        "afsfuse check-config /afs; "
        "afsfuse mount /afs --log-file /var/log/afsfuse.log --security clear; "
        f"ls /afs; stat -c %F /afs/{cell.name}; "
        "fusermount3 -u /afs"
    )
    done = in_root(installed, script)
    assert done.returncode == 0, (done.stdout, done.stderr)
    lines = done.stdout.splitlines()
    assert "configuration ok" in lines and cell.name in lines and "directory" in lines


def _write_cell(root: Path, cell: Cell) -> None:
    openafs = root / "etc" / "openafs"
    openafs.mkdir(exist_ok=True)
    (openafs / "CellServDB").write_bytes(cell.cellservdb.read_bytes())
    (openafs / "ThisCell").write_text(f"{cell.name}\n")


def test_booted_with_systemd_the_unit_mounts_afs(installed: Path, cell: Cell) -> None:
    """The machine's own systemd starts the enabled unit at boot (Type=notify: active once
    the mount answers); without a home cell it fails once, with status 78, and stays down."""
    _write_cell(installed, cell)
    boot = subprocess.Popen(
        ["systemd-nspawn", "--quiet", "--directory", str(installed), "--register=no",
         "--keep-unit", "--console=pipe", "--bind=/dev/fuse", "--boot"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        init = _container_init(boot.pid)

        def inside(*argv: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["nsenter", "-t", str(init), "-a", *argv], capture_output=True, text=True,
                timeout=120,
            )  # fmt: skip

        deadline = time.monotonic() + 90
        while True:  # the container's systemd answers once its own socket is up
            waited = inside("systemctl", "is-system-running", "--wait")
            if waited.stdout.strip() or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert waited.stdout.strip() in ("running", "degraded"), waited
        show = inside("systemctl", "show", "afsfuse", "-p", "ActiveState,StatusText")
        assert set(show.stdout.splitlines()) == {"ActiveState=active", "StatusText=AFS mounted on /afs"}, (
            show, inside("journalctl", "-u", "afsfuse", "--no-pager").stdout,
        )  # fmt: skip
        listing = inside("sh", "-c", f"ls /afs && stat -c %F /afs/{cell.name}")
        assert listing.stdout.split() == [cell.name, "directory"], listing
        log = inside("journalctl", "-u", "afsfuse", "--no-pager", "-o", "cat").stdout
        assert "configuration ok" in log and "mounted on /afs" in log

        assert inside("systemctl", "stop", "afsfuse").returncode == 0
        assert "fuse.afsfuse" not in inside("cat", "/proc/self/mountinfo").stdout
        (installed / "etc" / "openafs" / "ThisCell").unlink()
        assert inside("systemctl", "start", "afsfuse").returncode != 0
        time.sleep(7)  # past RestartSec: a restart would have come by now
        show = inside("systemctl", "show", "afsfuse", "-p", "ActiveState,ExecMainStatus,NRestarts")
        assert set(show.stdout.splitlines()) == {
            "ActiveState=failed",
            "ExecMainStatus=78",
            "NRestarts=0",
        }, show
        log = inside("journalctl", "-u", "afsfuse", "--no-pager", "-o", "cat").stdout
        assert "afsfuse: no home cell: give --thiscell or write /etc/openafs/ThisCell" in log
        inside("systemctl", "poweroff")
        boot.wait(timeout=60)
    finally:
        if boot.poll() is None:
            boot.send_signal(signal.SIGKILL)
            boot.wait()


def _container_init(nspawn: int) -> int:
    """The container's systemd (pid 1 inside), a child of systemd-nspawn."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        children = Path(f"/proc/{nspawn}/task/{nspawn}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.2)
    raise AssertionError("systemd-nspawn started no container")


def _readme_apt_line() -> list[str]:
    """The packages of the README's one apt-get line for building the wheel."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### The wheel, with pip or pipx") :]
    line = next(x for x in section.splitlines() if x.startswith("apt-get install "))
    words = line.split()[2:]
    assert words[0] == "--no-install-recommends"
    return words[1:]


def test_the_wheel_installs_with_the_readmes_instructions(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A fresh Debian 12 root, the README's apt-get line and nothing else, then a venv and
    `pip install` of the wheel (`make wheel`, built before the tests by `make test`)."""
    (wheel,) = (ROOT / "build" / "wheel").glob("afsfuse-*.whl")
    root = tmp_path_factory.mktemp("wheel") / "root"
    packages = ",".join(_readme_apt_line())
    done = subprocess.run(
        [
            "mmdebstrap", "--variant=apt", "--quiet", f"--include={packages}",
            f"--customize-hook=copy-in {wheel} /tmp",
            # pip there trusts what this host trusts (its network may need its own CA).
            '--customize-hook=mkdir -p "$1"/etc/ssl/certs',
            f'--customize-hook=cp {CA_BUNDLE} "$1"/etc/ssl/certs/',
            '--customize-hook=chroot "$1" python3 -m venv /opt/afsfuse',
            f'--customize-hook=chroot "$1" /opt/afsfuse/bin/pip install -q /tmp/{wheel.name}',
            "bookworm", str(root),
        ],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    try:
        assert done.returncode == 0, done.stderr[-3000:]
        versions = in_root(
            root, "/opt/afsfuse/bin/afsfuse --version; /opt/afsfuse/bin/afsfuse-ctl --version"
        )
        assert versions.stdout == "afsfuse 0.1.0\nafsfuse-ctl 0.1.0\n", versions.stderr
        fcrypt = list(
            (root / "opt" / "afsfuse").glob("lib/python3*/site-packages/afsfuse/rx/_fcrypt*.so")
        )
        assert fcrypt, "the fcrypt accelerator was built"
        origin = in_root(root, f"/opt/afsfuse/bin/python {RX_CORE_ORIGIN}")
        assert origin.stdout.strip().endswith(".so"), (origin.stdout, origin.stderr)
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(root)], check=False)
