"""The test tree itself: pytest puts tests/unit and tests/integration on sys.path and imports
each module by its file name, so two modules of one name in the two directories stop the
whole run at collection."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).parents[1]


def test_no_two_test_directories_hold_a_module_of_the_same_name() -> None:
    names = Counter(
        path.name
        for directory in (TESTS / "unit", TESTS / "integration")
        for path in directory.glob("*.py")
        if path.name != "conftest.py"
    )
    assert [name for name, count in names.items() if count > 1] == []
