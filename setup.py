"""Build entry for cffi: generates msicert_native/_ffi.py (out-of-line ABI mode).

Metadata lives in pyproject.toml; this file only wires ``cffi_modules`` (and, for editable
installs, writes the generated module into the tree, where cffi's own hook never puts it).
"""

import os
import runpy

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class build_py_ffi_in_tree(build_py):
    """``pip install -e .`` also gets ``msicert_native/_ffi.py`` (cffi writes it to build/)."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            runpy.run_path(os.path.join(HERE, "cdefs", "build_ffi.py"))["main"]()


setup(
    cmdclass={"build_py": build_py_ffi_in_tree},
    cffi_modules=["cdefs/build_ffi.py:ffibuilder"],
)
