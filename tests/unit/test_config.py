"""Mount settings: a TOML file, then the command line over it."""

from __future__ import annotations

import os
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from afsfuse.cli import _config, _parser, main
from afsfuse.config import ConfigError, MountConfig, build_config, load_cells, read_config_file
from afsfuse.preflight import Exit


def test_xattrs_are_on_unless_the_file_or_the_command_line_says_no(tmp_path: Path) -> None:
    assert build_config(tmp_path, {}, {}).xattrs is True
    settings = tmp_path / "afsfuse.toml"
    settings.write_text("xattrs = false\n")
    assert build_config(tmp_path, read_config_file(settings), {}).xattrs is False
    args = _parser().parse_args(["mount", str(tmp_path), "--config", str(settings)])
    assert _config(args).xattrs is False
    args = _parser().parse_args(["mount", str(tmp_path), "--no-xattrs"])
    assert _config(args).xattrs is False
    with pytest.raises(ValueError):
        build_config(tmp_path, {"xattrs": "no"}, {})


def test_rmtsys_listens_on_loopback_7009_unless_told_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert build_config(tmp_path, {}, {}).rmtsys == ("127.0.0.1", 7009)
    with monkeypatch.context() as user:
        user.setattr(os, "geteuid", lambda: 1001)  # a user's own mount: only where told
        assert build_config(tmp_path, {}, {}).rmtsys is None
        assert build_config(tmp_path, {"rmtsys": "127.0.0.3"}, {}).rmtsys == ("127.0.0.3", 7009)
    assert build_config(tmp_path, {}, {}).rmtsys_allow == []
    settings = tmp_path / "afsfuse.toml"
    settings.write_text('rmtsys = "127.0.0.2"\nrmtsys-allow = ["192.0.2.0/24"]\n')
    config = build_config(tmp_path, read_config_file(settings), {})
    assert (config.rmtsys, config.rmtsys_allow) == (
        ("127.0.0.2", 7009),
        [IPv4Network("192.0.2.0/24")],
    )
    args = _parser().parse_args(["mount", str(tmp_path), "--config", str(settings), "--no-rmtsys"])
    assert _config(args).rmtsys is None
    settings.write_text("rmtsys = false\n")
    assert build_config(tmp_path, read_config_file(settings), {}).rmtsys is None
    args = _parser().parse_args(
        ["mount", str(tmp_path), "--rmtsys", "127.0.0.9:7100", "--rmtsys-allow", "10.1.0.0/16"]
    )
    assert (_config(args).rmtsys, _config(args).rmtsys_allow) == (
        ("127.0.0.9", 7100), [IPv4Network("10.1.0.0/16")],
    )  # fmt: skip
    for bad in ({"rmtsys": "localhost"}, {"rmtsys": True}, {"rmtsys_allow": ["10.0.0.0/40"]}):
        with pytest.raises(ConfigError):
            build_config(tmp_path, bad, {})


def test_the_metrics_listener_is_off_unless_an_address_or_a_socket_is_given(
    tmp_path: Path,
) -> None:
    assert build_config(tmp_path, {}, {}).metrics_listen is None
    settings = tmp_path / "afsfuse.toml"
    settings.write_text('metrics-listen = "127.0.0.1:9731"\n')
    assert build_config(tmp_path, read_config_file(settings), {}).metrics_listen == (
        "127.0.0.1",
        9731,
    )
    args = _parser().parse_args(
        ["mount", str(tmp_path), "--config", str(settings), "--metrics-listen", "/run/m.sock"]
    )
    assert _config(args).metrics_listen == Path("/run/m.sock")
    assert build_config(tmp_path, {"metrics_listen": "localhost:80"}, {}).metrics_listen == (
        "localhost",
        80,
    )
    for bad in ("9731", "example.com:9731", "127.0.0.1:0", "127.0.0.1:x", "m.sock"):
        with pytest.raises(ConfigError, match="metrics-listen"):
            build_config(tmp_path, {"metrics_listen": bad}, {})


def _cells_of(tmp_path: Path, text: str, thiscell: str = "home.example"):
    path = tmp_path / "CellServDB"
    path.write_text(text)
    return load_cells(build_config(tmp_path, {}, {"cellservdb": path, "thiscell": thiscell}))


def test_a_cellservdb_without_the_home_cell_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"CellServDB: no entry for the home cell home\.example"):
        _cells_of(tmp_path, ">other.example #o\n10.0.0.1 #db\n")
    with pytest.raises(ConfigError, match=r"CellServDB:2: home cell home\.example has no usable"):
        _cells_of(tmp_path, "#\n>home.example #h\n10.0.0.300 #bad\n>other.example #o\n")


def test_a_malformed_line_is_a_warning_and_the_rest_is_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cells, home, _ = _cells_of(tmp_path, ">Home.Example #h\njunk\n10.0.0.1 #db\n", "Home.Example")
    assert home == "home.example" and [s.address for s in cells[home].servers] == ["10.0.0.1"]
    assert [r.getMessage().split(" ")[0] for r in caplog.records] == [f"{tmp_path}/CellServDB:2:"]


def test_a_file_that_is_no_cellservdb_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CellServDB: is empty"):
        _cells_of(tmp_path, "")


@pytest.fixture
def openafs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The default OpenAFS directory, of the test's own."""
    from afsfuse import config

    directory = tmp_path / "openafs"
    directory.mkdir()
    monkeypatch.setattr(config, "DEFAULT_OPENAFS_DIR", directory)
    return directory


def configure(*argv: str) -> MountConfig:
    """The configuration `afsfuse check-config ARGV` works with."""
    return _config(_parser().parse_args(["check-config", *argv]))


def test_cellservdb_local_goes_over_dist_when_there_is_no_cellservdb(
    openafs_dir: Path, tmp_path: Path
) -> None:
    (openafs_dir / "CellServDB.dist").write_text(
        ">example.org  #dist\n192.0.2.1  #old.example.org\n>grand.central.org  #GCO\n"
        "18.9.48.14  #grand.mit.edu\n"
    )
    (openafs_dir / "CellServDB.local").write_text(">example.org  #site\n192.0.2.9  #new\n")
    (openafs_dir / "ThisCell").write_text("example.org\n")
    (openafs_dir / "CellAlias").write_text("example.org ex\n")
    cells, home, aliases = load_cells(configure())
    assert home == "example.org" and set(cells) == {"example.org", "grand.central.org"}
    assert [s.address for s in cells["example.org"].servers] == ["192.0.2.9"]
    assert aliases == {"ex": "example.org"}

    # CellServDB, where it exists, is the base instead of .dist; .local still goes over it.
    (openafs_dir / "CellServDB").write_text(">other.org  #\n192.0.2.5  #db\n")
    cells, _, _ = load_cells(configure())
    assert set(cells) == {"other.org", "example.org"}


def test_cellalias_is_read_beside_the_cellservdb_in_use(openafs_dir: Path, tmp_path: Path) -> None:
    (openafs_dir / "CellAlias").write_text("example.org wrong\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "CellServDB").write_text(">example.org  #\n192.0.2.1  #db\n")
    (elsewhere / "CellAlias").write_text("example.org right\n")
    config = configure("--cellservdb", str(elsewhere / "CellServDB"), "--thiscell", "example.org")
    assert load_cells(config)[2] == {"right": "example.org"}


def test_a_home_cell_in_no_cellservdb_names_every_file_read(
    openafs_dir: Path, tmp_path: Path
) -> None:
    (openafs_dir / "CellServDB.dist").write_text(">a.org  #\n192.0.2.1  #db\n")
    (openafs_dir / "CellServDB.local").write_text(">b.org  #\n192.0.2.2  #db\n")
    with pytest.raises(ConfigError) as error:
        load_cells(configure("--thiscell", "c.org"))
    assert str(error.value) == (
        f"{openafs_dir}/CellServDB.dist and {openafs_dir}/CellServDB.local: no entry for the "
        "home cell c.org (from the thiscell setting)"
    )
    (openafs_dir / "ThisCell").write_text("c.org\n")
    with pytest.raises(ConfigError, match=rf"cell c\.org \(from {openafs_dir}/ThisCell:1\)$"):
        load_cells(configure())


@pytest.fixture
def as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """cacheinfo is root's only."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)


def test_precedence_kafs_then_openafs_then_the_settings_file_then_the_command_line(
    openafs_dir: Path, tmp_path: Path, as_root: None
) -> None:
    kafs = tmp_path / "client.conf"
    kafs.write_text(
        "[defaults]\nthiscell = kafs.org\nsysname = kafs_sys\n[cells]\nkafs.org = {\n"
        " servers = {\n  db.kafs.org = {\n   address = 192.0.2.7\n  }\n }\n}\n"
        "both.org = {\n servers = {\n  db = {\n   address = 192.0.2.8\n  }\n }\n}\n"
    )
    base = ["--kafs-config", str(kafs)]
    config = configure(*base)
    assert (config.mountpoint, config.thiscell, config.sysname) == (
        Path("/afs"),
        "kafs.org",
        [b"kafs_sys"],
    )
    assert config.origins["thiscell"] == f"{kafs}:2" and config.security == "crypt"
    cells, home, _ = load_cells(config)
    assert home == "kafs.org" and set(cells) == {"kafs.org", "both.org"}

    (openafs_dir / "ThisCell").write_text("openafs.org\n")
    (openafs_dir / "CellServDB").write_text(
        ">openafs.org #\n192.0.2.1 #db\n>both.org #\n192.0.2.9 #db\n"
    )
    (openafs_dir / "afs.conf.client").write_text("AFS_CRYPT=false\nAFS_SYSNAME='a b'\n")
    (openafs_dir / "cacheinfo").write_text(f"{tmp_path}/mnt:{tmp_path}/cache:2048\n")
    config = configure(*base)
    assert (config.mountpoint, config.cache_dir, config.cache_size) == (
        tmp_path / "mnt",
        tmp_path / "cache",
        2 << 20,
    )
    assert (config.thiscell, config.sysname, config.security) == ("openafs.org", [b"a", b"b"],
                                                                  "clear")  # fmt: skip
    cells, home, _ = load_cells(config)
    assert home == "openafs.org" and set(cells) == {"kafs.org", "both.org", "openafs.org"}
    assert [s.address for s in cells["both.org"].servers] == ["192.0.2.9"]

    settings = tmp_path / "afsfuse.toml"
    settings.write_text('thiscell = "toml.org"\ncache-dir = "/toml"\nmountpoint = "/toml-afs"\n')
    config = configure(*base, "--config", str(settings), "--cache-size", "1M")
    assert (config.thiscell, config.cache_dir, config.mountpoint) == (
        "toml.org",
        Path("/toml"),
        Path("/toml-afs"),
    )
    assert config.cache_size == 1 << 20 and config.security == "clear"
    config = configure(str(tmp_path / "cli"), *base, "--config", str(settings), "--thiscell=c.org")
    assert (config.thiscell, config.mountpoint) == ("c.org", tmp_path / "cli")

    # A cellservdb setting is that file alone: no kAFS cells, no CellServDB.local.
    config = configure(*base, "--cellservdb", str(openafs_dir / "CellServDB"))
    assert set(load_cells(config)[0]) == {"openafs.org", "both.org"}


def test_cacheinfo_is_not_an_ordinary_users(
    openafs_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (openafs_dir / "cacheinfo").write_text("/afs:/var/cache/openafs:50000\n")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    config = configure()
    assert config.cache_dir is None and config.found == []


def test_a_bad_value_from_a_file_names_the_file_and_line(openafs_dir: Path, tmp_path: Path) -> None:
    (openafs_dir / "afs.conf.client").write_text("\nAFS_SYSNAME='ok ../bad'\n")
    with pytest.raises(ConfigError, match=rf"^{openafs_dir}/afs.conf.client:2: sysname: "):
        configure()


def test_check_config_lists_each_file_read_and_what_it_took(
    openafs_dir: Path, tmp_path: Path, as_root: None, capsys: pytest.CaptureFixture[str]
) -> None:
    (openafs_dir / "ThisCell").write_text("example.org\n")
    (openafs_dir / "CellServDB").write_text(">example.org #\n192.0.2.1 #db\n")
    (openafs_dir / "afs.conf.client").write_text("AFS_CLIENT=true\nAFS_CRYPT=true\n")
    (openafs_dir / "cacheinfo").write_text(f"{tmp_path}:{tmp_path}/cache:4096\n")
    status = main(["check-config", "--cache-dir", str(tmp_path / "mine")])
    out = capsys.readouterr().out.splitlines()
    assert status == 0, out
    assert out[:5] == [
        f"read {openafs_dir}/ThisCell: thiscell = example.org",
        f"read {openafs_dir}/afs.conf.client: security = crypt; not followed: AFS_CLIENT",
        f"read {openafs_dir}/cacheinfo: mountpoint = {tmp_path}; cache-dir = {tmp_path}/cache "
        f"(overridden by the command line); cache-size = {4096 << 10}",
        f"home cell: example.org (from {openafs_dir}/ThisCell:1)",
        f"cells: 1 known from {openafs_dir}/CellServDB, others looked up in DNS",
    ]
    assert f"cache: {tmp_path}/mine (to be created), 4 MiB" in out


def test_a_cache_directory_of_openafs_afsd_is_never_used(
    openafs_dir: Path, tmp_path: Path, as_root: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """Debian's openafs-client names /var/cache/openafs in cacheinfo: once afsd has used it,
    afsfuse keeps to its own directory (with cacheinfo's size), and refuses it when a
    setting names it (exit status 4) rather than share it."""
    afsd_cache = tmp_path / "openafs-cache"
    afsd_cache.mkdir()
    (afsd_cache / "CacheItems").write_bytes(b"\0" * 64)
    (openafs_dir / "cacheinfo").write_text(f"/afs:{afsd_cache}:50000\n")
    cells = ["--thiscell", "example.org", "--cellservdb", str(tmp_path / "CellServDB")]
    (tmp_path / "CellServDB").write_text(">example.org #\n192.0.2.1 #db\n")
    own = tmp_path / "own"
    status = main(
        ["check-config", str(tmp_path), *cells, "--config", str(_settings(tmp_path, own))]
    )
    out = capsys.readouterr().out
    assert status == Exit.OK
    assert (
        f"read {openafs_dir}/cacheinfo: mountpoint = /afs (overridden by the command line); "
        f"cache-size = {50000 << 10}; not followed: cache directory {afsd_cache} (afsd's: it "
        "holds CacheItems)"
    ) in out
    assert f"cache: {own} (to be created), 48 MiB" in out
    status = main(["check-config", str(tmp_path), *cells, "--cache-dir", str(afsd_cache)])
    assert (status, capsys.readouterr().err) == (Exit.CACHE, (
        f"afsfuse: cache directory {afsd_cache} is OpenAFS afsd's cache (it holds CacheItems): "
        "give afsfuse a directory of its own (cache-dir in afsfuse.toml, or --cache-dir)\n"
    ))  # fmt: skip
    (afsd_cache / "CacheItems").unlink()
    (afsd_cache / "D0").mkdir()
    (afsd_cache / "D0" / "V1").write_bytes(b"")
    status = main(["check-config", str(tmp_path), *cells, "--cache-dir", str(afsd_cache)])
    assert status == Exit.CACHE and "(it holds D0)" in capsys.readouterr().err
    # Empty (never used by afsd), it is afsfuse's, cacheinfo's own included.
    (afsd_cache / "D0" / "V1").unlink()
    (afsd_cache / "D0").rmdir()
    assert main(["check-config", str(tmp_path), *cells]) == Exit.OK
    assert f"cache: {afsd_cache}, 48 MiB" in capsys.readouterr().out


def _settings(tmp_path: Path, cache_dir: Path) -> Path:
    """A settings file naming the default cache directory a root mount would get, here a
    scratch one (cacheinfo is below the settings file, so it does not override it)."""
    path = tmp_path / "afsfuse.toml"
    path.write_text(f'cache-dir = "{cache_dir}"\n')
    return path


def test_garbage_in_cacheinfo_stops_the_mount_with_status_78(
    openafs_dir: Path, tmp_path: Path, as_root: None, capsys: pytest.CaptureFixture[str]
) -> None:
    (openafs_dir / "cacheinfo").write_text("/afs:/var/cache/openafs\n")
    status = main(["mount", str(tmp_path), "--thiscell", "example.org"])
    assert (status, capsys.readouterr().err) == (
        Exit.CONFIG, f"afsfuse: {openafs_dir}/cacheinfo:1: not MOUNTPOINT:CACHEDIR:SIZE: "
        "'/afs:/var/cache/openafs'\n"
    )  # fmt: skip
