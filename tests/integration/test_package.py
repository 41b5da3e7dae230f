"""The Debian package (`make deb`, built before the tests by `make test`) installed with
`apt install ./afsfuse_*.deb` into a fresh Debian 12 root made by mmdebstrap, then used from
there: `afsfuse --version`, its files, and a mount of the real test cell by the installed
commands, used from another process."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from afsfuse.testing.cell import Cell

pytestmark = pytest.mark.cell

ROOT = Path(__file__).parents[2]


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
            "mmdebstrap", "--variant=apt", "--quiet", "--include=systemd",
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


def test_the_package_installs_the_commands_unit_pages_and_settings(installed: Path) -> None:
    done = in_root(installed, "afsfuse --version; afsfuse-ctl --version")
    assert done.stdout == "afsfuse 0.1.0\nafsfuse-ctl 0.1.0\n", done.stderr
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
    openafs = installed / "etc" / "openafs"
    openafs.mkdir(exist_ok=True)
    (openafs / "CellServDB").write_bytes(cell.cellservdb.read_bytes())
    (openafs / "ThisCell").write_text(f"{cell.name}\n")
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
