"""Cells added and changed at run time, and fids of mount points themselves: OpenAFS's own
fs (`listaliases`, `newalias`, `newcell`, `setcell`, `getcellstatus`, `getfid`) over
rmtsys and the same verbs in afsfuse-ctl (`getfid -literal` too), against the mount
test_rmtsys.py sets up (its fixtures: root with the cell admin's token, alice
administering a volume, bob).

Each command's output is what OpenAFS's fs prints for a kernel client; where a failure
other than EACCES makes libsys print its rmtsys warning on stdout, the test says so.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import subprocess

import pytest
import test_rmtsys
from local_users import as_user
from test_rmtsys import HOST, Tools, volume_dir

pytestmark = pytest.mark.cell

# The mount and volume of test_rmtsys.py, a fresh one for this module.
tools = test_rmtsys.tools
volume = test_rmtsys.volume

ROOT_ONLY = "fs: You do not have the required rights to do this operation\n"
EINVAL_WARNING = f"Warning: Remote pioctl to {HOST} has failed (err=22)...\n"


def ctl_out(tools: Tools, user: str | None, *argv: str) -> str:
    done = tools.mount.ctl(user, *argv)
    assert done.returncode == 0, (argv, done.stderr)
    return done.stdout.decode()


def test_aliases_added_by_root_are_listed_and_lead_to_their_cell(tools: Tools) -> None:
    cell = tools.cell
    mount = tools.mount.path
    alias = f"a{secrets.token_hex(3)}"
    assert tools.ok("bob", "fs", "listaliases") == ""
    refused = tools.run("alice", "fs", "newalias", alias, cell.name)
    assert (refused.returncode, refused.stdout, refused.stderr) == (1, "", ROOT_ONLY)
    assert tools.ok(None, "fs", "newalias", alias, cell.name) == ""
    listed = f"Alias {alias} for cell {cell.name}\n"
    for user in ("alice", "bob"):
        assert tools.ok(user, "fs", "listaliases") == listed
        assert ctl_out(tools, user, "listaliases") == listed
    # The alias is a name in /afs, and leads where the cell does.
    assert os.readlink(mount / alias) == cell.name
    assert alias in os.listdir(mount)
    assert sorted(os.listdir(mount / alias)) == sorted(os.listdir(mount / cell.name))
    whichcell = tools.ok("bob", "fs", "whichcell", str(mount / alias))
    assert whichcell == f"File {mount / alias} lives in cell '{cell.name}'\n"

    # Names in use, as fs says them; bad names are EINVAL.
    for taken in (alias, cell.name):
        again = tools.run(None, "fs", "newalias", taken, "elsewhere.example")
        assert again.returncode == 1
        assert again.stderr == f"fs: cell name `{taken}' in use by an existing cell.\n"
    bad = tools.run(None, "fs", "newalias", ".hidden", cell.name)
    assert (bad.returncode, bad.stdout, bad.stderr) == (
        1,
        EINVAL_WARNING,
        "fs: Invalid argument.\n",
    )

    # afsfuse-ctl: the same handler, root only.
    second = f"b{secrets.token_hex(3)}"
    assert tools.mount.ctl("bob", "newalias", second, cell.name).returncode == 1
    assert ctl_out(tools, None, "newalias", second, cell.name) == ""
    taken = tools.mount.ctl(None, "newalias", second, cell.name)
    assert taken.returncode == 1
    assert (
        taken.stderr == f"afsfuse-ctl: cell name `{second}' in use by an existing cell.\n".encode()
    )
    both = f"{listed}Alias {second} for cell {cell.name}\n"
    assert tools.ok("bob", "fs", "listaliases") == both
    assert sorted(os.listdir(mount / second)) == sorted(os.listdir(mount / cell.name))


def test_a_cell_added_by_root_is_usable_under_afs_at_once(tools: Tools, volume: str) -> None:
    cell = tools.cell
    mount = tools.mount.path
    server = cell.servers[0].addr
    name = f"new{secrets.token_hex(3)}.afsfuse.example"
    assert name not in os.listdir(mount)
    refused = tools.run("alice", "fs", "newcell", name, server)
    assert (refused.returncode, refused.stdout, refused.stderr) == (1, "", ROOT_ONLY)
    assert tools.ok(None, "fs", "newcell", name, server) == ""
    line = f"Cell {name} on hosts {server}.\n"
    assert line in tools.ok("bob", "fs", "listcells", "-numeric")
    assert line in ctl_out(tools, "bob", "listcells", "-numeric")
    # Its VL server is the test cell's: the same volumes, reached (anonymously: root's token
    # is for the test cell's name) under the new name.
    assert name in os.listdir(mount)
    reached = mount / ".:mount" / f"{name}:{volume}"
    assert sorted(os.listdir(reached)) == sorted(os.listdir(volume_dir(tools, volume)))
    assert (
        tools.ok("bob", "fs", "whichcell", str(reached))
        == f"File {reached} lives in cell '{name}'\n"
    )
    # fs newcell leaves setuid off in it (fs getcellstatus knows only CellServDB's cells).
    status = ctl_out(tools, "bob", "getcellstatus", name)
    assert status == f"Cell {name} status: no setuid allowed\n"

    # afsfuse-ctl: root only; a host it cannot resolve is skipped, as fs skips it.
    other = f"ctl{secrets.token_hex(3)}.afsfuse.example"
    assert tools.mount.ctl("alice", "newcell", other, server).returncode == 1
    done = tools.mount.ctl(None, "newcell", other, "no-such-host.invalid", server)
    assert done.returncode == 0, done.stderr
    skipped = "afsfuse-ctl: Host no-such-host.invalid not found in host table, skipping it.\n"
    assert done.stderr.decode() == skipped
    assert f"Cell {other} on hosts {server}.\n" in tools.ok("bob", "fs", "listcells", "-numeric")
    assert other in os.listdir(mount)
    assert os.listdir(mount / ".:mount" / f"{other}:{volume}") == os.listdir(reached)
    nothing = tools.mount.ctl(None, "newcell", f"x{other}", "no-such-host.invalid")
    assert nothing.returncode == 1 and b"'servers'" in nothing.stderr


def test_root_sets_whether_setuid_is_honoured_and_getcellstatus_agrees(tools: Tools) -> None:
    cell = tools.cell.name
    allowed, not_allowed = (
        f"Cell {cell} status: setuid allowed\n",
        (f"Cell {cell} status: no setuid allowed\n"),
    )
    refused = tools.run("alice", "fs", "setcell", "-cell", cell, "-nosuid")
    assert refused.returncode == 1
    assert refused.stderr == f"fs: You don't have the required access rights on '{cell}'\n"
    assert tools.ok("bob", "fs", "getcellstatus", cell) == allowed
    try:
        assert tools.ok(None, "fs", "setcell", "-cell", cell, "-nosuid") == ""
        for user in ("alice", "bob"):
            assert tools.ok(user, "fs", "getcellstatus", cell) == not_allowed
            assert ctl_out(tools, user, "getcellstatus", cell) == not_allowed
        assert tools.ok(None, "fs", "setcell", "-cell", cell, "-suid") == ""
        assert tools.ok("bob", "fs", "getcellstatus", cell) == allowed
        # afsfuse-ctl: -nosuid by default, as fs; root only.
        assert tools.mount.ctl("bob", "setcell", cell, "-suid").returncode == 1
        assert ctl_out(tools, None, "setcell", cell) == ""
        assert tools.ok("bob", "fs", "getcellstatus", cell) == not_allowed
        both = tools.mount.ctl(None, "setcell", cell, "-suid", "-nosuid")
        assert both.returncode == 2
        assert ctl_out(tools, None, "setcell", "-cell", cell, "-suid") == ""
        assert tools.ok("bob", "fs", "getcellstatus", cell) == allowed
    finally:
        tools.ok(None, "fs", "setcell", "-cell", cell, "-suid")


LITERAL_FID = r"""
import struct, sys, trio
from afsfuse.rx.driver import open_endpoint
from afsfuse.rx.interfaces.rmtsys import RMTSYS, clientcred

async def main(host, uid, directory, name):
    async with open_endpoint() as endpoint:
        conn = endpoint.connect((host, 7009), RMTSYS.service_id)
        cred = clientcred(uid=uid, group0=0, group1=0)
        cmd = 0x40180000 | ord("C") << 8 | 15  # VIOC_GETLITERALFID
        out, number = await RMTSYS.Pioctl(
            conn, cred, directory, cmd, 1, name.encode() + b"\0", bytes(16384))
        print(number, ".".join(map(str, struct.unpack("=iIII", out)[1:])) if not number else "")

trio.run(main, sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4])
"""


def test_getfid_literal_gives_the_mount_point_or_link_itself(tools: Tools, volume: str) -> None:
    """Debian's fs (1.8) has no getfid -literal: its pioctl is sent as OpenAFS 1.9's fs
    sends it (the directory's path, the last name as InData), by bob's own process."""
    cell = tools.cell.name
    mount = tools.mount
    tools.ok("alice", "aklog", "-c", cell)
    path = volume_dir(tools, volume)
    volume_id = os.getxattr(path, "afs.fid").decode().split(".")[0]
    mount_point = f"{path}/mp-{secrets.token_hex(3)}"
    assert tools.ok("alice", "fs", "mkmount", mount_point, "root.cell") == ""
    link = f"{path}/link-{secrets.token_hex(3)}"
    assert tools.run("alice", "ln", "-s", "nowhere", link, afsserver=False).returncode == 0

    def literal_fid(entry: str) -> tuple[int, str]:
        directory, name = os.path.split(entry)
        bob = mount.local["bob"]
        argv = [*as_user(bob), mount.python.interpreter, "-c", LITERAL_FID, HOST]
        env = {"PATH": "/usr/bin:/bin", **mount.python.env}
        done = subprocess.run(
            [*argv, str(bob.uid), directory, name], env=env, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        number, _, fid = done.stdout.strip().partition(" ")
        return int(number), fid

    # Without -literal: the root of the volume mounted; with it, the entry in this volume.
    target = os.getxattr(mount_point, "afs.fid").decode()
    followed = f"File {mount_point} ({target}) located in cell {cell}\n"
    assert tools.ok("bob", "fs", "getfid", mount_point) == followed
    assert ctl_out(tools, "bob", "getfid", mount_point) == followed
    for entry in (mount_point, link):
        fid = json.loads(ctl_out(tools, "bob", "--json", "getfid", "-literal", entry))[0]
        numbers = f"{fid['volume']}.{fid['vnode']}.{fid['unique']}"
        assert str(fid["volume"]) == volume_id and numbers != target
        assert literal_fid(entry) == (0, numbers)
        assert (
            ctl_out(tools, "bob", "getfid", "-literal", entry)
            == f"File {entry} ({numbers}) located in cell {cell}\n"
        )
    assert literal_fid(f"{path}/nothing-here") == (errno.ENOENT, "")
    dangling = tools.run("bob", "fs", "getfid", link)
    assert dangling.returncode == 1 and dangling.stderr == f"fs: File '{link}' doesn't exist\n"
    assert tools.ok("alice", "fs", "rmmount", mount_point) == ""
