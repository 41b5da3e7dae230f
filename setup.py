"""Build hook for the optional compiled parts; all other metadata is in pyproject.toml.

Two optional parts, each with its Python source as the reference that runs without it:
- the fcrypt accelerator (afsfuse/rx/_fcrypt.c); without it afsfuse.rx.fcrypt falls back
  to its pure-Python code (with a warning at run time);
- the Rx hot path (COMPILED below) compiled by mypyc, which comes with mypy (a build
  requirement). AFSFUSE_COMPILE=0 in the environment builds without it.

Without a working C compiler the package still installs, all in Python.
"""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, ExecError, PlatformError

_BUILD_ERRORS = (CCompilerError, ExecError, PlatformError, OSError)

#: The modules every DATA packet and every small RPC goes through (profiled with
#: bench/fetch.py and bench/rpc_loop.py).  Only stdlib imports among them, so mypyc's type
#: check needs none of the run-time dependencies in the build environment.  Not compiled:
#: schedule.py (mypyc cannot compile its generic dataclasses), security.py and rxkad.py
#: (multiple inheritance), fcrypt.py (unit tests replace its attributes), driver.py and
#: rpc.py (trio tasks and metaprogramming, and little of the time per packet).
COMPILED = [
    "afsfuse/rx/call.py",
    "afsfuse/rx/connection.py",
    "afsfuse/rx/core.py",
    "afsfuse/rx/packet.py",
    "afsfuse/rx/peer.py",
    "afsfuse/rx/stats.py",
    "afsfuse/rx/xdr.py",
]


class OptionalBuildExt(build_ext):
    """Build the compiled parts when possible; never fail the install because of them."""

    def run(self) -> None:
        # Catching here (not per extension) also skips the in-place copy of the missing
        # files, so a failed build leaves no half of the mypyc modules behind.
        try:
            super().run()
        except _BUILD_ERRORS as exc:
            self._skipped(exc)

    def _skipped(self, exc: Exception) -> None:
        print(
            "*** afsfuse: could not build the compiled parts (fcrypt accelerator, Rx):\n"
            f"***   {exc}\n"
            "*** Installing without them: everything runs as Python, and rxkad crypt-level\n"
            "*** transfers will be slow.  Install a C compiler and the Python headers, then\n"
            "*** reinstall to get them."
        )


def compiled_rx() -> list[Extension]:
    """The mypyc extensions of COMPILED, unless turned off or mypyc is missing."""
    if os.environ.get("AFSFUSE_COMPILE", "1") == "0":
        print("*** afsfuse: AFSFUSE_COMPILE=0: the Rx modules stay Python")
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("*** afsfuse: mypyc (from mypy) is missing: the Rx modules stay Python")
        return []
    # group_name: the modules' shared library goes inside the package (a top-level module
    # named by a hash of the list otherwise), as afsfuse/rx/hotpath__mypyc.*.so.
    return mypycify(COMPILED, opt_level="3", group_name="afsfuse.rx.hotpath")


setup(
    ext_modules=[
        Extension(
            "afsfuse.rx._fcrypt",
            sources=["afsfuse/rx/_fcrypt.c"],
            # Python's own flags say -O2; -O3 decrypts about 10% faster (bench/fcrypt_speed.py).
            extra_compile_args=["-O3"],
        ),
        *compiled_rx(),
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
