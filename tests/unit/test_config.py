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
