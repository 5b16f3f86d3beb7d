"""Every Win32 call msicert makes, each wrapper written once over a backend's primitives.

A wrapper makes one checked native call (two error models: :meth:`Win32._bool` /
:meth:`Win32._pointer` read GetLastError, :meth:`Win32._status` a SECURITY_STATUS), with
parameters named as on MSDN. Handles cross this module as ``int`` addresses; the wrappers turn
them back into pointers with ``cast``. What each function takes and where it lives is declared
once, in cdefs/; the two backends (``_cffi_impl``, ``_ctypes_impl``) supply only the
:class:`Primitives` (alloc, cast, strings, buffers, last error, function lookup).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from . import _constants as C
from ._errors import NativeError, check_bool, check_handle, check_status
from ._types import KeyProvInfo

__all__ = ["Primitives", "Win32"]


class Primitives(Protocol):
    """What a backend module provides (``_cffi_impl`` and ``_ctypes_impl``), nothing more."""

    @property
    def BACKEND(self) -> str:
        """``"cffi"`` or ``"ctypes"``."""

    @property
    def NULL(self) -> Any:
        """The NULL pointer argument."""

    def fn(self, name: str) -> Callable[..., Any]:
        """The Win32 function ``name``; WindowsRequiredError off Windows."""

    def new(self, ctype: str, init: object = None) -> Any:
        """Owned memory: ``"T *"`` (value or field dict) or ``"T[]"`` (length)."""

    def cast(self, ctype: str, value: object) -> Any:
        """An address or owned memory as the pointer type ``ctype``."""

    def sizeof(self, ctype: str) -> int:
        """``sizeof(ctype)``."""

    def addr(self, pointer: object) -> int:
        """The address a pointer holds (0 for NULL)."""

    def wstr(self, text: str) -> Any:
        """A NUL-terminated ``WCHAR[]``."""

    def wstring(self, pointer: object) -> str:
        """The ``WCHAR`` string at ``pointer`` (``""`` for NULL)."""

    def from_bytes(self, data: bytes) -> Any:
        """A ``BYTE[]`` holding ``data`` (input only)."""

    def bytes_at(self, pointer: object, size: int) -> bytes:
        """``size`` bytes at ``pointer`` (``b""`` for NULL)."""

    def last_error(self) -> tuple[int, str]:
        """GetLastError saved after the last call, and its text."""

    def describe(self, status: int) -> str:
        """The system's text for an error code."""


class Win32:
    """The Win32 calls of msicert_native, bound to one backend's :class:`Primitives`."""

    def __init__(self, primitives: Primitives) -> None:
        self._p = primitives
        self.BACKEND = primitives.BACKEND

    # ---- the two error models ------------------------------------------------------------

    def _bool(self, name: str, *args: Any) -> None:
        """BOOL result, FALSE means failure: NativeError with GetLastError."""
        check_bool(self._p.fn(name)(*args), name, self._p.last_error)

    def _pointer(self, name: str, *args: Any) -> int:
        """Pointer or handle result, NULL means failure: NativeError with GetLastError."""
        return check_handle(self._p.addr(self._p.fn(name)(*args)), name, self._p.last_error)

    def _status(self, name: str, *args: Any) -> None:
        """SECURITY_STATUS result, non-zero means failure: NativeError with the status."""
        check_status(self._p.fn(name)(*args), name, self._p.describe)

    def _next_context(self, name: str, *args: Any) -> int:
        """Enumeration result: the next context, or 0 when the store has no more."""
        found = self._p.addr(self._p.fn(name)(*args))
        if found:
            return found
        code, detail = self._p.last_error()
        if code & 0xFFFFFFFF in (C.CRYPT_E_NOT_FOUND, C.ERROR_NO_MORE_FILES):
            return 0
        raise NativeError(name, winerror=code, detail=detail)

    def _buffer(self, size: int) -> Any:
        """An output ``BYTE[size]``, or NULL to ask for the size only."""
        return self._p.new("BYTE[]", size) if size else self._p.NULL

    # ---- crypt32 -------------------------------------------------------------------------

    def cert_open_store_system(self, dwFlags: int, pvPara: str) -> int:
        """CertOpenStore(CERT_STORE_PROV_SYSTEM_W, 0, 0, dwFlags, pvPara) -> HCERTSTORE."""
        p = self._p
        provider = p.cast("LPCSTR", C.CERT_STORE_PROV_SYSTEM_W)
        return self._pointer("CertOpenStore", provider, 0, 0, dwFlags, p.wstr(pvPara))

    def cert_close_store(self, hCertStore: int) -> None:
        """CertCloseStore(hCertStore, 0)."""
        self._bool("CertCloseStore", self._p.cast("HCERTSTORE", hCertStore), 0)

    def cert_control_store_commit(self, hCertStore: int) -> None:
        """CertControlStore(hCertStore, 0, CERT_STORE_CTRL_COMMIT, NULL): flush to the registry."""
        p = self._p
        store = p.cast("HCERTSTORE", hCertStore)
        self._bool("CertControlStore", store, 0, C.CERT_STORE_CTRL_COMMIT, p.NULL)

    def cert_enum_certificates_in_store(self, hCertStore: int, pPrevCertContext: int) -> int:
        """CertEnumCertificatesInStore: next context or 0 at the end; frees the previous one."""
        p = self._p
        return self._next_context(
            "CertEnumCertificatesInStore",
            p.cast("HCERTSTORE", hCertStore),
            p.cast("PCCERT_CONTEXT", pPrevCertContext),
        )

    def cert_find_certificate_in_store(
        self, hCertStore: int, dwFindType: int, pvFindPara: str, pPrevCertContext: int
    ) -> int:
        """CertFindCertificateInStore with a wide-string find type: next match or 0; frees
        the previous one."""
        p = self._p
        return self._next_context(
            "CertFindCertificateInStore",
            p.cast("HCERTSTORE", hCertStore),
            C.X509_ASN_ENCODING | C.PKCS_7_ASN_ENCODING,
            0,
            dwFindType,
            p.wstr(pvFindPara),
            p.cast("PCCERT_CONTEXT", pPrevCertContext),
        )

    def cert_create_certificate_context(self, pbCertEncoded: bytes) -> int:
        """CertCreateCertificateContext(X509_ASN_ENCODING, DER) -> PCCERT_CONTEXT."""
        encoded = self._p.from_bytes(pbCertEncoded)
        return self._pointer(
            "CertCreateCertificateContext", C.X509_ASN_ENCODING, encoded, len(pbCertEncoded)
        )

    def cert_add_certificate_context_to_store(
        self, hCertStore: int, pCertContext: int, dwAddDisposition: int
    ) -> int:
        """CertAddCertificateContextToStore -> the store's own (new) context."""
        p = self._p
        stored = p.new("PCCERT_CONTEXT *")
        self._bool(
            "CertAddCertificateContextToStore",
            p.cast("HCERTSTORE", hCertStore),
            p.cast("PCCERT_CONTEXT", pCertContext),
            dwAddDisposition,
            stored,
        )
        return p.addr(stored[0])

    def cert_delete_certificate_from_store(self, pCertContext: int) -> None:
        """CertDeleteCertificateFromStore: always frees the context, even when it fails."""
        context = self._p.cast("PCCERT_CONTEXT", pCertContext)
        self._bool("CertDeleteCertificateFromStore", context)

    def cert_get_property_bytes(
        self, pCertContext: int, dwPropId: int, cbData: int
    ) -> tuple[int, bytes | None]:
        """CertGetCertificateContextProperty once: ``cbData`` 0 asks for the size only."""
        p = self._p
        data, size = self._buffer(cbData), p.new("DWORD *", cbData)
        context = p.cast("PCCERT_CONTEXT", pCertContext)
        self._bool("CertGetCertificateContextProperty", context, dwPropId, data, size)
        return size[0], p.bytes_at(data, size[0]) if cbData else None

    def cert_get_key_prov_info(
        self, pCertContext: int, cbData: int
    ) -> tuple[int, KeyProvInfo | None]:
        """CertGetCertificateContextProperty(CERT_KEY_PROV_INFO_PROP_ID) decoded in place."""
        p = self._p
        data = p.new("BYTE[]", max(cbData, p.sizeof("CRYPT_KEY_PROV_INFO")))
        size = p.new("DWORD *", cbData)
        self._bool(
            "CertGetCertificateContextProperty",
            p.cast("PCCERT_CONTEXT", pCertContext),
            C.CERT_KEY_PROV_INFO_PROP_ID,
            data if cbData else p.NULL,
            size,
        )
        if not cbData:
            return size[0], None
        info = p.cast("CRYPT_KEY_PROV_INFO *", data)[0]
        return size[0], KeyProvInfo(
            p.wstring(info.pwszContainerName),
            p.wstring(info.pwszProvName),
            int(info.dwProvType),
            int(info.dwFlags),
            int(info.dwKeySpec),
        )

    def cert_set_property_bytes(
        self, pCertContext: int, dwPropId: int, pvData: bytes | None
    ) -> None:
        """CertSetCertificateContextProperty with a CRYPT_DATA_BLOB (``None`` deletes it)."""
        p = self._p
        data = p.from_bytes(pvData or b"\0")  # never a zero-length array: pbData stays valid
        blob = p.new("CRYPT_DATA_BLOB *", {"cbData": len(pvData or b""), "pbData": data})
        self._bool(
            "CertSetCertificateContextProperty",
            p.cast("PCCERT_CONTEXT", pCertContext),
            dwPropId,
            0,
            p.NULL if pvData is None else blob,
        )

    def cert_set_key_prov_info(self, pCertContext: int, info: KeyProvInfo) -> None:
        """CertSetCertificateContextProperty(CERT_KEY_PROV_INFO_PROP_ID)."""
        p = self._p
        container, provider = p.wstr(info.container), p.wstr(info.provider)
        struct = p.new(
            "CRYPT_KEY_PROV_INFO *",
            {
                "pwszContainerName": container,
                "pwszProvName": provider,
                "dwProvType": info.prov_type,
                "dwFlags": info.flags,
                "dwKeySpec": info.key_spec,
            },
        )
        self._bool(
            "CertSetCertificateContextProperty",
            p.cast("PCCERT_CONTEXT", pCertContext),
            C.CERT_KEY_PROV_INFO_PROP_ID,
            0,
            struct,
        )

    def cert_duplicate_certificate_context(self, pCertContext: int) -> int:
        """CertDuplicateCertificateContext: one more reference on the context."""
        context = self._p.cast("PCCERT_CONTEXT", pCertContext)
        return self._pointer("CertDuplicateCertificateContext", context)

    def cert_free_certificate_context(self, pCertContext: int) -> None:
        """CertFreeCertificateContext."""
        self._bool("CertFreeCertificateContext", self._p.cast("PCCERT_CONTEXT", pCertContext))

    def cert_context_encoded(self, pCertContext: int) -> bytes:
        """The DER bytes of a CERT_CONTEXT (no call: reads pbCertEncoded/cbCertEncoded)."""
        context = self._p.cast("PCCERT_CONTEXT", pCertContext)[0]
        return self._p.bytes_at(context.pbCertEncoded, context.cbCertEncoded)

    def _dpapi(self, name: str, data: bytes, entropy: bytes) -> bytes:
        """CryptProtectData / CryptUnprotectData(data, NULL, entropy, NULL, NULL,
        CRYPTPROTECT_UI_FORBIDDEN): the output blob's bytes, its LocalAlloc'd buffer freed."""
        p = self._p
        data_buffer, entropy_buffer = p.from_bytes(data or b"\0"), p.from_bytes(entropy or b"\0")
        blob_in = p.new("CRYPT_DATA_BLOB *", {"cbData": len(data), "pbData": data_buffer})
        salt = p.new("CRYPT_DATA_BLOB *", {"cbData": len(entropy), "pbData": entropy_buffer})
        out = p.new("CRYPT_DATA_BLOB *")
        self._bool(name, blob_in, p.NULL, salt if entropy else p.NULL, p.NULL, p.NULL,
                   C.CRYPTPROTECT_UI_FORBIDDEN, out)
        try:
            return p.bytes_at(out[0].pbData, out[0].cbData)
        finally:
            p.fn("LocalFree")(out[0].pbData)

    def crypt_protect_data(self, data: bytes, entropy: bytes) -> bytes:
        """CryptProtectData for the current user (no description, no UI): the DPAPI blob."""
        return self._dpapi("CryptProtectData", data, entropy)

    def crypt_unprotect_data(self, blob: bytes, entropy: bytes) -> bytes:
        """CryptUnprotectData (no UI): the plaintext; NativeError when ``blob`` was not
        protected by this user with this ``entropy``, or was changed."""
        return self._dpapi("CryptUnprotectData", blob, entropy)

    # ---- ncrypt --------------------------------------------------------------------------

    def ncrypt_open_storage_provider(self, pszProviderName: str, dwFlags: int) -> int:
        """NCryptOpenStorageProvider -> NCRYPT_PROV_HANDLE."""
        p = self._p
        provider = p.new("NCRYPT_PROV_HANDLE *")
        self._status("NCryptOpenStorageProvider", provider, p.wstr(pszProviderName), dwFlags)
        return int(provider[0])

    def ncrypt_create_persisted_key(
        self,
        hProvider: int,
        pszAlgId: str,
        pszKeyName: str | None,
        dwLegacyKeySpec: int,
        dwFlags: int,
    ) -> int:
        """NCryptCreatePersistedKey -> NCRYPT_KEY_HANDLE (not usable before finalize)."""
        p = self._p
        key = p.new("NCRYPT_KEY_HANDLE *")
        name = p.NULL if pszKeyName is None else p.wstr(pszKeyName)
        self._status(
            "NCryptCreatePersistedKey",
            hProvider, key, p.wstr(pszAlgId), name, dwLegacyKeySpec, dwFlags,
        )
        return int(key[0])

    def ncrypt_open_key(
        self, hProvider: int, pszKeyName: str, dwLegacyKeySpec: int, dwFlags: int
    ) -> int:
        """NCryptOpenKey -> NCRYPT_KEY_HANDLE of a persisted key."""
        p = self._p
        key = p.new("NCRYPT_KEY_HANDLE *")
        name = p.wstr(pszKeyName)
        self._status("NCryptOpenKey", hProvider, key, name, dwLegacyKeySpec, dwFlags)
        return int(key[0])

    def ncrypt_set_property(
        self, hObject: int, pszProperty: str, pbInput: bytes, dwFlags: int
    ) -> None:
        """NCryptSetProperty(hObject, pszProperty, pbInput, len(pbInput), dwFlags)."""
        p = self._p
        data = p.from_bytes(pbInput)
        self._status(
            "NCryptSetProperty", hObject, p.wstr(pszProperty), data, len(pbInput), dwFlags
        )

    def ncrypt_get_property(
        self, hObject: int, pszProperty: str, cbOutput: int, dwFlags: int
    ) -> tuple[int, bytes]:
        """NCryptGetProperty once: ``cbOutput`` 0 asks for the size only."""
        p = self._p
        output, result = self._buffer(cbOutput), p.new("DWORD *")
        name = p.wstr(pszProperty)
        self._status("NCryptGetProperty", hObject, name, output, cbOutput, result, dwFlags)
        return result[0], p.bytes_at(output, result[0])

    def ncrypt_finalize_key(self, hKey: int, dwFlags: int) -> None:
        """NCryptFinalizeKey: generate and persist the key."""
        self._status("NCryptFinalizeKey", hKey, dwFlags)

    def ncrypt_sign_hash(
        self,
        hKey: int,
        dwFlags: int,
        pszAlgId: str,
        cbSalt: int,
        pbHashValue: bytes,
        cbSignature: int,
    ) -> tuple[int, bytes]:
        """NCryptSignHash once, ``dwFlags`` NCRYPT_PAD_PSS_FLAG (with ``cbSalt``) or
        NCRYPT_PAD_PKCS1_FLAG: ``cbSignature`` 0 asks for the size only."""
        p = self._p
        algorithm = p.wstr(pszAlgId)
        if dwFlags == C.NCRYPT_PAD_PSS_FLAG:
            padding = p.new("BCRYPT_PSS_PADDING_INFO *", {"pszAlgId": algorithm, "cbSalt": cbSalt})
        else:
            padding = p.new("BCRYPT_PKCS1_PADDING_INFO *", {"pszAlgId": algorithm})
        signature, result = self._buffer(cbSignature), p.new("DWORD *")
        digest = p.from_bytes(pbHashValue)
        self._status(
            "NCryptSignHash",
            hKey, padding, digest, len(pbHashValue), signature, cbSignature, result, dwFlags,
        )
        return result[0], p.bytes_at(signature, result[0])

    def ncrypt_export_key(self, hKey: int, pszBlobType: str, cbOutput: int) -> tuple[int, bytes]:
        """NCryptExportKey(hKey, 0, pszBlobType, NULL, ...) once: ``cbOutput`` 0 asks for the
        size only."""
        p = self._p
        output, result = self._buffer(cbOutput), p.new("DWORD *")
        blob_type = p.wstr(pszBlobType)
        self._status(
            "NCryptExportKey", hKey, 0, blob_type, p.NULL, output, cbOutput, result, 0
        )
        return result[0], p.bytes_at(output, result[0])

    def ncrypt_delete_key(self, hKey: int, dwFlags: int) -> None:
        """NCryptDeleteKey: deletes the persisted key and frees the handle (on success)."""
        self._status("NCryptDeleteKey", hKey, dwFlags)

    def ncrypt_free_object(self, hObject: int) -> None:
        """NCryptFreeObject (provider or key handle)."""
        self._status("NCryptFreeObject", hObject)

    def ncrypt_enum_key_names(self, hProvider: int, dwFlags: int) -> list[str]:
        """Every key name NCryptEnumKeys lists (scope NULL), each NCryptKeyName and the
        enumeration state freed with NCryptFreeBuffer; ends at NTE_NO_MORE_ITEMS."""
        p = self._p
        state = p.new("void * *")
        names: list[str] = []
        try:
            while True:
                item = p.new("NCryptKeyName * *")
                status = p.fn("NCryptEnumKeys")(hProvider, p.NULL, item, state, dwFlags)
                if status & 0xFFFFFFFF == C.NTE_NO_MORE_ITEMS:
                    return names
                check_status(status, "NCryptEnumKeys", p.describe)
                try:
                    names.append(p.wstring(item[0][0].pszName))
                finally:
                    p.fn("NCryptFreeBuffer")(item[0])
        finally:
            if p.addr(state[0]):
                p.fn("NCryptFreeBuffer")(state[0])

    # ---- winhttp -------------------------------------------------------------------------

    def winhttp_open(self, pszAgentW: str, dwAccessType: int, dwFlags: int) -> int:
        """WinHttpOpen(agent, access type, no proxy names, flags) -> session HINTERNET."""
        p = self._p
        agent = p.wstr(pszAgentW)
        return self._pointer("WinHttpOpen", agent, dwAccessType, p.NULL, p.NULL, dwFlags)

    def winhttp_connect(self, hSession: int, pswzServerName: str, nServerPort: int) -> int:
        """WinHttpConnect -> connection HINTERNET."""
        p = self._p
        session = p.cast("HINTERNET", hSession)
        return self._pointer("WinHttpConnect", session, p.wstr(pswzServerName), nServerPort, 0)

    def winhttp_open_request(
        self, hConnect: int, pwszVerb: str, pwszObjectName: str, dwFlags: int
    ) -> int:
        """WinHttpOpenRequest(HTTP/1.1, no referrer, any accept type) -> request HINTERNET."""
        p = self._p
        return self._pointer(
            "WinHttpOpenRequest",
            p.cast("HINTERNET", hConnect),
            p.wstr(pwszVerb),
            p.wstr(pwszObjectName),
            p.NULL,
            p.NULL,
            p.NULL,
            dwFlags,
        )

    def winhttp_set_timeouts(
        self,
        hInternet: int,
        nResolveTimeout: int,
        nConnectTimeout: int,
        nSendTimeout: int,
        nReceiveTimeout: int,
    ) -> None:
        """WinHttpSetTimeouts (milliseconds)."""
        self._bool(
            "WinHttpSetTimeouts",
            self._p.cast("HINTERNET", hInternet),
            nResolveTimeout, nConnectTimeout, nSendTimeout, nReceiveTimeout,
        )

    def winhttp_set_option_dword(self, hInternet: int, dwOption: int, value: int) -> None:
        """WinHttpSetOption with a DWORD value."""
        p = self._p
        buffer = p.new("DWORD *", value)
        internet = p.cast("HINTERNET", hInternet)
        self._bool("WinHttpSetOption", internet, dwOption, buffer, p.sizeof("DWORD"))

    def winhttp_set_option_cert_context(self, hInternet: int, pCertContext: int) -> None:
        """WinHttpSetOption(WINHTTP_OPTION_CLIENT_CERT_CONTEXT, context, sizeof(CERT_CONTEXT))."""
        p = self._p
        self._bool(
            "WinHttpSetOption",
            p.cast("HINTERNET", hInternet),
            C.WINHTTP_OPTION_CLIENT_CERT_CONTEXT,
            p.cast("LPVOID", pCertContext),
            p.sizeof("CERT_CONTEXT"),
        )

    def winhttp_send_request(self, hRequest: int, lpszHeaders: str, lpOptional: bytes) -> None:
        """WinHttpSendRequest with all headers and the whole body at once."""
        p = self._p
        headers = p.wstr(lpszHeaders) if lpszHeaders else p.NULL
        body = p.from_bytes(lpOptional) if lpOptional else p.NULL
        self._bool(
            "WinHttpSendRequest",
            p.cast("HINTERNET", hRequest),
            headers,
            len(lpszHeaders.encode("utf-16-le")) // 2,
            body,
            len(lpOptional),
            len(lpOptional),
            0,
        )

    def winhttp_receive_response(self, hRequest: int) -> None:
        """WinHttpReceiveResponse (blocks until the headers arrived)."""
        p = self._p
        self._bool("WinHttpReceiveResponse", p.cast("HINTERNET", hRequest), p.NULL)

    def winhttp_query_status_code(self, hRequest: int) -> int:
        """WinHttpQueryHeaders(WINHTTP_QUERY_STATUS_CODE | WINHTTP_QUERY_FLAG_NUMBER)."""
        p = self._p
        value, length = p.new("DWORD *"), p.new("DWORD *", p.sizeof("DWORD"))
        self._bool(
            "WinHttpQueryHeaders",
            p.cast("HINTERNET", hRequest),
            C.WINHTTP_QUERY_STATUS_CODE | C.WINHTTP_QUERY_FLAG_NUMBER,
            p.NULL,
            value,
            length,
            p.NULL,
        )
        return int(value[0])

    def winhttp_query_raw_headers(
        self, hRequest: int, dwBufferLength: int
    ) -> tuple[int, str | None]:
        """WinHttpQueryHeaders(RAW_HEADERS_CRLF) once: ``dwBufferLength`` (bytes) 0 asks for
        the size only (that call fails by design with ERROR_INSUFFICIENT_BUFFER)."""
        p = self._p
        buffer, length = self._buffer(dwBufferLength), p.new("DWORD *", dwBufferLength)
        request = p.cast("HINTERNET", hRequest)
        query = p.fn("WinHttpQueryHeaders")
        if not query(request, C.WINHTTP_QUERY_RAW_HEADERS_CRLF, p.NULL, buffer, length, p.NULL):
            code, detail = p.last_error()
            if code == C.ERROR_INSUFFICIENT_BUFFER and not dwBufferLength:
                return length[0], None
            raise NativeError("WinHttpQueryHeaders", winerror=code, detail=detail)
        return length[0], p.bytes_at(buffer, length[0]).decode("utf-16-le")

    def winhttp_read_data(self, hRequest: int, dwNumberOfBytesToRead: int) -> bytes:
        """WinHttpReadData once: up to ``dwNumberOfBytesToRead`` bytes, ``b""`` at the end."""
        p = self._p
        buffer, read = p.new("BYTE[]", dwNumberOfBytesToRead), p.new("DWORD *")
        request = p.cast("HINTERNET", hRequest)
        self._bool("WinHttpReadData", request, buffer, dwNumberOfBytesToRead, read)
        return p.bytes_at(buffer, read[0])

    def winhttp_close_handle(self, hInternet: int) -> None:
        """WinHttpCloseHandle (session, connection or request)."""
        self._bool("WinHttpCloseHandle", self._p.cast("HINTERNET", hInternet))

    # ---- kernel32 ------------------------------------------------------------------------

    def create_mutex(self, lpName: str) -> int:
        """CreateMutexW(NULL, FALSE, lpName): opens or creates the named mutex."""
        p = self._p
        return self._pointer("CreateMutexW", p.NULL, 0, p.wstr(lpName))

    def wait_for_single_object(self, hHandle: int, dwMilliseconds: int) -> int:
        """WaitForSingleObject -> WAIT_OBJECT_0 / WAIT_ABANDONED / WAIT_TIMEOUT."""
        p = self._p
        result = int(p.fn("WaitForSingleObject")(p.cast("HANDLE", hHandle), dwMilliseconds))
        if result == C.WAIT_FAILED:
            code, detail = p.last_error()
            raise NativeError("WaitForSingleObject", winerror=code, detail=detail)
        return result

    def release_mutex(self, hMutex: int) -> None:
        """ReleaseMutex."""
        self._bool("ReleaseMutex", self._p.cast("HANDLE", hMutex))

    def close_handle(self, hObject: int) -> None:
        """CloseHandle."""
        self._bool("CloseHandle", self._p.cast("HANDLE", hObject))

    # ---- advapi32 ------------------------------------------------------------------------

    def current_user_sid(self) -> str:
        """The process token's user SID as text (``S-1-5-21-...``)."""
        p = self._p
        token = p.new("HANDLE *")
        process = p.fn("GetCurrentProcess")()
        self._bool("OpenProcessToken", process, C.TOKEN_QUERY, token)
        try:
            size = p.new("DWORD *")
            # The sizing call fails by design (ERROR_INSUFFICIENT_BUFFER) and reports the size.
            if not p.fn("GetTokenInformation")(token[0], C.TokenUser, p.NULL, 0, size):
                code, detail = p.last_error()
                if code != C.ERROR_INSUFFICIENT_BUFFER:
                    raise NativeError("GetTokenInformation", winerror=code, detail=detail)
            buffer = p.new("BYTE[]", size[0])
            self._bool("GetTokenInformation", token[0], C.TokenUser, buffer, size[0], size)
            user = p.cast("TOKEN_USER *", buffer)[0]
            text = p.new("LPWSTR *")
            self._bool("ConvertSidToStringSidW", user.User.Sid, text)
            try:
                return p.wstring(text[0])
            finally:
                p.fn("LocalFree")(text[0])
        finally:
            p.fn("CloseHandle")(token[0])
