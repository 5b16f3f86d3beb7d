"""Backend selection, API parity of the two backends, the generated _ffi, Linux stubs."""

from __future__ import annotations

import inspect
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from native_testutil import REPO_ROOT, is_windows

FFI_PY = REPO_ROOT / "msicert_native" / "_ffi.py"


@pytest.fixture(scope="module", autouse=True)
def generated_ffi() -> Path:
    """The tests need msicert_native/_ffi.py: generate it (gitignored) when it is missing."""
    if not FFI_PY.exists():
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
        "print(n.BACKEND, b.impl.__name__)",
        MSICERT_NATIVE_BACKEND=backend,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [backend, f"msicert_native._{backend}_impl"]


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


def test_backends_expose_the_same_functions() -> None:
    from msicert_native import _cffi_impl, _ctypes_impl

    def api(module: object) -> dict[str, str]:
        return {
            name: str(inspect.signature(obj))
            for name, obj in vars(module).items()
            if inspect.isfunction(obj)
            and not name.startswith("_")
            and obj.__module__ == module.__name__  # type: ignore[attr-defined]
        }

    cffi_api, ctypes_api = api(_cffi_impl), api(_ctypes_impl)
    assert cffi_api == ctypes_api
    assert len(cffi_api) >= 35
    for name in cffi_api:
        assert getattr(_cffi_impl, name).__doc__, name


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
