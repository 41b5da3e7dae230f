"""Mount settings: a TOML file, then the command line over it."""

from __future__ import annotations

from pathlib import Path

import pytest

from afsfuse.cli import _config, _parser
from afsfuse.config import ConfigError, build_config, load_cells, read_config_file


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
    """An /etc/openafs of the test's own."""
    from afsfuse.vl import cellservdb

    directory = tmp_path / "openafs"
    directory.mkdir()
    monkeypatch.setattr(cellservdb, "CONFIG_DIR", directory)
    monkeypatch.setattr(cellservdb, "DEFAULT_CELLSERVDB", directory / "CellServDB")
    monkeypatch.setattr(cellservdb, "DEFAULT_THISCELL", directory / "ThisCell")
    return directory


def test_cellservdb_local_goes_over_dist_when_there_is_no_cellservdb(
    openafs_dir: Path, tmp_path: Path
) -> None:
    from afsfuse.config import load_cells

    (openafs_dir / "CellServDB.dist").write_text(
        ">example.org  #dist\n192.0.2.1  #old.example.org\n>grand.central.org  #GCO\n"
        "18.9.48.14  #grand.mit.edu\n"
    )
    (openafs_dir / "CellServDB.local").write_text(">example.org  #site\n192.0.2.9  #new\n")
    (openafs_dir / "ThisCell").write_text("example.org\n")
    (openafs_dir / "CellAlias").write_text("example.org ex\n")
    cells, home, aliases = load_cells(build_config(tmp_path, {}, {}))
    assert home == "example.org" and set(cells) == {"example.org", "grand.central.org"}
    assert [s.address for s in cells["example.org"].servers] == ["192.0.2.9"]
    assert aliases == {"ex": "example.org"}

    # CellServDB, where it exists, is the base instead of .dist; .local still goes over it.
    (openafs_dir / "CellServDB").write_text(">other.org  #\n192.0.2.5  #db\n")
    cells, _, _ = load_cells(build_config(tmp_path, {}, {}))
    assert set(cells) == {"other.org", "example.org"}


def test_cellalias_is_read_beside_the_cellservdb_in_use(openafs_dir: Path, tmp_path: Path) -> None:
    from afsfuse.config import load_cells

    (openafs_dir / "CellAlias").write_text("example.org wrong\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "CellServDB").write_text(">example.org  #\n192.0.2.1  #db\n")
    (elsewhere / "CellAlias").write_text("example.org right\n")
    config = build_config(
        tmp_path, {}, {"cellservdb": elsewhere / "CellServDB", "thiscell": "example.org"}
    )
    assert load_cells(config)[2] == {"right": "example.org"}


def test_a_home_cell_in_no_cellservdb_names_every_file_read(
    openafs_dir: Path, tmp_path: Path
) -> None:
    from afsfuse.config import ConfigError, load_cells

    (openafs_dir / "CellServDB.dist").write_text(">a.org  #\n192.0.2.1  #db\n")
    (openafs_dir / "CellServDB.local").write_text(">b.org  #\n192.0.2.2  #db\n")
    config = build_config(tmp_path, {}, {"thiscell": "c.org"})
    with pytest.raises(ConfigError) as error:
        load_cells(config)
    assert str(error.value) == (
        f"{openafs_dir}/CellServDB.dist and {openafs_dir}/CellServDB.local: no entry for the "
        "home cell c.org (from the thiscell setting)"
    )
