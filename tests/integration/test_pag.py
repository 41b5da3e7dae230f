"""PAGs on a real mount of the real cell: two shells of alice in two PAGs (`afsfuse-ctl
pagsh`) hold different tokens, and what they start (setsid, tmux, su) stays in them; alice
outside both has neither and cannot claim them; OpenAFS's own pagsh, run as root, gets its
PAG over rmtsys (SetPag) and its tokens, aklog and unlog act on it; root discards tokens by
uid, PAG and all; a PAG's tokens go when its last process does, and survive a daemon restart
while its keeper runs.

Every program runs as the local user it stands for (setpriv), with a real Kerberos ticket.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from local_users import User, UserPython, as_user
from logins import kinit
from mounting import Mount, afs_mount, process_gone, start_daemon

from afsfuse.testing.cell import Cell

pytestmark = pytest.mark.cell

#: Where this module's mount serves rmtsys (another loopback address than test_rmtsys's).
HOST = "127.0.0.12"
END = "__done__"


class PagShell:
    """A shell of a local user, started in a new PAG by `afsfuse-ctl pagsh`, that runs one
    command line at a time."""

    def __init__(self, mount: Mount, user: str | None, env: dict[str, str]) -> None:
        self.env = env
        argv = [*ctl_argv(mount), "pagsh", "--", "sh"]
        if user is not None:
            argv = [*as_user(mount.local[user]), *argv]
        self.process = subprocess.Popen(
            argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, cwd="/",
        )  # fmt: skip

    def run(self, line: str) -> tuple[int, str]:
        """The exit status and output (stdout and stderr) of one command line."""
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(f"{line} 2>&1; echo {END} $?\n")
        self.process.stdin.flush()
        output = []
        while True:
            got = self.process.stdout.readline()
            assert got, f"the shell ended: {''.join(output)}"
            if got.startswith(END):
                return int(got.split()[1]), "".join(output)
            output.append(got)

    def ok(self, line: str) -> str:
        status, output = self.run(line)
        assert status == 0, (line, output)
        return output

    def pag(self) -> int:
        return pag_number(self.ok("$CTL getpag"))

    def exit(self) -> int:
        assert self.process.stdin
        self.process.stdin.close()
        return self.process.wait(30)


def written(path: str) -> str:
    """The text a process of the test writes to path, once there; the file then goes."""
    deadline = time.monotonic() + 10
    while not (os.path.exists(path) and os.path.getsize(path)):
        assert time.monotonic() < deadline, f"nothing in {path}"
        time.sleep(0.05)
    time.sleep(0.1)  # a line is written at once, but let the writer finish
    text = Path(path).read_text()
    os.unlink(path)
    return text


def ctl_argv(mount: Mount) -> list[str]:
    return [mount.python.interpreter, "-m", "afsfuse.ctl.cli", "--mount", str(mount.path)]


def pag_number(text: str) -> int:
    found = re.fullmatch(r"PAG (0x[0-9a-f]+)\n", text)
    assert found, text
    return int(found.group(1), 16)


class Place:
    """The mount, a volume with a directory only alice may read and one only bob may, and
    how each local user's processes are run."""

    def __init__(self, mount: Mount, cell: Cell, root: Path, public: Path) -> None:
        self.mount = mount
        self.cell = cell
        self.root = root
        self.public = public
        self.ctl = " ".join(ctl_argv(mount))

    def env(self, user: str | None, **extra: str) -> dict[str, str]:
        env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "SHELL": "/bin/sh", "CTL": self.ctl}
        env.update(self.mount.python.env)
        if user is not None:
            env.update(self.mount.user_env[user])
            env["HOME"] = str(Path(env["KRB5CCNAME"].removeprefix("FILE:")).parent)
        return {**env, **extra}

    def shell(self, user: str | None, **extra: str) -> PagShell:
        return PagShell(self.mount, user, self.env(user, **extra))

    def ctl_json(self, user: str | None, *args: str) -> dict:
        done = self.mount.ctl(user, "--json", *args)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def reads(self, user: str, path: Path) -> bool:
        """Whether user, outside any PAG, can read path."""
        return self.mount.run("cat", str(path), user=user, check=False).returncode == 0


@pytest.fixture(scope="module")
def place(
    cell: Cell,
    users: dict[str, User],
    user_python: UserPython,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Place]:
    volume = f"pag.{secrets.token_hex(3)}"
    cell.exec("vos", "create", cell.servers[0].addr, "a", volume, "-localauth")
    public = Path(tempfile.mkdtemp(prefix="afsfuse-pag-"))
    public.chmod(0o755)
    cache = tmp_path_factory.mktemp("pag-cache")
    with afs_mount(cell, users, user_python, cache, extra_args=("--rmtsys", f"{HOST}:7009")) as m:
        root = m.path / ".:mount" / f"{cell.name}:{volume}"
        place = Place(m, cell, root, public)
        # The admin lays it out, in a PAG of root's own, which goes when it is done.
        admin = place.shell(None, **kinit(cell, "admin", public / "admin-cc"))
        admin.ok("$CTL aklog")
        admin.ok(f"$CTL setacl {root} system:anyuser l")
        for user in ("alice", "bob"):
            admin.ok(f"mkdir {root}/{user} && echo {user} > {root}/{user}/file")
            admin.ok(f"$CTL setacl -clear {root}/{user} system:administrators all {user} rl")
        admin.ok(f"mkdir {root}/admin && echo admin > {root}/admin/file")
        admin.ok(f"$CTL setacl -clear {root}/admin system:administrators all")
        assert admin.exit() == 0
        # OpenAFS's tools read the cell's name and servers here.
        (public / "CellServDB").write_bytes(cell.cellservdb.read_bytes())
        (public / "ThisCell").write_text(cell.name + "\n")
        # alice may hold bob's ticket too (a second principal of hers, as it were).
        kinit(cell, "bob", public / "bob-cc")
        os.chown(public / "bob-cc", m.local["alice"].uid, m.local["alice"].gid)
        try:
            yield place
        finally:
            shutil.rmtree(public, ignore_errors=True)


def test_two_shells_of_alice_in_two_pags_hold_their_own_tokens(place: Place) -> None:
    root = place.root
    first = place.shell("alice")
    second = place.shell("alice", KRB5CCNAME=f"FILE:{place.public}/bob-cc")
    try:
        assert first.pag() != second.pag()
        first.ok("$CTL aklog")
        second.ok("$CTL aklog")
        assert first.ok(f"cat {root}/alice/file") == "alice\n"
        assert "Permission denied" in first.run(f"cat {root}/bob/file")[1]
        assert second.ok(f"cat {root}/bob/file") == "bob\n"
        assert "Permission denied" in second.run(f"cat {root}/alice/file")[1]
        tokens = [json.loads(s.ok("$CTL --json tokens")) for s in (first, second)]
        assert [t["pag"] for t in tokens] == [first.pag(), second.pag()]
        assert [t["tokens"][0]["client"].split("@")[0] for t in tokens] == ["alice", "bob"]

        # Membership comes with everything the shell starts, whatever it does: a new
        # session, a daemon, a tmux server (which setsid()s and forks its panes).
        assert first.ok(f"setsid sh -c 'cat {root}/alice/file'") == "alice\n"
        out = f"/tmp/afsfuse-pag-{secrets.token_hex(3)}"
        first.ok(f"setsid -f sh -c 'cat {root}/alice/file > {out}.daemon'")
        sock = f"{out}.tmux"
        first.ok(f"tmux -S {sock} new-session -d 'cat {root}/alice/file > {out}.pane'")
        assert written(f"{out}.daemon") == written(f"{out}.pane") == "alice\n"
        first.run(f"tmux -S {sock} kill-server; rm -f {sock}")
        # A tmux server started outside: what it starts for a client inside is outside.
        mount = place.mount
        mount.run("env", "SHELL=/bin/sh", "tmux", "-S", sock, "new", "-d", "sleep 60", user="alice")
        try:
            first.ok(f'tmux -S {sock} new-window "$CTL getpag > {out}.window"')
            assert written(f"{out}.window") == "not in a PAG\n"
        finally:
            mount.run("tmux", "-S", sock, "kill-server", user="alice", check=False)
            Path(sock).unlink(missing_ok=True)

        # alice outside both: no token, and neither PAG's files.
        assert place.ctl_json("alice", "tokens") == {"uid": place.mount.local["alice"].uid,
                                                     "pag": None, "tokens": []}  # fmt: skip
        assert not place.reads("alice", root / "alice" / "file")
        assert not place.reads("alice", root / "bob" / "file")
        # Nor can she claim one: a PAG named in a request, or in groups sent over rmtsys,
        # is not believed; a new session is no PAG; a PAG of her own is a new, empty one.
        claimed = claims(place, "alice", first.pag())
        assert claimed == {"control": [], "rmtsys": errno.EDOM}, claimed
        setsid = place.mount.run("setsid", *ctl_argv(place.mount), "--json", "tokens", user="alice")
        assert json.loads(setsid.stdout)["tokens"] == []
        own = place.mount.run(
            *ctl_argv(place.mount), "pagsh", "--", *ctl_argv(place.mount), "--json", "tokens",
            user="alice",
        )  # fmt: skip
        assert json.loads(own.stdout)["tokens"] == [] and json.loads(own.stdout)["pag"] not in (
            first.pag(),
            second.pag(),
        )
        # unlog in one PAG leaves the other alone.
        first.ok("$CTL unlog")
        assert "Permission denied" in first.run(f"cat {root}/alice/file")[1]
        assert second.ok(f"cat {root}/bob/file") == "bob\n"
    finally:
        assert first.exit() == 0 and second.exit() == 0


CLAIMS = r"""
import json, socket, struct, sys, trio
from afsfuse.ctl.client import find_control_socket
from afsfuse.rx.driver import open_endpoint
from afsfuse.rx.interfaces.rmtsys import RMTSYS, clientcred

mount, host, pag = sys.argv[1], sys.argv[2], int(sys.argv[3])
sock = socket.socket(socket.AF_UNIX)
sock.connect(str(find_control_socket(mount)))
sock.sendall(json.dumps({"op": "tokens", "pag": pag}).encode() + b"\n")
control = json.loads(sock.makefile().readline())["result"]["tokens"]

def two_groups(pag):
    g0 = (0x3FFF & (pag >> 14)) | ((pag & 0x7FFFFFFF) >> 28) // 3 << 14
    g1 = (0x3FFF & pag) | ((pag & 0x7FFFFFFF) >> 28) % 3 << 14
    return g0 + 0x3F00, g1 + 0x3F00

async def gettok():
    async with open_endpoint() as endpoint:
        conn = endpoint.connect((host, 7009), RMTSYS.service_id)
        g0, g1 = two_groups(pag)
        cred = clientcred(uid=__import__("os").getuid(), group0=g0, group1=g1)
        out, number = await RMTSYS.Pioctl(
            conn, cred, "__FOO__", 0x40184307, 0, struct.pack("=i", 0), bytes(16384)
        )
        return number

print(json.dumps({"control": control, "rmtsys": trio.run(gettok)}))
"""


def claims(place: Place, user: str, pag: int) -> dict:
    """What user gets by naming PAG pag: in a control request, and in rmtsys groups."""
    done = place.mount.run(
        place.mount.python.interpreter, "-c", CLAIMS, str(place.mount.path), HOST, str(pag),
        user=user,
    )  # fmt: skip
    return json.loads(done.stdout)


def test_openafs_pagsh_as_root_gets_a_pag_over_rmtsys(place: Place) -> None:
    root = place.root
    env = {
        **place.env(None, **kinit(place.cell, "admin", place.public / "root-cc")),
        "AFSSERVER": HOST,
        "AFSCONF": str(place.public),
        "HOME": str(place.public),
    }
    ctl = place.ctl
    # root holds the admin's token outside any PAG.
    subprocess.run([*ctl_argv(place.mount), "aklog"], env=env, check=True, timeout=60)
    script = (
        f"tokens; {ctl} getpag; cat {root}/admin/file; "
        f"KRB5CCNAME=FILE:{place.public}/bob-cc aklog; tokens; cat {root}/bob/file; "
        f"cat {root}/admin/file; {ctl} --json tokens"
    )
    done = subprocess.run(
        ["pagsh", "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert "aklog" not in done.stderr, done.stderr
    lines = done.stdout.splitlines()
    # A new PAG: no token until aklog, whose token (bob's) is the PAG's alone.
    assert lines[:4] == ["", "Tokens held by the Cache Manager:", "", "   --End of list--"]
    pag = pag_number(lines[4] + "\n")
    assert "Permission denied" in done.stderr
    assert "bob\n" in done.stdout
    inside = json.loads(done.stdout[done.stdout.index("{") :])
    assert inside["pag"] == pag and len(inside["tokens"]) == 1
    # Outside, root still has the admin's token, and the PAG's is listed with its own.
    outside = subprocess.run(
        ["cat", f"{root}/admin/file"], env=env, capture_output=True, text=True, timeout=30
    )
    assert outside.stdout == "admin\n"
    listed = {p["pag"]: p for p in place.ctl_json(None, "pags")["pags"]}
    assert listed[pag]["pid"] is None and listed[pag]["cells"] == [place.cell.name]
    # Root discards it; and unlog with OpenAFS's tool, in a PAG, empties that PAG only.
    assert place.ctl_json(None, "discard", "--pag", hex(pag))["holders"] == 1
    assert {p["pag"]: p["cells"] for p in place.ctl_json(None, "pags")["pags"]}[pag] == []
    again = subprocess.run(
        ["pagsh", "-c", f"aklog; unlog; tokens; cat {root}/admin/file"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "--End of list--" in again.stdout and "rxkad" not in again.stdout
    assert "Permission denied" in again.stderr
    assert subprocess.run(["cat", f"{root}/admin/file"], env=env, timeout=30).returncode == 0
    # su sets the groups afresh: a groups PAG does not follow it (OpenAFS's kernel module
    # would put it back; nothing here can).
    su = subprocess.run(
        ["pagsh", "-c", f"{ctl} getpag; su -s /bin/sh afsfuse-bob -c '{ctl} getpag'"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert su.stdout.startswith("PAG 0x41") and su.stdout.endswith("\nnot in a PAG\n"), su
    subprocess.run([*ctl_argv(place.mount), "unlog"], env=env, check=True, timeout=60)


def test_root_discards_by_uid_pag_and_all_and_a_pag_ends_with_its_processes(
    place: Place,
) -> None:
    root, mount = place.root, place.mount
    alice = mount.local["alice"].uid
    assert mount.ctl("alice", "aklog").returncode == 0
    first, second = place.shell("alice"), place.shell("alice")
    try:
        for shell in (first, second):
            shell.ok("$CTL aklog")
        pags = {first.pag(), second.pag()}
        held = {p["pag"] for p in place.ctl_json(None, "pags")["pags"] if p["cells"]}
        assert pags <= held
        # alice sees the PAGs she started, never another user's; only root discards.
        assert {p["pag"] for p in place.ctl_json("alice", "pags")["pags"]} >= pags
        assert place.ctl_json("bob", "pags")["pags"] == []
        refused = mount.ctl("alice", "discard", "--pag", hex(first.pag()))
        assert refused.returncode == 1 and b"not allowed" in refused.stderr

        assert place.ctl_json(None, "discard", "--pag", hex(first.pag()))["holders"] == 1
        assert "Permission denied" in first.run(f"cat {root}/alice/file")[1]
        assert second.ok(f"cat {root}/alice/file") == "alice\n"
        assert place.reads("alice", root / "alice" / "file")
        # A uid: its own tokens and those of the PAGs it started.
        first.ok("$CTL aklog")
        assert place.ctl_json(None, "discard", "--uid", str(alice))["holders"] == 3
        assert not place.reads("alice", root / "alice" / "file")
        for shell in (first, second):
            assert "Permission denied" in shell.run(f"cat {root}/alice/file")[1]
        first.ok("$CTL aklog")
        assert mount.ctl("bob", "aklog").returncode == 0
        assert place.ctl_json(None, "discard", "--all")["holders"] >= 2
        assert place.ctl_json("bob", "tokens")["tokens"] == []
        assert not any(p["cells"] for p in place.ctl_json(None, "pags")["pags"])

        # A PAG's tokens go once no process of it is left: not while a daemon it started
        # still runs after its shell has gone, and at once when that ends.
        first.ok("$CTL aklog")
        pag = first.pag()
        first.ok("setsid -f sleep 3")
        assert first.exit() == 0
        assert {p["pag"]: p["cells"] for p in place.ctl_json(None, "pags")["pags"]}[pag]
        deadline = time.monotonic() + 15
        while pag in {p["pag"] for p in place.ctl_json(None, "pags")["pags"]}:
            assert time.monotonic() < deadline, "the PAG outlived its processes"
            time.sleep(0.2)
    finally:
        first.process.kill()
        assert second.exit() == 0


def test_a_pag_keeps_its_tokens_across_a_daemon_restart_while_it_runs(place: Place) -> None:
    mount = place.mount
    shell = place.shell("alice")
    try:
        shell.ok("$CTL aklog")
        pag = shell.pag()
        os.kill(mount.pid, signal.SIGKILL)
        assert process_gone(mount.pid, 10)
        mount.pid = start_daemon(
            place.cell, mount.path, mount.cache, mount.log_file,
            extra_args=("--rmtsys", f"{HOST}:7009"),
        )  # fmt: skip
        assert shell.pag() == pag
        assert shell.ok(f"cat {place.root}/alice/file") == "alice\n"
        assert re.search(f"PAG {pag:#x}: kept by pid \\d+ again", mount.log())
    finally:
        assert shell.exit() == 0


def test_su_in_a_pag_stays_in_it(place: Place) -> None:
    """As with OpenAFS's PAGs: su (a child of the shell) keeps the PAG, so bob's process
    there uses the PAG's token, alice's; bob outside it cannot read her files."""
    alice_cc = place.mount.user_env["alice"]["KRB5CCNAME"]
    shell = place.shell(None, KRB5_CONFIG=place.mount.user_env["alice"]["KRB5_CONFIG"])
    try:
        shell.ok(f"KRB5CCNAME={alice_cc} $CTL aklog")
        bob = "su -s /bin/sh afsfuse-bob -c"
        assert shell.ok(f"{bob} 'cat {place.root}/alice/file'") == "alice\n"
        assert shell.ok(f"{bob} 'id -un; $CTL getpag'") == f"afsfuse-bob\nPAG {shell.pag():#x}\n"
        assert not place.reads("bob", place.root / "alice" / "file")
    finally:
        assert shell.exit() == 0


def test_pagsh_returns_the_commands_status_and_runs_no_command_without_a_daemon(
    place: Place,
) -> None:
    mount = place.mount
    done = mount.run(*ctl_argv(mount), "pagsh", "--", "sh", "-c", "exit 7", user="bob", check=False)
    assert done.returncode == 7
    killed = mount.run(
        *ctl_argv(mount), "pagsh", "sh", "-c", "kill -TERM $$", user="bob", check=False
    )
    assert killed.returncode == 128 + signal.SIGTERM
    missing = mount.run(
        mount.python.interpreter, "-m", "afsfuse.ctl.cli", "--socket", "/nonexistent",
        "pagsh", "true", user="bob", check=False,
    )  # fmt: skip
    assert missing.returncode == 1 and b"cannot reach the daemon" in missing.stderr
