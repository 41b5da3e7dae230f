"""Finding the owner of a local UDP socket in /proc: a made-up /proc, then the real one."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from afsfuse.ctl.sockowner import OwnerUnknown, socket_owner

HEADING = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n"


def udp_line(address: str, port: int, uid: int, inode: int) -> str:
    """A /proc/net/udp line: the kernel prints the address as a word in host byte order."""
    word = int.from_bytes(socket.inet_aton(address), sys.byteorder)
    return (
        f" 1: {word:08X}:{port:04X} 00000000:0000 07 00000000:00000000 00:00000000 00000000"
        f" {uid:5d} 0 {inode} 2 0000000000000000 0\n"
    )


def fake_proc(tmp_path: Path, lines: list[str], holders: dict[int, tuple[int, int]]) -> Path:
    """holders: pid -> (real uid, inode of the socket it holds)."""
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    (proc / "net" / "udp").write_text(HEADING + "".join(lines))
    for pid, (uid, inode) in holders.items():
        (proc / str(pid) / "fd").mkdir(parents=True)
        (proc / str(pid) / "status").write_text(f"Name:\tfs\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
        (proc / str(pid) / "fd" / "3").symlink_to(f"socket:[{inode}]")
        (proc / str(pid) / "fd" / "0").symlink_to("/dev/null")
    (proc / "self").mkdir()
    return proc


def test_owner_and_holders_of_a_wildcard_socket(tmp_path: Path) -> None:
    proc = fake_proc(
        tmp_path,
        [udp_line("0.0.0.0", 40000, 1001, 77), udp_line("127.0.0.1", 40001, 1002, 78)],
        {500: (1001, 77), 501: (1001, 77), 502: (1002, 78)},
    )
    owner = socket_owner("127.0.0.1", 40000, proc)
    assert (owner.uid, owner.inode) == (1001, 77)
    assert sorted(owner.holders) == [(500, 1001), (501, 1001)]
    assert socket_owner("127.0.0.1", 40001, proc).uid == 1002


def test_no_socket_several_sockets_or_no_holder_is_unknown(tmp_path: Path) -> None:
    proc = fake_proc(
        tmp_path,
        [
            udp_line("0.0.0.0", 40000, 1001, 77),
            udp_line("127.0.0.1", 40000, 1002, 79),  # SO_REUSEPORT: two owners of one port
            udp_line("0.0.0.0", 40002, 1001, 80),  # nobody holds it any more
        ],
        {500: (1001, 77)},
    )
    for port in (40000, 40001, 40002):
        with pytest.raises(OwnerUnknown):
            socket_owner("127.0.0.1", port, proc)


def test_the_real_proc_names_this_process() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", 0))
        owner = socket_owner("127.0.0.1", sock.getsockname()[1])
    assert owner.uid == os.geteuid()
    assert (os.getpid(), os.getuid()) in owner.holders
