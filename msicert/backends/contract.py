"""The store contract every backend meets (``Store``, ``KeyMaterial``, the single-flight lock)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol

from .._errors import StoreError
from .._identity import Identity
from .._model import BindingCertificate
from .._secret import Secret

__all__ = ["CorruptEntry", "KeyMaterial", "NewEntry", "SingleFlightLock", "Store"]


class CorruptEntry(StoreError):
    """An entry exists but cannot be used as it is (reported, never treated as absent)."""

    def __init__(self, reason: str, *, location: str = "") -> None:
        super().__init__(f"corrupt store entry{' ' + location if location else ''}: {reason}")
        self.reason = reason
        self.location = location


class NewEntry(Protocol):
    """What a store persists: the certificate, its key, and the token-leg metadata."""

    @property
    def der(self) -> bytes: ...
    @property
    def key_pem(self) -> Secret[bytes] | bytes: ...  # a Secret wherever a key is exportable
    @property
    def client_id(self) -> str: ...
    @property
    def tenant_id(self) -> str: ...
    @property
    def mtls_endpoint(self) -> str: ...
    @property
    def identity_type(self) -> str: ...


class Store(Protocol):
    """find / put / remove / purge for one user's (or machine's) certificates."""

    description: str

    def find(self, identity: Identity, *, issuer_cn: str) -> BindingCertificate | None:
        """The entry for ``identity`` (source ``"store"``), None if absent; CorruptEntry if bad."""

    def put(self, identity: Identity, entry: NewEntry, *, issuer_cn: str) -> BindingCertificate:
        """Persist atomically, replacing the identity's previous entry; return it as stored."""

    def remove(self, identity: Identity, x5t_s256: str | None = None) -> bool:
        """Remove the identity's entry (only if it still holds ``x5t_s256`` when given)."""

    def purge(self, identity: Identity) -> int:
        """Remove every entry of ``identity``; return how many went."""

    def lock(self, identity: Identity, *, timeout: float) -> SingleFlightLock:
        """The cross-process single-flight lock for ``identity``."""

    def generate_key(self, identity: Identity) -> KeyMaterial:
        """A new RSA-2048 key of the kind this store keeps (file, keyguard, software-ksp)."""


class SingleFlightLock(Protocol):
    """``with lock.hold(blocking=...) as held:`` - held is False only when not blocking."""

    def hold(self, *, blocking: bool = True) -> AbstractContextManager[bool]:
        """Hold the lock for the ``with`` body."""


class KeyMaterial(Protocol):
    """A fresh key for one mint."""

    @property
    def kind(self) -> str: ...
    @property
    def spki_der(self) -> bytes: ...
    @property
    def key_pem(self) -> Secret[bytes] | bytes: ...  # a Secret wherever a key is exportable

    def sign(self, data: bytes) -> bytes:
        """RSASSA-PSS, SHA-256, MGF1-SHA-256, salt 32 over ``data``."""

    def matches(self, spki_der: bytes) -> bool:
        """True when ``spki_der`` is this key's public half."""

    def discard(self) -> None:
        """Forget the key after a failed mint (deletes a persisted one)."""

    def close(self) -> None:
        """Release native handles once the key is linked to its stored certificate."""
