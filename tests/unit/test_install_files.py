"""The files a package installs beside the code: the sample settings file and the manual
pages, checked against the commands they describe."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
from pathlib import Path

import pytest

from afsfuse.cli import _parser
from afsfuse.config import build_config, read_config_file
from afsfuse.ctl.cli import _parser as ctl_parser

ROOT = Path(__file__).parents[2]
MAN = ROOT / "man"


def test_the_sample_settings_file_loads_with_every_setting_uncommented(tmp_path: Path) -> None:
    sample = ROOT / "packaging" / "afsfuse.toml"
    assert build_config(tmp_path, read_config_file(sample), {}) == build_config(tmp_path, {}, {})
    uncommented = tmp_path / "all.toml"
    lines = sample.read_text().splitlines()
    settings = [line[2:] for line in lines if re.match(r"# [a-z-]+ = ", line)]
    uncommented.write_text("\n".join(settings) + "\n")
    config = build_config(tmp_path, read_config_file(uncommented), {})
    assert config.thiscell == "example.com" and config.port == 7001
    keys = {line.split(" =")[0].replace("-", "_") for line in settings}
    options = {a.dest for a in _mount_parser()._actions if a.option_strings} - {"help"}
    assert options - keys == {"config", "max_tasks", "foreground"}


def _mount_parser() -> argparse.ArgumentParser:
    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices["mount"]


def _man_text(page: str) -> str:
    env = {**os.environ, "MANWIDTH": "100", "LC_ALL": "C.UTF-8"}
    done = subprocess.run(
        ["man", "--warnings", "-l", str(MAN / page)], capture_output=True, text=True,
        env=env, timeout=60, check=True,
    )  # fmt: skip
    assert done.stderr == ""
    return done.stdout


@pytest.mark.parametrize(
    ("page", "options"),
    [
        ("afsfuse.8", [s for a in _mount_parser()._actions for s in a.option_strings]),
        ("afsfuse-ctl.1", [
            name for a in ctl_parser()._actions if isinstance(a, argparse._SubParsersAction)
            for name in a.choices
        ]),
    ],
)  # fmt: skip
def test_each_manual_page_renders_cleanly_and_names_every_option(
    page: str, options: list[str]
) -> None:
    text = _man_text(page)
    missing = [o for o in options if o not in ("-h", "--help") and o not in text]
    assert missing == []


def test_the_settings_page_names_every_key() -> None:
    text = _man_text("afsfuse.toml.5")
    keys = {a.dest.replace("_", "-") for a in _mount_parser()._actions if a.option_strings}
    assert [k for k in keys - {"help", "config"} if k not in text] == []
