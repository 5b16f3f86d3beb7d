"""Helpers shared by the tests of msicert_native (imported by path: tests/native has no
``__init__.py``, so pytest puts this directory on ``sys.path``)."""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CDEF_DIR = REPO_ROOT / "cdefs"
CDEF_FILES = (
    "windef.cdef", "crypt32.cdef", "ncrypt.cdef", "winhttp.cdef", "kernel32.cdef", "advapi32.cdef",
)

NEEDS_WINDOWS_REASON = "needs Windows (run by the Wine tier / windows-latest)"


@functools.cache
def is_windows() -> bool:
    """True on Windows and under Wine."""
    return sys.platform == "win32"


@functools.cache
def is_wine() -> bool:
    """True when this Windows process runs under Wine (ntdll exports wine_get_version)."""
    if not is_windows():
        return False
    ntdll = ctypes.WinDLL("ntdll")  # type: ignore[attr-defined]
    return hasattr(ntdll, "wine_get_version")


def read_cdefs() -> str:
    """All cdef files in dependency order (the same text build_ffi.py feeds cffi)."""
    return "\n".join((CDEF_DIR / name).read_text(encoding="utf-8") for name in CDEF_FILES)


needs_windows = pytest.mark.skipif(not is_windows(), reason=NEEDS_WINDOWS_REASON)


def skip_on_wine(reason: str) -> pytest.MarkDecorator:
    """Skip a Windows test under Wine only, saying which Windows behaviour Wine lacks."""
    return pytest.mark.skipif(is_wine(), reason=f"Wine cannot emulate this: {reason}")


def artifact_dir() -> Path | None:
    """Directory where Wine-tier tests leave files for run.sh to check (env, optional)."""
    value = os.environ.get("MSICERT_NATIVE_ARTIFACTS")
    return Path(value) if value else None
