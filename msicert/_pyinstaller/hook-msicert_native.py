"""PyInstaller hook for ``msicert_native``: both backends, the generated ``_ffi`` and ``_spec``.

``msicert_native`` chooses its backend with plain ``try/except ImportError`` imports, so a
frozen app must carry both candidates: ``msicert_native._ffi`` (generated at build time by
cffi's setuptools integration, out-of-line ABI mode) with the ``_cffi_backend`` extension it
imports, and the ctypes fallback; both read ``msicert_native._spec`` (generated from the same
cdefs). pycparser is needed only to *generate* those modules; it stays out.
"""

from __future__ import annotations

from msicert._pyinstaller._collect import submodules

hiddenimports = sorted(
    {
        *submodules("msicert_native"),
        "msicert_native._ffi",
        "msicert_native._spec",
        "msicert_native._cffi_impl",
        "msicert_native._ctypes_impl",
        "_cffi_backend",
    }
)

excludedimports = ["pycparser"]
