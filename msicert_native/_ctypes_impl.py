"""ctypes primitives: the backend when cffi or the generated ``_ffi`` module is missing.

The same small set as ``_cffi_impl`` (alloc, cast, strings, buffers, last error, function
lookup), spoken in cffi's C spellings (``"DWORD *"``, ``"BYTE[]"``, ``"PCCERT_CONTEXT"``).
Structs and prototypes come from the generated ``_spec`` module (cdefs/ is the one source);
its fixed-width C types map to fixed-width ctypes types only: ``ctypes.wintypes`` has 8-byte
LONG/ULONG on Linux, which would break the layout tests. DLLs are loaded on first use, so
importing this module works on every platform.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable
from typing import Any, Final

from . import _spec
from ._errors import WindowsRequiredError, clean_message, signed32

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

BACKEND: Final = "ctypes"
NULL: Final = None

# The cdefs' base C types (cdefs/build_ffi.py: C_BASE_TYPES). ``int`` is 32-bit on every
# platform Python runs on; ``uintptr_t`` (ULONG_PTR, NCRYPT handles) is pointer-sized, as
# c_size_t is; WCHAR (char16_t) is 2 bytes, which c_wchar is not on Linux.
_BASE: Final[dict[str, Any]] = {
    "uint8_t": ctypes.c_uint8,
    "uint16_t": ctypes.c_uint16,
    "uint32_t": ctypes.c_uint32,
    "int32_t": ctypes.c_int32,
    "int": ctypes.c_int32,
    "uintptr_t": ctypes.c_size_t,
    "char16_t": ctypes.c_uint16,
    "char": ctypes.c_char,
    "void": None,
}


@functools.cache
def _ctype(spelling: str) -> Any:
    """The ctypes type of a C spelling: ``DWORD``, ``PCCERT_CONTEXT *``, ``struct _CERT_INFO``."""
    name = " ".join(spelling.replace("*", " * ").split()).replace(" *", "*")
    if name.endswith("*"):
        target = _ctype(name[:-1])
        return ctypes.c_void_p if target is None else ctypes.POINTER(target)
    if name.startswith("struct "):
        return _struct(name[len("struct ") :])
    if name in _BASE:
        return _BASE[name]
    if name in _spec.TYPEDEFS:
        return _ctype(_spec.TYPEDEFS[name])
    raise TypeError(f"{spelling!r} is not a type of the cdefs")


@functools.cache
def _struct(tag: str) -> type[ctypes.Structure]:
    fields = tuple((field, _ctype(ctype)) for field, ctype in _spec.STRUCTS[tag])
    return type(tag, (ctypes.Structure,), {"_fields_": fields})


@functools.cache
def _dll(name: str) -> Any:
    return ctypes.WinDLL(name, use_last_error=True)  # type: ignore[attr-defined, unused-ignore]


def fn(name: str) -> Callable[..., Any]:
    """The Win32 function ``name`` from the DLL its cdef file names, prototype set once."""
    if sys.platform != "win32":
        raise WindowsRequiredError(name)
    return _bound(name)


@functools.cache
def _bound(name: str) -> Callable[..., Any]:
    dll, restype, argtypes = _spec.FUNCTIONS[name]
    function: Any = getattr(_dll(dll), name)
    function.restype = _ctype(restype)
    function.argtypes = tuple(_ctype(ctype) for ctype in argtypes)
    bound: Callable[..., Any] = function
    return bound


def new(ctype: str, init: object = None) -> Any:
    """Owned, zeroed memory: ``"T *"`` one T (``init`` a value or a field dict), ``"T[]"``
    ``init`` Ts. Index ``[0]`` reads it; it passes as a ``T *`` argument."""
    if ctype.endswith("[]"):
        if not isinstance(init, int):
            raise TypeError(f"new({ctype!r}) takes a length")
        return (_ctype(ctype[:-2]) * init)()
    target = _ctype(ctype)._type_  # what the pointer points at
    memory = (target * 1)()
    if isinstance(init, dict):
        for field, value in init.items():
            setattr(memory[0], field, value)  # a pointer field keeps its array alive
    elif init is not None:
        memory[0] = init
    return memory


def cast(ctype: str, value: object) -> Any:
    """``value`` (an address, NULL or owned memory) as the pointer type ``ctype``."""
    return ctypes.cast(value, _ctype(ctype))  # type: ignore[arg-type]


def sizeof(ctype: str) -> int:
    """``sizeof(ctype)`` (Windows x64 for the cdefs' types)."""
    return ctypes.sizeof(_ctype(ctype))


def addr(pointer: object) -> int:
    """The address a pointer, array or handle holds; 0 for NULL."""
    if pointer is None or isinstance(pointer, int):
        return pointer or 0
    return ctypes.cast(pointer, ctypes.c_void_p).value or 0  # type: ignore[arg-type]


def wstr(text: str) -> Any:
    """A NUL-terminated ``WCHAR[]`` copy of ``text`` (UTF-16 code units)."""
    data = (text + "\0").encode("utf-16-le")
    return (ctypes.c_uint16 * (len(data) // 2)).from_buffer_copy(data)


def wstring(pointer: object) -> str:
    """The NUL-terminated ``WCHAR`` string at ``pointer``; ``""`` for NULL."""
    start = end = addr(pointer)
    if not start:
        return ""
    while ctypes.c_uint16.from_address(end).value:
        end += 2
    return ctypes.string_at(start, end - start).decode("utf-16-le")


def from_bytes(data: bytes) -> Any:
    """A ``BYTE[]`` holding ``data``, for an input-only ``BYTE *`` argument."""
    return (ctypes.c_uint8 * len(data)).from_buffer_copy(data)


def bytes_at(pointer: object, size: int) -> bytes:
    """``size`` bytes at ``pointer``; ``b""`` for NULL."""
    start = addr(pointer)
    return ctypes.string_at(start, size) if start and size else b""


def last_error() -> tuple[int, str]:
    """GetLastError as saved right after the last call on this thread, and its text."""
    code: int = ctypes.get_last_error()  # type: ignore[attr-defined, unused-ignore]
    return code, describe(code)


def describe(status: int) -> str:
    """The system's text for an error code or SECURITY_STATUS (``""`` when it has none)."""
    if sys.platform != "win32":
        return ""
    return clean_message(ctypes.FormatError(signed32(status)))
