"""cffi primitives (preferred backend): the same small set as ``_ctypes_impl``, over ``_ffi``.

``_ffi`` is generated from cdefs/ by ``cdefs/build_ffi.py`` (out-of-line ABI mode): importing it
needs ``_cffi_backend`` but neither pycparser nor a compiler. Which DLL exports a function comes
from the generated ``_spec`` (the cdef file it is declared in). DLLs are opened on first use,
so the import works on every platform. cffi saves GetLastError right after every call;
``ffi.getwinerror()`` reads that saved value.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, Final

from . import _spec
from ._errors import WindowsRequiredError, clean_message, signed32
from ._ffi import ffi

__all__ = [
    "BACKEND",
    "NULL",
    "addr",
    "bytes_at",
    "cast",
    "describe",
    "fn",
    "from_bytes",
    "last_error",
    "new",
    "sizeof",
    "wstr",
    "wstring",
]

BACKEND: Final = "cffi"
NULL: Final = ffi.NULL


@functools.cache
def _dll(name: str) -> Any:
    return ffi.dlopen(name)


def fn(name: str) -> Callable[..., Any]:
    """The Win32 function ``name`` from the DLL its cdef file names (opened once)."""
    if sys.platform != "win32":
        raise WindowsRequiredError(name)
    function: Callable[..., Any] = getattr(_dll(_spec.FUNCTIONS[name][0]), name)
    return function


def new(ctype: str, init: object = None) -> Any:
    """Owned, zeroed memory: ``"T *"`` one T (``init`` a value or a field dict), ``"T[]"``
    ``init`` Ts. Index ``[0]`` reads it; it passes as a ``T *`` argument."""
    if ctype.endswith("[]") and not isinstance(init, int):
        raise TypeError(f"new({ctype!r}) takes a length")
    return ffi.new(ctype, init)


def cast(ctype: str, value: object) -> Any:
    """``value`` (an address, NULL or owned memory) as the pointer type ``ctype``."""
    return ffi.cast(ctype, value)


def sizeof(ctype: str) -> int:
    """``sizeof(ctype)`` (Windows x64 for the cdefs' types)."""
    return int(ffi.sizeof(ctype))


def addr(pointer: object) -> int:
    """The address a pointer, array or handle holds; 0 for NULL."""
    if pointer is None or isinstance(pointer, int):
        return pointer or 0
    return int(ffi.cast("uintptr_t", pointer))


def wstr(text: str) -> Any:
    """A NUL-terminated ``WCHAR[]`` copy of ``text`` (UTF-16 code units)."""
    return ffi.new("WCHAR[]", text)


def wstring(pointer: object) -> str:
    """The NUL-terminated ``WCHAR`` string at ``pointer``; ``""`` for NULL."""
    return str(ffi.string(pointer)) if addr(pointer) else ""


def from_bytes(data: bytes) -> Any:
    """A ``BYTE[]`` holding ``data``, for an input-only ``BYTE *`` argument (no copy)."""
    return ffi.from_buffer("BYTE[]", data)


def bytes_at(pointer: object, size: int) -> bytes:
    """``size`` bytes at ``pointer``; ``b""`` for NULL."""
    return bytes(ffi.buffer(pointer, size)) if addr(pointer) and size else b""


def last_error() -> tuple[int, str]:
    """GetLastError as saved right after the last call on this thread, and its text."""
    code, message = ffi.getwinerror()
    return int(code), clean_message(str(message))


def describe(status: int) -> str:
    """The system's text for an error code or SECURITY_STATUS (``""`` when it has none)."""
    if sys.platform != "win32":
        return ""
    return clean_message(str(ffi.getwinerror(signed32(status))[1]))
