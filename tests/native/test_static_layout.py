"""Tier a: the cdefs against the real Windows headers (mingw-w64), without running Windows.

The cdefs use fixed-width types, so cffi on Linux computes Windows x64 sizes and offsets. This
module turns the parsed cdefs into a C file of ``_Static_assert``s placed after ``windows.h``,
``wincrypt.h``, ``ncrypt.h``, ``bcrypt.h`` and ``winhttp.h``:

* every typedef: same size and signedness as the header's type, or (for typedefs built from
  other Windows names) ``__builtin_types_compatible_p`` with the header's spelling;
* every struct typedef: ``sizeof`` and ``offsetof`` of each field equal cffi's numbers;
* every integer ``#define`` of the cdefs and every int of ``msicert_native._constants``;
* every function: must already be declared by the headers, then is re-declared verbatim from
  the cdef, so gcc rejects any parameter or return type that differs;
* every struct again as the ctypes backend builds it from the generated ``_spec.py``: its
  ``sizeof`` and each field's ``offsetof`` equal the header's;

and compiles it with ``x86_64-w64-mingw32-gcc -fsyntax-only -DUNICODE``. String constants are
checked through the preprocessor (``-E``).
"""

from __future__ import annotations

import copy
import ctypes
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from native_testutil import read_cdefs

cffi = pytest.importorskip("cffi")
pycparser = pytest.importorskip("pycparser")
from pycparser import c_ast, c_generator  # noqa: E402

GCC = "x86_64-w64-mingw32-gcc"
pytestmark = [
    pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="the static tier runs on Linux (mingw-w64)"
    ),
    pytest.mark.skipif(
        shutil.which(GCC) is None,
        reason=f"{GCC} not installed (apt-get install gcc-mingw-w64-x86-64 mingw-w64-x86-64-dev)",
    ),
]

HEADERS = ("windows.h", "wincrypt.h", "ncrypt.h", "bcrypt.h", "winhttp.h", "sddl.h")

# Constants the mingw-w64 10 headers do not define; their values come from the Windows SDK.
# Each is asserted only under #ifdef, so a newer mingw that gains them still checks the value.
ABSENT_FROM_MINGW = {
    # Windows SDK 10.0.19041+ ncrypt.h: KeyGuard "use virtual isolation" creation flag.
    "NCRYPT_USE_VIRTUAL_ISOLATION_FLAG": 0x00020000,
    # Windows SDK 10.0.19041+ ncrypt.h: KeyGuard per-boot key (dies at reboot).
    "NCRYPT_USE_PER_BOOT_KEY_FLAG": 0x00040000,
}

# String constants with no header macro (checked by value in test_constants.py only).
NO_STRING_MACRO = {"NCRYPT_VIRTUAL_ISO_PROPERTY"}

# Stand-ins so pycparser can parse the cdef text; only the typedef NAMES survive into C.
_PYCPARSER_PRELUDE = """
typedef int uint8_t; typedef int uint16_t; typedef int uint32_t; typedef int int32_t;
typedef int uintptr_t; typedef int char16_t;
"""
_FIXED = {
    "uint8_t": (1, False),
    "uint16_t": (2, False),
    "uint32_t": (4, False),
    "int32_t": (4, True),
    "uintptr_t": (8, False),
    "char16_t": (2, False),
    "int": (4, True),
}


def _strip_comments(text: str) -> str:
    return re.sub(r"/\*.*?\*/", " ", text, flags=re.S)


def _statements(text: str) -> list[str]:
    """Top-level C statements of a cdef (``#define`` lines removed), split on ``;``."""
    body = "\n".join(
        line for line in _strip_comments(text).splitlines() if not line.lstrip().startswith("#")
    )
    out, depth, current = [], 0, []
    for char in body:
        depth += char == "{"
        depth -= char == "}"
        if char == ";" and depth == 0:
            out.append(" ".join("".join(current).split()))
            current = []
        else:
            current.append(char)
    return [s for s in out if s]


def _type_text(node: Any) -> str:
    """C spelling of a pycparser type node with the declared name and struct bodies removed."""
    node = copy.deepcopy(node)
    for sub in _walk(node):
        if isinstance(sub, c_ast.TypeDecl):
            sub.declname = None
        if isinstance(sub, c_ast.Struct):
            sub.decls = None
    typename = c_ast.Typename(name=None, quals=[], align=None, type=node)
    return str(c_generator.CGenerator().visit(typename))


def _walk(node: Any) -> list[Any]:
    nodes = [node]
    for _, child in node.children():
        nodes.extend(_walk(child))
    return nodes


def _typedefs() -> dict[str, Any]:
    body = " ".join(f"{s.replace('WINAPI ', '')};" for s in _statements(read_cdefs()))
    ast = pycparser.CParser().parse(_PYCPARSER_PRELUDE + body)
    return {
        ext.name: ext.type
        for ext in ast.ext
        if isinstance(ext, c_ast.Typedef) and ext.name not in _FIXED
    }


def _ffi() -> Any:
    ffi = cffi.FFI()
    ffi.cdef(read_cdefs())
    return ffi


def _int_constants() -> dict[str, int]:
    from msicert_native import _constants

    values: dict[str, int] = dict(_ffi()._parser._int_constants)
    for name in dir(_constants):
        value = getattr(_constants, name)
        if name.isupper() and isinstance(value, int):
            values.setdefault(name, value)
    return values


def _string_constants() -> dict[str, str]:
    from msicert_native import _constants

    return {
        name: value
        for name in dir(_constants)
        if name.isupper()
        and isinstance(value := getattr(_constants, name), str)
        and name not in NO_STRING_MACRO
    }


def generate_c() -> str:
    """The whole C translation unit of assertions (public for debugging: print it)."""
    ffi = _ffi()
    lines = ["#define WIN32_LEAN_AND_MEAN", *[f"#include <{h}>" for h in HEADERS]]
    lines += ["#include <stddef.h>", "#include <stdint.h>", ""]
    n = 0

    def check(expr: str, what: str) -> None:
        nonlocal n
        n += 1
        lines.append(f'_Static_assert({expr}, "{what}");')

    for name, node in _typedefs().items():
        inner = node.type
        if isinstance(node, c_ast.TypeDecl) and isinstance(inner, c_ast.IdentifierType):
            base = " ".join(inner.names)
            if base in _FIXED:
                size, signed = _FIXED[base]
                check(f"sizeof({name}) == {size}", f"sizeof {name}")
                check(f"(({name})-1 < 0) == {int(signed)}", f"signedness of {name}")
                continue
        check(
            f"__builtin_types_compatible_p({name}, {_type_text(node)})",
            f"{name} is {_type_text(node)}",
        )
        tp = ffi.typeof(name)
        check(f"sizeof({name}) == {ffi.sizeof(tp)}", f"sizeof {name}")
        if tp.kind == "struct":
            for field, _ in tp.fields:
                offset = ffi.offsetof(tp, field)
                check(f"offsetof({name}, {field}) == {offset}", f"offsetof {name}.{field}")

    from msicert_native._ctypes_impl import _ctype

    for name in ffi.list_types()[0]:
        if ffi.typeof(name).kind != "struct":
            continue
        cls = _ctype(name)
        check(f"sizeof({name}) == {ctypes.sizeof(cls)}", f"ctypes sizeof {name}")
        for field, _ in cls._fields_:
            offset = getattr(cls, field).offset
            check(f"offsetof({name}, {field}) == {offset}", f"ctypes offsetof {name}.{field}")

    for name, value in sorted(_int_constants().items()):
        expr = f"(unsigned long long)(uint32_t)(uintptr_t)({name}) == {value:#x}ULL"
        if name in ABSENT_FROM_MINGW:
            assert value == ABSENT_FROM_MINGW[name], name
            lines.append(f"#ifdef {name}")
            check(expr, f"value of {name}")
            lines.append("#endif")
        else:
            check(expr, f"value of {name}")

    functions = sorted(key.split()[1] for key in ffi._parser._declarations if "function" in key)
    lines += ["", "static void msicert_declared_by_headers(void) {"]
    lines += [f"    (void)&{name};" for name in functions]
    lines += ["}", ""]
    prototypes = [s for s in _statements(read_cdefs()) if not s.startswith("typedef")]
    assert len(prototypes) == len(functions), (prototypes, functions)
    lines += [f"__declspec(dllimport) {proto};" for proto in prototypes]
    lines.append(f"/* {n} assertions, {len(functions)} prototypes */")
    return "\n".join(lines) + "\n"


def _compile(source: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "layout_check.c"
    path.write_text(source, encoding="utf-8")
    return subprocess.run(
        [GCC, "-DUNICODE", "-D_UNICODE", "-std=gnu11", "-Wall", "-Werror", *extra, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cdefs_match_mingw_headers(tmp_path: Path) -> None:
    source = generate_c()
    result = _compile(source, tmp_path, "-fsyntax-only", "-Wno-unused-function")
    assert result.returncode == 0, result.stderr[-6000:]
    # The check is only as good as its coverage: make sure nothing was silently dropped.
    assert source.count("_Static_assert(offsetof(CERT_CONTEXT,") == 10  # cffi's and ctypes'
    assert '"ctypes offsetof CERT_CONTEXT.hCertStore"' in source
    assert '"ctypes sizeof CRYPT_KEY_PROV_INFO"' in source
    assert "sizeof(CERT_CONTEXT) == 40" in source
    assert "offsetof(CERT_CONTEXT, hCertStore) == 32" in source
    assert "sizeof(CERT_INFO) == 208" in source
    assert "offsetof(CRYPT_KEY_PROV_INFO, dwKeySpec) == 40" in source
    assert "offsetof(BCRYPT_PSS_PADDING_INFO, cbSalt) == 8" in source
    assert "NCryptSignHash(" in source and "WinHttpSetOption(" in source


def test_the_generated_check_catches_a_wrong_layout(tmp_path: Path) -> None:
    """A deliberately wrong offset (cffi's, ctypes'), value and prototype must each fail."""
    good = generate_c()
    for bad in (
        good.replace(
            "offsetof(CERT_CONTEXT, hCertStore) == 32", "offsetof(CERT_CONTEXT, hCertStore) == 28"
        ),
        good.replace(
            'offsetof(CERT_CONTEXT, hCertStore) == 32, "ctypes',
            'offsetof(CERT_CONTEXT, hCertStore) == 28, "ctypes',
        ),
        good.replace("(CERT_FRIENDLY_NAME_PROP_ID) == 0xb", "(CERT_FRIENDLY_NAME_PROP_ID) == 0xc"),
        good.replace(
            "BOOL WINAPI CertCloseStore(HCERTSTORE hCertStore, DWORD dwFlags)",
            "BOOL WINAPI CertCloseStore(HCERTSTORE hCertStore, ULONG_PTR dwFlags)",
        ),
    ):
        assert bad != good
        result = _compile(bad, tmp_path, "-fsyntax-only", "-Wno-unused-function")
        assert result.returncode != 0


def test_string_constants_match_headers(tmp_path: Path) -> None:
    strings = _string_constants()
    source = "\n".join([*[f"#include <{h}>" for h in HEADERS], ""])
    source += "\n".join(f"MSICERT_STR_{name} = {name}" for name in strings) + "\n"
    result = _compile(source, tmp_path, "-E", "-P")
    assert result.returncode == 0, result.stderr[-4000:]
    found = {}
    for line in result.stdout.splitlines():
        if line.startswith("MSICERT_STR_"):
            name, _, value = line[len("MSICERT_STR_") :].partition(" = ")
            found[name] = value.strip()
    for name, value in strings.items():
        # mingw spells these as L"..." (possibly through a macro pasting L to "...").
        assert found.get(name) == f'L"{value}"', (name, found.get(name))


def test_known_absent_constants_are_still_absent_or_equal(tmp_path: Path) -> None:
    """Documents why the KeyGuard flags are #ifdef-guarded: mingw-w64 lacks them."""
    source = "#include <windows.h>\n#include <ncrypt.h>\n"
    source += "\n".join(f"#ifdef {name}\nMSICERT_HAS {name}\n#endif" for name in ABSENT_FROM_MINGW)
    result = _compile(source + "\n", tmp_path, "-E", "-P")
    assert result.returncode == 0, result.stderr[-4000:]
    present = re.findall(r"MSICERT_HAS (\w+)", result.stdout)
    # Either state is fine (the value is asserted when present); record it for the reader.
    assert set(present) <= set(ABSENT_FROM_MINGW)
