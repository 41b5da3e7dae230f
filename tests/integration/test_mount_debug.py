"""OpenAFS's cmdebug and rxdebug against a real afsfuse mount, after known work on it: each
listing is parsed and checked against what the mount did (the files read, listed, written
and still open, the cell, the cache configured, the fileserver talked to).

The fileserver is frozen with SIGSTOP (fileservers.py) to hold a store in progress:
the file's lock is then held and waited for, which is what cmdebug's default listing shows.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import pytest
import trio
from admin_rpcs import admin, afs, make_file
from fileservers import frozen
from local_users import User, UserPython
from managers import ADMIN, manager
from mounting import Mount, acl, afs_mount
from volumes import volume_root

from afsfuse.fs.vnode import DEFAULT_VNODE_LIMIT, AfsFid
from afsfuse.keyring import Token
from afsfuse.keyring.store import TokenStore
from afsfuse.rx.driver import open_endpoint
from afsfuse.rx.errors import RXGEN_OPCODE, RXGEN_SS_UNMARSHAL, RxAbort
from afsfuse.rx.interfaces.cb import CB
from afsfuse.rx.interfaces.fs import FS, AFSStoreStatus
from afsfuse.testing.cell import Cell
from afsfuse.vl.rank import RANK_NETWORK, RANK_SUBNET

pytestmark = pytest.mark.cell

SERVER_TIMEOUT = 3.0
CACHE_SIZE_KB = 300 * 1024
CHUNK_SIZE = 1 << 20  # the cache's default
READ_SIZE = 300_000
WRITTEN = 70_000
LISTED = ("a", "b", "c")


@dataclass(frozen=True)
class Data:
    volume: str
    content: bytes
    #: "volume.vnode.unique" of read.bin, and its data version.
    read_fid: str
    read_version: int


def _fid_text(fid: AfsFid) -> str:
    return f"{fid.volume}.{fid.vnode}.{fid.unique}"


async def _populate(cell: Cell, cache: Path, token: Token, volume: str, content: bytes) -> Data:
    store = TokenStore()
    store.set(ADMIN, token)
    async with manager(cell, cache, store) as m:
        root = await volume_root(m, cell.name, volume, "rw")
        # rlidwk for anyone: the mount's programs run without a token.
        await admin(m, root, FS.OldStoreACL, afs(root), acl("system:anyuser 63"))
        fid = await make_file(m, root, "read.bin", content)
        listed = await admin(m, root, FS.MakeDir, afs(root), "dir", AFSStoreStatus())
        directory = AfsFid(cell.name, root.volume, listed.OutFid.Vnode, listed.OutFid.Unique)
        for name in LISTED:
            await make_file(m, directory, name, name.encode())
        status = await admin(m, fid, FS.FetchStatus, afs(fid))
        return Data(volume, content, _fid_text(fid), status.OutStatus.DataVersion)


@pytest.fixture(scope="module")
def data(cell: Cell, tokens: dict[str, Token], tmp_path_factory: pytest.TempPathFactory) -> Data:
    volume = f"dbg.{secrets.token_hex(3)}"
    cell.exec("vos", "create", cell.servers[0].addr, "a", volume, "-maxquota", "0", "-localauth")
    content = hashlib.shake_256(secrets.token_bytes(16)).digest(READ_SIZE)
    cache = tmp_path_factory.mktemp("debug-prepare")
    return trio.run(_populate, cell, cache, tokens["admin"], volume, content)


@pytest.fixture(scope="module")
def mounted(
    cell: Cell,
    data: Data,
    users: dict[str, User],
    user_python: UserPython,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Mount]:
    cache = tmp_path_factory.mktemp("debug-cache")
    extra = ("--server-timeout", str(SERVER_TIMEOUT), "--cache-size", f"{CACHE_SIZE_KB}K")
    with afs_mount(cell, users, user_python, cache, extra_args=extra) as mount:
        yield mount


def volume_path(mount: Mount, data: Data) -> Path:
    return mount.path / ".:mount" / f"{mount.cell}:{data.volume}"


def callback_port(mount: Mount) -> int:
    """The daemon's Rx port (callbacks, cmdebug and rxdebug), as its log tells it."""
    found = re.search(r"callback port (\d+)", mount.log())
    assert found is not None, mount.log()
    return int(found[1])


def rxdebug(mount: Mount, *options: str) -> str:
    """OpenAFS's rxdebug against the daemon's port; it must end, and end well."""
    argv = ["rxdebug", "127.0.0.1", str(callback_port(mount)), *options]
    done = subprocess.run(argv, capture_output=True, timeout=20, check=True)
    return done.stdout.decode()


def cmdebug(mount: Mount, *options: str) -> str:
    """OpenAFS's cmdebug against the daemon's port; it must say nothing of an error."""
    argv = ["cmdebug", "127.0.0.1", "-port", str(callback_port(mount)), *options]
    done = subprocess.run(argv, capture_output=True, timeout=60, check=True)
    out = done.stdout.decode()
    assert "cmdebug:" not in out and not done.stderr, (out, done.stderr)
    return out


#: One cache entry as cmdebug prints it (PrintCacheEntries64).
ENTRY = re.compile(
    r"\*\* Cache entry @ 0x[0-9a-f]{8} for (?P<cell>\d+)\.(?P<fid>\d+\.\d+\.\d+)"
    r"(?: \[(?P<cell_name>[^\]]*)\])?\n"
    r"(?:    locks: (?P<locks>[^\n]*)\n)?"
    r" +(?P<length>\d+) bytes  DV +(?P<dv>-?\d+)  refcnt +(?P<refs>\d+)\n"
    r"    callback (?P<callback>[0-9a-f]{8})\texpires (?P<expires>\d+)\n"
    r"    (?P<opens>\d+) opens\t(?P<writers>\d+) writers\n"
    r"    (?P<kind>[^\n]+)\n"
    r"    states \(0x(?P<states>[0-9a-f]+)\)(?P<flags>[^\n]*)\n"
)


def entries(listing: str) -> dict[str, dict[str, str]]:
    """The cache entries of a listing by fid; every entry line must parse."""
    found = {m["fid"]: m.groupdict() for m in ENTRY.finditer(listing)}
    assert len(found) == listing.count("** Cache entry"), listing
    return found


def fid_of(mount: Mount, path: Path) -> str:
    done = mount.run("getfattr", "--only-values", "-n", "afs.fid", str(path))
    return done.stdout.decode()


def fileserver_hex(cell: Cell) -> str:
    return bytes(int(octet) for octet in cell.servers[0].addr.split(".")).hex()


#: Writes `size` bytes, says so, and closes the file when told.
HOLDER = r"""
import sys
f = open(sys.argv[1], "wb")
f.write(b"w" * int(sys.argv[2]))
f.flush()
print("written", flush=True)
sys.stdin.readline()
f.close()
"""


def test_cmdebug_lists_the_files_the_mount_read_listed_and_holds_open(
    cell: Cell, data: Data, mounted: Mount
) -> None:
    top = volume_path(mounted, data)
    assert mounted.run("cat", str(top / "read.bin")).stdout == data.content
    assert mounted.run("ls", str(top / "dir")).stdout.decode().split() == list(LISTED)
    written = top / f"open-{secrets.token_hex(3)}.bin"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLDER), str(written), str(WRITTEN)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline() == b"written\n"
        written_fid = fid_of(mounted, written)
        dir_fid, root_fid = fid_of(mounted, top / "dir"), fid_of(mounted, top)
        # An idle mount has nothing locked: the default listing is empty once the disk
        # cache's threads are done with what was read.
        deadline = time.monotonic() + 20
        while (idle := cmdebug(mounted)) != "":
            assert time.monotonic() < deadline, idle
            time.sleep(0.2)
        listing = cmdebug(mounted, "-long")
        assert re.search(r"^Lock cache_writes status: \(none_waiting\)$", listing, re.M)
        assert re.search(r"^Lock cache_threads status: \(none_waiting\)$", listing, re.M)
        every = entries(listing)
        read = every[data.read_fid]
        assert read["cell_name"] == cell.name and read["kind"] == "normal file"
        assert (int(read["length"]), int(read["dv"])) == (READ_SIZE, data.read_version)
        assert read["callback"] == fileserver_hex(cell) and int(read["expires"]) > time.time()
        assert read["flags"] == ", stat'd" and read["locks"] is None
        assert int(read["refs"]) >= 1 and (read["opens"], read["writers"]) == ("0", "0")
        assert every[dir_fid]["kind"] == "directory"
        assert every[root_fid]["kind"] == "volume root"
        held = every[written_fid]
        assert (int(held["length"]), held["opens"], held["writers"]) == (WRITTEN, "1", "1")
        assert int(held["states"], 16) & 0x20  # dirty: not on the fileserver yet
        # Every entry carries a callback here, and the kernel holds each file shown.
        assert set(entries(cmdebug(mounted, "-callbacks"))) == set(every)
        assert data.read_fid in entries(cmdebug(mounted, "-refcounts"))
        cache = cmdebug(mounted, "-cache")
        assert f"Cache size:    {CACHE_SIZE_KB} kB\n" in cache
        assert f"Chunk size:    {CHUNK_SIZE}\n" in cache and "Cache type:    disk\n" in cache
        assert f"Chunk files:   {CACHE_SIZE_KB * 1024 // CHUNK_SIZE}\n" in cache
        assert f"Stat caches:   {DEFAULT_VNODE_LIMIT}\n" in cache
        cells = cmdebug(mounted, "-cellservdb")
        assert cells.startswith(f">{cell.name} ") and f"\n{cell.db_server.addr} " in cells
        assert cmdebug(mounted, "-addrs").startswith("UUID: ")
        # Closed, the data is stored: a new version, nothing open, nothing dirty.
        holder.stdin.write(b"close\n")
        holder.stdin.flush()
        assert holder.wait(timeout=60) == 0
    finally:
        holder.kill()
        holder.wait()
    stored = entries(cmdebug(mounted, "-long"))[written_fid]
    assert (int(stored["length"]), stored["opens"], stored["writers"]) == (WRITTEN, "0", "0")
    assert int(stored["dv"]) > int(held["dv"]) and not int(stored["states"], 16) & 0x20


def test_only_root_lists_the_cache_entries_of_a_root_mount(data: Data, mounted: Mount) -> None:
    """Entries show which files the mount's users hold and how long they are, whatever the
    asker's rights: an ordinary user is refused them, and still gets what any may see."""
    top = volume_path(mounted, data)
    assert mounted.run("cat", str(top / "read.bin")).stdout == data.content
    argv = ["cmdebug", "127.0.0.1", "-port", str(callback_port(mounted))]
    done = mounted.run(*argv, "-long", user="alice", check=False)
    out = done.stdout.decode() + done.stderr.decode()
    assert "** Cache entry" not in out and data.read_fid not in out, out
    assert "cmdebug:" in out and "Lock cache_writes status" in out, out
    cells = mounted.run(*argv, "-cellservdb", user="alice").stdout.decode()
    assert cells.startswith(">")
    assert data.read_fid in entries(cmdebug(mounted, "-long"))


def test_rxdebug_shows_the_fileserver_peer_and_the_packets_exchanged(
    cell: Cell, data: Data, mounted: Mount
) -> None:
    path = volume_path(mounted, data) / "read.bin"
    assert mounted.run("md5sum", str(path)).returncode == 0
    fileserver = f"host {cell.servers[0].addr}, port 7000"
    plain = rxdebug(mounted)
    assert plain.endswith("Done.\n") and plain.count("Done.") == 1, plain
    # No packet pool: none free, out of the packets calls hold now.
    free = re.search(r"^Free packets: (\d+)/(\d+), packet reclaims: 0, calls: (\d+)", plain, re.M)
    assert free is not None and free[1] == "0" and int(free[3]) > 0, plain
    every = rxdebug(mounted, "-allconnections")
    assert f"Connection from {fileserver}, Cuid" in every and every.endswith("Done.\n")
    peers = rxdebug(mounted, "-peers", "-noconns")
    assert peers.endswith("Done.\n"), peers
    peer = re.search(
        rf"Peer at {fileserver}\n\tifMTU \d+\tnatMTU \d+\tmaxMTU \d+\n"
        r"\tpackets sent (\d+)\tpacket resends (\d+)\n"
        r"\tbytes sent high (\d+) low (\d+)\n\tbytes received high (\d+) low (\d+)\n"
        r"\trtt \d+ msec, rtt_dev \d+ msec\n",
        peers,
    )
    assert peer is not None, peers
    sent, resends, _, _, received_high, received_low = (int(n) for n in peer.groups())
    assert sent > 0 and resends <= sent
    assert (received_high << 32) + received_low >= READ_SIZE  # the file came from there
    stats = rxdebug(mounted, "-rxstats", "-noconns")
    assert "nexpected size" not in stats and "rx stats: free packets 0," in stats, stats
    read_data = re.search(r"packets read: data (\d+) ack (\d+) ", stats)
    sent_data = re.search(r"packets sent: data (\d+) ack (\d+) ", stats)
    assert read_data is not None and sent_data is not None, stats
    assert int(read_data[1]) >= READ_SIZE // 1416 and int(sent_data[2]) > 0
    assert int(sent_data[1]) >= sent  # every peer's DATA, the fileserver's among them
    counts = re.search(r"(\d+) server connections, (\d+) client connections, (\d+) peer", stats)
    assert counts is not None and int(counts[2]) >= 1 and int(counts[3]) >= 1, stats
    assert "AFS version:  afsfuse" in rxdebug(mounted, "-version")


async def _ask(port: int, fileserver: str) -> None:
    """Requests past every list's end, bogus and malformed: each gets its answer."""
    async with open_endpoint() as endpoint:
        conn = endpoint.connect(("127.0.0.1", port), CB.service_id)
        with trio.fail_after(30):
            # The fileserver the mount met, ranked as a host on one of our subnets (its round
            # trip refines it within that band).
            prefs = await CB.GetServerPrefs(conn, 0)
            assert prefs.srvrAddr == int(IPv4Address(fileserver))
            assert RANK_SUBNET <= prefs.srvrRank < RANK_NETWORK
            assert tuple(await CB.GetServerPrefs(conn, 1)) == (0xFFFFFFFF, -1)
            for index in (-1, 1 << 30):
                for rpc in (CB.GetCE64, CB.GetCE, CB.GetLock):
                    with pytest.raises(RxAbort) as ended:
                        await rpc(conn, index)
                    assert ended.value.code == 1  # the end of the list
                assert (await CB.GetCellServDB(conn, index)).cellName == ""
                assert (await CB.GetCellByNum(conn, index)).cellName == ""
            for request, code in (
                (struct.pack(">I", 65536), RXGEN_SS_UNMARSHAL),  # GetCE64 without its index
                (struct.pack(">I", 218), RXGEN_SS_UNMARSHAL),  # GetCacheConfig, no version
                (struct.pack(">Ii", 219, 0), RXGEN_OPCODE),
            ):
                with pytest.raises(RxAbort) as refused:
                    await conn.rpc(request)
                assert refused.value.code == code
            config = await CB.GetCacheConfig(conn, 7)
            assert config.serverVersion == 1 and len(config.config) == config.configCount // 4


def test_bad_and_malformed_debug_requests_get_errors_and_change_nothing(
    cell: Cell, data: Data, mounted: Mount
) -> None:
    path = volume_path(mounted, data) / "read.bin"
    assert mounted.run("cat", str(path)).stdout == data.content
    before = cmdebug(mounted, "-cache")
    trio.run(_ask, callback_port(mounted), cell.servers[0].addr)
    cmdebug(mounted, "-long")
    assert cmdebug(mounted, "-cache") == before  # the listings created no records
    assert mounted.run("cat", str(path)).stdout == data.content


#: Both open the file first.  "store": writes to it, and on "go" closes it (the close
#: stores, holding the file's lock).  "wait": on "go" writes to it (waiting for that lock),
#: and closes it on EOF.
WRITER = r"""
import os, sys
store = sys.argv[2] == "store"
fd = os.open(sys.argv[1], os.O_WRONLY)
if store:
    os.write(fd, b"s" * 1000)
print("ready", flush=True)
sys.stdin.readline()
if not store:
    os.write(fd, b"w" * 1000)
    sys.stdin.readline()
try:
    os.close(fd)
except OSError as e:
    print(e.errno, flush=True)
"""


def test_cmdebug_default_listing_shows_a_file_locked_by_its_store_and_waited_for(
    cell: Cell, data: Data, mounted: Mount
) -> None:
    path = volume_path(mounted, data) / f"locked-{secrets.token_hex(3)}.bin"
    mounted.run("touch", str(path))
    fid = fid_of(mounted, path)
    argv = [sys.executable, "-c", textwrap.dedent(WRITER), str(path)]
    storer, waiter = (
        subprocess.Popen([*argv, role], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        for role in ("store", "wait")
    )
    seen: list[str] = []

    def lock_shown(wanted: str) -> bool:
        """Lists until the file's lock shows `wanted`, within the store's timeout."""
        deadline = time.monotonic() + SERVER_TIMEOUT
        while time.monotonic() < deadline:
            listed = entries(cmdebug(mounted))
            seen.extend(e["locks"] or "" for f, e in listed.items() if f == fid)
            if seen and wanted in seen[-1]:
                return True
        return False

    try:
        for child in (storer, waiter):
            assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        with frozen(cell):
            # The close's store takes the lock; once it shows, a write must wait for it.
            for child, wanted in ((storer, "write_locked"), (waiter, "1 waiters")):
                assert child.stdin is not None
                child.stdin.write(b"go\n")
                child.stdin.flush()
                assert lock_shown(wanted), seen
    finally:
        for child in (storer, waiter):
            child.kill()
            child.wait()
    print("the file's lock as cmdebug showed it:", seen)
    assert "(writer_waiting, write_locked(pid:0 at:0), 1 waiters)" in seen, seen
