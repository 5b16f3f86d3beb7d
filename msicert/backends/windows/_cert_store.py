"""Windows store: ``CurrentUser\\My`` (or ``LocalMachine\\My``) through msicert_native.

Entries are tagged with the FriendlyName grammar of the reference client (MSAL.NET)::

    MSAL|alias=<alias>|ep=<mTLS endpoint>/<tenant>|cid=<client id>|type=<identity type>
        |key=<key kind>|sel=<selector kind>

``alias`` is MSAL.NET's cache key for the identity (``system_assigned_managed_identity`` for
the system-assigned identity, else the client id, object id or ARM resource id as configured)
followed by ``#att=1`` when the certificate's key was attested, ``#att=0`` otherwise. MSAL.NET's
decoder reads ``alias`` and ``ep`` only and ignores the other pairs, which are msicert's.
So an entry either client persisted is a store hit for the other:

* an MSAL.NET entry carries no ``cid``/``type``/``key``: the client id is the certificate's
  subject CN (as MSAL.NET derives it), the tenant the last path segment of ``ep`` (else the
  subject's DC), the identity type follows the selector, and the key kind follows the key
  container (MSAL.NET's KeyGuard key is ``KeyGuardRSAKey``);
* the tag that msicert wrote before this grammar (``alias=system`` / ``alias=client_id=<guid>``,
  ``ep=<endpoint>``, ``cid``, ``tid``, ``type``, ``key``) is still read.

Deleting is conservative: only an entry whose tag names this identity AND whose certificate
parses with this identity's subject and (except for ``purge``) the expected issuer is ever
deleted. An unparsable tag, an entry of another identity, or a certificate msicert cannot read
is left alone. Keys are deleted only when msicert created them (``msicert-*`` containers):
MSAL.NET's KeyGuard key is shared by all its identities.

The private key stays in CNG, linked with CERT_KEY_PROV_INFO_PROP_ID; it is never exported.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from ... import _policy
from ..._errors import StoreError
from ..._identity import Identity
from ..._lazylog import LazyLogger
from ..._model import BindingCertificate, x5t_s256
from ..contract import CorruptEntry, NewEntry, StaleCertificate
from ._mutex import MutexLock
from ._ncrypt_key import NCryptRsaKey, generate_key, key_is_alive, was_attested

if TYPE_CHECKING:
    from msicert_native import CertRef, CertStore, KeyProvInfo

    from ._winhttp_transport import WinHttpCache

__all__ = ["WindowsStore", "format_tag", "parse_tag", "reference_alias"]

log = LazyLogger("msicert")

_LOCATIONS = {"current-user": "CurrentUser\\My", "local-machine": "LocalMachine\\My"}
_TAG_PREFIX = "MSAL|"
# MSAL.NET: Constants.ManagedIdentityDefaultClientId, the system-assigned identity's cache key.
REFERENCE_SYSTEM_ALIAS = "system_assigned_managed_identity"
_ATT_SUFFIX = re.compile(r"#att=[0-9]+$")
_ILLEGAL = ("|", "\r", "\n", "\0")  # what the reference's encoder refuses in a value
_REFERENCE_KEYGUARD_CONTAINER = "KeyGuardRSAKey"  # MSAL.NET WindowsCngKeyOperations
_ENV_ISSUER = "MSICERT_ISSUER"  # the client's default issuer override (msicert._client)
_probed: dict[str, bool | None] = {}  # x5t -> key alive? (one test signature per process)


def _no_crash(phase: str) -> None:
    """Fault-injection seam (tests replace ``_crash_point`` to fail at a named put phase)."""


_crash_point = _no_crash


def _alias_base(identity: Identity) -> str:
    if identity.kind == "system":
        return REFERENCE_SYSTEM_ALIAS
    return identity.value


def reference_alias(identity: Identity, *, attested: bool) -> str:
    """MSAL.NET's alias (cache key) for ``identity``: ``<id>#att=<0|1>``."""
    return f"{_alias_base(identity)}#att={1 if attested else 0}"


def format_tag(identity: Identity, entry: NewEntry, kind: str, *, attested: bool = False) -> str:
    """The FriendlyName for one entry (reference grammar plus msicert's extra pairs)."""
    fields = {
        "alias": reference_alias(identity, attested=attested),
        "ep": f"{entry.mtls_endpoint.rstrip('/')}/{entry.tenant_id.strip('/')}",
        "cid": entry.client_id, "type": entry.identity_type, "key": kind, "sel": identity.kind,
    }
    fields = {k: v.strip() for k, v in fields.items()}  # the reference decoder trims them
    for value in fields.values():
        if not value or any(c in value for c in _ILLEGAL):
            raise StoreError("refusing to tag an entry with '|', a line break, NUL or blank "
                             "text in its metadata")
    return _TAG_PREFIX + "|".join(f"{k}={v}" for k, v in fields.items())


def parse_tag(text: str | None) -> dict[str, str] | None:
    """The tag's ``key=value`` pairs, or None when MSAL.NET's decoder would refuse it.

    Decoded as the reference decodes: the ``MSAL|`` prefix, then ``|``-separated pairs split
    at the first ``=``, keys and values trimmed, pieces without ``=`` skipped, the last of a
    repeated key wins; ``alias`` and ``ep`` must be non-blank.
    """
    if not text or not text.startswith(_TAG_PREFIX):
        return None
    fields: dict[str, str] = {}
    for part in text[len(_TAG_PREFIX):].split("|"):
        name, sep, value = part.partition("=")
        if sep:
            fields[name.strip()] = value.strip()
    if not fields.get("alias") or not fields.get("ep"):
        return None
    return fields


def tag_names(fields: dict[str, str], identity: Identity) -> str | None:
    """``"reference"`` or ``"legacy"`` when the tag names ``identity``, else None.

    GUIDs and ARM resource ids compare case-insensitively (MSAL.NET keeps the case its caller
    configured). ``sel`` (msicert's) keeps a client id and an object id apart; an MSAL.NET tag
    has none, and the certificate's subject decides.
    """
    alias = fields["alias"]
    if alias == identity.alias:  # msicert's tag before the reference grammar
        return "legacy" if all(fields.get(n) for n in ("cid", "tid", "type")) else None
    base = _ATT_SUFFIX.sub("", alias)
    if base.casefold() != _alias_base(identity).casefold():
        return None
    if fields.get("sel", identity.kind) != identity.kind:
        return None
    return "reference"


@dataclass(frozen=True)
class _Metadata:
    client_id: str
    tenant_id: str
    mtls_endpoint: str
    identity_type: str
    key: str


def _subject_value(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> str | None:
    values = cert.subject.get_attributes_for_oid(oid)
    value = values[0].value if len(values) == 1 else None
    return value if isinstance(value, str) else None


def _metadata(
    fields: dict[str, str], how: str, cert: x509.Certificate, identity: Identity,
    info: KeyProvInfo,
) -> _Metadata:
    """What the token leg needs, from the tag, completed from the certificate when the tag is
    MSAL.NET's (CorruptEntry when neither has it)."""
    if how == "legacy":
        return _Metadata(fields["cid"], fields["tid"], fields["ep"], fields["type"],
                         fields.get("key", "software-ksp"))
    parts = urlsplit(fields["ep"])
    if parts.scheme.lower() != "https" or not parts.netloc:
        raise CorruptEntry("its tag's ep is not an https URL")
    path, _, tenant = parts.path.rstrip("/").rpartition("/")
    endpoint = f"{parts.scheme}://{parts.netloc}{path}"
    if not tenant:  # the reference allows ep without a tenant: the subject's DC is the tenant
        tenant, endpoint = _subject_value(cert, NameOID.DOMAIN_COMPONENT) or "", fields["ep"]
    if not tenant:
        raise CorruptEntry("neither its tag's ep nor its subject names a tenant")
    client_id = fields.get("cid", "")
    if not client_id:  # MSAL.NET: the subject CN (a GUID) is the canonical client id
        cn = _subject_value(cert, NameOID.COMMON_NAME) or ""
        try:
            client_id = str(uuid.UUID(cn))
        except ValueError:
            raise CorruptEntry("its subject CN is not a client id GUID") from None
    identity_type = fields.get("type") or (
        "SystemAssigned" if identity.kind == "system" else "UserAssigned")
    key = fields.get("key") or (
        "keyguard" if info.container == _REFERENCE_KEYGUARD_CONTAINER else "software-ksp")
    return _Metadata(client_id, tenant, endpoint.rstrip("/"), identity_type, key)


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass
class _Slot:
    """One certificate whose tag names the identity, and what msicert may do with it."""

    ref: CertRef
    fields: dict[str, str]
    how: str
    cert: x509.Certificate | None = None
    subject_ours: bool = False  # parses, and its subject is this identity's
    issuer_ok: bool = False
    complete: bool = True  # False: an MSAL.NET tag msicert cannot complete (left for MSAL.NET)
    entry: BindingCertificate | None = None
    info: KeyProvInfo | None = None
    problem: CorruptEntry | None = None

    def deletable(self, *, check_issuer: bool = True) -> bool:
        """Provably this identity's: tag, subject and (unless told) issuer agree; an entry
        only MSAL.NET can use goes by an explicit purge only."""
        return self.subject_ours and ((self.issuer_ok and self.complete) or not check_issuer)


class WindowsStore:
    """The certificate store of the current user (default) or of the machine."""

    def __init__(self, location: str = "current-user") -> None:
        if location not in _LOCATIONS:
            raise ValueError(f"store location must be one of {sorted(_LOCATIONS)}")
        self.location = location
        self.machine = location == "local-machine"
        self.description = _LOCATIONS[location]
        self.directory: str | None = None  # not a directory: ``status --all`` lists files only
        self._issuers: dict[str, str] = {}  # identity alias -> issuer CN last asked for

    # --- helpers -------------------------------------------------------------------------------
    def _open(self) -> CertStore:
        import msicert_native

        try:
            return msicert_native.open_system_store(self.location, "My")
        except msicert_native.NativeError as exc:
            raise StoreError(f"cannot open {self.description}: {exc}") from exc

    def _issuer(self, identity: Identity, issuer_cn: str | None = None) -> str:
        """The issuer CN to judge ``identity``'s entries by (remembered from find/put)."""
        if issuer_cn is not None:
            self._issuers[identity.alias] = issuer_cn
            return issuer_cn
        return (self._issuers.get(identity.alias) or os.environ.get(_ENV_ISSUER)
                or _policy.DEFAULT_ISSUER_CN)

    def _entries(
        self, store: CertStore, identity: Identity
    ) -> list[tuple[CertRef, dict[str, str]]]:
        """The certificates whose tag names ``identity`` (collected first: never delete while
        enumerating). Only the tag decides here; :meth:`_scan` judges the certificates."""
        import msicert_native

        mine = []
        for ref in msicert_native.enum_certificates(store):
            fields = parse_tag(msicert_native.get_friendly_name(ref))
            if fields is not None and tag_names(fields, identity) is not None:
                mine.append((ref, fields))
            else:
                ref.close()
        return mine

    def _scan(self, store: CertStore, identity: Identity, issuer_cn: str) -> list[_Slot]:
        """Every entry tagged for ``identity``, judged (the caller closes ``slot.ref``)."""
        slots = []
        for ref, fields in self._entries(store, identity):
            how = tag_names(fields, identity) or ""
            slot = _Slot(ref, fields, how)
            slots.append(slot)
            try:
                self._judge(slot, identity, issuer_cn)
            except CorruptEntry as exc:
                slot.problem = CorruptEntry(exc.reason, location=self.description,
                                            keep=exc.keep)
        return slots

    def _judge(self, slot: _Slot, identity: Identity, issuer_cn: str) -> None:
        import msicert_native

        try:
            cert = slot.cert = x509.load_der_x509_certificate(slot.ref.der)
        except ValueError:
            raise CorruptEntry("unparsable certificate") from None
        own_issuer = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
        issuer_value = own_issuer[0].value if len(own_issuer) == 1 else ""
        # Subject alone first (judged against the certificate's own issuer): a subject that
        # names another identity means the entry is not ours at all.
        if _policy.identity_mismatch(cert, identity, issuer_cn=str(issuer_value) or issuer_cn):
            log.debug("entry tagged for %s names another identity in its subject; left alone",
                      identity.alias)
            return
        slot.subject_ours = True
        why = _policy.identity_mismatch(cert, identity, issuer_cn=issuer_cn)
        if why:
            raise CorruptEntry.refusing(why)
        slot.issuer_ok = True
        info = slot.info = msicert_native.get_key_prov_info(slot.ref)
        if info is None:
            raise CorruptEntry("certificate without private key link")
        try:
            meta = _metadata(slot.fields, slot.how, cert, identity, info)
        except CorruptEntry as exc:  # usable by MSAL.NET perhaps, not by msicert: not corrupt
            slot.complete = False
            log.info("entry tagged for %s is not usable by msicert (%s); left alone",
                     identity.alias, exc.reason)
            return
        slot.entry = BindingCertificate.from_der(
            slot.ref.der, cert, identity=identity, client_id=meta.client_id,
            tenant_id=meta.tenant_id, mtls_endpoint=meta.mtls_endpoint,
            identity_type=meta.identity_type, source="store", key=meta.key,
            store=self.description,
        )

    def _delete(self, store: CertStore, ref: CertRef) -> None:
        import msicert_native as native

        info = native.get_key_prov_info(ref)
        native.delete_certificate(store, ref)
        if info is not None and info.container.startswith("msicert-"):  # never another's key
            try:
                with native.open_provider(info.provider) as provider:
                    native.delete_key(native.open_key(
                        provider, info.container,
                        machine=bool(info.flags & native.constants.NCRYPT_MACHINE_KEY_FLAG)))
            except native.NativeError as exc:
                log.debug("key %s not deleted: %s", info.container, exc)

    # --- the Store contract -------------------------------------------------------------------
    def find(self, identity: Identity, *, issuer_cn: str | None) -> BindingCertificate | None:
        """Newest NotAfter among the identity's entries; CorruptEntry if only bad ones exist.

        Entries whose subject names another identity are skipped, not reported.
        """
        issuer_cn = self._issuer(identity, issuer_cn)
        with self._open() as store:
            slots = self._scan(store, identity, issuer_cn)
            for slot in slots:
                slot.ref.close()
        good = [s for s in slots if s.entry is not None]
        best = _policy.pick_best([s.entry for s in good if s.entry is not None])
        if best is None:
            problem = next((s.problem for s in slots if s.problem is not None), None)
            if problem is not None:
                raise problem
            return None
        slot = next(s for s in good if s.entry is best)
        assert slot.info is not None and slot.cert is not None
        self._probe(best.x5t_s256, slot.info, _spki(slot.cert))
        return best

    def _probe(self, x5t: str, info: KeyProvInfo, spki_der: bytes) -> None:
        """One test signature per process: a dead per-boot key, or a key that is not the
        certificate's (a KeyGuard key re-created under the same name), makes it corrupt."""
        import msicert_native as native

        if x5t not in _probed:
            _probed[x5t] = key_is_alive(
                info.container, machine=bool(info.flags & native.constants.NCRYPT_MACHINE_KEY_FLAG),
                provider=info.provider, spki_der=spki_der)
        if _probed[x5t] is False:
            raise CorruptEntry("its key failed a test signature or is not the certificate's "
                               "(per-boot key after a reboot?)", location=self.description)

    def put(self, identity: Identity, entry: NewEntry, *, issuer_cn: str | None
            ) -> BindingCertificate:
        """Add the certificate linked to its CNG key; drop the identity's older entries.

        Once the certificate is in the store, put does not fail for the clean-up of older
        entries (logged): the caller discards the key of a failed put, and a stored
        certificate must never outlive its key. A failure while adding removes what the add
        may have left before it is raised.
        """
        import msicert_native as native

        issuer_cn = self._issuer(identity, issuer_cn)
        key_name, kind = entry.key.name, entry.key.kind
        if not key_name:
            raise StoreError(f"the Windows store needs a CNG key for the certificate, not a "
                             f"{kind} key")
        tag = format_tag(identity, entry, kind, attested=was_attested(key_name))
        try:
            cert = x509.load_der_x509_certificate(entry.der)
        except ValueError as exc:
            raise CorruptEntry("unparsable certificate", location=self.description) from exc
        why = _policy.identity_mismatch(cert, identity, issuer_cn=issuer_cn)
        if why:
            raise CorruptEntry.refusing(why, location=self.description)
        new_x5t = x5t_s256(entry.der)
        with self._open() as store:
            try:
                native.add_certificate(
                    store, entry.der, friendly_name=tag, key_name=key_name,
                    key_flags=native.constants.NCRYPT_MACHINE_KEY_FLAG if self.machine else 0,
                ).close()
            except BaseException as exc:
                self._undo_add(store, new_x5t)
                if isinstance(exc, native.NativeError):
                    raise StoreError(f"cannot add the certificate to {self.description}: {exc}"
                                     ) from exc
                raise
            try:
                _crash_point("added")
                self._drop_older(store, identity, new_x5t, issuer_cn)
                _crash_point("older-dropped")
            except Exception as exc:  # the new entry stands; see docstring
                log.warning("certificate %s is stored in %s, but removing older entries of %s "
                            "failed (%s: %s); they stay until the next renewal", new_x5t,
                            self.description, identity.alias, type(exc).__name__, exc)
            except BaseException:
                self._undo_add(store, new_x5t)  # the caller will discard the key
                raise
        _probed[new_x5t] = True
        return BindingCertificate.from_der(
            entry.der, cert, identity=identity, client_id=entry.client_id,
            tenant_id=entry.tenant_id, mtls_endpoint=entry.mtls_endpoint,
            identity_type=entry.identity_type, source="store", key=kind, store=self.description,
        )

    def _drop_older(self, store: CertStore, identity: Identity, new_x5t: str,
                    issuer_cn: str) -> None:
        slots = self._scan(store, identity, issuer_cn)
        try:
            for slot in slots:
                if slot.deletable() and x5t_s256(slot.ref.der) != new_x5t:
                    self._delete(store, slot.ref)  # renewal: the old entry goes
        finally:
            for slot in slots:
                slot.ref.close()

    def _undo_add(self, store: CertStore, x5t: str) -> None:
        """Best effort: delete the certificate ``x5t`` if an interrupted add left it."""
        import msicert_native as native

        try:
            refs = native.enum_certificates(store)
            try:
                for ref in refs:
                    if x5t_s256(ref.der) == x5t:
                        native.delete_certificate(store, ref)
            finally:
                for ref in refs:
                    ref.close()
        except native.NativeError as exc:
            log.warning("could not remove the half-added certificate %s: %s", x5t, exc)

    def remove(self, identity: Identity, x5t: str | None = None) -> bool:
        """Delete the identity's entries (only the one holding ``x5t`` when given).

        Only entries that are provably this identity's (tag, subject, issuer) go.
        """
        removed = False
        with self._open() as store:
            slots = self._scan(store, identity, self._issuer(identity))
            try:
                for slot in slots:
                    if x5t is not None and x5t_s256(slot.ref.der) != x5t:
                        continue
                    if slot.deletable(check_issuer=x5t is None):
                        self._delete(store, slot.ref)
                        removed = True
            finally:
                for slot in slots:
                    slot.ref.close()
        return removed

    def purge(self, identity: Identity) -> int:
        """Remove every entry of ``identity`` (and msicert's keys); return how many went.

        Every issuer counts (an explicit purge), but the tag and subject must be this
        identity's: another identity's and unreadable entries stay.
        """
        count = 0
        with self._open() as store:
            slots = self._scan(store, identity, self._issuer(identity))
            try:
                for slot in slots:
                    if slot.deletable(check_issuer=False):
                        self._delete(store, slot.ref)
                        count += 1
            finally:
                for slot in slots:
                    slot.ref.close()
        return count

    def lock(self, identity: Identity, *, timeout: float) -> MutexLock:
        """Named mutex per user and identity, in ``Global\\`` (see :func:`mutex_names`)."""
        primary, fallback = mutex_names(self.location, identity, machine=self.machine)
        return MutexLock(primary, timeout=timeout, fallback=fallback)

    def read_note(self, identity: Identity, name: str) -> bytes | None:
        """None: a certificate store has no cheap place for notes, so the mint back-off is
        shared by the threads of one process only."""
        return None

    def write_note(self, identity: Identity, name: str, data: bytes | None) -> None:
        """Nothing to write (see :meth:`read_note`)."""

    def generate_key(self, identity: Identity) -> NCryptRsaKey:
        """KeyGuard first, else a non-exportable software-KSP key."""
        return generate_key(identity, machine=self.machine)

    def transport(self) -> WinHttpCache:
        """mTLS through WinHTTP with this store's certificate contexts."""
        from ._winhttp_transport import WinHttpCache

        return WinHttpCache(self.cert_ref, self.description)

    def cert_ref(self, x5t: str) -> CertRef:
        """An owned CERT_CONTEXT for the certificate ``x5t`` (for WinHTTP); StaleCertificate
        when it is gone (another process renewed or purged it)."""
        import msicert_native

        with self._open() as store:
            found = None
            for ref in msicert_native.enum_certificates(store):
                if found is None and x5t_s256(ref.der) == x5t:
                    found = ref
                else:
                    ref.close()
        if found is None:
            raise StaleCertificate(f"certificate {x5t} is no longer in {self.description}")
        return found


def mutex_names(location: str, identity: Identity, *, machine: bool) -> tuple[str, str]:
    """``(Global\\msicert-<owner>-<hash>, Local\\msicert-<owner>-<hash>)`` for one identity.

    ``CurrentUser\\My`` is per user, shared by every logon session of that user (a service in
    session 0 and an interactive session), so the single-flight mutex lives in ``Global\\``
    with the user's SID in its name: all sessions of one user meet on it, and other users never
    collide with (or wait on) it. ``LocalMachine\\My`` is one store for everybody: its mutex
    is ``Global\\msicert-machine-<hash>``. When the ``Global\\`` name cannot be created or
    opened (ERROR_ACCESS_DENIED: a hardened object-namespace DACL, a low-integrity or
    AppContainer process, or a same-named object made by someone whose DACL excludes us),
    :class:`MutexLock` falls back to ``Local\\`` (this logon session only) and logs a warning,
    since two sessions of the user may then mint at once.
    """
    import msicert_native

    owner = "machine" if machine else msicert_native.current_user_sid()
    digest = hashlib.sha256(f"{location}|{identity.alias}".encode()).hexdigest()[:32]
    return f"Global\\msicert-{owner}-{digest}", f"Local\\msicert-{owner}-{digest}"
