"""The binding key: one persisted CNG key per user (or machine), shared with MSAL.NET and MSAL Go.

As MSAL.NET's ``KeyProviders/WindowsCngKeyOperations.cs`` (and MSAL Go's IMDSv2 branch, which
uses the same container) do:

* ``KeyGuardRSAKey`` in the Microsoft Software KSP: opened if it exists and proven alive with
  one test signature (RSASSA-PSS / SHA-256 over one zero byte, as the reference's
  ``CanSign``) and VBS-isolated (``Virtual Iso``); otherwise created with the reference's
  ``CreateFresh`` flags: OverwriteExistingKey | VirtualIsolation | PerBootKey, usage all,
  export policy none, RSA-2048. A fresh KeyGuard key is followed by the purge of the
  certificates bound to the key it replaced (``PurgeManagedIdentityCertificates``).
* where VBS is unavailable, ``HardwareRSAKey`` in the same provider and scope (the reference's
  ``TryGetOrCreateHardwareRsa``): reused if it exists, else created with usage signing, export
  policy none, no creation flags. msicert also proves it alive with the test signature and,
  when it is dead, recreates it (overwrite) and purges what was bound to it (the reference
  does neither for this key: it cannot die at a reboot, but it can be deleted or replaced).

Creating or replacing a key happens under the store-write mutex the references share
(``Global\\MSAL_MI_P_<...>``): the caller passes a ``hold`` for it. A created key is then
checked to be the one persisted under its name (two creators can both finalize; the later
one wins silently): a loser adopts the winner. The key is never deleted through a handle that
was merely opened (``NCryptDeleteKey`` deletes whatever holds the name now); the only key ever
deleted here is one this process just created and that failed a check.

The private key never leaves CNG: the CSR is signed through NCryptSignHash and the mTLS
handshake uses the key through the certificate's CERT_KEY_PROV_INFO. ``LocalMachine\\My``
uses the same names as machine keys (NCRYPT_MACHINE_KEY_FLAG); the references only ever use
the user's store and keys.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..._errors import StoreError
from ..._lazylog import LazyLogger
from ...wire._csr import PSS_SALT_LENGTH

if TYPE_CHECKING:
    from msicert_native import NCryptKey

    from ...wire._imds_answers import PlatformMetadata

__all__ = ["HARDWARE_KEY_NAME", "KEYGUARD_KEY_NAME", "KIND_KEYGUARD", "KIND_SOFTWARE",
           "NCryptRsaKey", "binding_key", "forget_binding_keys", "key_is_alive",
           "keyguard_expected", "shared_key_names"]

log = LazyLogger("msicert")

KIND_KEYGUARD = "keyguard"
KIND_SOFTWARE = "software-ksp"
KEYGUARD_KEY_NAME = "KeyGuardRSAKey"  # WindowsCngKeyOperations.KeyGuardKeyName
HARDWARE_KEY_NAME = "HardwareRSAKey"  # WindowsCngKeyOperations.HardwareKeyName
# CanSign: RSA-SHA256/PSS over a one-byte payload {0}.
_PROBE_DIGEST = hashlib.sha256(b"\x00").digest()
_CREATE_ATTEMPTS = 3  # a creator replaced by another process's key adopts it; bounded

Hold = Callable[[], contextlib.AbstractContextManager[bool]]
Purge = Callable[[str], int]


def shared_key_names() -> tuple[str, str]:
    """The containers shared with the references (never deleted by msicert)."""
    return KEYGUARD_KEY_NAME, HARDWARE_KEY_NAME


@dataclass
class _Binding:
    """The process's open handle on the binding key of one scope."""

    name: str
    kind: str
    machine: bool
    handle: NCryptKey = field(repr=False)
    spki_der: bytes = field(repr=False)


_gate = threading.Lock()
_bindings: dict[bool, _Binding] = {}  # machine scope -> binding key of this process


def forget_binding_keys() -> None:
    """Close this process's handles on the binding keys (the next mint opens them again)."""
    with _gate:
        for binding in _bindings.values():
            binding.handle.close()
        _bindings.clear()


@dataclass
class NCryptRsaKey:
    """The binding key as one mint's :class:`~msicert.backends.contract.KeyMaterial`.

    The key is shared (every identity, every library): :meth:`discard` after a failed mint
    deletes nothing and :meth:`close` leaves the process's handle open.
    """

    name: str
    kind: str
    machine: bool
    handle: NCryptKey = field(repr=False)
    spki_der: bytes = field(repr=False, default=b"")
    key_pem: bytes = field(repr=False, default=b"")  # never: the key is not exportable
    alias: str = ""  # the identity it was handed out for, named in attestation errors
    attested: bool = False  # IMDS received an attestation token for this mint (``#att=1``)

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
        an attested mint's certificate is tagged ``#att=1`` (MSAL.NET)."""
        if self.kind != KIND_KEYGUARD:
            return None
        from ._attestation import attestation_token

        token = attestation_token(self.handle, meta, self.alias)
        self.attested = token is not None
        return token

    def discard(self) -> None:
        """Nothing to delete: the binding key is shared and stays for the next mint."""
        log.debug("mint failed; the shared key %s stays", self.name)

    def close(self) -> None:
        """Nothing to release: the process keeps its handle on the binding key."""


def binding_key(alias: str, *, machine: bool, hold: Hold, purge: Purge) -> NCryptRsaKey:
    """The binding key for one mint of the identity ``alias``: this process's open key when it
    still signs, is VBS-isolated (if KeyGuard) and is the key persisted under its name; else
    opened or created as the module docstring says. ``hold`` holds the store-write mutex
    (yields False when busy); ``purge(container)`` removes the certificates bound to a key
    that was just replaced and runs under that hold."""
    with _gate:
        binding = _bindings.get(machine)
        if binding is not None and not _still_good(binding):
            log.info("the %s key %s this process opened is no longer usable; opening it again",
                     binding.kind, binding.name)
            binding.handle.close()
            binding = None
        if binding is None:
            binding = _bindings[machine] = _provision(machine, hold, purge)
        return NCryptRsaKey(name=binding.name, kind=binding.kind, machine=machine,
                            handle=binding.handle, spki_der=binding.spki_der, alias=alias)


def keyguard_expected(*, machine: bool) -> bool:
    """Whether a mint in this scope would use a KeyGuard key, without creating anything (it
    decides the ``#att`` variant a reader looks up): this process's binding key's kind; else
    True when ``KeyGuardRSAKey`` opens and is VBS-isolated, False when only ``HardwareRSAKey``
    opens (it exists because KeyGuard was unavailable), True when neither does (a mint tries
    KeyGuard first)."""
    import msicert_native as native

    binding = _bindings.get(machine)  # no _gate: a provisioning may hold it for seconds
    if binding is not None:
        return binding.kind == KIND_KEYGUARD
    keyguard = _open(KEYGUARD_KEY_NAME, machine)
    if keyguard is not None:
        with keyguard:
            if native.is_virtual_iso(keyguard):
                return True
    hardware = _open(HARDWARE_KEY_NAME, machine)
    if hardware is not None:
        hardware.close()
        return False
    return True


def _still_good(binding: _Binding) -> bool:
    import msicert_native as native

    if not _signs(binding.handle):
        return False
    if binding.kind == KIND_KEYGUARD and not native.is_virtual_iso(binding.handle):
        return False
    return _persisted_spki(binding.name, binding.machine) in (binding.spki_der, None)


def _signs(key: NCryptKey) -> bool:
    """One test signature (the reference's CanSign): False for a dead per-boot key."""
    import msicert_native as native

    try:
        native.sign_pss_sha256(key, _PROBE_DIGEST, PSS_SALT_LENGTH)
    except native.NativeError as exc:
        log.info("key %s failed its test signature (%s)", key.name, exc)
        return False
    return True


def _open(name: str, machine: bool) -> NCryptKey | None:
    """The persisted key ``name``, or None when it cannot be opened (absent; or Wine, whose
    NCryptOpenKey is a stub)."""
    import msicert_native as native

    try:
        with native.open_provider() as provider:
            return native.open_key(provider, name, machine=machine)
    except native.NativeError as exc:
        log.debug("key %s not opened: %s", name, exc)
        return None


def _persisted_spki(name: str, machine: bool) -> bytes | None:
    """The public half of the key persisted under ``name`` now; None when that cannot be
    read (absent, or Wine)."""
    import msicert_native as native

    key = _open(name, machine)
    if key is None:
        return None
    with key:
        try:
            return native.export_public_spki(key)
        except native.NativeError:
            return None


def _adopt(key: NCryptKey, kind: str, machine: bool, *, created: bool) -> _Binding:
    """Wrap an open key after checking its export policy (0) and reading its public half.

    A key this process just created and that fails is deleted (it is persisted already); an
    existing key that fails is left to its owner and refused.
    """
    import msicert_native as native

    try:
        policy = native.get_export_policy(key)
        if policy != 0:
            raise native.NativeError("NCryptGetProperty",
                                     detail=f"export policy is {policy:#x}, not 0")
        spki = native.export_public_spki(key)
    except BaseException as exc:
        if created:
            _delete_quietly(key)
        else:
            key.close()
            if isinstance(exc, native.NativeError):
                raise StoreError(f"the shared key {key.name} cannot be used: {exc}") from exc
        raise
    log.debug("using %s key %s", kind, key.name)
    return _Binding(key.name, kind, machine, key, spki)


def _delete_quietly(key: NCryptKey) -> None:
    """NCryptDeleteKey of a key this process just created (frees the handle on success); on
    failure close the handle and log."""
    import msicert_native as native

    try:
        native.delete_key(key)
    except native.NativeError as exc:
        if exc.code == native.constants.NTE_NOT_SUPPORTED:  # Wine: keys vanish with the process
            log.debug("rejected key %s not deleted: %s", key.name, exc)
        else:
            log.warning("could not delete the rejected key %s: %s", key.name, exc)
        key.close()


def _live(name: str, machine: bool) -> tuple[NCryptKey | None, bool]:
    """``(key, existed)``: the open key when it exists and signs; ``existed`` also when it
    exists but is dead."""
    key = _open(name, machine)
    if key is None:
        return None, False
    if _signs(key):
        return key, True
    key.close()  # never delete through it: see the module docstring
    return None, True


def _provision(machine: bool, hold: Hold, purge: Purge) -> _Binding:
    import msicert_native as native

    key, _ = _live(KEYGUARD_KEY_NAME, machine)
    if key is not None:
        if native.is_virtual_iso(key):
            return _adopt(key, KIND_KEYGUARD, machine, created=False)
        log.info("%s exists but is not VBS-isolated; it will be recreated", KEYGUARD_KEY_NAME)
        key.close()
    with hold() as held:
        if not held:
            raise StoreError("another process holds the certificate store's mutex; the binding "
                             "key was not created (retried at the next mint)")
        return _provision_locked(machine, purge)


def _provision_locked(machine: bool, purge: Purge) -> _Binding:
    import msicert_native as native

    key, _ = _live(KEYGUARD_KEY_NAME, machine)  # made meanwhile by another process?
    if key is not None and native.is_virtual_iso(key):
        return _adopt(key, KIND_KEYGUARD, machine, created=False)
    if key is not None:
        key.close()
    created = _create(KEYGUARD_KEY_NAME, machine, keyguard=True, overwrite=True)
    if created is not None:
        removed = purge(KEYGUARD_KEY_NAME)  # bound to the key this one replaced
        log.info("created %s; %d certificate(s) bound to the key it replaced removed",
                 KEYGUARD_KEY_NAME, removed)
        if native.is_virtual_iso(created):
            binding = _adopt(created, KIND_KEYGUARD, machine, created=True)
            if _persisted_spki(KEYGUARD_KEY_NAME, machine) in (binding.spki_der, None):
                return binding
            binding.handle.close()  # another creator's finalize replaced it: adopt that one
            key, _ = _live(KEYGUARD_KEY_NAME, machine)
            if key is not None and native.is_virtual_iso(key):
                return _adopt(key, KIND_KEYGUARD, machine, created=False)
            raise StoreError(f"the key {KEYGUARD_KEY_NAME} was replaced by another process "
                             "while it was being created")
        log.info("%s created with the KeyGuard flags is not VBS-isolated (no VBS here); "
                 "using %s", KEYGUARD_KEY_NAME, HARDWARE_KEY_NAME)
        _delete_quietly(created)
    key, existed = _live(HARDWARE_KEY_NAME, machine)
    if key is not None:
        return _adopt(key, KIND_SOFTWARE, machine, created=False)
    for _ in range(_CREATE_ATTEMPTS):
        try:
            with native.open_provider() as provider:
                created = native.create_rsa_key(
                    provider, HARDWARE_KEY_NAME, keyguard=False, machine=machine,
                    overwrite=existed, usage=native.constants.NCRYPT_ALLOW_SIGNING_FLAG)
        except native.NativeError as exc:
            if exc.code != native.constants.NTE_EXISTS:
                raise
            key, existed = _live(HARDWARE_KEY_NAME, machine)  # another creator won: adopt
            if key is not None:
                return _adopt(key, KIND_SOFTWARE, machine, created=False)
            continue
        binding = _adopt(created, KIND_SOFTWARE, machine, created=True)
        if _persisted_spki(HARDWARE_KEY_NAME, machine) in (binding.spki_der, None):
            removed = purge(HARDWARE_KEY_NAME)
            log.info("created %s; %d certificate(s) bound to the key it replaced removed",
                     HARDWARE_KEY_NAME, removed)
            return binding
        binding.handle.close()  # replaced by another creator's finalize: adopt the winner
        key, existed = _live(HARDWARE_KEY_NAME, machine)
        if key is not None:
            return _adopt(key, KIND_SOFTWARE, machine, created=False)
    raise StoreError(f"the key {HARDWARE_KEY_NAME} kept being replaced by another process "
                     "while it was being created")


def _create(name: str, machine: bool, *, keyguard: bool, overwrite: bool) -> NCryptKey | None:
    """The reference's CreateFresh: None when VBS is unavailable (the creation fails)."""
    import msicert_native as native

    try:
        with native.open_provider() as provider:
            return native.create_rsa_key(provider, name, keyguard=keyguard, machine=machine,
                                         overwrite=overwrite)
    except native.NativeError as exc:
        log.info("KeyGuard key unavailable (%s); VBS key isolation is not available here", exc)
        return None


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
