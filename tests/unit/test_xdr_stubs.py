"""The interfaces' generated type stubs: current, and strict enough to catch a wrong field."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from afsfuse.rx import stubgen

ROOT = Path(__file__).resolve().parents[2]
TYPING = ROOT / "tests" / "typing"


def test_the_stubs_match_the_declarations() -> None:
    assert stubgen.main(["--check"]) == 0, "run python -m afsfuse.rx.stubgen"


def test_mypy_rejects_mistyped_replies_and_arguments_and_accepts_the_right_ones() -> None:
    marked = {
        number
        for number, line in enumerate((TYPING / "reply_mistyped.py").read_text().splitlines(), 1)
        if line.endswith("# error")
    }
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--no-error-summary",
            "--no-incremental",
            str(TYPING / "replies_ok.py"),
            str(TYPING / "reply_mistyped.py"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    errors = re.findall(r"^(\S+?):(\d+): error: ", run.stdout, re.MULTILINE)
    assert {Path(path).name for path, _ in errors} == {"reply_mistyped.py"}, run.stdout
    assert {int(line) for _, line in errors} == marked, run.stdout


def test_constants_assigned_together_are_in_the_stubs() -> None:
    """`CB_EXCLUSIVE, CB_SHARED, CB_DROPPED = 1, 2, 3` was left out of the stubs, so a
    type checker said the module had no CB_DROPPED."""
    from afsfuse.rx.interfaces import fs, vl

    fs_stub = stubgen.stub(fs, stubgen._homes())
    assert "CB_DROPPED: int" in fs_stub and "FILE_SYMLINK: int" in fs_stub
    assert "BACKVOL: int" in stubgen.stub(vl, stubgen._homes())
