"""Backend selection, parity of the two primitive layers, one wrapper per Win32 call, the
generated _ffi and _spec modules, Linux stubs."""

from __future__ import annotations

import ast
import inspect
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from native_testutil import REPO_ROOT, is_windows

NATIVE = REPO_ROOT / "msicert_native"
FFI_PY = NATIVE / "_ffi.py"
SPEC_PY = NATIVE / "_spec.py"


@pytest.fixture(scope="module", autouse=True)
def generated_ffi() -> Path:
    """The tests need msicert_native/_ffi.py and _spec.py: generate them (gitignored) when
    one is missing."""
    if not (FFI_PY.exists() and SPEC_PY.exists()):
        pytest.importorskip("pycparser")
        subprocess.run(
            [sys.executable, str(REPO_ROOT / "cdefs" / "build_ffi.py")], check=True, timeout=120
        )
    return FFI_PY


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "MSICERT_NATIVE_BACKEND"}
    environ.update(env)
    environ["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=environ,
        cwd=str(REPO_ROOT),
        check=False,
    )


def test_default_backend_is_cffi_when_ffi_is_generated() -> None:
    result = _python("import msicert_native as n; print(n.BACKEND)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "cffi"


@pytest.mark.parametrize("backend", ["cffi", "ctypes"])
def test_env_var_forces_backend(backend: str) -> None:
    result = _python(
        "import msicert_native as n, msicert_native._backend as b\n"
        "print(n.BACKEND, b.primitives.__name__, b.impl.BACKEND)",
        MSICERT_NATIVE_BACKEND=backend,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [backend, f"msicert_native._{backend}_impl", backend]


def test_missing_ffi_falls_back_to_ctypes() -> None:
    result = _python(
        "import sys; sys.modules['msicert_native._ffi'] = None\n"
        "import msicert_native as n; print(n.BACKEND)"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ctypes"


def test_forcing_unavailable_cffi_is_a_clear_import_error() -> None:
    result = _python(
        "import sys; sys.modules['_cffi_backend'] = None\n"
        "try:\n"
        "    import msicert_native\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, '|', exc)\n",
        MSICERT_NATIVE_BACKEND="cffi",
    )
    assert result.returncode == 0, result.stderr
    name, _, message = result.stdout.partition(" | ")
    assert name == "BackendUnavailableError"
    assert "MSICERT_NATIVE_BACKEND=cffi" in message and "build_ffi.py" in message


def test_unknown_backend_name_is_refused() -> None:
    result = _python("import msicert_native", MSICERT_NATIVE_BACKEND="ctype")
    assert result.returncode != 0
    assert "BackendUnavailableError" in result.stderr and "'ctype'" in result.stderr


def test_generated_ffi_imports_without_pycparser() -> None:
    code = (
        "import sys, time; sys.modules['pycparser'] = None; sys.modules['cffi'] = None\n"
        "t = time.perf_counter(); from msicert_native._ffi import ffi\n"
        "print(ffi.sizeof('CERT_CONTEXT'), 'pycparser' in sys.modules and "
        "sys.modules['pycparser'] is not None, time.perf_counter() - t)"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr
    size, loaded, _seconds = result.stdout.split()
    assert (size, loaded) == ("40", "False")


def test_missing_spec_is_a_clear_import_error_naming_the_build() -> None:
    result = _python(
        "import sys; sys.modules['msicert_native._spec'] = None\n"
        "try:\n"
        "    import msicert_native\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, '|', exc)\n"
    )
    assert result.returncode == 0, result.stderr
    name, _, message = result.stdout.partition(" | ")
    assert name == "BackendUnavailableError"
    assert "_spec.py" in message and "build_ffi.py" in message


def test_generated_spec_imports_nothing() -> None:
    tree = ast.parse(SPEC_PY.read_text(encoding="utf-8"))
    assert not [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert SPEC_PY.read_text(encoding="utf-8").startswith("# auto-generated file")


def _primitive_api(module: object) -> dict[str, str]:
    names = module.__all__  # type: ignore[attr-defined]
    return {
        name: str(inspect.signature(obj)) if inspect.isfunction(obj := getattr(module, name))
        else "value"
        for name in names
    }


def test_both_primitive_layers_expose_the_same_primitive_set() -> None:
    from msicert_native import _cffi_impl, _ctypes_impl
    from msicert_native._win32 import Primitives

    protocol = {
        name: "value" if isinstance(member, property)
        else str(inspect.signature(member)).replace("(self, ", "(").replace("(self)", "()")
        for name, member in vars(Primitives).items()
        if not name.startswith("_")
    }
    cffi_api, ctypes_api = _primitive_api(_cffi_impl), _primitive_api(_ctypes_impl)
    assert cffi_api == ctypes_api == protocol
    # Nothing else public: a helper one backend grows is either a primitive or private.
    for module in (_cffi_impl, _ctypes_impl):
        public = {
            name for name, obj in vars(module).items()
            if not name.startswith("_") and inspect.isfunction(obj)
            and obj.__module__ == module.__name__
        }
        assert public <= set(module.__all__), module.__name__
        for name in module.__all__:
            obj = getattr(module, name)
            assert not inspect.isfunction(obj) or obj.__doc__, (module.__name__, name)


@pytest.mark.parametrize("backend", ["cffi", "ctypes"])
def test_primitives_build_the_same_bytes(backend: str) -> None:
    """The same wrapper code gives the same memory through either backend (Linux too)."""
    import importlib

    p = importlib.import_module(f"msicert_native._{backend}_impl")
    name = p.wstr("Ключ-1")
    info = p.new("CRYPT_KEY_PROV_INFO *", {"pwszContainerName": name, "dwProvType": 0,
                                             "dwFlags": 0x20, "dwKeySpec": 2})
    raw = p.bytes_at(info, p.sizeof("CRYPT_KEY_PROV_INFO"))
    assert len(raw) == 48
    assert int.from_bytes(raw[0:8], "little") == p.addr(name) != 0
    assert raw[8:16] == bytes(8)  # pwszProvName left NULL
    assert raw[16:28] == bytes([0, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0])
    assert raw[40:44] == (2).to_bytes(4, "little")
    assert p.wstring(p.cast("CRYPT_KEY_PROV_INFO *", info)[0].pwszContainerName) == "Ключ-1"
    assert p.bytes_at(name, 14) == "Ключ-1\0".encode("utf-16-le")
    assert p.wstring(p.NULL) == "" and p.addr(p.NULL) == 0 and p.bytes_at(p.NULL, 4) == b""
    dword = p.new("DWORD *", 0xFFFFFFFF)
    assert dword[0] == 0xFFFFFFFF and p.bytes_at(dword, 4) == b"\xff" * 4
    assert p.new("NCRYPT_KEY_HANDLE *", 2**63)[0] == 2**63
    assert p.bytes_at(p.from_bytes(b"\x00der\x01"), 5) == b"\x00der\x01"
    assert p.bytes_at(p.new("BYTE[]", 3), 3) == bytes(3)
    assert p.addr(p.cast("PCCERT_CONTEXT", 0x1000)) == 0x1000
    assert p.addr(p.new("PCCERT_CONTEXT *")[0]) == 0
    with pytest.raises(TypeError):
        p.new("BYTE[]", b"not a length")


def _wrapper_calls() -> dict[str, set[str]]:
    """Public Win32 method -> the Win32 functions it names (string constants of the cdefs)."""
    from msicert_native import _spec

    tree = ast.parse((NATIVE / "_win32.py").read_text(encoding="utf-8"))
    (cls,) = (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Win32")
    return {
        method.name: {
            node.value for node in ast.walk(method)
            if isinstance(node, ast.Constant) and node.value in _spec.FUNCTIONS
        }
        for method in cls.body
        if isinstance(method, ast.FunctionDef) and not method.name.startswith("_")
    }


def test_every_cdef_function_is_called_by_a_wrapper_and_only_there() -> None:
    from msicert_native import _spec

    calls = _wrapper_calls()
    assert len(calls) == 45
    used = set().union(*calls.values())
    assert used == set(_spec.FUNCTIONS), sorted(set(_spec.FUNCTIONS) ^ used)
    # Every wrapper makes a native call, except the one that reads a CERT_CONTEXT's fields.
    assert [name for name, functions in calls.items() if not functions] == [
        "cert_context_encoded"
    ]
    # One module calls the cdefs' functions: no other module looks one up (``.fn(...)``).
    for path in NATIVE.glob("*.py"):
        if path.name == "_win32.py":
            continue
        lookups = [
            node.lineno for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "fn"
        ]
        assert lookups == [], (path.name, lookups)


def test_wrappers_bind_to_either_backend_and_are_documented() -> None:
    from msicert_native import _cffi_impl, _ctypes_impl
    from msicert_native._win32 import Win32

    cffi_api, ctypes_api = Win32(_cffi_impl), Win32(_ctypes_impl)
    assert (cffi_api.BACKEND, ctypes_api.BACKEND) == ("cffi", "ctypes")
    for name in _wrapper_calls():
        method = getattr(Win32, name)
        assert getattr(cffi_api, name).__func__ is getattr(ctypes_api, name).__func__ is method
        assert method.__doc__, name


@pytest.mark.skipif(is_windows(), reason="checks the non-Windows stubs")
@pytest.mark.parametrize("backend", ["cffi", "ctypes"])
def test_non_windows_calls_raise_windows_required(backend: str) -> None:
    code = (
        "import msicert_native as n\n"
        "calls = [lambda: n.open_system_store(), lambda: n.open_provider(),\n"
        "         lambda: n.https_request('GET', 'https://example.invalid/'),\n"
        "         lambda: n.named_mutex('x', 1).__enter__()]\n"
        "for call in calls:\n"
        "    try:\n"
        "        call()\n"
        "    except n.WindowsRequiredError as exc:\n"
        "        assert isinstance(exc, OSError) and isinstance(exc, n.NativeError)\n"
        "        print(exc.function, '|', exc)\n"
    )
    result = _python(code, MSICERT_NATIVE_BACKEND=backend)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert [line.split(" | ")[0] for line in lines] == [
        "CertOpenStore",
        "NCryptOpenStorageProvider",
        "WinHttpOpen",
        "CreateMutexW",
    ]
    assert all("needs Windows" in line for line in lines)


def test_native_error_formats_status_and_winerror() -> None:
    from msicert_native import NativeError

    err = NativeError("NCryptOpenKey", status=-2146893802, detail="Keyset does not exist")
    assert err.status == 0x80090016 and err.code == 0x80090016 and err.winerror is None
    assert str(err) == "NCryptOpenKey failed: status 0x80090016: Keyset does not exist"
    err = NativeError("CertOpenStore", winerror=5)
    assert (err.winerror, err.status, err.code) == (5, None, 5)
    assert str(err) == "CertOpenStore failed: winerror 5 (0x00000005)"
    assert isinstance(err, OSError)


def test_rsa_public_blob_to_spki_matches_cryptography() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from msicert_native import rsa_public_blob_to_spki

    for exponent in (3, 65537):
        key = rsa.generate_private_key(exponent, 2048)
        numbers = key.public_key().public_numbers()
        e = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
        n = numbers.n.to_bytes(256, "big")
        blob = struct.pack("<6I", 0x31415352, 2048, len(e), len(n), 0, 0) + e + n
        expected = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        assert rsa_public_blob_to_spki(blob) == expected
    with pytest.raises(ValueError):
        rsa_public_blob_to_spki(b"\0" * 24)


def test_parse_raw_headers() -> None:
    from msicert_native._winhttp import parse_raw_headers

    raw = "HTTP/1.1 200 OK\r\nContent-Type: a/b\r\nX-A: 1\r\nx-a: 2\r\nbad line\r\n\r\n\0"
    assert parse_raw_headers(raw) == {"content-type": "a/b", "x-a": "1, 2"}


def test_handles_close_once_and_finalize_unclosed() -> None:
    from msicert_native._handles import NativeHandle

    released: list[int] = []
    handle = NativeHandle(7, released.append)
    with handle as same:
        assert same.handle == 7
    handle.close()
    assert released == [7] and handle.closed
    with pytest.raises(ValueError):
        _ = handle.handle
    NativeHandle(9, released.append)  # dropped unclosed: the finalizer releases it
    import gc

    gc.collect()
    assert released == [7, 9]
