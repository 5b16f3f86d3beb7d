"""ctypes backend: crypt32 / ncrypt / winhttp / kernel32, one checked call per wrapper.

Fallback when cffi or the generated ``_ffi`` module is missing. Struct fields use fixed-width
ctypes types only (``ctypes.wintypes`` has 8-byte LONG/ULONG on Linux, which would break the
layout tests); wide strings are passed as explicit UTF-16-LE buffers. DLLs are loaded on first
use, so importing this module works on every platform. Handles cross this module as ``int``.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable
from ctypes import POINTER, Structure, byref, c_int, c_int32, c_size_t, c_uint16, c_uint32
from ctypes import c_void_p as _ptr
from typing import Any, Final

from . import _constants as C
from ._ctypes_structs import (
    BCRYPT_PKCS1_PADDING_INFO,
    BCRYPT_PSS_PADDING_INFO,
    CERT_CONTEXT,
    CRYPT_KEY_PROV_INFO,
    CRYPTOAPI_BLOB,
)
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
from ._types import KeyProvInfo

BACKEND: Final = "ctypes"


_DW = c_uint32
_PDW = POINTER(c_uint32)
_ULP = c_size_t  # ULONG_PTR / NCRYPT_*_HANDLE: 8 bytes on Win64
# name -> (dll, restype, argtypes); pointers and wide strings are c_void_p.
_PROTOTYPES: Final[dict[str, tuple[str, Any, tuple[Any, ...]]]] = {
    "CertOpenStore": ("crypt32", _ptr, (_ptr, _DW, _ULP, _DW, _ptr)),
    "CertCloseStore": ("crypt32", c_int32, (_ptr, _DW)),
    "CertControlStore": ("crypt32", c_int32, (_ptr, _DW, _DW, _ptr)),
    "CertEnumCertificatesInStore": ("crypt32", _ptr, (_ptr, _ptr)),
    "CertFindCertificateInStore": ("crypt32", _ptr, (_ptr, _DW, _DW, _DW, _ptr, _ptr)),
    "CertCreateCertificateContext": ("crypt32", _ptr, (_DW, _ptr, _DW)),
    "CertAddCertificateContextToStore": ("crypt32", c_int32, (_ptr, _ptr, _DW, POINTER(_ptr))),
    "CertDeleteCertificateFromStore": ("crypt32", c_int32, (_ptr,)),
    "CertGetCertificateContextProperty": ("crypt32", c_int32, (_ptr, _DW, _ptr, _PDW)),
    "CertSetCertificateContextProperty": ("crypt32", c_int32, (_ptr, _DW, _DW, _ptr)),
    "CertDuplicateCertificateContext": ("crypt32", _ptr, (_ptr,)),
    "CertFreeCertificateContext": ("crypt32", c_int32, (_ptr,)),
    "NCryptOpenStorageProvider": ("ncrypt", c_int32, (POINTER(_ULP), _ptr, _DW)),
    "NCryptCreatePersistedKey": ("ncrypt", c_int32, (_ULP, POINTER(_ULP), _ptr, _ptr, _DW, _DW)),
    "NCryptOpenKey": ("ncrypt", c_int32, (_ULP, POINTER(_ULP), _ptr, _DW, _DW)),
    "NCryptSetProperty": ("ncrypt", c_int32, (_ULP, _ptr, _ptr, _DW, _DW)),
    "NCryptGetProperty": ("ncrypt", c_int32, (_ULP, _ptr, _ptr, _DW, _PDW, _DW)),
    "NCryptFinalizeKey": ("ncrypt", c_int32, (_ULP, _DW)),
    "NCryptSignHash": ("ncrypt", c_int32, (_ULP, _ptr, _ptr, _DW, _ptr, _DW, _PDW, _DW)),
    "NCryptExportKey": ("ncrypt", c_int32, (_ULP, _ULP, _ptr, _ptr, _ptr, _DW, _PDW, _DW)),
    "NCryptDeleteKey": ("ncrypt", c_int32, (_ULP, _DW)),
    "NCryptFreeObject": ("ncrypt", c_int32, (_ULP,)),
    "WinHttpOpen": ("winhttp", _ptr, (_ptr, _DW, _ptr, _ptr, _DW)),
    "WinHttpConnect": ("winhttp", _ptr, (_ptr, _ptr, c_uint16, _DW)),
    "WinHttpOpenRequest": ("winhttp", _ptr, (_ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _DW)),
    "WinHttpSetTimeouts": ("winhttp", c_int32, (_ptr, c_int, c_int, c_int, c_int)),
    "WinHttpSetOption": ("winhttp", c_int32, (_ptr, _DW, _ptr, _DW)),
    "WinHttpSendRequest": ("winhttp", c_int32, (_ptr, _ptr, _DW, _ptr, _DW, _DW, _ULP)),
    "WinHttpReceiveResponse": ("winhttp", c_int32, (_ptr, _ptr)),
    "WinHttpQueryHeaders": ("winhttp", c_int32, (_ptr, _DW, _ptr, _ptr, _PDW, _PDW)),
    "WinHttpReadData": ("winhttp", c_int32, (_ptr, _ptr, _DW, _PDW)),
    "WinHttpCloseHandle": ("winhttp", c_int32, (_ptr,)),
    "CreateMutexW": ("kernel32", _ptr, (_ptr, c_int32, _ptr)),
    "WaitForSingleObject": ("kernel32", _DW, (_ptr, _DW)),
    "ReleaseMutex": ("kernel32", c_int32, (_ptr,)),
    "CloseHandle": ("kernel32", c_int32, (_ptr,)),
    "GetCurrentProcess": ("kernel32", _ptr, ()),
    "LocalFree": ("kernel32", _ptr, (_ptr,)),
    "OpenProcessToken": ("advapi32", c_int32, (_ptr, _DW, POINTER(_ptr))),
    "GetTokenInformation": ("advapi32", c_int32, (_ptr, _DW, _ptr, _DW, _PDW)),
    "ConvertSidToStringSidW": ("advapi32", c_int32, (_ptr, POINTER(_ptr))),
}


@functools.cache
def _dll(name: str) -> Any:
    if sys.platform != "win32":
        raise WindowsRequiredError(f"{name}.dll")
    return ctypes.WinDLL(name, use_last_error=True)


@functools.cache
def _fn(name: str) -> Callable[..., Any]:
    """The bound Win32 function ``name`` (argtypes/restype set once)."""
    if sys.platform != "win32":
        raise WindowsRequiredError(name)
    dll, restype, argtypes = _PROTOTYPES[name]
    func: Any = getattr(_dll(dll), name)
    func.restype, func.argtypes = restype, argtypes
    bound: Callable[..., Any] = func
    return bound


def _last_error() -> tuple[int, str]:
    if sys.platform == "win32":
        code = ctypes.get_last_error()
        return code, _clean(ctypes.FormatError(_signed(code)))
    raise WindowsRequiredError("GetLastError")  # pragma: no cover - unreachable off Windows


def _describe(status: int) -> str:
    if sys.platform == "win32":
        return _clean(ctypes.FormatError(_signed(status)))
    return ""  # pragma: no cover


def _wstr(text: str) -> ctypes.Array[ctypes.c_char]:
    """A NUL-terminated UTF-16-LE copy of ``text`` (WCHAR is 2 bytes on Windows)."""
    return ctypes.create_string_buffer((text + "\0").encode("utf-16-le"))


def _wstring_at(address: int | None) -> str:
    if not address:
        return ""
    end = address
    while ctypes.c_uint16.from_address(end).value:
        end += 2
    return ctypes.string_at(address, end - address).decode("utf-16-le")


def _check_bool(result: int, function: str) -> None:
    check_bool(result, function, _last_error)


def _check_handle(handle: int | None, function: str) -> int:
    return check_handle(handle, function, _last_error)


def _check_status(status: int, function: str) -> None:
    check_status(status, function, _describe)


def _addr(value: int | None) -> int:
    return value or 0


# ---- crypt32 -------------------------------------------------------------------------------


def cert_open_store_system(flags: int, name: str) -> int:
    """CertOpenStore(CERT_STORE_PROV_SYSTEM_W, 0, 0, flags, name) -> HCERTSTORE."""
    result = _fn("CertOpenStore")(C.CERT_STORE_PROV_SYSTEM_W, 0, 0, flags, _wstr(name))
    return _check_handle(result, "CertOpenStore")


def cert_close_store(store: int) -> None:
    """CertCloseStore(store, 0)."""
    _check_bool(_fn("CertCloseStore")(store, 0), "CertCloseStore")


def cert_control_store_commit(store: int) -> None:
    """CertControlStore(store, 0, CERT_STORE_CTRL_COMMIT, NULL): flush to the registry."""
    result = _fn("CertControlStore")(store, 0, C.CERT_STORE_CTRL_COMMIT, None)
    _check_bool(result, "CertControlStore")


def _end_or_raise(result: int | None, function: str) -> int:
    """Enumeration result: the context, or 0 when the store has no more (not an error)."""
    if result:
        return result
    code, detail = _last_error()
    if code & 0xFFFFFFFF in (C.CRYPT_E_NOT_FOUND, C.ERROR_NO_MORE_FILES):
        return 0
    raise NativeError(function, winerror=code, detail=detail)


def cert_enum_certificates_in_store(store: int, prev: int) -> int:
    """CertEnumCertificatesInStore: next context or 0 at the end; frees ``prev``."""
    result = _fn("CertEnumCertificatesInStore")(store, prev or None)
    return _end_or_raise(result, "CertEnumCertificatesInStore")


def cert_find_certificate_in_store(store: int, find_type: int, text: str, prev: int) -> int:
    """CertFindCertificateInStore with a wide-string find type: next match or 0; frees prev."""
    result = _fn("CertFindCertificateInStore")(
        store,
        C.X509_ASN_ENCODING | C.PKCS_7_ASN_ENCODING,
        0,
        find_type,
        _wstr(text),
        prev or None,
    )
    return _end_or_raise(result, "CertFindCertificateInStore")


def cert_create_certificate_context(der: bytes) -> int:
    """CertCreateCertificateContext(X509_ASN_ENCODING, der) -> PCCERT_CONTEXT."""
    result = _fn("CertCreateCertificateContext")(C.X509_ASN_ENCODING, der, len(der))
    return _check_handle(result, "CertCreateCertificateContext")


def cert_add_certificate_context_to_store(store: int, ctx: int, disposition: int) -> int:
    """CertAddCertificateContextToStore -> the store's own (new) context."""
    out = _ptr()
    result = _fn("CertAddCertificateContextToStore")(store, ctx, disposition, byref(out))
    _check_bool(result, "CertAddCertificateContextToStore")
    return _addr(out.value)


def cert_delete_certificate_from_store(ctx: int) -> None:
    """CertDeleteCertificateFromStore: always frees ``ctx``, even when it fails."""
    _check_bool(_fn("CertDeleteCertificateFromStore")(ctx), "CertDeleteCertificateFromStore")


def cert_get_property_bytes(ctx: int, prop_id: int, size: int) -> tuple[int, bytes | None]:
    """CertGetCertificateContextProperty once: ``size`` 0 asks for the size only."""
    buffer = ctypes.create_string_buffer(size) if size else None
    needed = c_uint32(size)
    result = _fn("CertGetCertificateContextProperty")(ctx, prop_id, buffer, byref(needed))
    _check_bool(result, "CertGetCertificateContextProperty")
    return needed.value, None if buffer is None else buffer.raw[: needed.value]


def cert_get_key_prov_info(ctx: int, size: int) -> tuple[int, KeyProvInfo | None]:
    """CertGetCertificateContextProperty(CERT_KEY_PROV_INFO_PROP_ID) decoded in place."""
    buffer = ctypes.create_string_buffer(max(size, ctypes.sizeof(CRYPT_KEY_PROV_INFO)))
    needed = c_uint32(size)
    result = _fn("CertGetCertificateContextProperty")(
        ctx, C.CERT_KEY_PROV_INFO_PROP_ID, buffer if size else None, byref(needed)
    )
    _check_bool(result, "CertGetCertificateContextProperty")
    if not size:
        return needed.value, None
    info = CRYPT_KEY_PROV_INFO.from_buffer(buffer)
    return needed.value, KeyProvInfo(
        _wstring_at(info.pwszContainerName),
        _wstring_at(info.pwszProvName),
        int(info.dwProvType),
        int(info.dwFlags),
        int(info.dwKeySpec),
    )


def cert_set_property_bytes(ctx: int, prop_id: int, data: bytes | None) -> None:
    """CertSetCertificateContextProperty with a CRYPT_DATA_BLOB (``None`` deletes it)."""
    keep = ctypes.create_string_buffer(data or b"\0", len(data or b"\0"))
    blob = CRYPTOAPI_BLOB(len(data or b""), ctypes.addressof(keep))
    result = _fn("CertSetCertificateContextProperty")(
        ctx, prop_id, 0, None if data is None else byref(blob)
    )
    _check_bool(result, "CertSetCertificateContextProperty")


def cert_set_key_prov_info(ctx: int, info: KeyProvInfo) -> None:
    """CertSetCertificateContextProperty(CERT_KEY_PROV_INFO_PROP_ID)."""
    container, provider = _wstr(info.container), _wstr(info.provider)
    struct = CRYPT_KEY_PROV_INFO(
        ctypes.addressof(container),
        ctypes.addressof(provider),
        info.prov_type,
        info.flags,
        0,
        None,
        info.key_spec,
    )
    result = _fn("CertSetCertificateContextProperty")(
        ctx, C.CERT_KEY_PROV_INFO_PROP_ID, 0, byref(struct)
    )
    _check_bool(result, "CertSetCertificateContextProperty")


def cert_duplicate_certificate_context(ctx: int) -> int:
    """CertDuplicateCertificateContext: one more reference on ``ctx``."""
    result = _fn("CertDuplicateCertificateContext")(ctx)
    return _check_handle(result, "CertDuplicateCertificateContext")


def cert_free_certificate_context(ctx: int) -> None:
    """CertFreeCertificateContext."""
    result = _fn("CertFreeCertificateContext")(ctx)
    _check_bool(result, "CertFreeCertificateContext")


def cert_context_encoded(ctx: int) -> bytes:
    """The DER bytes of a CERT_CONTEXT (no call: reads pbCertEncoded/cbCertEncoded)."""
    context = CERT_CONTEXT.from_address(ctx)
    return ctypes.string_at(context.pbCertEncoded, context.cbCertEncoded)


# ---- ncrypt --------------------------------------------------------------------------------


def ncrypt_open_storage_provider(name: str, flags: int) -> int:
    """NCryptOpenStorageProvider -> NCRYPT_PROV_HANDLE."""
    handle = c_size_t(0)
    status = _fn("NCryptOpenStorageProvider")(byref(handle), _wstr(name), flags)
    _check_status(status, "NCryptOpenStorageProvider")
    return int(handle.value)


def ncrypt_create_persisted_key(
    provider: int, algorithm: str, name: str | None, legacy_spec: int, flags: int
) -> int:
    """NCryptCreatePersistedKey -> NCRYPT_KEY_HANDLE (not usable before finalize)."""
    handle = c_size_t(0)
    status = _fn("NCryptCreatePersistedKey")(
        provider,
        byref(handle),
        _wstr(algorithm),
        None if name is None else _wstr(name),
        legacy_spec,
        flags,
    )
    _check_status(status, "NCryptCreatePersistedKey")
    return int(handle.value)


def ncrypt_open_key(provider: int, name: str, legacy_spec: int, flags: int) -> int:
    """NCryptOpenKey -> NCRYPT_KEY_HANDLE of a persisted key."""
    handle = c_size_t(0)
    status = _fn("NCryptOpenKey")(provider, byref(handle), _wstr(name), legacy_spec, flags)
    _check_status(status, "NCryptOpenKey")
    return int(handle.value)


def ncrypt_set_property(handle: int, prop: str, data: bytes, flags: int) -> None:
    """NCryptSetProperty(handle, prop, data, flags)."""
    buffer = ctypes.create_string_buffer(data, len(data))
    status = _fn("NCryptSetProperty")(handle, _wstr(prop), buffer, len(data), flags)
    _check_status(status, "NCryptSetProperty")


def ncrypt_get_property(handle: int, prop: str, size: int, flags: int) -> tuple[int, bytes]:
    """NCryptGetProperty once: ``size`` 0 asks for the size only."""
    buffer = ctypes.create_string_buffer(size) if size else None
    needed = c_uint32(0)
    status = _fn("NCryptGetProperty")(handle, _wstr(prop), buffer, size, byref(needed), flags)
    _check_status(status, "NCryptGetProperty")
    return needed.value, b"" if buffer is None else buffer.raw[: needed.value]


def ncrypt_finalize_key(key: int, flags: int) -> None:
    """NCryptFinalizeKey: generate and persist the key."""
    _check_status(_fn("NCryptFinalizeKey")(key, flags), "NCryptFinalizeKey")


def ncrypt_sign_hash(
    key: int, padding_flag: int, hash_algorithm: str, salt: int, digest: bytes, size: int
) -> tuple[int, bytes]:
    """NCryptSignHash once with PSS or PKCS#1 padding: ``size`` 0 asks for the size only."""
    algorithm = _wstr(hash_algorithm)
    padding: Structure
    if padding_flag == C.NCRYPT_PAD_PSS_FLAG:
        padding = BCRYPT_PSS_PADDING_INFO(ctypes.addressof(algorithm), salt)
    else:
        padding = BCRYPT_PKCS1_PADDING_INFO(ctypes.addressof(algorithm))
    signature = ctypes.create_string_buffer(size) if size else None
    needed = c_uint32(0)
    status = _fn("NCryptSignHash")(
        key, byref(padding), digest, len(digest), signature, size, byref(needed), padding_flag
    )
    _check_status(status, "NCryptSignHash")
    return needed.value, b"" if signature is None else signature.raw[: needed.value]


def ncrypt_export_key(key: int, blob_type: str, size: int) -> tuple[int, bytes]:
    """NCryptExportKey(key, 0, blob_type, NULL, ...) once: ``size`` 0 asks for the size."""
    buffer = ctypes.create_string_buffer(size) if size else None
    needed = c_uint32(0)
    status = _fn("NCryptExportKey")(key, 0, _wstr(blob_type), None, buffer, size, byref(needed), 0)
    _check_status(status, "NCryptExportKey")
    return needed.value, b"" if buffer is None else buffer.raw[: needed.value]


def ncrypt_delete_key(key: int, flags: int) -> None:
    """NCryptDeleteKey: deletes the persisted key and frees the handle (on success)."""
    _check_status(_fn("NCryptDeleteKey")(key, flags), "NCryptDeleteKey")


def ncrypt_free_object(handle: int) -> None:
    """NCryptFreeObject (provider or key handle)."""
    _check_status(_fn("NCryptFreeObject")(handle), "NCryptFreeObject")


# ---- winhttp -------------------------------------------------------------------------------


def winhttp_open(agent: str, access_type: int, flags: int) -> int:
    """WinHttpOpen -> session HINTERNET (synchronous)."""
    result = _fn("WinHttpOpen")(_wstr(agent), access_type, None, None, flags)
    return _check_handle(result, "WinHttpOpen")


def winhttp_connect(session: int, host: str, port: int) -> int:
    """WinHttpConnect -> connection HINTERNET."""
    result = _fn("WinHttpConnect")(session, _wstr(host), port, 0)
    return _check_handle(result, "WinHttpConnect")


def winhttp_open_request(connect: int, verb: str, path: str, flags: int) -> int:
    """WinHttpOpenRequest(HTTP/1.1, no referrer, any accept type) -> request HINTERNET."""
    result = _fn("WinHttpOpenRequest")(connect, _wstr(verb), _wstr(path), None, None, None, flags)
    return _check_handle(result, "WinHttpOpenRequest")


def winhttp_set_timeouts(handle: int, resolve: int, connect: int, send: int, receive: int) -> None:
    """WinHttpSetTimeouts (milliseconds)."""
    result = _fn("WinHttpSetTimeouts")(handle, resolve, connect, send, receive)
    _check_bool(result, "WinHttpSetTimeouts")


def winhttp_set_option_dword(handle: int, option: int, value: int) -> None:
    """WinHttpSetOption with a DWORD value."""
    dword = c_uint32(value)
    result = _fn("WinHttpSetOption")(handle, option, byref(dword), 4)
    _check_bool(result, "WinHttpSetOption")


def winhttp_set_option_cert_context(handle: int, ctx: int) -> None:
    """WinHttpSetOption(WINHTTP_OPTION_CLIENT_CERT_CONTEXT, ctx, sizeof(CERT_CONTEXT))."""
    result = _fn("WinHttpSetOption")(
        handle, C.WINHTTP_OPTION_CLIENT_CERT_CONTEXT, ctx, ctypes.sizeof(CERT_CONTEXT)
    )
    _check_bool(result, "WinHttpSetOption")


def winhttp_send_request(request: int, headers: str, body: bytes) -> None:
    """WinHttpSendRequest with all headers and the whole body at once."""
    payload = ctypes.create_string_buffer(body, len(body)) if body else None
    result = _fn("WinHttpSendRequest")(
        request,
        _wstr(headers) if headers else None,
        len(headers.encode("utf-16-le")) // 2,
        payload,
        len(body),
        len(body),
        0,
    )
    _check_bool(result, "WinHttpSendRequest")


def winhttp_receive_response(request: int) -> None:
    """WinHttpReceiveResponse (blocks until the headers arrived)."""
    _check_bool(_fn("WinHttpReceiveResponse")(request, None), "WinHttpReceiveResponse")


def winhttp_query_status_code(request: int) -> int:
    """WinHttpQueryHeaders(WINHTTP_QUERY_STATUS_CODE | WINHTTP_QUERY_FLAG_NUMBER)."""
    value, length = c_uint32(0), c_uint32(4)
    result = _fn("WinHttpQueryHeaders")(
        request,
        C.WINHTTP_QUERY_STATUS_CODE | C.WINHTTP_QUERY_FLAG_NUMBER,
        None,
        byref(value),
        byref(length),
        None,
    )
    _check_bool(result, "WinHttpQueryHeaders")
    return int(value.value)


def winhttp_query_raw_headers(request: int, size: int) -> tuple[int, str | None]:
    """WinHttpQueryHeaders(RAW_HEADERS_CRLF) once: ``size`` (bytes) 0 asks for the size."""
    buffer = ctypes.create_string_buffer(size) if size else None
    length = c_uint32(size)
    result = _fn("WinHttpQueryHeaders")(
        request, C.WINHTTP_QUERY_RAW_HEADERS_CRLF, None, buffer, byref(length), None
    )
    if not result:
        code, detail = _last_error()
        if code == C.ERROR_INSUFFICIENT_BUFFER and buffer is None:
            return length.value, None
        raise NativeError("WinHttpQueryHeaders", winerror=code, detail=detail)
    raw = b"" if buffer is None else buffer.raw[: length.value]
    return length.value, raw.decode("utf-16-le")


def winhttp_read_data(request: int, size: int) -> bytes:
    """WinHttpReadData once: up to ``size`` bytes, ``b""`` at the end of the body."""
    buffer = ctypes.create_string_buffer(size)
    read = c_uint32(0)
    result = _fn("WinHttpReadData")(request, buffer, size, byref(read))
    _check_bool(result, "WinHttpReadData")
    return buffer.raw[: read.value]


def winhttp_close_handle(handle: int) -> None:
    """WinHttpCloseHandle (session, connection or request)."""
    _check_bool(_fn("WinHttpCloseHandle")(handle), "WinHttpCloseHandle")


# ---- kernel32 ------------------------------------------------------------------------------


def create_mutex(name: str) -> int:
    """CreateMutexW(NULL, FALSE, name): opens or creates the named mutex."""
    return _check_handle(_fn("CreateMutexW")(None, 0, _wstr(name)), "CreateMutexW")


def wait_for_single_object(handle: int, timeout_ms: int) -> int:
    """WaitForSingleObject -> WAIT_OBJECT_0 / WAIT_ABANDONED / WAIT_TIMEOUT."""
    result = int(_fn("WaitForSingleObject")(handle, timeout_ms))
    if result == C.WAIT_FAILED:
        code, detail = _last_error()
        raise NativeError("WaitForSingleObject", winerror=code, detail=detail)
    return result


def release_mutex(handle: int) -> None:
    """ReleaseMutex."""
    _check_bool(_fn("ReleaseMutex")(handle), "ReleaseMutex")


def close_handle(handle: int) -> None:
    """CloseHandle."""
    _check_bool(_fn("CloseHandle")(handle), "CloseHandle")


# ---- advapi32 -----------------------------------------------------------------------------


def current_user_sid() -> str:
    """The process token's user SID as text (``S-1-5-21-...``)."""
    token = _ptr()
    result = _fn("OpenProcessToken")(_fn("GetCurrentProcess")(), C.TOKEN_QUERY, byref(token))
    _check_bool(result, "OpenProcessToken")
    try:
        size = c_uint32(0)
        # The sizing call fails by design (ERROR_INSUFFICIENT_BUFFER) and reports the size.
        if not _fn("GetTokenInformation")(token, C.TokenUser, None, 0, byref(size)):
            code, detail = _last_error()
            if code != C.ERROR_INSUFFICIENT_BUFFER:
                raise NativeError("GetTokenInformation", winerror=code, detail=detail)
        buffer = ctypes.create_string_buffer(size.value)
        result = _fn("GetTokenInformation")(token, C.TokenUser, buffer, size.value, byref(size))
        _check_bool(result, "GetTokenInformation")
        sid = _ptr.from_buffer(buffer, 0)  # TOKEN_USER.User.Sid is at offset 0 (advapi32.cdef)
        text = _ptr()
        _check_bool(_fn("ConvertSidToStringSidW")(sid, byref(text)), "ConvertSidToStringSidW")
        try:
            return _wstring_at(text.value)
        finally:
            _fn("LocalFree")(text)
    finally:
        _fn("CloseHandle")(token)
