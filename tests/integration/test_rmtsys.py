"""OpenAFS's own fs, tokens, aklog and unlog driving a real afsfuse mount over rmtsys, as
root (with the cell admin's token) and as the local users afsfuse-alice and afsfuse-bob.

The tools are Debian's openafs-client, unmodified: `AFSSERVER` (or `~/.AFSSERVER`) sends
each pioctl to the mount's rmtsys service, which listens on 127.0.0.9 here so that no other
mount on the machine can be the one answering.  Each command's output is compared with
what OpenAFS's code prints for the values the kernel client would give, and what it does is
checked through the mount (files, xattrs, `afsfuse-ctl`).  Where rmtsys makes the tools
print more than they do on a kernel client (libsys's "Warning: Remote pioctl ... has
failed" line on stdout for an errno other than EDOM and EACCES), the test says so.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from local_users import User, UserPython, as_user
from logins import kinit
from mounting import Mount, afs_mount, daemon_pid, no_client_files, stop_daemon

from afsfuse.testing.cell import Cell
from afsfuse.vl.rank import RANK_NETWORK, RANK_SUBNET

pytestmark = pytest.mark.cell

HOST = "127.0.0.9"
RMTSYS = ("--rmtsys", f"{HOST}:7009")
LIST_HEAD = "\nTokens held by the Cache Manager:\n\n"
LIST_END = "   --End of list--\n"


class Tools:
    """OpenAFS's programs, run as root or a local user against the mount's rmtsys."""

    def __init__(self, mount: Mount, cell: Cell, conf: Path, root_home: Path) -> None:
        self.mount = mount
        self.cell = cell
        self.conf = conf
        self.homes = {None: root_home} | {
            user: Path(env["KRB5CCNAME"].removeprefix("FILE:")).parent
            for user, env in mount.user_env.items()
        }

    def env(self, user: str | None, afsserver: bool = True) -> dict[str, str]:
        env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "AFSCONF": str(self.conf)}
        env["HOME"] = str(self.homes[user])
        env.update(self.mount.user_env[user] if user else self.root_krb5)
        if afsserver:
            env["AFSSERVER"] = HOST
        return env

    @property
    def root_krb5(self) -> dict[str, str]:
        return {
            "KRB5_CONFIG": self.cell.env()["KRB5_CONFIG"],
            "KRB5CCNAME": f"FILE:{self.homes[None]}/krb5cc",
        }

    def run(
        self, user: str | None, *argv: str, afsserver: bool = True
    ) -> subprocess.CompletedProcess[str]:
        command = list(argv) if user is None else [*as_user(self.mount.local[user]), *argv]
        return subprocess.run(
            command, env=self.env(user, afsserver), capture_output=True, text=True, timeout=120,
            cwd=self.homes[user],
        )  # fmt: skip

    def ok(self, user: str | None, *argv: str) -> str:
        done = self.run(user, *argv)
        assert done.returncode == 0, (argv, user, done.stdout, done.stderr)
        assert done.stderr == "", done.stderr
        return done.stdout

    def ctl_json(self, user: str | None, *args: str) -> dict:
        done = self.mount.ctl(user, "--json", *args)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


def pts_id(cell: Cell, name: str) -> int:
    found = re.search(r"id: (-?\d+)", cell.exec("pts", "examine", name, "-localauth"))
    assert found
    return int(found.group(1))


def tokens_text(*lines: str) -> str:
    return LIST_HEAD + "".join(line + "\n" for line in lines) + LIST_END


def token_line(tools: Tools, user: str | None, viceid: int) -> str:
    """What `tokens` prints for a user's token, its expiry as the daemon holds it."""
    (held,) = tools.ctl_json(user, "tokens")["tokens"]
    expires = time.ctime(held["end"])[4:16]
    return f"User's (AFS ID {viceid}) rxkad tokens for {tools.cell.name} [Expires {expires}]"


@pytest.fixture(scope="module")
def volume(cell: Cell) -> str:
    name = f"rmt.{secrets.token_hex(3)}"
    cell.exec("vos", "create", cell.servers[0].addr, "a", name, "-maxquota", "0", "-localauth")
    return name


@pytest.fixture(scope="module")
def tools(
    cell: Cell,
    volume: str,
    users: dict[str, User],
    user_python: UserPython,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Tools]:
    """The mount; root holds the cell admin's token, set by aklog over rmtsys, and has made
    alice the volume's administrator with fs setacl, over rmtsys too."""
    conf = Path(tempfile.mkdtemp(prefix="afsfuse-afsconf-"))
    conf.chmod(0o755)
    shutil.copy(cell.cellservdb, conf / "CellServDB")
    (conf / "ThisCell").write_text(cell.name + "\n")
    for file in conf.iterdir():
        file.chmod(0o644)
    root_home = tmp_path_factory.mktemp("root-home")
    cache = tmp_path_factory.mktemp("rmtsys-cache")
    with afs_mount(cell, users, user_python, cache, extra_args=RMTSYS) as mount:
        tools = Tools(mount, cell, conf, root_home)
        kinit(cell, "admin", root_home / "krb5cc")
        tools.ok(None, "aklog", "-c", cell.name)
        path = volume_dir(tools, volume)
        tools.ok(None, "fs", "setacl", path, "alice", "all", "system:anyuser", "l")
        try:
            yield tools
        finally:
            shutil.rmtree(conf, ignore_errors=True)


def volume_dir(tools: Tools, volume: str) -> str:
    return str(tools.mount.path / ".:mount" / f"{tools.cell.name}:{volume}")


def test_tokens_set_over_rmtsys_are_their_users_alone(tools: Tools, volume: str) -> None:
    cell = tools.cell
    alice_id = pts_id(cell, "alice")
    bob_id = pts_id(cell, "bob")
    probe = f"{volume_dir(tools, volume)}/alice-{secrets.token_hex(3)}"
    assert tools.run("alice", "touch", probe, afsserver=False).returncode != 0  # anonymous

    assert tools.ok("alice", "aklog", "-c", cell.name) == ""
    assert tools.ok("alice", "tokens") == tokens_text(token_line(tools, "alice", alice_id))
    assert tools.ok("bob", "tokens") == tokens_text()
    # The token is alice's processes', through the mount; bob's are still anonymous.
    assert tools.run("alice", "touch", probe, afsserver=False).returncode == 0
    assert tools.run("bob", "touch", probe + "-bob", afsserver=False).returncode != 0
    # The control socket holds the same tokens: one store, two fronts.
    assert tools.ctl_json("alice", "tokens")["tokens"][0]["viceid"] == alice_id
    assert tools.ctl_json("bob", "tokens")["tokens"] == []

    # bob finds his rmtsys server in ~/.AFSSERVER instead of the environment.
    server_file = tools.homes["bob"] / ".AFSSERVER"
    server_file.write_text(HOST + "\n")
    os.chown(server_file, tools.mount.local["bob"].uid, tools.mount.local["bob"].gid)
    try:
        env_free = tools.run("bob", "aklog", "-c", cell.name, afsserver=False)
        assert env_free.returncode == 0, env_free.stderr
        listed = tools.run("bob", "tokens", afsserver=False)
        assert listed.stdout == tokens_text(token_line(tools, "bob", bob_id))
    finally:
        server_file.unlink()

    assert tools.ok("alice", "unlog") == ""
    assert tools.ok("alice", "tokens") == tokens_text()
    assert tools.ok("bob", "tokens") == tokens_text(token_line(tools, "bob", bob_id))
    assert tools.run("alice", "rm", probe, afsserver=False).returncode != 0  # anonymous again
    assert tools.ok("alice", "aklog", "-c", cell.name) == ""
    assert tools.run("alice", "rm", probe, afsserver=False).returncode == 0
    # unlog -cell reads every token back (VIOCGETTOK), forgets all and sets the others again
    # (VIOCSETTOK): with one cell, none stays.
    assert tools.ok("bob", "unlog", "-cell", cell.name) == ""
    assert tools.ok("bob", "tokens") == tokens_text()


FORGER = r"""
import struct, sys, trio
from afsfuse.rx.driver import open_endpoint
from afsfuse.rx.interfaces.rmtsys import RMTSYS, clientcred

def ioctl(table, index):
    return 0x40180000 | ord(table) << 8 | index

async def main(host, uid):
    async with open_endpoint() as endpoint:
        conn = endpoint.connect((host, 7009), RMTSYS.service_id)
        cred = clientcred(uid=uid, group0=0, group1=0)
        now = 2_000_000_000
        settok = (struct.pack(">i", 60) + b"\x61" * 60 + struct.pack(">i", 24)
                  + struct.pack(">i8siii", 256, b"forgery!", 1, now - 9, now) + b"\0" * 4 + b"afsfuse.test\0")
        results = []
        for cmd, data in ((ioctl("C", 7), struct.pack("=i", 0)), (ioctl("V", 8), b""),
                          (ioctl("V", 3), settok), (ioctl("V", 9), b""),
                          (ioctl("V", 31), b"")):
            out, number = await RMTSYS.Pioctl(conn, cred, "__FOO__", cmd, 0, data, bytes(16384))
            results.append([number, out.hex()])
        print(results)

trio.run(main, sys.argv[1], int(sys.argv[2]))
"""


def test_a_client_claiming_another_uid_is_refused_and_learns_nothing(tools: Tools) -> None:
    mount = tools.mount
    alice, bob = mount.local["alice"], mount.local["bob"]
    assert tools.ok("alice", "aklog", "-c", tools.cell.name) == ""
    before = tools.ctl_json("alice", "tokens")

    def forge(as_uid: int) -> list:
        argv = [*as_user(bob), mount.python.interpreter, "-c", FORGER, HOST, str(as_uid)]
        env = {"PATH": "/usr/bin:/bin", **mount.python.env}
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().replace("'", '"'))

    refused = [[errno.EACCES, ""]] * 5
    assert forge(alice.uid) == refused
    assert forge(0) == refused
    # As himself, the same client is answered: he has no tokens, his cell is the cell.
    as_bob = forge(bob.uid)
    assert [number for number, _ in as_bob[:2]] == [errno.EDOM, errno.EDOM]
    assert as_bob[4] == [0, (tools.cell.name.encode() + b"\0").hex()]
    assert tools.ctl_json("alice", "tokens") == before
    assert f"uid {bob.uid} claimed to be uid {alice.uid}" in mount.log()


def test_fs_commands_as_openafs_prints_them(tools: Tools, volume: str) -> None:
    cell = tools.cell
    path = volume_dir(tools, volume)
    tools.ok("alice", "aklog", "-c", cell.name)
    for user in (None, "alice", "bob"):
        assert tools.ok(user, "fs", "wscell") == f"This workstation belongs to cell '{cell.name}'\n"
        assert (
            tools.ok(user, "fs", "whichcell", path) == f"File {path} lives in cell '{cell.name}'\n"
        )
        hosts = " ".join(host_name(server.addr) for server in cell.servers)
        assert tools.ok(user, "fs", "listcells") == f"Cell {cell.name} on hosts {hosts}.\n"
        assert tools.ok(user, "fs", "listcells", "-numeric") == (
            f"Cell {cell.name} on hosts {cell.servers[0].addr}.\n"
        )
        assert tools.ok(user, "fs", "sysname") == "Current sysname is 'testsys'\n"
        fid = os.getxattr(path, "afs.fid").decode()
        volume_id = fid.split(".")[0]
        assert (
            tools.ok(user, "fs", "getfid", path)
            == f"File {path} ({fid}) located in cell {cell.name}\n"
        )
        server = cell.servers[0].addr
        assert (
            tools.ok(user, "fs", "whereis", path)
            == f"File {path} is on host {host_name(server)} \n"
        )
        assert (
            tools.ok(user, "fs", "getcellstatus", cell.name)
            == f"Cell {cell.name} status: setuid allowed\n"
        )
        assert tools.ok(user, "fs", "checkservers") == "All servers are running.\n"
        assert tools.ok(user, "fs", "checkvolumes") == "All volumeID/name mappings checked.\n"
        acl = (
            "Normal rights:\n  system:administrators rlidwka\n  system:anyuser l\n  alice rlidwka\n"
        )
        assert tools.ok(user, "fs", "listacl", path) == f"Access list for {path} is\n{acl}"

    # Quotas: only the cell's administrators set them; everyone sees them.
    refused = tools.run("alice", "fs", "setquota", path, "4321")
    assert refused.returncode == 1
    assert refused.stderr == f"fs: You don't have the required access rights on '{path}'\n"
    assert tools.ok(None, "fs", "setquota", path, "4321") == ""
    status = tools.ctl_json("bob", "listquota", path)[0]
    assert status["quota"] == 4321
    used, free, size = status["used"], status["partition_free"], status["partition_size"]
    heading = f"{'Volume Name':<25}{'      Quota':<11}{'       Used':<11}{' %Used':<7}{'  Partition':<11}\n"
    for user in (None, "alice", "bob"):
        assert tools.ok(user, "fs", "listquota", path) == (
            f"{heading}{volume:<25.25s} {4321:10d} {used:10d}{100 * used / 4321:5.0f}%  "
            f"{100 - 100 * free / size:9.0f}%  \n"
        )
        assert tools.ok(user, "fs", "examine", path) == (
            f"File {path} ({fid}) contained in volume {volume_id}\n"
            f"Volume status for vid = {volume_id} named {volume}\n"
            f"Current disk quota is 4321\nCurrent blocks used are {used}\n"
            f"The partition has {free} blocks available out of {size}\n\n"
        )

    # ACLs: alice administers the volume; bob may read in it only once she lets him.
    tools.ok("bob", "aklog", "-c", cell.name)
    note = f"{path}/note-{secrets.token_hex(3)}"
    assert tools.run("alice", "sh", "-c", f"echo hi > {note}", afsserver=False).returncode == 0
    assert tools.run("bob", "cat", note, afsserver=False).returncode != 0
    assert tools.ok("alice", "fs", "setacl", path, "bob", "rl") == ""
    assert tools.run("bob", "cat", note, afsserver=False).stdout == "hi\n"
    assert "  bob rl\n" in tools.ok("bob", "fs", "listacl", path)
    refused = tools.run("bob", "fs", "setacl", path, "bob", "all")
    assert refused.stderr == f"fs: You don't have the required access rights on '{path}'\n"
    assert tools.ok("alice", "fs", "setacl", path, "bob", "none") == ""
    assert tools.run("bob", "cat", note, afsserver=False).returncode != 0

    # Not in AFS: fs's own message, after libsys's warning (a kernel client prints none).
    outside = tools.run("alice", "fs", "listacl", "/tmp")
    assert outside.stderr == "fs: Invalid argument; it is possible that /tmp is not in AFS.\n"
    assert outside.stdout == f"Warning: Remote pioctl to {HOST} has failed (err=22)...\n"
    missing = tools.run("alice", "fs", "listacl", f"{path}/nothing-here")
    assert missing.stderr == f"fs: File '{path}/nothing-here' doesn't exist\n"


def host_name(address: str) -> str:
    """What hostutil_GetNameByINet prints for an address."""
    try:
        return socket.gethostbyaddr(address)[0]
    except OSError:
        return address


def test_mount_points_made_listed_and_removed_with_fs(tools: Tools, volume: str) -> None:
    cell = tools.cell
    tools.ok("alice", "aklog", "-c", cell.name)
    path = volume_dir(tools, volume)
    made = f"{path}/mnt-{secrets.token_hex(3)}"
    # fs mkmount is symlink(2) on the mount: afsfuse makes it a mount point.
    assert tools.ok("alice", "fs", "mkmount", made, "root.cell") == ""
    assert (
        tools.ok("bob", "fs", "lsmount", made)
        == f"'{made}' is a mount point for volume '#root.cell'\n"
    )
    assert os.getxattr(made, "afs.mountpoint") == b"#root.cell"
    assert os.getxattr(made, "afs.volume").decode().startswith("root.cell")
    assert Path(made).is_dir()
    rw = f"{path}/rw-{secrets.token_hex(3)}"
    assert tools.ok("alice", "fs", "mkmount", rw, volume, "-cell", cell.name, "-rw") == ""
    assert (
        tools.ok("alice", "fs", "lsmount", rw)
        == f"'{rw}' is a mount point for volume '%{cell.name}:{volume}'\n"
    )
    assert os.getxattr(rw, "afs.fid") == os.getxattr(path, "afs.fid")
    # Not a mount point: fs's own words.
    plain = tools.run("alice", "fs", "lsmount", path + "/..")
    assert plain.returncode == 1
    not_one = f"{path}/file-{secrets.token_hex(3)}"
    assert tools.run("alice", "touch", not_one, afsserver=False).returncode == 0
    listed = tools.run("alice", "fs", "lsmount", not_one)
    assert listed.stderr == f"'{not_one}' is not a mount point.\n"
    # bob may not remove alice's; she may.
    refused = tools.run("bob", "fs", "rmmount", made)
    assert refused.returncode == 1 and os.path.exists(made)
    assert tools.ok("alice", "fs", "flushmount", made) == ""
    for mount_point in (made, rw):
        assert tools.ok("alice", "fs", "rmmount", mount_point) == ""
        assert not os.path.lexists(mount_point)


def test_flushes_make_the_mount_fetch_again(tools: Tools, volume: str) -> None:
    tools.ok("alice", "aklog", "-c", tools.cell.name)
    path = volume_dir(tools, volume)
    file = f"{path}/flush-{secrets.token_hex(3)}"
    assert tools.run("alice", "sh", "-c", f"echo hello > {file}", afsserver=False).returncode == 0

    def fetches() -> int:
        rpcs = tools.mount.stats()["rpcs"]
        return sum(count for name, count in rpcs.items() if name.startswith("FS.Fetch"))

    def read() -> str:
        done = tools.run("alice", "cat", file, afsserver=False)
        assert done.returncode == 0
        return done.stdout

    assert read() == "hello\n"
    before = fetches()
    subprocess.run(["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"], check=True)
    assert read() == "hello\n"
    assert fetches() == before  # the cache manager had it
    for command in (["fs", "flush", file], ["fs", "flushvolume", file]):
        assert tools.ok("alice", *command) == ""
        subprocess.run(["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"], check=True)
        held = fetches()
        assert read() == "hello\n"
        assert fetches() > held, command


def test_only_root_sets_the_sysname_list(tools: Tools) -> None:
    refused = tools.run("alice", "fs", "sysname", "alice_sys")
    assert refused.returncode == 1
    assert refused.stderr == "fs: You do not have the required rights to do this operation\n"
    try:
        assert (
            tools.ok(None, "fs", "sysname", "one_sys", "two_sys") == "fs: new sysname list set.\n"
        )
        assert tools.ok("bob", "fs", "sysname") == "Current sysname list is 'one_sys' 'two_sys'\n"
        assert tools.ctl_json("bob", "sysname")["names"] == ["one_sys", "two_sys"]
    finally:
        tools.ok(None, "fs", "sysname", "testsys")


def test_unserved_pioctls_answer_einval_and_cache_parms_are_the_disk_cache(tools: Tools) -> None:
    usage = tools.ok("bob", "fs", "getcacheparms")
    assert re.fullmatch(r"AFS using \d+ of the cache's available 1048576 1K byte blocks.\n", usage)
    uuid = tools.run(None, "fs", "uuid", "-generate")
    assert uuid.returncode == 1 and uuid.stderr == "fs: Invalid argument.\n"


GARBAGE = r"""
import random, socket, struct, sys, trio
from afsfuse.rx.driver import open_endpoint
from afsfuse.rx.errors import RxError
from afsfuse.rx.interfaces.rmtsys import RMTSYS, clientcred

async def main(host, uid, seed):
    rng = random.Random(seed)
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    async with open_endpoint() as endpoint:
        conn = endpoint.connect((host, 7009), RMTSYS.service_id)
        answered = 0
        for i in range(150):
            raw.sendto(rng.randbytes(rng.randrange(1, 1500)), (host, 7009))
            cmd = rng.choice([0x40185600, 0x40184300, 0x40184F00, 0]) | rng.randrange(256)
            data = rng.randbytes(rng.choice([0, 4, 24, 200, 12100, 16384]))
            path = rng.choice(["__FOO__", "/", "relative", "/tmp/../" * 40, "\u00e9" * 100,
                               "/" + "x" * 4000])
            claim = rng.choice([uid, uid, 0, 1, -1])
            with trio.move_on_after(10):
                try:
                    out, number = await RMTSYS.Pioctl(
                        conn, clientcred(uid=claim, group0=rng.randrange(2**31), group1=0),
                        path, cmd, rng.randrange(2), data, bytes(rng.randrange(16384)))
                    answered += 1
                    assert number or len(out) <= 12100, (cmd, len(out))
                except RxError:
                    pass
        print(answered)

trio.run(main, sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
"""


def test_garbage_on_the_live_port_is_answered_and_harms_no_one(tools: Tools) -> None:
    mount = tools.mount
    tools.ok("alice", "aklog", "-c", tools.cell.name)
    before = tools.ctl_json("alice", "tokens")
    bob = mount.local["bob"]
    argv = [*as_user(bob), mount.python.interpreter, "-c", GARBAGE, HOST, str(bob.uid), "7"]
    env = {"PATH": "/usr/bin:/bin", **mount.python.env}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 100  # answered, not dropped
    os.kill(mount.pid, 0)  # the daemon is alive
    assert tools.ctl_json("alice", "tokens") == before
    assert (
        tools.ok("alice", "fs", "wscell")
        == f"This workstation belongs to cell '{tools.cell.name}'\n"
    )
    assert "Traceback" not in mount.log()


def test_a_second_mount_runs_without_the_port_and_says_so(
    tools: Tools, tmp_path_factory: pytest.TempPathFactory
) -> None:
    cell = tools.cell
    for extra, warned in ((RMTSYS, True), (("--no-rmtsys",), False)):
        where = Path(tempfile.mkdtemp(prefix="afsfuse-second-"))
        mountpoint = where / "afs"
        mountpoint.mkdir()
        argv = [
            str(Path(sys.executable).parent / "afsfuse"), "mount", str(mountpoint),
            "--cellservdb", str(cell.cellservdb), "--thiscell", cell.name,
            "--cache-dir", str(tmp_path_factory.mktemp("second-cache")),
            "--log-file", str(where / "log"), *no_client_files(where), *extra,
        ]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        try:
            assert ("warning: rmtsys: cannot listen on 127.0.0.9:7009" in done.stderr) == warned
            assert cell.name in os.listdir(mountpoint)
            # The first mount still answers the tools.
            assert tools.ok("bob", "fs", "wscell").endswith(f"'{cell.name}'\n")
        finally:
            stop_daemon(mountpoint, daemon_pid(mountpoint))
            shutil.rmtree(where, ignore_errors=True)


REMOTE = r"""
import json, struct, sys, time, trio
from afsfuse.rx.driver import open_endpoint
from afsfuse.rx.interfaces.rmtsys import RMTSYS, clientcred

async def main(host, uid, ticket_byte, set_it):
    async with open_endpoint() as endpoint:
        conn = endpoint.connect((host, 7009), RMTSYS.service_id)
        cred = clientcred(uid=uid, group0=0, group1=0)
        now = int(time.time())
        ticket = bytes([ticket_byte]) * 80
        settok = (struct.pack(">i", len(ticket)) + ticket + struct.pack(">i", 24)
                  + struct.pack(">i8siii", 256, b"remote!!", 42, now, now + 3601)
                  + struct.pack(">i", 0) + b"afsfuse.test\0")
        calls = [(0x40185603, settok)] * set_it + [(0x40184307, struct.pack("=i", 0))]
        results = []
        for cmd, data in calls:
            out, number = await RMTSYS.Pioctl(conn, cred, "__FOO__", cmd, 0, data, bytes(16384))
            results.append([number, ticket in out])
        print(json.dumps(results))

trio.run(main, sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
"""


def test_other_hosts_only_when_allowed_and_their_users_are_theirs(
    tools: Tools, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A client in the cell's network namespace is another host: refused by default; with
    --rmtsys-allow its users' tokens are kept for that host alone, its root is nobody."""
    cell = tools.cell
    alice = tools.mount.local["alice"]
    netns = cell.servers[0].netns

    def remote(uid: int, ticket_byte: int, set_it: bool = True) -> list:
        argv = ["ip", "netns", "exec", netns, sys.executable, "-c", REMOTE, cell.host_addr]
        done = subprocess.run(
            [*argv, str(uid), str(ticket_byte), str(int(set_it))],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    for allow, expected in (
        ((), [[errno.EACCES, False], [errno.EACCES, False]]),
        (("--rmtsys-allow", f"{cell.servers[0].addr}/32"), [[0, False], [0, True]]),
    ):
        extra = ("--rmtsys", f"{cell.host_addr}:7009", *allow)
        cache = tmp_path_factory.mktemp("remote-cache")
        with afs_mount(
            cell, tools.mount.local, tools.mount.python, cache, extra_args=extra
        ) as mount:
            assert remote(alice.uid, 1) == expected
            if not allow:
                continue
            # The host's uid of alice's number is not alice here.
            done = mount.ctl("alice", "--json", "tokens")
            assert json.loads(done.stdout)["tokens"] == []
            # The host's root is its nobody: what one sets, the other gets.
            assert remote(0, 2) == [[0, False], [0, True]]
            assert remote(65534, 2, set_it=False) == [[0, True]]
            assert remote(alice.uid, 1, set_it=False) == [[0, True]]
            assert "rmtsys: refused" not in mount.log()
            # Root here discards that host's tokens (as fs nukenfscreds does over rmtsys).
            done = mount.ctl(None, "--json", "discard", "--host", cell.servers[0].addr)
            assert json.loads(done.stdout)["holders"] == 2, done.stderr
            assert remote(alice.uid, 1, set_it=False) == [[errno.EDOM, False]]
            assert remote(0, 2, set_it=False) == [[errno.EDOM, False]]


def _ranks(listing: str) -> dict[str, int]:
    """`fs getserverprefs` output: host, rank."""
    return {host: int(rank) for host, rank in (line.split() for line in listing.splitlines())}


def test_server_preferences(tools: Tools) -> None:
    """Ranks as OpenAFS gives them by distance (the servers are on one of this host's
    subnets: 20000), refined by round trip within that band, and root's own preferences for
    fileservers and VL servers, which win."""
    server = tools.cell.servers[0].addr
    listed = _ranks(tools.ok("bob", "fs", "getserverprefs", "-numeric"))
    assert RANK_SUBNET <= listed[server] < RANK_NETWORK, listed
    vl_ranks = _ranks(tools.ok("bob", "fs", "getserverprefs", "-vlservers"))
    assert list(vl_ranks) == [host_name(server)]
    assert RANK_SUBNET <= vl_ranks[host_name(server)] < RANK_NETWORK
    refused = tools.run("alice", "fs", "setserverprefs", "-servers", server, "7000")
    assert refused.stderr == "Permission denied: requires root access.\n"
    try:
        assert tools.ok(None, "fs", "setserverprefs", "-servers", server, "7000") == ""
        assert f"{server:<50} {7000:5d}\n" in tools.ok("alice", "fs", "getserverprefs", "-numeric")
        assert [server, 7000] in tools.ctl_json("alice", "getserverprefs")["servers"]
        # Files are still reached (the only site, now preferred).
        assert tools.ok("alice", "fs", "checkservers") == "All servers are running.\n"
        assert tools.ok(None, "fs", "setserverprefs", "-vlservers", server, "100") == ""
        vl_listed = tools.ok("alice", "fs", "getserverprefs", "-vlservers", "-numeric")
        assert vl_listed == f"{server:<50} {100:5d}\n"
        # The fileserver on the same host keeps its own.
        assert f"{server:<50} {7000:5d}\n" in tools.ok("alice", "fs", "getserverprefs", "-numeric")
    finally:
        tools.ok(None, "fs", "setserverprefs", "-servers", server, "20000")
        tools.ok(None, "fs", "setserverprefs", "-vlservers", server, "20000")


def test_afsfuse_ctl_speaks_as_fs(tools: Tools, volume: str) -> None:
    """The verbs fs has, in afsfuse-ctl under the same names and arguments, print what fs
    prints: one op answers both, over the control socket and over rmtsys."""
    cell = tools.cell
    path = volume_dir(tools, volume)
    for user in ("alice", "bob"):
        tools.ok(user, "aklog", "-c", cell.name)
    verbs = [
        ["whereis", path], ["examine", path], ["listvol", path], ["getfid", path],
        ["whichcell", path], ["diskfree", path], ["df", path], ["quota", path],
        ["listquota", path], ["lq", path], ["listacl", path], ["la", path],
        ["getcalleraccess", path], ["gca", path], ["listcells"], ["listcells", "-numeric"],
        ["getcellstatus", cell.name], ["getserverprefs", "-numeric"], ["gp", "-vlservers"],
        ["checkservers"], ["checkservers", "-fast"], ["checkservers", "-interval", "0"],
        ["checkvolumes"], ["wscell"], ["sysname"],
    ]  # fmt: skip
    for user in ("alice", "bob"):
        for argv in verbs:
            done = tools.mount.ctl(user, *argv)
            assert done.returncode == 0, (argv, done.stderr)
            assert done.stdout.decode() == tools.ok(user, "fs", *argv), argv
        # tokens, as OpenAFS's own prints them.
        assert tools.mount.ctl(user, "tokens").stdout.decode() == tools.ok(user, "tokens")
    cache = tools.mount.ctl("bob", "getcacheparms").stdout.decode()
    assert re.fullmatch(r"AFS using \d+ of the cache's available 1048576 1K byte blocks.\n", cache)
    assert json.loads(tools.mount.ctl("bob", "--json", "whereis", path).stdout)[0]["servers"] == [
        cell.servers[0].addr
    ]

    # What afsfuse-ctl changes, fs sees.
    sub = f"{path}/copy-{secrets.token_hex(3)}"
    assert tools.run("alice", "mkdir", sub, afsserver=False).returncode == 0
    assert tools.ok("alice", "fs", "setacl", sub, "bob", "rl") == ""
    done = tools.mount.ctl("alice", "copyacl", path, sub)
    assert done.returncode == 0, done.stderr
    entries = tools.ok("alice", "fs", "listacl", path).splitlines()[1:]
    assert sorted(tools.ok("alice", "fs", "listacl", sub).splitlines()[1:]) == sorted(
        [*entries, "  bob rl"]
    )
    done = tools.mount.ctl("alice", "copyacl", "-clear", path, sub)
    assert done.returncode == 0, done.stderr
    assert tools.ok("alice", "fs", "listacl", sub) == tools.ok(
        "alice", "fs", "listacl", path
    ).replace(path, sub)
    refused = tools.mount.ctl("alice", "setvol", path, "-offlinemsg", "gone fishing")
    assert refused.returncode == 1
    done = tools.mount.ctl(None, "setvol", path, "-offlinemsg", "gone fishing")
    assert done.returncode == 0, done.stderr
    assert "Current offline message is gone fishing\n" in tools.ok("bob", "fs", "examine", path)
    assert (
        "Current offline message is gone fishing\n"
        in tools.mount.ctl("bob", "examine", path).stdout.decode()
    )
    refused = tools.mount.ctl("bob", "setserverprefs", "-servers", cell.servers[0].addr, "9")
    assert refused.returncode == 1 and b"not allowed" in refused.stderr


def test_fs_copyacl_cleanacl_setvol_flushall(tools: Tools, volume: str) -> None:
    cell = tools.cell
    path = volume_dir(tools, volume)
    tools.ok("alice", "aklog", "-c", cell.name)
    sub = f"{path}/fscopy-{secrets.token_hex(3)}"
    assert tools.run("alice", "mkdir", sub, afsserver=False).returncode == 0
    assert tools.ok("alice", "fs", "copyacl", path, sub, "-clear") == ""
    assert tools.ok("bob", "fs", "listacl", sub) == tools.ok("bob", "fs", "listacl", path).replace(
        path, sub
    )
    assert tools.ok("alice", "fs", "cleanacl", sub) == f"Access list for {sub} is fine.\n"
    assert (
        tools.mount.ctl("alice", "cleanacl", sub).stdout.decode()
        == f"Access list for {sub} is fine.\n"
    )
    assert tools.ok(None, "fs", "setvol", path, "-offlinemsg", "back soon") == ""
    assert "Current offline message is back soon\n" in tools.ok("bob", "fs", "examine", path)
    # flushall is root's here (everyone pays for it); OpenAFS lets anyone.
    refused = tools.run("alice", "fs", "flushall")
    assert refused.returncode == 1 and refused.stderr == "Error flushing all volumes\n"
    assert tools.ok(None, "fs", "flushall") == ""
    assert tools.run("bob", "ls", path, afsserver=False).returncode == 0


def test_only_root_discards_a_hosts_tokens_with_fs_nukenfscreds(tools: Tools) -> None:
    """The same handler as `afsfuse-ctl discard --host` (the tokens going is checked with a
    real remote host in test_other_hosts_only_when_allowed_and_their_users_are_theirs)."""
    assert tools.ok(None, "fs", "nukenfscreds", "-addr", "192.0.2.9") == ""
    refused = tools.run("bob", "fs", "nukenfscreds", "-addr", "192.0.2.9")
    assert refused.returncode != 0, refused
