"""Pure-Python layout checks: the ctypes mirrors equal the cffi cdefs equal Windows x64.

Runs everywhere (no compiler): cffi's numbers come from the fixed-width cdefs, which the static
tier (test_static_layout.py) ties to the real headers; these tests tie ctypes to cffi.
"""

from __future__ import annotations

import ctypes
import re
from typing import Any

import pytest
from native_testutil import CDEF_DIR, read_cdefs

cffi = pytest.importorskip("cffi")

WINDOWS_X64 = {  # (struct, field or None) -> bytes, from the Windows SDK documentation/headers
    ("CERT_CONTEXT", None): 40,
    ("CERT_CONTEXT", "hCertStore"): 32,
    ("CERT_INFO", None): 208,
    ("CERT_INFO", "Issuer"): 48,
    ("CERT_INFO", "NotBefore"): 64,
    ("CERT_INFO", "NotAfter"): 72,
    ("CERT_INFO", "Subject"): 80,
    ("CRYPT_KEY_PROV_INFO", None): 48,
    ("CRYPT_KEY_PROV_INFO", "dwKeySpec"): 40,
    ("BCRYPT_PSS_PADDING_INFO", None): 16,
    ("BCRYPT_PSS_PADDING_INFO", "cbSalt"): 8,
    ("BCRYPT_RSAKEY_BLOB", None): 24,
    ("CRYPT_DATA_BLOB", None): 16,
    ("SECURITY_ATTRIBUTES", None): 24,
}


@pytest.fixture(scope="module")
def ffi() -> Any:
    parsed = cffi.FFI()
    parsed.cdef(read_cdefs())
    return parsed


def test_cffi_layout_is_windows_x64(ffi: Any) -> None:
    for (struct, field), expected in WINDOWS_X64.items():
        actual = ffi.sizeof(struct) if field is None else ffi.offsetof(struct, field)
        assert actual == expected, (struct, field)


def test_ctypes_mirrors_match_cffi(ffi: Any) -> None:
    from msicert_native._ctypes_structs import STRUCTURES

    assert set(STRUCTURES) >= {name for name, _ in WINDOWS_X64}
    for name, cls in STRUCTURES.items():
        assert ctypes.sizeof(cls) == ffi.sizeof(name), name
        cffi_fields = [field for field, _ in ffi.typeof(name).fields]
        ctypes_fields = [field[0] for field in cls._fields_]
        assert ctypes_fields == cffi_fields, name
        for field in cffi_fields:
            assert getattr(cls, field).offset == ffi.offsetof(name, field), (name, field)
            assert getattr(cls, field).size == ffi.sizeof(
                ffi.typeof(name).fields[cffi_fields.index(field)][1].type
            ), (name, field)


def test_ctypes_structs_avoid_wintypes() -> None:
    source = (CDEF_DIR.parent / "msicert_native" / "_ctypes_structs.py").read_text()
    assert "import wintypes" not in source and "from ctypes.wintypes" not in source
    assert not re.search(r"\bc_(u)?long\b|\bc_wchar\b", source)


def test_cdef_constants_equal_python_constants(ffi: Any) -> None:
    from msicert_native import _constants

    for name, value in ffi._parser._int_constants.items():
        assert getattr(_constants, name) == value, name


def test_python_int_constants_are_declared_in_cdefs(ffi: Any) -> None:
    """Every int the backends use is in a cdef too, so the static tier checks its value."""
    from msicert_native import _constants

    declared = set(ffi._parser._int_constants)
    ints = {n for n in dir(_constants) if n.isupper() and isinstance(getattr(_constants, n), int)}
    assert ints <= declared, sorted(ints - declared)


def test_every_cdef_function_has_a_ctypes_prototype(ffi: Any) -> None:
    from msicert_native._ctypes_impl import _PROTOTYPES

    functions = {key.split()[1] for key in ffi._parser._declarations if key.startswith("function")}
    bound = functions - {"WinHttpQueryDataAvailable"}  # declared for completeness, unused
    assert bound <= set(_PROTOTYPES), sorted(bound - set(_PROTOTYPES))
    for name, (_dll, _restype, argtypes) in _PROTOTYPES.items():
        function_type, _ = ffi._parser._declarations[f"function {name}"]
        assert len(argtypes) == len(function_type.args), name
