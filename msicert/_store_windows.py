"""Windows store: ``CurrentUser\\My`` (or ``LocalMachine\\My``) through msicert_native.

Entries are found by a FriendlyName tag that names the identity and decided by subject and
issuer; the tag also carries what the token leg needs (so a warm start makes no IMDS call):
``MSAL|alias=<identity>|ep=<mtls endpoint>|cid=<client id>|tid=<tenant>|type=<type>|key=<kind>``.
The private key stays in CNG, linked with CERT_KEY_PROV_INFO_PROP_ID; it is never exported.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING

from cryptography import x509

from . import _policy
from ._errors import StoreError
from ._identity import Identity
from ._keys_windows import NCryptRsaKey, generate_key, key_is_alive
from ._lock import MutexLock
from ._model import BindingCertificate, x5t_s256
from ._store import CorruptEntry, NewEntry

if TYPE_CHECKING:
    from msicert_native import CertRef, CertStore

    from ._tls_windows import WinHttpCache

__all__ = ["WindowsStore", "format_tag", "parse_tag"]

log = logging.getLogger("msicert")

_LOCATIONS = {"current-user": "CurrentUser\\My", "local-machine": "LocalMachine\\My"}
_TAG_PREFIX = "MSAL|"
_probed: dict[str, bool | None] = {}  # x5t -> key alive? (one test signature per process)


def format_tag(identity: Identity, entry: NewEntry, kind: str) -> str:
    """The FriendlyName for one entry."""
    fields = {
        "alias": identity.alias, "ep": entry.mtls_endpoint, "cid": entry.client_id,
        "tid": entry.tenant_id, "type": entry.identity_type, "key": kind,
    }
    if any("|" in v for v in fields.values()):
        raise StoreError("refusing to tag an entry with '|' in its metadata")
    return _TAG_PREFIX + "|".join(f"{k}={v}" for k, v in fields.items())


def parse_tag(text: str | None) -> dict[str, str] | None:
    """The tag's fields, or None when the FriendlyName is not an msicert tag."""
    if not text or not text.startswith(_TAG_PREFIX):
        return None
    fields = {}
    for part in text[len(_TAG_PREFIX):].split("|"):
        name, sep, value = part.partition("=")
        if not sep:
            return None
        fields[name] = value
    needed = ("alias", "ep", "cid", "tid", "type")
    return fields if all(fields.get(n) for n in needed) else None


class WindowsStore:
    """The certificate store of the current user (default) or of the machine."""

    def __init__(self, location: str = "current-user") -> None:
        if location not in _LOCATIONS:
            raise ValueError(f"store location must be one of {sorted(_LOCATIONS)}")
        self.location = location
        self.machine = location == "local-machine"
        self.description = _LOCATIONS[location]

    # --- helpers -------------------------------------------------------------------------------
    def _open(self) -> CertStore:
        import msicert_native

        try:
            return msicert_native.open_system_store(self.location, "My")
        except msicert_native.NativeError as exc:
            raise StoreError(f"cannot open {self.description}: {exc}") from exc

    def _entries(
        self, store: CertStore, identity: Identity
    ) -> list[tuple[CertRef, dict[str, str]]]:
        """The identity's entries by tag (collected first: never delete while enumerating).

        Subject and issuer then decide (``_entry``); an entry tagged for this identity with
        another issuer is reported corrupt, not silently skipped.
        """
        import msicert_native

        mine = []
        for ref in msicert_native.enum_certificates(store):
            tag = parse_tag(msicert_native.get_friendly_name(ref))
            if tag is not None and tag["alias"] == identity.alias:
                mine.append((ref, tag))
            else:
                ref.close()
        return mine

    def _entry(
        self, ref: CertRef, tag: dict[str, str], identity: Identity, issuer_cn: str
    ) -> tuple[BindingCertificate, str]:
        """The entry and the name of its CNG key (CorruptEntry when either is unusable)."""
        import msicert_native

        der = ref.der
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError as exc:
            raise CorruptEntry("unparsable certificate", location=self.description) from exc
        why = _policy.identity_mismatch(cert, identity, issuer_cn=issuer_cn)
        if why:
            raise CorruptEntry(why, location=self.description)
        info = msicert_native.get_key_prov_info(ref)
        if info is None:
            raise CorruptEntry("certificate without private key link", location=self.description)
        entry = BindingCertificate.from_der(
            der, cert, identity=identity, client_id=tag["cid"], tenant_id=tag["tid"],
            mtls_endpoint=tag["ep"], identity_type=tag["type"], source="store",
            key=tag.get("key", "software-ksp"), store=self.description,
        )
        return entry, info.container

    def _delete(self, store: CertStore, ref: CertRef) -> None:
        import msicert_native as native

        info = native.get_key_prov_info(ref)
        native.delete_certificate(store, ref)
        if info is not None and info.container.startswith("msicert-"):
            try:
                with native.open_provider(info.provider) as provider:
                    native.delete_key(native.open_key(provider, info.container,
                                                      machine=self.machine))
            except native.NativeError as exc:
                log.debug("key %s not deleted: %s", info.container, exc)

    # --- the Store contract -------------------------------------------------------------------
    def find(self, identity: Identity, *, issuer_cn: str) -> BindingCertificate | None:
        """Newest NotAfter among the identity's entries; CorruptEntry if only bad ones exist."""
        with self._open() as store:
            refs = self._entries(store, identity)
            try:
                good: list[BindingCertificate] = []
                key_names: dict[str, str] = {}
                problem: CorruptEntry | None = None
                for ref, tag in refs:
                    try:
                        entry, key_name = self._entry(ref, tag, identity, issuer_cn)
                    except CorruptEntry as exc:
                        problem = exc
                        continue
                    good.append(entry)
                    key_names[entry.x5t_s256] = key_name
            finally:
                for ref, _ in refs:
                    ref.close()
        best = _policy.pick_best(good)
        if best is None:
            if problem is not None:
                raise problem
            return None
        self._probe(best.x5t_s256, key_names[best.x5t_s256])
        return best

    def _probe(self, x5t: str, key_name: str) -> None:
        """One test signature per process: a dead per-boot key makes the entry corrupt."""
        if x5t not in _probed:
            _probed[x5t] = key_is_alive(key_name, machine=self.machine)
        if _probed[x5t] is False:
            raise CorruptEntry("its key failed a test signature (per-boot key after a reboot?)",
                               location=self.description)

    def put(self, identity: Identity, entry: NewEntry, *, issuer_cn: str) -> BindingCertificate:
        """Add the certificate linked to its CNG key; drop the identity's older entries."""
        import msicert_native as native

        key_name = getattr(entry, "key_name", "")
        kind = getattr(entry, "key_kind", "software-ksp")
        if not key_name:
            raise StoreError("the Windows store needs a CNG key name for the certificate")
        tag = format_tag(identity, entry, kind)
        try:
            cert = x509.load_der_x509_certificate(entry.der)
        except ValueError as exc:
            raise CorruptEntry("unparsable certificate", location=self.description) from exc
        why = _policy.identity_mismatch(cert, identity, issuer_cn=issuer_cn)
        if why:
            raise CorruptEntry(why, location=self.description)
        new_x5t = x5t_s256(entry.der)
        with self._open() as store:
            try:
                native.add_certificate(
                    store, entry.der, friendly_name=tag, key_name=key_name,
                    key_flags=native.constants.NCRYPT_MACHINE_KEY_FLAG if self.machine else 0,
                ).close()
            except native.NativeError as exc:
                raise StoreError(f"cannot add the certificate to {self.description}: {exc}") \
                    from exc
            refs = self._entries(store, identity)
            try:
                for ref, _ in refs:
                    if x5t_s256(ref.der) != new_x5t:
                        self._delete(store, ref)  # renewal: the old entry goes
            finally:
                for ref, _ in refs:
                    ref.close()
        _probed[new_x5t] = True
        return BindingCertificate.from_der(
            entry.der, cert, identity=identity, client_id=entry.client_id,
            tenant_id=entry.tenant_id, mtls_endpoint=entry.mtls_endpoint,
            identity_type=entry.identity_type, source="store", key=kind, store=self.description,
        )

    def remove(self, identity: Identity, x5t: str | None = None) -> bool:
        """Delete the identity's entries (only the one holding ``x5t`` when given)."""
        removed = False
        with self._open() as store:
            refs = self._entries(store, identity)
            try:
                for ref, _ in refs:
                    if x5t is None or x5t_s256(ref.der) == x5t:
                        self._delete(store, ref)
                        removed = True
            finally:
                for ref, _ in refs:
                    ref.close()
        return removed

    def purge(self, identity: Identity) -> int:
        """Remove every entry of ``identity`` (and its keys); return how many went."""
        count = 0
        with self._open() as store:
            refs = self._entries(store, identity)
            try:
                for ref, _ in refs:
                    self._delete(store, ref)
                    count += 1
            finally:
                for ref, _ in refs:
                    ref.close()
        return count

    def lock(self, identity: Identity, *, timeout: float) -> MutexLock:
        """Named mutex per identity (``Global\\`` for the machine store)."""
        digest = hashlib.sha256(f"{self.location}|{identity.alias}".encode()).hexdigest()[:32]
        scope = "Global" if self.machine else "Local"
        return MutexLock(f"{scope}\\msicert-{digest}", timeout=timeout)

    def generate_key(self, identity: Identity) -> NCryptRsaKey:
        """KeyGuard first, else a non-exportable software-KSP key."""
        return generate_key(identity, machine=self.machine)

    def transport(self) -> WinHttpCache:
        """mTLS through WinHTTP with this store's certificate contexts."""
        from ._tls_windows import WinHttpCache

        return WinHttpCache(self)

    def cert_ref(self, x5t: str) -> CertRef:
        """An owned CERT_CONTEXT for the certificate ``x5t`` (for WinHTTP); StoreError if gone."""
        import msicert_native

        with self._open() as store:
            found = None
            for ref in msicert_native.enum_certificates(store):
                if found is None and x5t_s256(ref.der) == x5t:
                    found = ref
                else:
                    ref.close()
        if found is None:
            raise StoreError(f"certificate {x5t} is no longer in {self.description}")
        return found
