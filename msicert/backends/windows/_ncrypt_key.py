"""Windows key providers on msicert_native: KeyGuard first, else a non-exportable software-KSP key.

The private key never leaves CNG: the CSR is signed through NCryptSignHash (PSS, SHA-256,
salt 32) and the mTLS handshake uses the key through the certificate's CERT_KEY_PROV_INFO.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..._identity import Identity
from ..._lazylog import LazyLogger
from ...wire._csr import PSS_SALT_LENGTH

if TYPE_CHECKING:
    from msicert_native import NCryptKey

    from ...wire._imds import PlatformMetadata

__all__ = ["NCryptRsaKey", "generate_key", "key_is_alive", "key_name_for", "mark_attested",
           "was_attested"]

log = LazyLogger("msicert")

KIND_KEYGUARD = "keyguard"
KIND_SOFTWARE = "software-ksp"
_PROBE_DIGEST = hashlib.sha256(b"msicert per-boot key probe").digest()
_attested: set[str] = set()  # names of keys whose attestation token IMDS received


def mark_attested(name: str) -> None:
    """Record that the key ``name`` was attested (its certificate is tagged ``#att=1``)."""
    _attested.add(name)


def was_attested(name: str) -> bool:
    """True when :func:`mark_attested` saw ``name`` in this process."""
    return name in _attested


def key_name_for(identity: Identity) -> str:
    """A fresh CNG key name for one mint of ``identity`` (one key per certificate)."""
    return f"msicert-{identity.file_tag or 'system'}-{uuid.uuid4().hex[:12]}"


@dataclass
class NCryptRsaKey:
    """An RSA-2048 CNG key, persisted, export policy 0; ``kind`` is keyguard or software-ksp."""

    name: str
    kind: str
    machine: bool
    handle: NCryptKey = field(repr=False)
    spki_der: bytes = field(repr=False, default=b"")
    key_pem: bytes = field(repr=False, default=b"")  # never: the key is not exportable
    alias: str = ""  # the identity it was made for, named in attestation errors

    def sign(self, data: bytes) -> bytes:
        """RSASSA-PSS (SHA-256, salt 32) by NCryptSignHash over SHA-256(``data``)."""
        import msicert_native

        return msicert_native.sign_pss_sha256(
            self.handle, hashlib.sha256(data).digest(), PSS_SALT_LENGTH
        )

    def matches(self, spki_der: bytes) -> bool:
        """True when ``spki_der`` is this key's public half."""
        return spki_der == self.spki_der

    def attestation_token(self, meta: PlatformMetadata) -> str | None:
        """A MAA token for a KeyGuard key (AttestationClientLib.dll, when present), else None;
        an attested key's certificate is tagged ``#att=1`` (MSAL.NET)."""
        if self.kind != KIND_KEYGUARD:
            return None
        from ._attestation import attestation_token

        token = attestation_token(self.handle, meta, self.alias)
        if token is not None:
            mark_attested(self.name)
        return token

    def discard(self) -> None:
        """Delete the persisted key (a mint that failed must not leave keys behind)."""
        import msicert_native

        try:
            msicert_native.delete_key(self.handle)
        except msicert_native.NativeError as exc:
            log.debug("could not delete key %s: %s", self.name, exc)
            self.close()

    def close(self) -> None:
        """Release the handle (the persisted key stays)."""
        self.handle.close()


def generate_key(identity: Identity, *, machine: bool = False) -> NCryptRsaKey:
    """KeyGuard (VBS-isolated, per-boot) when available, else a software-KSP key."""
    import msicert_native as native

    name = key_name_for(identity)
    with native.open_provider() as provider:
        try:
            key = native.create_rsa_key(provider, name, keyguard=True, machine=machine)
        except native.NativeError as exc:
            log.info("KeyGuard key unavailable (%s); using a non-exportable software-KSP key",
                     exc)
        else:
            if native.is_virtual_iso(key):
                return _finish(key, name, KIND_KEYGUARD, machine, identity.alias)
            log.info("key created with KeyGuard flags is not VBS-isolated (no VBS here); "
                     "using a non-exportable software-KSP key")
            try:
                native.delete_key(key)
            except native.NativeError:
                key.close()
        key = native.create_rsa_key(provider, name, keyguard=False, machine=machine)
        return _finish(key, name, KIND_SOFTWARE, machine, identity.alias)


def _finish(key: NCryptKey, name: str, kind: str, machine: bool, alias: str) -> NCryptRsaKey:
    """Check the new key's export policy and read its public half; a key that fails either
    is deleted (it is persisted already: raising alone would leak it)."""
    import msicert_native as native

    try:
        policy = native.get_export_policy(key)
        if policy != 0:
            raise native.NativeError("NCryptGetProperty",
                                     detail=f"export policy is {policy:#x}, not 0")
        spki = native.export_public_spki(key)
    except BaseException:
        _delete_quietly(key, name)
        raise
    log.debug("created %s key %s", kind, name)
    return NCryptRsaKey(name=name, kind=kind, machine=machine, handle=key, spki_der=spki,
                        alias=alias)


def _delete_quietly(key: NCryptKey, name: str) -> None:
    """NCryptDeleteKey (frees the handle on success); on failure close the handle and log."""
    import msicert_native as native

    try:
        native.delete_key(key)
    except native.NativeError as exc:
        log.warning("could not delete the rejected key %s: %s", name, exc)
        key.close()


def key_is_alive(
    name: str, *, machine: bool = False, provider: str | None = None, spki_der: bytes | None = None
) -> bool | None:
    """One test signature: True alive, False dead (gone, a per-boot key after a reboot, or -
    with ``spki_der`` - a key whose public half is not the certificate's, as when a KeyGuard
    key is re-created under the same name), None when this platform cannot tell (Wine:
    NCryptOpenKey is a stub)."""
    import msicert_native as native
    from msicert_native import constants as C

    try:
        with native.open_provider(provider or C.MS_KEY_STORAGE_PROVIDER) as prov, \
                native.open_key(prov, name, machine=machine) as key:
            if spki_der is not None and native.export_public_spki(key) != spki_der:
                log.info("key %s is not the key of its certificate", name)
                return False
            native.sign_pss_sha256(key, _PROBE_DIGEST, PSS_SALT_LENGTH)
            return True
    except native.NativeError as exc:
        if exc.code == C.NTE_NOT_SUPPORTED:
            return None
        log.info("key %s failed its test signature (%s)", name, exc)
        return False
