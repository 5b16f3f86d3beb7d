"""Certificate store operations (crypt32) over owned handles.

Every function commits what it changed (``CertControlStore(CERT_STORE_CTRL_COMMIT)``): harmless
on Windows and required under Wine, where uncommitted deletes are lost at process exit.
Enumeration always collects first; callers delete afterwards (deleting while enumerating spins
forever under Wine and is undefined on Windows).
"""

from __future__ import annotations

from . import _constants as C
from ._backend import impl as _impl
from ._errors import NativeError
from ._handles import CertRef, CertStore
from ._types import KeyProvInfo

__all__ = [
    "add_certificate",
    "delete_certificate",
    "enum_certificates",
    "find_certificates",
    "get_friendly_name",
    "get_key_prov_info",
    "memory_certificate",
    "open_system_store",
    "set_friendly_name",
    "store_commit",
]

_LOCATIONS = {
    "current-user": C.CERT_SYSTEM_STORE_CURRENT_USER,
    "local-machine": C.CERT_SYSTEM_STORE_LOCAL_MACHINE,
}


def open_system_store(location: str = "current-user", name: str = "My") -> CertStore:
    """Open ``CurrentUser\\<name>`` or ``LocalMachine\\<name>``; use it in a ``with``.

    ``location`` is ``"current-user"`` or ``"local-machine"``. The store is opened with
    CERT_STORE_MAXIMUM_ALLOWED_FLAG: a non-admin gets LocalMachine read-only and sees
    ERROR_ACCESS_DENIED only when it tries to change it.
    """
    try:
        flag = _LOCATIONS[location]
    except KeyError:
        raise ValueError(
            f"location must be one of {sorted(_LOCATIONS)}, not {location!r}"
        ) from None
    handle = _impl.cert_open_store_system(flag | C.CERT_STORE_MAXIMUM_ALLOWED_FLAG, name)
    return CertStore(handle, location, name)


def store_commit(store: CertStore) -> None:
    """Flush the store's changes to its backing registry key."""
    _impl.cert_control_store_commit(store.handle)


def _collect(store: CertStore, find_type: int | None, text: str) -> list[CertRef]:
    refs: list[CertRef] = []
    current = 0
    try:
        while True:
            # The enum/find call frees the previous context even when it fails: from here on
            # only the new result (if any) is ours to free.
            prev, current = current, 0
            if find_type is None:
                current = _impl.cert_enum_certificates_in_store(store.handle, prev)
            else:
                current = _impl.cert_find_certificate_in_store(store.handle, find_type, text, prev)
            if not current:
                return refs
            refs.append(CertRef(_impl.cert_duplicate_certificate_context(current)))
    except BaseException:
        if current:
            _impl.cert_free_certificate_context(current)
        for ref in refs:
            ref.close()
        raise


def enum_certificates(store: CertStore) -> list[CertRef]:
    """Every certificate in the store, each an owned :class:`CertRef` (close them)."""
    return _collect(store, None, "")


def find_certificates(
    store: CertStore, *, subject_substr: str | None = None, issuer_substr: str | None = None
) -> list[CertRef]:
    """Certificates whose subject and/or issuer contain the given text (case-insensitive).

    The subject goes through CERT_FIND_SUBJECT_STR_W (matched against the name's RDN
    values). The issuer is matched here, against the issuer's RDN values, rather than with
    CERT_FIND_ISSUER_STR_W, whose Wine implementation compares the subject instead: the same
    answer everywhere, and the Wine tier tests what Windows runs. Neither: all certificates.
    """
    if subject_substr is None:
        candidates = enum_certificates(store)
    else:
        candidates = _collect(store, C.CERT_FIND_SUBJECT_STR_W, subject_substr)
    if issuer_substr is None:
        return candidates
    keep: list[CertRef] = []
    for ref in candidates:
        if issuer_substr.casefold() in _issuer_text(ref.der).casefold():
            keep.append(ref)
        else:
            ref.close()
    return keep


def _issuer_text(der: bytes) -> str:
    """The issuer's RDN values, last RDN first, joined by ", " (like CERT_SIMPLE_NAME_STR)."""
    from cryptography import x509

    try:
        issuer = x509.load_der_x509_certificate(der).issuer
    except ValueError:  # crypt32 accepted it, cryptography did not: it cannot match
        return ""
    return ", ".join(str(attribute.value) for attribute in reversed(list(issuer)))


def add_certificate(
    store: CertStore,
    der: bytes,
    *,
    friendly_name: str | None,
    key_name: str | None,
    provider_name: str = C.MS_KEY_STORAGE_PROVIDER,
    prov_type: int = 0,
    key_flags: int = 0,
    key_spec: int = 0,
) -> CertRef:
    """Add (or replace) ``der`` with its friendly name and private-key link; commit.

    ``key_name``/``provider_name`` become CERT_KEY_PROV_INFO_PROP_ID (CNG: ``prov_type`` 0,
    ``key_spec`` 0; ``key_flags`` NCRYPT_MACHINE_KEY_FLAG for a machine key). ``None``
    leaves that property unset. Returns the store's own context as an owned ref.
    """
    created = CertRef(_impl.cert_create_certificate_context(der))
    with created:
        if friendly_name is not None:
            _impl.cert_set_property_bytes(
                created.handle, C.CERT_FRIENDLY_NAME_PROP_ID, _utf16z(friendly_name)
            )
        if key_name is not None:
            info = KeyProvInfo(key_name, provider_name, prov_type, key_flags, key_spec)
            _impl.cert_set_key_prov_info(created.handle, info)
        stored = CertRef(
            _impl.cert_add_certificate_context_to_store(
                store.handle, created.handle, C.CERT_STORE_ADD_REPLACE_EXISTING
            )
        )
    try:
        store_commit(store)
    except BaseException:
        stored.close()
        raise
    return stored


def memory_certificate(
    der: bytes,
    *,
    friendly_name: str | None,
    key_name: str,
    provider_name: str = C.MS_KEY_STORAGE_PROVIDER,
    prov_type: int = 0,
    key_flags: int = 0,
    key_spec: int = 0,
) -> CertRef:
    """A CERT_CONTEXT for ``der`` linked to its CNG key, in no store (nothing persisted).

    What WinHTTP needs to present a certificate whose key lives in CNG, when the certificate
    itself could not be written to a store.
    """
    created = CertRef(_impl.cert_create_certificate_context(der))
    try:
        if friendly_name is not None:
            _impl.cert_set_property_bytes(
                created.handle, C.CERT_FRIENDLY_NAME_PROP_ID, _utf16z(friendly_name)
            )
        info = KeyProvInfo(key_name, provider_name, prov_type, key_flags, key_spec)
        _impl.cert_set_key_prov_info(created.handle, info)
    except BaseException:
        created.close()
        raise
    return created


def delete_certificate(store: CertStore, ref: CertRef) -> None:
    """Delete ``ref``'s certificate from ``store`` and commit; ``ref`` itself stays open.

    CertDeleteCertificateFromStore frees the context it is given, so it gets a duplicate.
    """
    _impl.cert_delete_certificate_from_store(_impl.cert_duplicate_certificate_context(ref.handle))
    store_commit(store)


def get_friendly_name(ref: CertRef) -> str | None:
    """CERT_FRIENDLY_NAME_PROP_ID, or ``None`` when the certificate has none."""
    data = _get_property(ref, C.CERT_FRIENDLY_NAME_PROP_ID)
    return None if data is None else data.decode("utf-16-le").split("\0", 1)[0]


def set_friendly_name(ref: CertRef, friendly_name: str | None) -> None:
    """Set (or with ``None`` remove) the friendly name of a certificate in place."""
    data = None if friendly_name is None else _utf16z(friendly_name)
    _impl.cert_set_property_bytes(ref.handle, C.CERT_FRIENDLY_NAME_PROP_ID, data)


def get_key_prov_info(ref: CertRef) -> KeyProvInfo | None:
    """CERT_KEY_PROV_INFO_PROP_ID as a :class:`KeyProvInfo`, or ``None`` when unset."""
    try:
        size, _ = _impl.cert_get_key_prov_info(ref.handle, 0)
    except NativeError as exc:
        if exc.code == C.CRYPT_E_NOT_FOUND:
            return None
        raise
    return _impl.cert_get_key_prov_info(ref.handle, size)[1]


def _get_property(ref: CertRef, prop_id: int) -> bytes | None:
    try:
        size, _ = _impl.cert_get_property_bytes(ref.handle, prop_id, 0)
    except NativeError as exc:
        if exc.code == C.CRYPT_E_NOT_FOUND:
            return None
        raise
    return _impl.cert_get_property_bytes(ref.handle, prop_id, size)[1]


def _utf16z(text: str) -> bytes:
    return (text + "\0").encode("utf-16-le")
