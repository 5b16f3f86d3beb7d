"""Build entry for cffi: generates msicert_native/_ffi.py (out-of-line ABI mode).

Metadata lives in pyproject.toml; this file only wires ``cffi_modules``.
"""

from setuptools import setup

setup(cffi_modules=["cdefs/build_ffi.py:ffibuilder"])
