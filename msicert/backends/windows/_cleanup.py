"""What the Windows store deletes besides an identity's own entries, and when.

* :func:`prune_expired` - after a persist, the EXPIRED entries whose tag alias is exactly the
  one written (MSAL.NET ``PruneExpiredForAlias``, MSAL Go ``pruneExpired``): valid certificates
  of any library, other aliases, the other ``#att`` variant and unparsable entries stay.
* :func:`purge_bound_to` - after a fresh binding key, the IMDS-issued certificates bound to
  the key it replaced, whatever their alias (MSAL.NET ``PurgeManagedIdentityCertificates``,
  narrowed to that key and to tagged entries).
* :func:`sweep_legacy_keys` - ``msicert-*`` keys of earlier versions that no certificate uses
  any more (another library may have purged their certificates).

Every function runs under the store-write mutex its caller holds, takes an open store, never
deletes an entry whose tag or certificate it cannot parse, and never deletes a shared key.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from cryptography import x509

from ... import _policy
from ..._lazylog import LazyLogger
from ..._model import x5t_s256
from ._tags import parse_tag

if TYPE_CHECKING:
    from msicert_native import CertRef, CertStore

__all__ = ["LEGACY_KEY_GRACE", "LEGACY_KEY_PREFIX", "delete_entry", "delete_key",
           "prune_expired", "purge_bound_to", "sweep_legacy_keys"]

log = LazyLogger("msicert")

LEGACY_KEY_PREFIX = "msicert-"  # the per-certificate keys msicert made before the shared key
LEGACY_KEY_GRACE = 3600.0
"""An unreferenced ``msicert-*`` key younger than this may belong to an earlier msicert that
is minting right now (key made, certificate not yet stored): it is left for a later sweep."""


def _containers(store: CertStore) -> set[str]:
    """The key containers the store's certificates name (case-folded)."""
    import msicert_native as native

    refs = native.enum_certificates(store)
    try:
        return {info.container.casefold() for r in refs
                if (info := native.get_key_prov_info(r)) is not None}
    finally:
        for r in refs:
            r.close()


def delete_key(name: str, provider: str, machine: bool) -> bool:
    """Delete the persisted key ``name`` (only ever an ``msicert-*`` one); False if it could
    not be opened or deleted."""
    import msicert_native as native

    try:
        with native.open_provider(provider) as prov:
            native.delete_key(native.open_key(prov, name, machine=machine))
    except native.NativeError as exc:
        log.debug("key %s not deleted: %s", name, exc)
        return False
    log.info("deleted key %s (its certificates are gone)", name)
    return True


def delete_entry(store: CertStore, ref: CertRef) -> None:
    """Delete the certificate; and its key when msicert made it (``msicert-*``) and no other
    certificate of the store uses it. A shared key is never deleted."""
    import msicert_native as native

    info = native.get_key_prov_info(ref)
    native.delete_certificate(store, ref)
    if info is None or not info.container.startswith(LEGACY_KEY_PREFIX):
        return
    if info.container.casefold() not in _containers(store):
        delete_key(info.container, info.provider,
                   bool(info.flags & native.constants.NCRYPT_MACHINE_KEY_FLAG))


def prune_expired(store: CertStore, alias: str) -> int:
    """Delete the expired entries (NotAfter <= now) whose tag alias is exactly ``alias``."""
    import msicert_native

    now = time.time()
    refs = msicert_native.enum_certificates(store)
    try:
        doomed = []
        for ref in refs:
            fields = parse_tag(msicert_native.get_friendly_name(ref))
            if fields is None or fields["alias"] != alias:
                continue
            try:
                ends = x509.load_der_x509_certificate(ref.der).not_valid_after_utc
            except ValueError:
                continue
            if ends.timestamp() <= now:
                doomed.append(ref)
        for ref in doomed:
            delete_entry(store, ref)
            log.info("pruned expired certificate %s (%s)", x5t_s256(ref.der), alias)
        return len(doomed)
    finally:
        for ref in refs:
            ref.close()


def purge_bound_to(store: CertStore, container: str, issuer_cn: str, *,
                   machine: bool) -> list[str]:
    """Delete the tagged certificates whose issuer contains ``issuer_cn`` and that are bound to
    the key ``container`` of the software KSP in this scope; return their thumbprints."""
    import msicert_native as native

    gone = []
    refs = native.enum_certificates(store)
    try:
        for ref in refs:
            if parse_tag(native.get_friendly_name(ref)) is None:
                continue
            info = native.get_key_prov_info(ref)
            if info is None or info.container.casefold() != container.casefold():
                continue
            if info.provider.casefold() != native.MS_KEY_STORAGE_PROVIDER.casefold():
                continue
            if bool(info.flags & native.constants.NCRYPT_MACHINE_KEY_FLAG) != machine:
                continue
            try:
                issuer = x509.load_der_x509_certificate(ref.der).issuer
            except ValueError:
                continue
            if not _policy.issuer_matches(issuer, issuer_cn):
                continue
            native.delete_certificate(store, ref)
            gone.append(x5t_s256(ref.der))
            log.info("removed certificate %s bound to the replaced key %s", gone[-1], container)
    finally:
        for ref in refs:
            ref.close()
    return gone


def sweep_legacy_keys(store: CertStore, *, machine: bool) -> int:
    """Delete the ``msicert-*`` keys no certificate of ``store`` uses, once they are older
    than :data:`LEGACY_KEY_GRACE`. Where keys cannot be listed (Wine), nothing."""
    import msicert_native as native

    try:
        with native.open_provider() as provider:
            names = [n for n in native.enum_key_names(provider, machine=machine)
                     if n.startswith(LEGACY_KEY_PREFIX)]
    except native.NativeError as exc:
        log.debug("keys cannot be listed here (%s); no sweep", exc)
        return 0
    if not names:
        return 0
    used = _containers(store)
    now = time.time()
    return sum(delete_key(name, native.MS_KEY_STORAGE_PROVIDER, machine) for name in names
               if name.casefold() not in used and _old_enough(name, machine, now))


def _old_enough(name: str, machine: bool, now: float) -> bool:
    import msicert_native as native

    try:
        with native.open_provider() as provider, \
                native.open_key(provider, name, machine=machine) as key:
            written = native.key_last_modified(key)
    except native.NativeError:
        return False
    return written is not None and now - written >= LEGACY_KEY_GRACE
