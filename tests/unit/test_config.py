"""Mount settings: a TOML file, then the command line over it."""

from __future__ import annotations

from pathlib import Path

import pytest

from afsfuse.cli import _config, _parser
from afsfuse.config import build_config, read_config_file


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
