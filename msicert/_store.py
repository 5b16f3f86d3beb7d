"""The store contract every backend meets, and the default store for this platform."""

from __future__ import annotations

import sys
from typing import Protocol

from ._errors import StoreError
from ._identity import Identity
from ._lock import IdentityLock
from ._model import BindingCertificate

__all__ = ["CorruptEntry", "NewEntry", "Store", "default_store"]


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
    def key_pem(self) -> bytes: ...
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

    def lock(self, identity: Identity, *, timeout: float) -> IdentityLock:
        """The cross-process single-flight lock for ``identity``."""


def default_store(store_dir: str | None = None) -> Store:
    """File store on POSIX; the Windows certificate store on Windows (unless a dir is given)."""
    if sys.platform == "win32" and store_dir is None:
        raise StoreError("the Windows certificate store backend is not available yet")
    from ._store_file import FileStore

    return FileStore(store_dir)
