"""The other AFS clients' files, as sites have them: OpenAFS's cacheinfo, Debian's
afs.conf.client, kAFS's client.conf with client.d; garbage in any is one line naming the
file and the line."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from afsfuse.clientfiles import (
    FileError,
    parse_afs_conf_client,
    parse_cacheinfo,
    read_kafs_config,
    read_text,
)
from afsfuse.vl.cellservdb import CellServer

CACHEINFO = Path("/etc/openafs/cacheinfo")


def test_cacheinfo_gives_mount_point_cache_directory_and_size() -> None:
    found = parse_cacheinfo("/afs:/var/cache/openafs:50000\n", CACHEINFO)
    assert found.settings == {
        "mountpoint": "/afs", "cache_dir": "/var/cache/openafs", "cache_size": 50000 * 1024,
    }  # fmt: skip
    assert set(found.where.values()) == {f"{CACHEINFO}:1"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", ": is empty"),
        ("\n/afs:/var/cache/openafs\n", ":2: not MOUNTPOINT:CACHEDIR:SIZE"),
        ("afs:/var/cache/openafs:50000\n", ":1: the mount point 'afs' is not an absolute path"),
        ("/afs:cache:50000\n", ":1: the cache directory 'cache' is not an absolute path"),
        ("/afs:/var/cache/openafs:50M\n", ":1: the cache size '50M' is not a number of KiB"),
        ("/afs:/var/cache/openafs:0\n", ":1: the cache size '0' is not a number of KiB"),
        ("/afs:/c:1\n/afs2:/c:1\n", ":2: cacheinfo has one line"),
    ],
)
def test_a_bad_cacheinfo_is_one_line_naming_file_and_line(text: str, message: str) -> None:
    with pytest.raises(FileError) as error:
        parse_cacheinfo(text, CACHEINFO)
    assert str(error.value).startswith(f"{CACHEINFO}{message}")


def test_a_file_of_random_bytes_or_unreadable_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "cacheinfo"
    path.write_bytes(b"/afs:/c:1\n" + random.Random(5).randbytes(512))
    with pytest.raises(FileError, match=rf"^{path}:2: not a text file \(byte 0x"):
        read_text(path)
    path.unlink()
    path.mkdir()  # unreadable as a file, even for root
    with pytest.raises(FileError, match=rf"^cannot read {path}: Is a directory$"):
        read_text(path)


DEBIAN_AFS_CONF_CLIENT = """\
AFS_CLIENT=true
AFS_AFSDB=true
AFS_CRYPT=true
AFS_DYNROOT=Yes
AFS_FAKESTAT=true
"""


def test_debians_afs_conf_client_asks_for_what_afsfuse_does_anyway() -> None:
    found = parse_afs_conf_client(DEBIAN_AFS_CONF_CLIENT, Path("afs.conf.client"))
    assert found.settings == {"dns": True, "security": "crypt"}
    assert found.where == {"dns": "afs.conf.client:2", "security": "afs.conf.client:3"}
    assert found.ignored == ["AFS_CLIENT"]


def test_afs_conf_client_settings_afsfuse_has_and_those_it_does_not_follow() -> None:
    text = (
        "# written by debconf\n"
        "AFS_CRYPT='False'   # no encryption\n"
        'AFS_SYSNAME="amd64_linux26 amd64_linux"\n'
        "AFS_AFSDB=false\nAFS_DYNROOT=Sparse\nAFS_FAKESTAT=no\n"
        "export_me=1\n"
    )
    found = parse_afs_conf_client(text, Path("c"))
    assert found.settings == {
        "security": "clear",
        "sysname": ["amd64_linux26", "amd64_linux"],
        "dns": False,
    }
    assert found.where == {"security": "c:2", "sysname": "c:3", "dns": "c:4"}
    assert found.ignored == [
        "AFS_DYNROOT=Sparse",
        "AFS_FAKESTAT=no",
        "export_me",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("AFS_CRYPT=true\nmodprobe openafs\n", "c:2: not a NAME=value line"),
        ("AFS_AFSDB=maybe\n", "c:1: AFS_AFSDB is true or false, not 'maybe'"),
        ("AFS_CRYPT=true extra\n", "c:1: not a NAME=value line"),
        ("\n\nAFS_SYSNAME=$(uname -m)\n", "c:3: AFS_SYSNAME: expansions ($, `) are not read"),
        ('AFS_CRYPT="true\n', "c:1: No closing quotation"),
        ("AFS_CRYPT=maybe\n", "c:1: AFS_CRYPT is true or false, not 'maybe'"),
        ("2FAST=1\n", "c:1: not a NAME=value line"),
    ],
)
def test_garbage_in_afs_conf_client_names_file_and_line(text: str, message: str) -> None:
    with pytest.raises(FileError) as error:
        parse_afs_conf_client(text, Path("c"))
    assert str(error.value).startswith(message)


def write_kafs(tmp_path: Path, client_d: dict[str, str], main: str = "") -> Path:
    """A kAFS configuration as kafs-client installs it: client.conf including client.d."""
    (tmp_path / "client.d").mkdir()
    for name, text in client_d.items():
        (tmp_path / "client.d" / name).write_text(text)
    path = tmp_path / "client.conf"
    path.write_text(f"# stitches it together\nincludedir {tmp_path / 'client.d'}\n{main}")
    return path


SITE = """\
[defaults]
\tthiscell = rivendell.example.com
\tsysname = fedora28_x86 amd64_linux

[cells]
rivendell.example.com = {
\tdescription = "Last \\"Homely\\" Cell"
\tuse_dns = no
\tservers = {
\t\telrond.rivendell.example.com = {
\t\t\taddress = 192.0.2.23
\t\t}
\t\tudp/arwen.rivendell.example.com:7009 = {
\t\t\taddress = 192.0.2.75
\t\t\taddress = 2001:db8::75
\t\t}
\t\tnamo.rivendell.example.com = {
\t\t\ttype = ptserver
\t\t\taddress = 192.0.2.88
\t\t}
\t}
}*
"""

GENERIC = """\
; the generic cell database, after the site's
[cells]
rivendell.example.com = {
\tservers = {
\t\tstale.example.com = {
\t\t\taddress = 198.51.100.1
\t\t}
\t}
}
corp.example.com = {
\tuse_dns = yes
\tservers = {
\t\tmanwe.corp.example.com = {
\t\t\taddress = [203.0.113.19]:6666
\t\t\taddress = udp/203.0.113.20
\t\t}
\t}
}
[defaults]
thiscell = corp.example.com
"""


def test_kafs_client_conf_with_client_d(tmp_path: Path) -> None:
    path = write_kafs(
        tmp_path,
        {"10-site.conf": SITE, "20-generic.conf": GENERIC, ".hidden": "junk", "old.conf~": "junk"},
    )
    found = read_kafs_config(path)
    client_d = tmp_path / "client.d"
    assert found.files == [path, client_d / "10-site.conf", client_d / "20-generic.conf"]
    # The first value given wins; a list closed with `}*` takes nothing from later ones.
    assert found.settings == {
        "thiscell": "rivendell.example.com", "sysname": ["fedora28_x86", "amd64_linux"],
    }  # fmt: skip
    assert found.where == {
        "thiscell": f"{client_d}/10-site.conf:2", "sysname": f"{client_d}/10-site.conf:3",
    }  # fmt: skip
    home, corp = found.cells["rivendell.example.com"], found.cells["corp.example.com"]
    assert home.comment == 'Last "Homely" Cell' and home.line == 6
    assert home.servers == (
        CellServer("192.0.2.23", "elrond.rivendell.example.com"),
        CellServer("192.0.2.75", "arwen.rivendell.example.com", port=7009),
    )
    assert corp.servers == (
        CellServer("203.0.113.19", "manwe.corp.example.com", port=6666),
        CellServer("203.0.113.20", "manwe.corp.example.com"),
    )
    assert found.ignored == ["use_dns of 1 cell(s)"]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("[cells]\nx.org = {\n  servers\n}\n", 3, "expected 'key = value', got 'servers'"),
        ("[cells]\n}\n", 2, "'}' closes nothing"),
        ("[cells]\nx.org = {\n}x\n", 3, "unexpected text after '}'"),
        ("[cells]\nx.org = { a = b }\n", 2, "unexpected text after '{'"),
        ("[cells\n", 1, "bad section label '[cells'"),
        ('[defaults]\nthiscell = "x.org\n', 2, "unterminated string"),
        ("[cells]\n= 1\n", 2, "'=' without a key"),
        ("[cells]\nx.org = {\n", 2, "'{' of x.org is never closed"),
        ("thiscell = x.org\n", 1, "expected [section], include or includedir"),
        ("[cells]\nx.org = {\nservers = {\ns = {\naddress = db.x.org\n}\n}\n}\n", 5,
         "not an IP address: 'db.x.org'"),
        ("[cells]\nx.org = {\nuse_dns = sometimes\n}\n", 3, "use_dns is yes or no"),
        ("[cells]\nx.org = {\nservers = {\ns:99999 = {\naddress = 192.0.2.1\n}\n}\n}\n", 4,
         "not a port: '99999'"),
    ],
)  # fmt: skip
def test_garbage_in_an_included_kafs_file_names_that_file_and_line(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    path = write_kafs(tmp_path, {"site.conf": text})
    with pytest.raises(FileError) as error:
        read_kafs_config(path)
    assert str(error.value).startswith(f"{tmp_path / 'client.d' / 'site.conf'}:{line}: {message}")


def test_a_kafs_include_that_is_missing_or_loops_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "client.conf"
    path.write_text("include missing.conf\n")
    with pytest.raises(FileError, match=rf"^cannot read {tmp_path}/missing.conf: No such file"):
        read_kafs_config(path)
    path.write_text("include client.conf\n")
    with pytest.raises(FileError, match="included more than 8 deep"):
        read_kafs_config(path)
