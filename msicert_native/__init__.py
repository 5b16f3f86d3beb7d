"""msicert_native: the only package that calls Windows DLLs (crypt32, ncrypt, winhttp, kernel32).

The backend is chosen once, at import (see ``_backend``): cffi when ``cffi`` and the generated
``msicert_native._ffi`` import, else ctypes; ``MSICERT_NATIVE_BACKEND=cffi|ctypes`` forces one.
:data:`BACKEND` says which. Importing works on every platform; on non-Windows every call that
needs a DLL raises :class:`WindowsRequiredError` (a :class:`NativeError`, so an ``OSError``).

Every handle is owned by an object usable in ``with`` (``close()`` is idempotent).

Certificate stores (crypt32)::

    open_system_store(location="current-user" | "local-machine", name="My") -> CertStore
    store_commit(store)
    enum_certificates(store) -> list[CertRef]                   # collect, then delete
    find_certificates(store, *, subject_substr=None, issuer_substr=None) -> list[CertRef]
    add_certificate(store, der, *, friendly_name, key_name, provider_name=MS_KEY_STORAGE_PROVIDER,
                    prov_type=0, key_flags=0, key_spec=0) -> CertRef   # REPLACE_EXISTING + commit
    memory_certificate(der, *, friendly_name, key_name, ...same...) -> CertRef  # in no store
    delete_certificate(store, ref)                              # + commit; ref stays open
    get_friendly_name(ref) -> str | None;  set_friendly_name(ref, name | None)
    get_key_prov_info(ref) -> KeyProvInfo | None  # container, provider, prov_type, flags, key_spec
    CertRef.der -> bytes;  CertRef.duplicate() -> CertRef

CNG keys (ncrypt)::

    open_provider(name=MS_KEY_STORAGE_PROVIDER) -> NCryptProvider
    create_rsa_key(provider, name, *, keyguard, machine=False, bits=2048, overwrite=True,
                   usage=NCRYPT_ALLOW_ALL_USAGES) -> NCryptKey
    open_key(provider, name, *, machine=False) -> NCryptKey
    enum_key_names(provider, *, machine=False) -> list[str]
    key_last_modified(key) -> float | None (Unix time of NCRYPT_LAST_MODIFIED_PROPERTY)
    is_virtual_iso(key) -> bool;  get_export_policy(key) -> int
    sign_pss_sha256(key, digest, salt=32) -> bytes;  sign_pkcs1_sha256(key, digest) -> bytes
    export_public_spki(key) -> bytes (SubjectPublicKeyInfo DER);  delete_key(key)

WinHTTP::

    https_request(method, url, *, headers=None, body=b"", client_cert=None, timeout_ms=30000,
                  verify_server=True, max_body=None) -> HttpResponse(status, headers, body)
    https_open(...same...) -> HttpStream (.status, .headers, .read(amt), .close())

DPAPI (crypt32)::

    protect_data(data, *, entropy=b"") -> bytes     # user scope, CRYPTPROTECT_UI_FORBIDDEN
    unprotect_data(blob, *, entropy=b"") -> bytes   # NativeError: another user's, other
                                                    # entropy, or changed

kernel32 / advapi32::

    named_mutex(name, timeout_ms) -> context manager yielding ``abandoned: bool``
    current_user_sid() -> str ("S-1-5-21-..."; the process token's user, read once)

Attestation (optional AttestationClientLib.dll, loaded by full path only)::

    find_attestation_library() -> (path | None, looked_in)  # env MSICERT_ATTESTATION_DLL first
    attest_keyguard_key(dll, *, endpoint, client_id, key, auth_token=None,
                        client_payload=None) -> str (MAA JWT); AttestationFailed(.status)

Errors: :class:`NativeError` (``OSError``) with ``.function``, ``.winerror`` (GetLastError) or
``.status`` (NCrypt SECURITY_STATUS, unsigned) and ``.code``; :class:`NativeTimeoutError`;
:class:`WindowsRequiredError`; :class:`BackendUnavailableError` (``ImportError``).
"""

from __future__ import annotations

from . import _constants as constants
from ._attestation import (
    ATTESTATION_DLL_ENV,
    AttestationFailed,
    attest_keyguard_key,
    attestation_search_paths,
    find_attestation_library,
)
from ._backend import BACKEND, ENV_VAR
from ._certstore import (
    add_certificate,
    delete_certificate,
    enum_certificates,
    find_certificates,
    get_friendly_name,
    get_key_prov_info,
    memory_certificate,
    open_system_store,
    set_friendly_name,
    store_commit,
)
from ._dpapi import protect_data, unprotect_data
from ._errors import BackendUnavailableError, NativeError, NativeTimeoutError, WindowsRequiredError
from ._handles import CertRef, CertStore, NativeHandle, NCryptKey, NCryptProvider, named_mutex
from ._ncrypt import (
    create_rsa_key,
    delete_key,
    enum_key_names,
    export_public_spki,
    get_export_policy,
    is_virtual_iso,
    key_last_modified,
    open_key,
    open_provider,
    rsa_public_blob_to_spki,
    sign_pkcs1_sha256,
    sign_pss_sha256,
)
from ._security import current_user_sid
from ._types import KeyProvInfo
from ._winhttp import HttpResponse, HttpStream, https_open, https_request

MS_KEY_STORAGE_PROVIDER = constants.MS_KEY_STORAGE_PROVIDER

__all__ = [
    "ATTESTATION_DLL_ENV",
    "BACKEND",
    "ENV_VAR",
    "MS_KEY_STORAGE_PROVIDER",
    "AttestationFailed",
    "BackendUnavailableError",
    "CertRef",
    "CertStore",
    "HttpResponse",
    "HttpStream",
    "KeyProvInfo",
    "NCryptKey",
    "NCryptProvider",
    "NativeError",
    "NativeHandle",
    "NativeTimeoutError",
    "WindowsRequiredError",
    "add_certificate",
    "attest_keyguard_key",
    "attestation_search_paths",
    "constants",
    "create_rsa_key",
    "current_user_sid",
    "delete_certificate",
    "delete_key",
    "enum_certificates",
    "enum_key_names",
    "export_public_spki",
    "find_attestation_library",
    "find_certificates",
    "get_export_policy",
    "get_friendly_name",
    "get_key_prov_info",
    "https_open",
    "https_request",
    "is_virtual_iso",
    "key_last_modified",
    "memory_certificate",
    "named_mutex",
    "open_key",
    "open_provider",
    "open_system_store",
    "protect_data",
    "rsa_public_blob_to_spki",
    "set_friendly_name",
    "sign_pkcs1_sha256",
    "sign_pss_sha256",
    "store_commit",
    "unprotect_data",
]
