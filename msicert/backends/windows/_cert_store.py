"""Windows store: ``CurrentUser\\My`` (or ``LocalMachine\\My``) through msicert_native, shared
with MSAL.NET and MSAL Go as a good neighbour.

* Entries carry the references' FriendlyName tag (:mod:`._tags`) and are linked with
  CERT_KEY_PROV_INFO {container, Microsoft Software KSP, prov type 0, CERT_NCRYPT_KEY_SPEC} to
  the one binding key every library uses (:mod:`._ncrypt_key`: ``KeyGuardRSAKey``, else
  ``HardwareRSAKey``).
* Every write (persist, prune, purge, removal, key recreation) holds the store-write mutex the
  references take, ``Global\\MSAL_MI_P_<hash of the alias>`` (:class:`._mutex.SharedStoreLock`),
  for that write only. A persist or removal waits the references' 300 ms for it and is then
  skipped, as theirs are; a persist that is skipped leaves the new certificate usable in this
  process (its key is persisted in CNG already; WinHTTP gets a CERT_CONTEXT that lives in no
  store); ``purge`` and key creation report the busy mutex instead.
* After a persist only the EXPIRED entries whose alias is exactly the one written are pruned
  (MSAL.NET ``PruneExpiredForAlias``, MSAL Go ``pruneExpired``): valid certificates of any
  library, other aliases, the other ``#att`` variant and unparsable entries stay.
* A reader looks up its own ``#att`` variant only: ``#att=1`` when it would mint with
  attestation (AttestationClientLib.dll present and a KeyGuard binding key), else ``#att=0``.

Deleting is conservative: an entry is deleted when its tag and subject name the identity, or by
the prune and the purge of :mod:`._cleanup`. Unparsable entries are never deleted. Keys are
deleted only when msicert made them (``msicert-*`` containers of earlier versions) and no
certificate uses them any more.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from ... import _policy
from ..._errors import StoreError
from ..._identity import Identity
from ..._lazylog import LazyLogger
from ..._model import BindingCertificate, x5t_s256
from ..contract import CorruptEntry, NewEntry, StaleCertificate
from . import _cleanup, _token_file
from ._mutex import PERSIST_WAIT, MutexLock, SharedStoreLock, mutex_names
from ._ncrypt_key import (
    KIND_KEYGUARD,
    NCryptRsaKey,
    binding_key,
    key_is_alive,
    keyguard_expected,
)
from ._tags import format_tag, metadata, parse_tag, reference_alias, tag_names

if TYPE_CHECKING:
    from msicert_native import CertRef, CertStore, KeyProvInfo

    from ._winhttp_transport import WinHttpCache

__all__ = ["WindowsStore"]

log = LazyLogger("msicert")

_LOCATIONS = {"current-user": "CurrentUser\\My", "local-machine": "LocalMachine\\My"}
_ENV_ISSUER = "MSICERT_ISSUER"  # the client's default issuer override (msicert._client)
KEY_LOCK_WAIT = 10.0
"""Seconds key creation waits for the store-write mutex (MSAL Go waits as long for its key
provisioning lock); then the mint fails before any IMDS issuance, and is retried later."""
_probed: dict[str, bool | None] = {}  # x5t -> key alive? (one test signature per process)


@dataclass
class _Unpersisted:
    """A minted certificate the store could not take (mutex busy, or a newer entry there):
    usable from memory by this process; ``ref`` is its CERT_CONTEXT for WinHTTP."""

    location: str
    alias: str  # the references' alias, variant included
    identity: Identity
    entry: BindingCertificate
    ref: CertRef


_unpersisted: dict[str, _Unpersisted] = {}  # x5t -> entry, for every store of this process


def _no_crash(phase: str) -> None:
    """Fault-injection seam (tests replace ``_crash_point`` to fail at a named put phase)."""


_crash_point = _no_crash


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


def _newest_first(slot: _Slot) -> tuple[float, float]:
    entry = slot.entry
    return (0.0, 0.0) if entry is None else (-entry.not_after_ts, -entry.not_before_ts)


class WindowsStore:
    """The certificate store of the current user (default) or of the machine."""

    def __init__(self, location: str = "current-user") -> None:
        if location not in _LOCATIONS:
            raise ValueError(f"store location must be one of {sorted(_LOCATIONS)}")
        self.location = location
        self.machine = location == "local-machine"
        self.description = _LOCATIONS[location]
        self.directory: str | None = None  # not a directory: ``status --all`` lists files only
        # identity alias -> the issuer expectation find/put were last given (None: recorded)
        self._issuers: dict[str, str | None] = {}

    # --- helpers -------------------------------------------------------------------------------
    def _open(self) -> CertStore:
        import msicert_native

        try:
            return msicert_native.open_system_store(self.location, "My")
        except msicert_native.NativeError as exc:
            raise StoreError(f"cannot open {self.description}: {exc}") from exc

    def _expect(self, identity: Identity, issuer_cn: str | None) -> str | None:
        """find/put: remember what the caller expects of ``identity``'s issuer (None: the one
        each entry msicert wrote was issued under; see :meth:`_judge`)."""
        self._issuers[identity.alias] = issuer_cn
        return issuer_cn

    def _issuer(self, identity: Identity) -> str | None:
        """remove/purge/prune: the expectation find/put were last given (else the
        environment's)."""
        if identity.alias in self._issuers:
            return self._issuers[identity.alias]
        return os.environ.get(_ENV_ISSUER) or None

    def attested(self) -> bool:
        """The ``#att`` variant this store's clients read and write: True when a mint would be
        attested (AttestationClientLib.dll found, and the binding key is or would be
        KeyGuard), as the references key their cache by whether attestation is configured."""
        import msicert_native

        if msicert_native.find_attestation_library()[0] is None:
            return False
        return keyguard_expected(machine=self.machine)

    def _key_flags(self) -> int:
        import msicert_native

        return msicert_native.constants.NCRYPT_MACHINE_KEY_FLAG if self.machine else 0

    def _scan(self, store: CertStore, identity: Identity, issuer_cn: str | None, *,
              attested: bool | None) -> list[_Slot]:
        """Every entry whose tag names ``identity`` in variant ``attested`` (None: any),
        judged; collected first (never delete while enumerating). The caller closes
        ``slot.ref``."""
        import msicert_native

        slots = []
        for ref in msicert_native.enum_certificates(store):
            fields = parse_tag(msicert_native.get_friendly_name(ref))
            how = None if fields is None else tag_names(fields, identity, attested=attested)
            if fields is None or how is None:
                ref.close()
                continue
            slot = _Slot(ref, fields, how)
            slots.append(slot)
            try:
                self._judge(slot, identity, issuer_cn)
            except CorruptEntry as exc:
                slot.problem = CorruptEntry(exc.reason, location=self.description,
                                            keep=exc.keep)
        return slots

    def _judge(self, slot: _Slot, identity: Identity, issuer_cn: str | None) -> None:
        """Fill ``slot`` in, or CorruptEntry. Without an expected issuer, an entry msicert
        wrote carries the issuer IMDS issued it under (any name: a sovereign cloud's too);
        another library's entry must carry the default issuer name (MSAL.NET's rule)."""
        import msicert_native

        if issuer_cn is None and not _written_by_msicert(slot.fields, slot.how):
            issuer_cn = _policy.DEFAULT_ISSUER_CN
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
            meta = metadata(slot.fields, slot.how, cert, identity, info)
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

    # --- the Store contract -------------------------------------------------------------------
    def find(self, identity: Identity, *, issuer_cn: str | None) -> BindingCertificate | None:
        """Newest NotAfter among the identity's entries of this reader's variant whose key
        passes its test signature; CorruptEntry if only bad ones exist.

        Entries whose subject names another identity are skipped, not reported.
        """
        issuer_cn = self._expect(identity, issuer_cn)
        attested = self.attested()
        with self._open() as store:
            slots = self._scan(store, identity, issuer_cn, attested=attested)
            for slot in slots:
                slot.ref.close()
        # Newest NotAfter first (ties: the later NotBefore, i.e. the later mint).
        candidates = sorted((s for s in slots if s.entry is not None), key=_newest_first)
        for best in candidates:
            assert best.entry is not None and best.info is not None and best.cert is not None
            if self._probe(best.entry.x5t_s256, best.info, _spki(best.cert)):
                return self._newest(best.entry, identity, attested)
            best.problem = CorruptEntry(
                "its key failed a test signature or is not the certificate's (per-boot key "
                "after a reboot?)", location=self.description)
        memory = self._newest(None, identity, attested)
        if memory is not None:
            return memory
        problem = next((s.problem for s in slots if s.problem is not None), None)
        if problem is not None:
            raise problem
        return None

    def _newest(self, found: BindingCertificate | None, identity: Identity,
                attested: bool) -> BindingCertificate | None:
        """``found`` or a newer certificate this process minted but could not store."""
        alias = reference_alias(identity, attested=attested)
        kept = [u.entry for u in _unpersisted.values()
                if u.location == self.location and u.alias.casefold() == alias.casefold()
                and u.identity.kind == identity.kind]
        return _policy.pick_best([*kept, *([found] if found is not None else [])])

    def _probe(self, x5t: str, info: KeyProvInfo, spki_der: bytes) -> bool:
        """One test signature per process and certificate: False for a dead per-boot key or
        a key that is not the certificate's (a binding key re-created under its name)."""
        import msicert_native as native

        if x5t not in _probed:
            _probed[x5t] = key_is_alive(
                info.container, machine=bool(info.flags & native.constants.NCRYPT_MACHINE_KEY_FLAG),
                provider=info.provider, spki_der=spki_der)
        return _probed[x5t] is not False

    def put(self, identity: Identity, entry: NewEntry, *, issuer_cn: str | None
            ) -> BindingCertificate:
        """Add the certificate linked to its CNG key, then prune the expired entries of its
        exact alias, all under the store-write mutex.

        When the mutex stays busy for 300 ms, or the store already holds a newer valid
        certificate for the alias, nothing is written (as the references skip) and the
        certificate is returned for this process's use from memory (``source`` "memory").
        Once the certificate is in the store, put does not fail for the pruning (logged). A
        failure while adding removes what the add may have left before it is raised.
        """
        import msicert_native as native

        issuer_cn = self._expect(identity, issuer_cn)
        key = entry.key
        if not key.name:
            raise StoreError(f"the Windows store needs a CNG key for the certificate, not a "
                             f"{key.kind} key")
        attested = isinstance(key, NCryptRsaKey) and key.attested
        tag = format_tag(identity, entry, key.kind, attested=attested)
        try:
            cert = x509.load_der_x509_certificate(entry.der)
        except ValueError as exc:
            raise CorruptEntry("unparsable certificate", location=self.description) from exc
        why = _policy.identity_mismatch(cert, identity, issuer_cn=issuer_cn)
        if why:
            raise CorruptEntry.refusing(why, location=self.description)
        alias = reference_alias(identity, attested=attested)
        new_x5t = x5t_s256(entry.der)
        lock = SharedStoreLock(alias)
        with lock.hold(PERSIST_WAIT) as held:
            if not held:
                log.warning("%s is busy (another process is writing %s); certificate %s is "
                            "not stored and serves this process from memory", lock.name,
                            self.description, new_x5t)
                return self._keep_in_memory(identity, entry, cert, tag, alias)
            with self._open() as store:
                if self._newer_stored(store, identity, issuer_cn, alias, cert):
                    log.info("%s already holds a newer certificate for %s; certificate %s is "
                             "not stored", self.description, alias, new_x5t)
                    return self._keep_in_memory(identity, entry, cert, tag, alias)
                try:
                    native.add_certificate(
                        store, entry.der, friendly_name=tag, key_name=key.name,
                        key_flags=self._key_flags(),
                        key_spec=native.constants.CERT_NCRYPT_KEY_SPEC,
                    ).close()
                except BaseException as exc:
                    self._undo_add(store, new_x5t)
                    if isinstance(exc, native.NativeError):
                        raise StoreError(f"cannot add the certificate to {self.description}: "
                                         f"{exc}") from exc
                    raise
                try:
                    _crash_point("added")
                    _cleanup.prune_expired(store, alias)
                    self._prune_legacy(store, identity, issuer_cn)
                    _cleanup.sweep_legacy_keys(store, machine=self.machine)
                    _crash_point("older-dropped")
                except Exception as exc:  # the new entry stands; see docstring
                    log.warning("certificate %s is stored in %s, but pruning expired entries "
                                "of %s failed (%s: %s); they stay until the next renewal",
                                new_x5t, self.description, alias, type(exc).__name__, exc)
                except BaseException:
                    self._undo_add(store, new_x5t)
                    raise
        _probed[new_x5t] = True
        return BindingCertificate.from_der(
            entry.der, cert, identity=identity, client_id=entry.client_id,
            tenant_id=entry.tenant_id, mtls_endpoint=entry.mtls_endpoint,
            identity_type=entry.identity_type, source="store", key=key.kind,
            store=self.description,
        )

    def _keep_in_memory(self, identity: Identity, entry: NewEntry, cert: x509.Certificate,
                        tag: str, alias: str) -> BindingCertificate:
        """The certificate for this process only: a CERT_CONTEXT in no store, linked to the
        key (persisted in CNG), so that WinHTTP can present it."""
        import msicert_native as native

        ref = native.memory_certificate(
            entry.der, friendly_name=tag, key_name=entry.key.name, key_flags=self._key_flags(),
            key_spec=native.constants.CERT_NCRYPT_KEY_SPEC)
        kept = BindingCertificate.from_der(
            entry.der, cert, identity=identity, client_id=entry.client_id,
            tenant_id=entry.tenant_id, mtls_endpoint=entry.mtls_endpoint,
            identity_type=entry.identity_type, source="memory", key=entry.key.kind,
            store=self.description,
        )
        for x5t, old in list(_unpersisted.items()):  # one per identity and variant
            if (old.location, old.alias, old.identity) == (self.location, alias, identity):
                del _unpersisted[x5t]
                old.ref.close()
        _unpersisted[kept.x5t_s256] = _Unpersisted(self.location, alias, identity, kept, ref)
        _probed[kept.x5t_s256] = True
        return kept

    def _newer_stored(self, store: CertStore, identity: Identity, issuer_cn: str | None,
                      alias: str, cert: x509.Certificate) -> bool:
        """The reference's skip: the store already holds, under exactly ``alias``, a valid
        certificate expiring no earlier. Unlike the reference, only an entry msicert would
        serve counts (its subject, issuer and key pass), so a stray entry carrying our alias
        cannot stop every persist."""
        now = time.time()
        mine = cert.not_valid_after_utc.timestamp()
        slots = self._scan(store, identity, issuer_cn, attested=None)
        try:
            return any(
                s.entry is not None and s.fields["alias"] == alias
                and s.entry.not_after_ts >= mine and s.entry.not_after_ts > now
                and _probed.get(s.entry.x5t_s256) is not False
                for s in slots)
        finally:
            for s in slots:
                s.ref.close()

    def _prune_legacy(self, store: CertStore, identity: Identity, issuer_cn: str | None
                      ) -> int:
        """Delete this identity's expired entries in msicert's tag from before the reference
        grammar (``alias=system`` ...), with their ``msicert-*`` keys: no other library reads
        that tag, and left alone they (and their keys) would stay forever."""
        now = time.time()
        slots = self._scan(store, identity, issuer_cn, attested=False)
        try:
            doomed = [s for s in slots if s.how == "legacy" and s.subject_ours
                      and s.cert is not None
                      and s.cert.not_valid_after_utc.timestamp() <= now]
            for slot in doomed:
                _cleanup.delete_entry(store, slot.ref)
                log.info("pruned expired certificate %s (msicert's earlier tag %s)",
                         x5t_s256(slot.ref.der), slot.fields["alias"])
            return len(doomed)
        finally:
            for slot in slots:
                slot.ref.close()

    def purge_bound_to(self, container: str, issuer_cn: str) -> int:
        """Delete the IMDS-issued certificates bound to the binding key ``container`` that was
        just replaced (:func:`._cleanup.purge_bound_to`); runs under the store-write mutex
        the key creation holds."""
        with self._open() as store:
            gone = _cleanup.purge_bound_to(store, container, issuer_cn, machine=self.machine)
        for x5t in gone:
            _probed.pop(x5t, None)
        return len(gone)

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
        """Delete the certificate ``x5t`` of the identity; without ``x5t``, the identity's
        entries that are corrupt (provably ours by tag, subject and issuer, but with no key
        link or a key that fails its test signature). This reader's variant only; valid
        entries stay. Skipped (False) when the store-write mutex stays busy."""
        attested = self.attested()
        for kept_x5t, kept in list(_unpersisted.items()):
            if x5t is not None and kept_x5t == x5t and kept.identity == identity:
                del _unpersisted[kept_x5t]
                kept.ref.close()
                return True
        alias = reference_alias(identity, attested=attested)
        lock = SharedStoreLock(alias)
        removed = False
        with lock.hold(PERSIST_WAIT) as held:
            if not held:
                log.info("%s is busy; entry of %s left for now", lock.name, alias)
                return False
            with self._open() as store:
                slots = self._scan(store, identity, self._issuer(identity), attested=attested)
                try:
                    for slot in slots:
                        if not slot.subject_ours:
                            continue
                        this = x5t_s256(slot.ref.der)
                        if x5t is not None:
                            doomed = this == x5t
                        else:
                            doomed = slot.issuer_ok and (
                                _probed.get(this) is False
                                or (slot.problem is not None and not slot.problem.keep))
                        if doomed:
                            _cleanup.delete_entry(store, slot.ref)
                            _probed.pop(this, None)
                            log.info("removed certificate %s (%s)", this, slot.fields["alias"])
                            removed = True
                finally:
                    for slot in slots:
                        slot.ref.close()
        return removed

    def purge(self, identity: Identity) -> list[str]:
        """Remove every entry of ``identity``, both variants, every issuer (and msicert's old
        keys); each is logged; return their thumbprints. The tag and subject must be this
        identity's: another identity's and unreadable entries stay. StoreError when the
        store-write mutex stays busy (nothing is removed then)."""
        locks = [SharedStoreLock(reference_alias(identity, attested=a)) for a in (False, True)]
        gone: list[str] = []
        with locks[0].hold(PERSIST_WAIT) as held0, locks[1].hold(PERSIST_WAIT) as held1:
            if not (held0 and held1):
                busy = locks[0] if not held0 else locks[1]
                raise StoreError(f"{busy.name} is held by another process writing "
                                 f"{self.description}; nothing was purged (try again)")
            with self._open() as store:
                slots = self._scan(store, identity, self._issuer(identity), attested=None)
                try:
                    for slot in slots:
                        if slot.subject_ours:
                            this = x5t_s256(slot.ref.der)
                            _cleanup.delete_entry(store, slot.ref)
                            _probed.pop(this, None)
                            log.info("purged certificate %s (%s)", this, slot.fields["alias"])
                            gone.append(this)
                finally:
                    for slot in slots:
                        slot.ref.close()
                _cleanup.sweep_legacy_keys(store, machine=self.machine)
        for x5t, kept in list(_unpersisted.items()):
            if kept.location == self.location and kept.identity.alias == identity.alias:
                del _unpersisted[x5t]
                kept.ref.close()
        return gone

    def lock(self, identity: Identity, *, timeout: float) -> MutexLock:
        """msicert's single-flight mutex per user and identity (see :func:`mutex_names`)."""
        primary, fallback = mutex_names(self.location, identity, machine=self.machine)
        return MutexLock(primary, timeout=timeout, fallback=fallback)

    def read_note(self, identity: Identity, name: str) -> bytes | None:
        """None: a certificate store has no cheap place for notes, so the mint back-off is
        shared by the threads of one process only."""
        return None

    def write_note(self, identity: Identity, name: str, data: bytes | None) -> bool:
        """Nothing to write (see :meth:`read_note`): False, the note is not kept."""
        return False

    def read_tokens(self, identity: Identity) -> bytes | None:
        """The identity's shared token cache: a DPAPI blob under the user's local application
        data (:mod:`._token_file`)."""
        return _token_file.read(self.location, identity)

    def write_tokens(self, identity: Identity, data: bytes | None) -> bool:
        """Encrypt (DPAPI, current user) and atomically replace the token cache."""
        return _token_file.write(self.location, identity, data)

    def token_lock(self, identity: Identity, scope: str | None, *, timeout: float) -> MutexLock:
        """Per-user named mutexes of the token cache (:func:`._token_file.lock`)."""
        return _token_file.lock(self.location, identity, scope, timeout=timeout)

    def generate_key(self, identity: Identity) -> NCryptRsaKey:
        """The shared binding key (KeyGuard, else HardwareRSAKey); created or replaced under
        the store-write mutex of this identity's alias, followed by the purge of what was
        bound to the key it replaced."""
        alias = reference_alias(identity, attested=self.attested())
        lock = SharedStoreLock(alias)
        issuer_cn = self._issuer(identity)
        key = binding_key(identity.alias, machine=self.machine,
                          hold=lambda: lock.hold(KEY_LOCK_WAIT),
                          purge=lambda container: self.purge_bound_to(
                              container, issuer_cn or _policy.DEFAULT_ISSUER_CN))
        if key.kind != KIND_KEYGUARD:
            log.info("KeyGuard unavailable; the binding key is the non-exportable "
                     "software-KSP key %s", key.name)
        return key

    def transport(self) -> WinHttpCache:
        """mTLS through WinHTTP with this store's certificate contexts."""
        from ._winhttp_transport import WinHttpCache

        return WinHttpCache(self.cert_ref, self.description)

    def cert_ref(self, x5t: str) -> CertRef:
        """An owned CERT_CONTEXT for the certificate ``x5t`` (for WinHTTP): from the store, or
        the in-memory one of a certificate that could not be stored; StaleCertificate when it
        is gone (another process renewed or purged it)."""
        import msicert_native

        with self._open() as store:
            found = None
            for ref in msicert_native.enum_certificates(store):
                if found is None and x5t_s256(ref.der) == x5t:
                    found = ref
                else:
                    ref.close()
        if found is None:
            kept = _unpersisted.get(x5t)
            if kept is not None and kept.location == self.location:
                return kept.ref.duplicate()
            raise StaleCertificate(f"certificate {x5t} is no longer in {self.description}")
        return found


def _written_by_msicert(fields: dict[str, str], how: str) -> bool:
    """True for a tag msicert wrote: its own older grammar, or the reference grammar with
    msicert's extra pairs (``sel``, ``key``), which no other library writes."""
    return how == "legacy" or ("sel" in fields and "key" in fields)
