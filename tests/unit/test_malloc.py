"""The daemon's malloc settings (afsfuse/malloc.py)."""

from __future__ import annotations

import subprocess
import sys

from afsfuse.malloc import SETTINGS, tune


def test_the_settings_are_applied_unless_the_environment_has_its_own() -> None:
    script = "from afsfuse.malloc import tune; print(sorted(tune().items()))"
    run = subprocess.run(
        [sys.executable, "-c", script], env={}, capture_output=True, text=True, check=True
    )
    assert run.stdout.strip() == str(sorted((n, v) for n, (_, v) in SETTINGS.items()))
    assert tune({"MALLOC_ARENA_MAX": "4", "MALLOC_MMAP_THRESHOLD_": "1"}) == {}
