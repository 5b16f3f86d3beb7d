"""Generate the native layer's two spec modules from the ``*.cdef`` files (the one source).

* ``msicert_native/_ffi.py``: cffi out-of-line ABI mode (``set_source(..., None)``); importing
  it needs ``_cffi_backend`` but neither pycparser nor a compiler.
* ``msicert_native/_spec.py``: the same declarations as plain Python literals, for the ctypes
  backend (struct layouts, function prototypes) and for both backends (which DLL exports each
  function: the cdef file's name). It is parsed here with pycparser, which cffi needs at build
  time anyway; importing it needs nothing.

Used two ways:

* ``setup.py`` names ``cdefs/build_ffi.py:ffibuilder`` in ``cffi_modules`` (cffi writes
  ``_ffi.py`` into the build) and calls :func:`write_spec` from its ``build_py``;
* ``python cdefs/build_ffi.py`` writes both modules next to the sources.

Both are generated, never hand-edited and never committed (.gitignore).
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

import cffi

HERE = os.path.dirname(os.path.abspath(__file__))
SPEC_MODULE = os.path.join("msicert_native", "_spec.py")

# Order matters: windef.cdef holds the base types every other file uses. One file per DLL
# (windef.cdef declares no function): a function is bound to the DLL its file is named after.
CDEF_FILES = (
    "windef.cdef", "crypt32.cdef", "ncrypt.cdef", "winhttp.cdef", "kernel32.cdef", "advapi32.cdef",
)

# The only C spellings a cdef may build on (style habit 5): fixed widths, so that the same
# layout comes out on Linux and on Windows x64. The ctypes backend maps each to one ctypes type.
C_BASE_TYPES = frozenset(
    {"uint8_t", "uint16_t", "uint32_t", "int32_t", "int", "uintptr_t", "char16_t", "char", "void"}
)


def _read(name: str) -> str:
    with open(os.path.join(HERE, name), encoding="utf-8") as handle:
        return handle.read()


def read_cdefs() -> str:
    """Concatenate the cdef files in dependency order."""
    return "\n".join(f"/* ---- {name} ---- */\n{_read(name)}" for name in CDEF_FILES)


def make_builder() -> cffi.FFI:
    """Return an FFI builder carrying every cdef, set up for out-of-line ABI mode."""
    builder = cffi.FFI()
    builder.cdef(read_cdefs())
    builder.set_source("msicert_native._ffi", None)
    return builder


ffibuilder = make_builder()


# ---- _spec.py ------------------------------------------------------------------------------

_WINAPI_FUNCTION = re.compile(r"\bWINAPI\s+(\w+)\s*\(")
# pycparser has no <stdint.h>: stand-ins so it parses; only the names reach the spec.
_PRELUDE = "".join(
    f"typedef int {name};\n" for name in sorted(C_BASE_TYPES - {"int", "char", "void"})
)


def _pycparser_text(text: str) -> str:
    """The cdef text as plain C for pycparser: no comments, #defines or WINAPI."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    lines = (line for line in text.splitlines() if not line.lstrip().startswith("#"))
    return _PRELUDE + re.sub(r"\bWINAPI\b", "", "\n".join(lines))


def _spell(node: Any, typedefs: set[str]) -> str:
    """A declarator's type as ``Name`` plus one ``*`` per pointer level (``const`` dropped).

    ``Name`` is a typedef of the cdefs, ``struct TAG`` or one of :data:`C_BASE_TYPES`.
    """
    from pycparser import c_ast

    if isinstance(node, c_ast.PtrDecl):
        return _spell(node.type, typedefs) + "*"
    if isinstance(node, c_ast.Typename):
        return _spell(node.type, typedefs)
    if isinstance(node, c_ast.TypeDecl):
        inner = node.type
        if isinstance(inner, c_ast.Struct):
            return f"struct {inner.name}"
        if isinstance(inner, c_ast.IdentifierType):
            name = " ".join(inner.names)
            if name in C_BASE_TYPES or name in typedefs:
                return name
            raise ValueError(
                f"cdef type {name!r} is neither a cdef typedef nor a fixed-width C type "
                f"({', '.join(sorted(C_BASE_TYPES))})"
            )
    raise ValueError(f"cdef construct not supported by the spec generator: {node!r}")


def make_spec() -> dict[str, Any]:
    """Parse the cdefs: ``TYPEDEFS``, ``STRUCTS`` and ``FUNCTIONS`` (see :func:`render_spec`)."""
    from pycparser import CParser, c_ast

    dll_of: dict[str, str] = {}
    for name in CDEF_FILES:
        text = re.sub(r"/\*.*?\*/", " ", _read(name), flags=re.S)
        for function in _WINAPI_FUNCTION.findall(text):
            dll_of[function] = name.replace(".cdef", ".dll")

    ast = CParser().parse(_pycparser_text(read_cdefs()))
    typedefs: dict[str, str] = {}
    structs: dict[str, tuple[tuple[str, str], ...]] = {}
    functions: dict[str, tuple[str, str, tuple[str, ...]]] = {}
    for ext in ast.ext:
        if isinstance(ext, c_ast.Typedef):
            if ext.name in C_BASE_TYPES:
                continue  # the prelude's stand-ins
            struct = ext.type.type if isinstance(ext.type, c_ast.TypeDecl) else None
            if isinstance(struct, c_ast.Struct) and struct.decls and struct.name not in structs:
                structs[struct.name] = tuple(
                    (field.name, _spell(field.type, set(typedefs))) for field in struct.decls
                )
            typedefs[ext.name] = _spell(ext.type, set(typedefs))
        elif isinstance(ext, c_ast.Decl) and isinstance(ext.type, c_ast.FuncDecl):
            decl = ext.type
            params = decl.args.params if decl.args else []
            args = tuple(_spell(param.type, set(typedefs)) for param in params)
            functions[ext.name] = (dll_of[ext.name], _spell(decl.type, set(typedefs)),
                                   () if args == ("void",) else args)
        else:
            raise ValueError(f"unexpected top-level cdef declaration: {ext!r}")
    missing = set(dll_of) ^ set(functions)
    if missing:
        raise ValueError(f"functions seen by one parser only: {sorted(missing)}")
    return {"TYPEDEFS": typedefs, "STRUCTS": structs, "FUNCTIONS": functions}


def render_spec(spec: dict[str, Any]) -> str:
    """The text of ``_spec.py``: one literal per line, in cdef order."""
    out = [
        "# auto-generated file: cdefs/build_ffi.py from cdefs/*.cdef; do not edit, do not commit",
        '"""The cdefs as data: the ctypes backend builds its structs and prototypes from it.',
        "",
        "A type is a cdef typedef name, ``struct TAG`` or a fixed-width C type (``uint32_t``,",
        "``char16_t``, ``uintptr_t``, ``void``...), then one ``*`` per pointer level.",
        '"""',
        "",
        "# name -> the type it stands for",
        "TYPEDEFS = {",
        *(f"    {name!r}: {target!r}," for name, target in spec["TYPEDEFS"].items()),
        "}",
        "# struct tag -> ((field, type), ...) in declaration order",
        "STRUCTS = {",
    ]
    for tag, fields in spec["STRUCTS"].items():
        out.append(f"    {tag!r}: (")
        out += [f"        ({field!r}, {ctype!r})," for field, ctype in fields]
        out.append("    ),")
    out += ["}", "# function -> (DLL, return type, (parameter types, ...))", "FUNCTIONS = {"]
    for name, (dll, restype, argtypes) in spec["FUNCTIONS"].items():
        out.append(f"    {name!r}: ({dll!r}, {restype!r}, {argtypes!r}),")
    out.append("}")
    return "\n".join(out) + "\n"


def write_spec(path: str) -> None:
    """Write ``_spec.py`` to ``path`` (rewritten only when its text changes)."""
    text = render_spec(make_spec())
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            if handle.read() == text:
                return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(text)


def main() -> int:
    """Write ``msicert_native/_ffi.py`` and ``msicert_native/_spec.py`` into the source tree."""
    root = os.path.dirname(HERE)
    ffibuilder.compile(tmpdir=root, verbose=False)
    write_spec(os.path.join(root, SPEC_MODULE))
    for name in ("_ffi.py", "_spec.py"):
        sys.stdout.write(f"wrote {os.path.join(root, 'msicert_native', name)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
