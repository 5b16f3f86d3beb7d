"""cffi backend (preferred): the same functions as ``_ctypes_impl``, over the generated ``_ffi``.

``_ffi`` is produced by ``cdefs/build_ffi.py`` (out-of-line ABI mode): importing it needs
``_cffi_backend`` but neither pycparser nor a compiler. DLLs are opened on first use, so the
import works on every platform. Handles cross this module as ``int``. cffi saves GetLastError
right after every call; ``ffi.getwinerror()`` reads that saved value.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Final

from . import _constants as C
from ._errors import (
    NativeError,
    WindowsRequiredError,
    check_bool,
    check_handle,
    check_status,
)
from ._errors import (
    clean_message as _clean,
)
from ._errors import (
    signed32 as _signed,
)
from ._ffi import ffi
from ._types import KeyProvInfo

BACKEND: Final = "cffi"

_DLL_OF: Final = {
    "Cert": "crypt32.dll",
    "NCrypt": "ncrypt.dll",
    "WinHttp": "winhttp.dll",
}


@functools.cache
def _dll(name: str) -> Any:
    if sys.platform != "win32":
        raise WindowsRequiredError(name)
    return ffi.dlopen(name)


_ADVAPI32: Final = frozenset({"OpenProcessToken", "GetTokenInformation", "ConvertSidToStringSidW"})


def _fn(name: str) -> Any:
    """The Win32 function ``name`` from its DLL (opened once)."""
    if sys.platform != "win32":
        raise WindowsRequiredError(name)
    if name in _ADVAPI32:
        return getattr(_dll("advapi32.dll"), name)
    prefix = next((p for p in _DLL_OF if name.startswith(p)), "")
    return getattr(_dll(_DLL_OF.get(prefix, "kernel32.dll")), name)


def _last_error() -> tuple[int, str]:
    code, message = ffi.getwinerror()
    return int(code), _clean(str(message))


def _describe(status: int) -> str:
    return _clean(str(ffi.getwinerror(_signed(status))[1])) if sys.platform == "win32" else ""


def _wstr(text: str) -> Any:
    return ffi.new("WCHAR[]", text)


def _wstring_at(pointer: Any) -> str:
    return "" if pointer == ffi.NULL else str(ffi.string(pointer))


def _addr(pointer: Any) -> int:
    return int(ffi.cast("uintptr_t", pointer))


def _ctx(address: int) -> Any:
    return ffi.cast("PCCERT_CONTEXT", address)


def _handle(address: int) -> Any:
    return ffi.cast("void *", address)


def _check_bool(result: int, function: str) -> None:
    check_bool(result, function, _last_error)


def _check_handle(pointer: Any, function: str) -> int:
    if pointer == ffi.NULL:
        check_handle(None, function, _last_error)
    return _addr(pointer)


def _check_status(status: int, function: str) -> None:
    check_status(status, function, _describe)


def _end_or_raise(pointer: Any, function: str) -> int:
    """Enumeration result: the context, or 0 when the store has no more (not an error)."""
    if pointer != ffi.NULL:
        return _addr(pointer)
    code, detail = _last_error()
    if code & 0xFFFFFFFF in (C.CRYPT_E_NOT_FOUND, C.ERROR_NO_MORE_FILES):
        return 0
    raise NativeError(function, winerror=code, detail=detail)


def _buffer(size: int) -> Any:
    return ffi.new("BYTE[]", size) if size else ffi.NULL


def _bytes(buffer: Any, size: int) -> bytes:
    return b"" if buffer == ffi.NULL else bytes(ffi.buffer(buffer, size))


# ---- crypt32 -------------------------------------------------------------------------------


def cert_open_store_system(flags: int, name: str) -> int:
    """CertOpenStore(CERT_STORE_PROV_SYSTEM_W, 0, 0, flags, name) -> HCERTSTORE."""
    provider = ffi.cast("LPCSTR", C.CERT_STORE_PROV_SYSTEM_W)
    result = _fn("CertOpenStore")(provider, 0, 0, flags, _wstr(name))
    return _check_handle(result, "CertOpenStore")


def cert_close_store(store: int) -> None:
    """CertCloseStore(store, 0)."""
    _check_bool(_fn("CertCloseStore")(_handle(store), 0), "CertCloseStore")


def cert_control_store_commit(store: int) -> None:
    """CertControlStore(store, 0, CERT_STORE_CTRL_COMMIT, NULL): flush to the registry."""
    result = _fn("CertControlStore")(_handle(store), 0, C.CERT_STORE_CTRL_COMMIT, ffi.NULL)
    _check_bool(result, "CertControlStore")


def cert_enum_certificates_in_store(store: int, prev: int) -> int:
    """CertEnumCertificatesInStore: next context or 0 at the end; frees ``prev``."""
    result = _fn("CertEnumCertificatesInStore")(_handle(store), _ctx(prev))
    return _end_or_raise(result, "CertEnumCertificatesInStore")


def cert_find_certificate_in_store(store: int, find_type: int, text: str, prev: int) -> int:
    """CertFindCertificateInStore with a wide-string find type: next match or 0; frees prev."""
    result = _fn("CertFindCertificateInStore")(
        _handle(store),
        C.X509_ASN_ENCODING | C.PKCS_7_ASN_ENCODING,
        0,
        find_type,
        _wstr(text),
        _ctx(prev),
    )
    return _end_or_raise(result, "CertFindCertificateInStore")


def cert_create_certificate_context(der: bytes) -> int:
    """CertCreateCertificateContext(X509_ASN_ENCODING, der) -> PCCERT_CONTEXT."""
    encoded = ffi.from_buffer("BYTE[]", der)
    result = _fn("CertCreateCertificateContext")(C.X509_ASN_ENCODING, encoded, len(der))
    return _check_handle(result, "CertCreateCertificateContext")


def cert_add_certificate_context_to_store(store: int, ctx: int, disposition: int) -> int:
    """CertAddCertificateContextToStore -> the store's own (new) context."""
    out = ffi.new("PCCERT_CONTEXT *")
    result = _fn("CertAddCertificateContextToStore")(_handle(store), _ctx(ctx), disposition, out)
    _check_bool(result, "CertAddCertificateContextToStore")
    return _addr(out[0])


def cert_delete_certificate_from_store(ctx: int) -> None:
    """CertDeleteCertificateFromStore: always frees ``ctx``, even when it fails."""
    result = _fn("CertDeleteCertificateFromStore")(_ctx(ctx))
    _check_bool(result, "CertDeleteCertificateFromStore")


def cert_get_property_bytes(ctx: int, prop_id: int, size: int) -> tuple[int, bytes | None]:
    """CertGetCertificateContextProperty once: ``size`` 0 asks for the size only."""
    buffer = _buffer(size)
    needed = ffi.new("DWORD *", size)
    result = _fn("CertGetCertificateContextProperty")(_ctx(ctx), prop_id, buffer, needed)
    _check_bool(result, "CertGetCertificateContextProperty")
    return needed[0], None if buffer == ffi.NULL else _bytes(buffer, needed[0])


def cert_get_key_prov_info(ctx: int, size: int) -> tuple[int, KeyProvInfo | None]:
    """CertGetCertificateContextProperty(CERT_KEY_PROV_INFO_PROP_ID) decoded in place."""
    buffer = ffi.new("BYTE[]", max(size, ffi.sizeof("CRYPT_KEY_PROV_INFO")))
    needed = ffi.new("DWORD *", size)
    result = _fn("CertGetCertificateContextProperty")(
        _ctx(ctx), C.CERT_KEY_PROV_INFO_PROP_ID, buffer if size else ffi.NULL, needed
    )
    _check_bool(result, "CertGetCertificateContextProperty")
    if not size:
        return needed[0], None
    info = ffi.cast("CRYPT_KEY_PROV_INFO *", buffer)
    return needed[0], KeyProvInfo(
        _wstring_at(info.pwszContainerName),
        _wstring_at(info.pwszProvName),
        int(info.dwProvType),
        int(info.dwFlags),
        int(info.dwKeySpec),
    )


def cert_set_property_bytes(ctx: int, prop_id: int, data: bytes | None) -> None:
    """CertSetCertificateContextProperty with a CRYPT_DATA_BLOB (``None`` deletes it)."""
    keep = ffi.new("BYTE[]", data or b"\0")
    blob = ffi.new("CRYPT_DATA_BLOB *", {"cbData": len(data or b""), "pbData": keep})
    result = _fn("CertSetCertificateContextProperty")(
        _ctx(ctx), prop_id, 0, ffi.NULL if data is None else blob
    )
    _check_bool(result, "CertSetCertificateContextProperty")


def cert_set_key_prov_info(ctx: int, info: KeyProvInfo) -> None:
    """CertSetCertificateContextProperty(CERT_KEY_PROV_INFO_PROP_ID)."""
    container, provider = _wstr(info.container), _wstr(info.provider)
    struct = ffi.new(
        "CRYPT_KEY_PROV_INFO *",
        {
            "pwszContainerName": container,
            "pwszProvName": provider,
            "dwProvType": info.prov_type,
            "dwFlags": info.flags,
            "dwKeySpec": info.key_spec,
        },
    )
    result = _fn("CertSetCertificateContextProperty")(
        _ctx(ctx), C.CERT_KEY_PROV_INFO_PROP_ID, 0, struct
    )
    _check_bool(result, "CertSetCertificateContextProperty")


def cert_duplicate_certificate_context(ctx: int) -> int:
    """CertDuplicateCertificateContext: one more reference on ``ctx``."""
    result = _fn("CertDuplicateCertificateContext")(_ctx(ctx))
    return _check_handle(result, "CertDuplicateCertificateContext")


def cert_free_certificate_context(ctx: int) -> None:
    """CertFreeCertificateContext."""
    result = _fn("CertFreeCertificateContext")(_ctx(ctx))
    _check_bool(result, "CertFreeCertificateContext")


def cert_context_encoded(ctx: int) -> bytes:
    """The DER bytes of a CERT_CONTEXT (no call: reads pbCertEncoded/cbCertEncoded)."""
    context = _ctx(ctx)
    return bytes(ffi.buffer(context.pbCertEncoded, context.cbCertEncoded))


# ---- ncrypt --------------------------------------------------------------------------------


def ncrypt_open_storage_provider(name: str, flags: int) -> int:
    """NCryptOpenStorageProvider -> NCRYPT_PROV_HANDLE."""
    handle = ffi.new("NCRYPT_PROV_HANDLE *")
    status = _fn("NCryptOpenStorageProvider")(handle, _wstr(name), flags)
    _check_status(status, "NCryptOpenStorageProvider")
    return int(handle[0])


def ncrypt_create_persisted_key(
    provider: int, algorithm: str, name: str | None, legacy_spec: int, flags: int
) -> int:
    """NCryptCreatePersistedKey -> NCRYPT_KEY_HANDLE (not usable before finalize)."""
    handle = ffi.new("NCRYPT_KEY_HANDLE *")
    status = _fn("NCryptCreatePersistedKey")(
        provider,
        handle,
        _wstr(algorithm),
        ffi.NULL if name is None else _wstr(name),
        legacy_spec,
        flags,
    )
    _check_status(status, "NCryptCreatePersistedKey")
    return int(handle[0])


def ncrypt_open_key(provider: int, name: str, legacy_spec: int, flags: int) -> int:
    """NCryptOpenKey -> NCRYPT_KEY_HANDLE of a persisted key."""
    handle = ffi.new("NCRYPT_KEY_HANDLE *")
    status = _fn("NCryptOpenKey")(provider, handle, _wstr(name), legacy_spec, flags)
    _check_status(status, "NCryptOpenKey")
    return int(handle[0])


def ncrypt_set_property(handle: int, prop: str, data: bytes, flags: int) -> None:
    """NCryptSetProperty(handle, prop, data, flags)."""
    buffer = ffi.new("BYTE[]", data)
    status = _fn("NCryptSetProperty")(handle, _wstr(prop), buffer, len(data), flags)
    _check_status(status, "NCryptSetProperty")


def ncrypt_get_property(handle: int, prop: str, size: int, flags: int) -> tuple[int, bytes]:
    """NCryptGetProperty once: ``size`` 0 asks for the size only."""
    buffer = _buffer(size)
    needed = ffi.new("DWORD *")
    status = _fn("NCryptGetProperty")(handle, _wstr(prop), buffer, size, needed, flags)
    _check_status(status, "NCryptGetProperty")
    return needed[0], _bytes(buffer, needed[0])


def ncrypt_finalize_key(key: int, flags: int) -> None:
    """NCryptFinalizeKey: generate and persist the key."""
    _check_status(_fn("NCryptFinalizeKey")(key, flags), "NCryptFinalizeKey")


def ncrypt_sign_hash(
    key: int, padding_flag: int, hash_algorithm: str, salt: int, digest: bytes, size: int
) -> tuple[int, bytes]:
    """NCryptSignHash once with PSS or PKCS#1 padding: ``size`` 0 asks for the size only."""
    algorithm = _wstr(hash_algorithm)
    if padding_flag == C.NCRYPT_PAD_PSS_FLAG:
        padding = ffi.new("BCRYPT_PSS_PADDING_INFO *", {"pszAlgId": algorithm, "cbSalt": salt})
    else:
        padding = ffi.new("BCRYPT_PKCS1_PADDING_INFO *", {"pszAlgId": algorithm})
    signature = _buffer(size)
    needed = ffi.new("DWORD *")
    status = _fn("NCryptSignHash")(
        key,
        padding,
        ffi.from_buffer("BYTE[]", digest),
        len(digest),
        signature,
        size,
        needed,
        padding_flag,
    )
    _check_status(status, "NCryptSignHash")
    return needed[0], _bytes(signature, needed[0])


def ncrypt_export_key(key: int, blob_type: str, size: int) -> tuple[int, bytes]:
    """NCryptExportKey(key, 0, blob_type, NULL, ...) once: ``size`` 0 asks for the size."""
    buffer = _buffer(size)
    needed = ffi.new("DWORD *")
    status = _fn("NCryptExportKey")(key, 0, _wstr(blob_type), ffi.NULL, buffer, size, needed, 0)
    _check_status(status, "NCryptExportKey")
    return needed[0], _bytes(buffer, needed[0])


def ncrypt_delete_key(key: int, flags: int) -> None:
    """NCryptDeleteKey: deletes the persisted key and frees the handle (on success)."""
    _check_status(_fn("NCryptDeleteKey")(key, flags), "NCryptDeleteKey")


def ncrypt_free_object(handle: int) -> None:
    """NCryptFreeObject (provider or key handle)."""
    _check_status(_fn("NCryptFreeObject")(handle), "NCryptFreeObject")


# ---- winhttp -------------------------------------------------------------------------------


def winhttp_open(agent: str, access_type: int, flags: int) -> int:
    """WinHttpOpen -> session HINTERNET (synchronous)."""
    result = _fn("WinHttpOpen")(_wstr(agent), access_type, ffi.NULL, ffi.NULL, flags)
    return _check_handle(result, "WinHttpOpen")


def winhttp_connect(session: int, host: str, port: int) -> int:
    """WinHttpConnect -> connection HINTERNET."""
    result = _fn("WinHttpConnect")(_handle(session), _wstr(host), port, 0)
    return _check_handle(result, "WinHttpConnect")


def winhttp_open_request(connect: int, verb: str, path: str, flags: int) -> int:
    """WinHttpOpenRequest(HTTP/1.1, no referrer, any accept type) -> request HINTERNET."""
    result = _fn("WinHttpOpenRequest")(
        _handle(connect), _wstr(verb), _wstr(path), ffi.NULL, ffi.NULL, ffi.NULL, flags
    )
    return _check_handle(result, "WinHttpOpenRequest")


def winhttp_set_timeouts(handle: int, resolve: int, connect: int, send: int, receive: int) -> None:
    """WinHttpSetTimeouts (milliseconds)."""
    result = _fn("WinHttpSetTimeouts")(_handle(handle), resolve, connect, send, receive)
    _check_bool(result, "WinHttpSetTimeouts")


def winhttp_set_option_dword(handle: int, option: int, value: int) -> None:
    """WinHttpSetOption with a DWORD value."""
    dword = ffi.new("DWORD *", value)
    result = _fn("WinHttpSetOption")(_handle(handle), option, dword, 4)
    _check_bool(result, "WinHttpSetOption")


def winhttp_set_option_cert_context(handle: int, ctx: int) -> None:
    """WinHttpSetOption(WINHTTP_OPTION_CLIENT_CERT_CONTEXT, ctx, sizeof(CERT_CONTEXT))."""
    result = _fn("WinHttpSetOption")(
        _handle(handle),
        C.WINHTTP_OPTION_CLIENT_CERT_CONTEXT,
        _handle(ctx),
        ffi.sizeof("CERT_CONTEXT"),
    )
    _check_bool(result, "WinHttpSetOption")


def winhttp_send_request(request: int, headers: str, body: bytes) -> None:
    """WinHttpSendRequest with all headers and the whole body at once."""
    payload = ffi.from_buffer(body) if body else ffi.NULL
    result = _fn("WinHttpSendRequest")(
        _handle(request),
        _wstr(headers) if headers else ffi.NULL,
        len(headers.encode("utf-16-le")) // 2,
        payload,
        len(body),
        len(body),
        0,
    )
    _check_bool(result, "WinHttpSendRequest")


def winhttp_receive_response(request: int) -> None:
    """WinHttpReceiveResponse (blocks until the headers arrived)."""
    result = _fn("WinHttpReceiveResponse")(_handle(request), ffi.NULL)
    _check_bool(result, "WinHttpReceiveResponse")


def winhttp_query_status_code(request: int) -> int:
    """WinHttpQueryHeaders(WINHTTP_QUERY_STATUS_CODE | WINHTTP_QUERY_FLAG_NUMBER)."""
    value, length = ffi.new("DWORD *"), ffi.new("DWORD *", 4)
    result = _fn("WinHttpQueryHeaders")(
        _handle(request),
        C.WINHTTP_QUERY_STATUS_CODE | C.WINHTTP_QUERY_FLAG_NUMBER,
        ffi.NULL,
        value,
        length,
        ffi.NULL,
    )
    _check_bool(result, "WinHttpQueryHeaders")
    return int(value[0])


def winhttp_query_raw_headers(request: int, size: int) -> tuple[int, str | None]:
    """WinHttpQueryHeaders(RAW_HEADERS_CRLF) once: ``size`` (bytes) 0 asks for the size."""
    buffer = _buffer(size)
    length = ffi.new("DWORD *", size)
    result = _fn("WinHttpQueryHeaders")(
        _handle(request), C.WINHTTP_QUERY_RAW_HEADERS_CRLF, ffi.NULL, buffer, length, ffi.NULL
    )
    if not result:
        code, detail = _last_error()
        if code == C.ERROR_INSUFFICIENT_BUFFER and buffer == ffi.NULL:
            return length[0], None
        raise NativeError("WinHttpQueryHeaders", winerror=code, detail=detail)
    return length[0], _bytes(buffer, length[0]).decode("utf-16-le")


def winhttp_read_data(request: int, size: int) -> bytes:
    """WinHttpReadData once: up to ``size`` bytes, ``b""`` at the end of the body."""
    buffer = ffi.new("BYTE[]", size)
    read = ffi.new("DWORD *")
    result = _fn("WinHttpReadData")(_handle(request), buffer, size, read)
    _check_bool(result, "WinHttpReadData")
    return bytes(ffi.buffer(buffer, read[0]))


def winhttp_close_handle(handle: int) -> None:
    """WinHttpCloseHandle (session, connection or request)."""
    _check_bool(_fn("WinHttpCloseHandle")(_handle(handle)), "WinHttpCloseHandle")


# ---- kernel32 ------------------------------------------------------------------------------


def create_mutex(name: str) -> int:
    """CreateMutexW(NULL, FALSE, name): opens or creates the named mutex."""
    return _check_handle(_fn("CreateMutexW")(ffi.NULL, 0, _wstr(name)), "CreateMutexW")


def wait_for_single_object(handle: int, timeout_ms: int) -> int:
    """WaitForSingleObject -> WAIT_OBJECT_0 / WAIT_ABANDONED / WAIT_TIMEOUT."""
    result = int(_fn("WaitForSingleObject")(_handle(handle), timeout_ms))
    if result == C.WAIT_FAILED:
        code, detail = _last_error()
        raise NativeError("WaitForSingleObject", winerror=code, detail=detail)
    return result


def release_mutex(handle: int) -> None:
    """ReleaseMutex."""
    _check_bool(_fn("ReleaseMutex")(_handle(handle)), "ReleaseMutex")


def close_handle(handle: int) -> None:
    """CloseHandle."""
    _check_bool(_fn("CloseHandle")(_handle(handle)), "CloseHandle")


# ---- advapi32 -----------------------------------------------------------------------------


def current_user_sid() -> str:
    """The process token's user SID as text (``S-1-5-21-...``)."""
    token = ffi.new("HANDLE *")
    result = _fn("OpenProcessToken")(_fn("GetCurrentProcess")(), C.TOKEN_QUERY, token)
    _check_bool(result, "OpenProcessToken")
    try:
        size = ffi.new("DWORD *")
        # The sizing call fails by design (ERROR_INSUFFICIENT_BUFFER) and reports the size.
        if not _fn("GetTokenInformation")(token[0], C.TokenUser, ffi.NULL, 0, size):
            code, detail = _last_error()
            if code != C.ERROR_INSUFFICIENT_BUFFER:
                raise NativeError("GetTokenInformation", winerror=code, detail=detail)
        buffer = ffi.new("BYTE[]", size[0])
        result = _fn("GetTokenInformation")(token[0], C.TokenUser, buffer, size[0], size)
        _check_bool(result, "GetTokenInformation")
        user = ffi.cast("TOKEN_USER *", buffer)
        text = ffi.new("LPWSTR *")
        _check_bool(_fn("ConvertSidToStringSidW")(user.User.Sid, text), "ConvertSidToStringSidW")
        try:
            return _wstring_at(text[0])
        finally:
            _fn("LocalFree")(text[0])
    finally:
        _fn("CloseHandle")(token[0])
