"""The Rx modules setup.py compiles with mypyc: which of them run compiled, and from when.

`make test` runs the unit tests twice, on the Python source (AFSFUSE_COMPILE=0, `make
unit-source`) and compiled; these tests make sure each run really is what it says, and that
no compiled module older than its edited source runs in its place.
"""

from __future__ import annotations

import ast
import importlib
import os
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from types import ModuleType

SETUP = Path(__file__).parents[2] / "setup.py"


def listed_modules() -> list[ModuleType]:
    """The modules of setup.py's COMPILED list, read from the file without running it."""
    for node in ast.parse(SETUP.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "COMPILED" for target in node.targets
        ):
            paths: list[str] = ast.literal_eval(node.value)
            return [
                importlib.import_module(path.removesuffix(".py").replace("/", "."))
                for path in paths
            ]
    raise AssertionError("setup.py has no COMPILED list")


def is_compiled(module: ModuleType) -> bool:
    assert module.__spec__ is not None and module.__spec__.origin is not None
    return not module.__spec__.origin.endswith(".py")


def test_the_listed_modules_run_as_built() -> None:
    """Compiled unless AFSFUSE_COMPILE=0, which is also how setup.py is told not to."""
    expected = os.environ.get("AFSFUSE_COMPILE", "1") != "0"
    states = {module.__name__: is_compiled(module) for module in listed_modules()}
    assert len(states) >= 5
    assert states == dict.fromkeys(states, expected), (
        "rebuild (make venv), or set AFSFUSE_COMPILE=0 to test the Python source"
    )


def test_no_compiled_module_is_older_than_its_source() -> None:
    """Python imports a compiled module before its source: an edit needs a rebuild."""
    for module in listed_modules():
        # Found beside the package's __init__.py: mypyc gives a module imported by another
        # compiled one a wrong __file__ (and origin) when its shared library is in a package.
        package = Path(str(sys.modules[str(module.__package__)].__file__)).parent
        source = package / (module.__name__.rpartition(".")[2] + ".py")
        if is_compiled(module):
            # The code is in the group's shared library; the module's own file is a stub.
            (library,) = package.glob(f"*__mypyc{EXTENSION_SUFFIXES[0]}")
            assert library.stat().st_mtime >= source.stat().st_mtime, (
                f"{source} was edited after it was compiled: rebuild with make venv"
            )
        else:
            assert module.__file__ == str(source)
