"""Pure-Python layout checks: the ctypes structs and prototypes, built from the generated
``msicert_native/_spec.py``, equal the cffi cdefs equal Windows x64.

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


def _ctypes_type(spelling: str) -> Any:
    from msicert_native._ctypes_impl import _ctype

    return _ctype(spelling)


def _struct_typedefs(ffi: Any) -> list[str]:
    return [name for name in ffi.list_types()[0] if ffi.typeof(name).kind == "struct"]


def test_ctypes_structs_built_from_the_spec_match_cffi(ffi: Any) -> None:
    names = _struct_typedefs(ffi)
    assert set(names) >= {name for name, _ in WINDOWS_X64}
    for name in names:
        cls = _ctypes_type(name)
        assert ctypes.sizeof(cls) == ffi.sizeof(name), name
        assert ctypes.alignment(cls) == ffi.alignof(name), name
        cffi_fields = ffi.typeof(name).fields
        assert [field[0] for field in cls._fields_] == [field for field, _ in cffi_fields], name
        for field, info in cffi_fields:
            assert getattr(cls, field).offset == ffi.offsetof(name, field), (name, field)
            assert getattr(cls, field).size == ffi.sizeof(info.type), (name, field)


def test_ctypes_layout_is_windows_x64() -> None:
    for (struct, field), expected in WINDOWS_X64.items():
        cls = _ctypes_type(struct)
        actual = ctypes.sizeof(cls) if field is None else getattr(cls, field).offset
        assert actual == expected, (struct, field)


def test_ctypes_backend_uses_fixed_widths_not_wintypes() -> None:
    """ctypes.wintypes (and c_long/c_wchar) have Linux widths on Linux: never a field type."""
    from msicert_native import _ctypes_impl

    source = (CDEF_DIR.parent / "msicert_native" / "_ctypes_impl.py").read_text()
    assert not re.search(r"import\s+(ctypes\.)?wintypes|wintypes\s+import|wintypes\.", source)
    widths = {"uint8_t": 1, "uint16_t": 2, "uint32_t": 4, "int32_t": 4, "int": 4,
              "uintptr_t": ctypes.sizeof(ctypes.c_void_p), "char16_t": 2, "char": 1}
    table = _ctypes_impl._BASE
    assert set(table) == {*widths, "void"}
    for name, width in widths.items():
        assert ctypes.sizeof(table[name]) == width, name
    assert table["int32_t"](-1).value == -1 and table["uint32_t"](-1).value == 0xFFFFFFFF


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


def test_every_cdef_function_has_a_ctypes_prototype_of_the_cdef_sizes(ffi: Any) -> None:
    """The generated prototypes: one per cdef function, each argument as wide as cffi's."""
    from msicert_native import _spec

    functions = {key.split()[1] for key in ffi._parser._declarations if key.startswith("function")}
    assert set(_spec.FUNCTIONS) == functions
    for name, (_dll, restype, argtypes) in _spec.FUNCTIONS.items():
        function_type = ffi.typeof(ffi._parser._declarations[f"function {name}"][0].get_c_name())
        assert len(argtypes) == len(function_type.args), name
        for ctype, cffi_type in zip(argtypes, function_type.args, strict=True):
            assert ctypes.sizeof(_ctypes_type(ctype)) == ffi.sizeof(cffi_type), (name, ctype)
        if function_type.result.kind != "void":
            assert ctypes.sizeof(_ctypes_type(restype)) == ffi.sizeof(function_type.result), name


def test_functions_are_bound_to_the_dll_their_cdef_file_names() -> None:
    from msicert_native import _spec

    for path in CDEF_DIR.glob("*.cdef"):
        text = re.sub(r"/\*.*?\*/", " ", path.read_text(), flags=re.S)
        for name in re.findall(r"\bWINAPI\s+(\w+)\s*\(", text):
            assert _spec.FUNCTIONS[name][0] == path.stem + ".dll", name
    assert _spec.FUNCTIONS["LocalFree"][0] == "kernel32.dll"
    assert _spec.FUNCTIONS["ConvertSidToStringSidW"][0] == "advapi32.dll"
