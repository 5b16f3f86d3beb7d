"""Generate ``msicert_native/_ffi.py`` from the ``*.cdef`` files (cffi out-of-line ABI mode).

Used two ways:

* ``setup.py`` names ``cdefs/build_ffi.py:ffibuilder`` in ``cffi_modules``;
* ``python cdefs/build_ffi.py`` writes ``msicert_native/_ffi.py`` next to the sources.

The generated module holds only pre-parsed type data: importing it needs ``_cffi_backend``
but not pycparser, and no compiler is involved (ABI mode, ``set_source(..., None)``).
"""

from __future__ import annotations

import os
import sys

import cffi

HERE = os.path.dirname(os.path.abspath(__file__))

# Order matters: windef.cdef holds the base types every other file uses.
CDEF_FILES = (
    "windef.cdef", "crypt32.cdef", "ncrypt.cdef", "winhttp.cdef", "kernel32.cdef", "advapi32.cdef",
)


def read_cdefs() -> str:
    """Concatenate the cdef files in dependency order."""
    parts = []
    for name in CDEF_FILES:
        with open(os.path.join(HERE, name), encoding="utf-8") as handle:
            parts.append(f"/* ---- {name} ---- */\n{handle.read()}")
    return "\n".join(parts)


def make_builder() -> cffi.FFI:
    """Return an FFI builder carrying every cdef, set up for out-of-line ABI mode."""
    builder = cffi.FFI()
    builder.cdef(read_cdefs())
    builder.set_source("msicert_native._ffi", None)
    return builder


ffibuilder = make_builder()


def main() -> int:
    """Write ``msicert_native/_ffi.py`` into the source tree."""
    target = os.path.join(os.path.dirname(HERE), "msicert_native")
    ffibuilder.compile(tmpdir=os.path.dirname(HERE), verbose=False)
    sys.stdout.write(f"wrote {os.path.join(target, '_ffi.py')}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
