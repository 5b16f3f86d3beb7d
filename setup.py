"""Build entry: generates msicert_native/_ffi.py and _spec.py from cdefs/ (cdefs/build_ffi.py).

Metadata lives in pyproject.toml; this file only wires ``cffi_modules`` (cffi writes ``_ffi.py``
into the build), writes ``_spec.py`` next to it, and, for editable installs, writes both into
the tree, where cffi's own hook never puts them.
"""

import os
import runpy

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def _build_ffi():
    return runpy.run_path(os.path.join(HERE, "cdefs", "build_ffi.py"))


class build_py_native_specs(build_py):
    """Generate the native layer's spec modules along with the build (or in the tree)."""

    def run(self):
        super().run()
        build = _build_ffi()
        if getattr(self, "editable_mode", False):
            build["main"]()
        else:
            # After the copy of the sources: a stale _spec.py in the tree is overwritten here.
            build["write_spec"](os.path.join(self.build_lib, build["SPEC_MODULE"]))


setup(
    cmdclass={"build_py": build_py_native_specs},
    cffi_modules=["cdefs/build_ffi.py:ffibuilder"],
)
