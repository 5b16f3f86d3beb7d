"""The contract every backend meets: ``Store``, ``KeyMaterial``, ``Lock`` and ``Transport``.

Complete on purpose: the client, the token cache and the CLI reach a store, a key, an entry or
a transport only through the names declared here (no ``getattr`` probing), so a backend that
type-checks against these protocols works. Imports only the core (and, for type checkers, the
wire formats); backends import this module, never the other way round.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from .. import _fork
from .._errors import MsiCertError, StoreError
from .._identity import Identity
from .._model import BindingCertificate
from .._policy import IssuerMismatch, Mismatch
from .._secret import Secret

if TYPE_CHECKING:
    import ssl

    from ..wire._imds_answers import PlatformMetadata

__all__ = ["MAX_TOKEN_CACHE_BYTES", "CorruptEntry", "KeyMaterial", "Lock", "NewEntry", "Pool",
           "Response", "StaleCertificate", "Store", "Transport", "thread_lock"]

MAX_TOKEN_CACHE_BYTES = 256 * 1024
"""The most a store keeps (and reads) of one identity's shared token cache."""


class CorruptEntry(StoreError):
    """An entry exists but cannot be used as it is (reported, never treated as absent).

    ``keep``: the entry may be sound, and only what this caller expects refuses it (an
    :class:`~msicert._policy.IssuerMismatch`): the client keeps it instead of deleting it.
    """

    def __init__(self, reason: str, *, location: str = "", keep: bool = False) -> None:
        super().__init__(f"corrupt store entry{' ' + location if location else ''}: {reason}")
        self.reason = reason
        self.location = location
        self.keep = keep

    @classmethod
    def refusing(cls, why: Mismatch, *, location: str = "") -> CorruptEntry:
        """The entry does not belong to the identity, for the reason ``why``."""
        return cls(why, location=location, keep=isinstance(why, IssuerMismatch))


class StaleCertificate(MsiCertError):
    """A transport found the stored entry changed under it (renewed by another process):
    the caller forgets its in-memory certificate and reads the store again."""


class KeyMaterial(Protocol):
    """A fresh key for one mint, made by :meth:`Store.generate_key` and handed back to
    :meth:`Store.put` (inside the :class:`NewEntry`) so the store links it to its certificate."""

    @property
    def name(self) -> str:
        """The persisted key's container name (CNG), ``""`` for a key kept in the entry."""
    @property
    def kind(self) -> str:
        """``"file"``, ``"keyguard"`` or ``"software-ksp"`` (recorded with the entry)."""
    @property
    def spki_der(self) -> bytes:
        """The SubjectPublicKeyInfo DER of the public half."""
    @property
    def key_pem(self) -> Secret[bytes] | bytes:
        """The private key as PEM (a Secret) where exportable, ``b""`` where it is not."""

    def sign(self, data: bytes) -> bytes:
        """RSASSA-PSS, SHA-256, MGF1-SHA-256, salt 32 over ``data``."""

    def matches(self, spki_der: bytes) -> bool:
        """True when ``spki_der`` is this key's public half."""

    def attestation_token(self, meta: PlatformMetadata) -> str | None:
        """A MAA token proving the key's isolation (KeyGuard), or None for the non-attested
        flow; AttestationError when attestation was possible but failed."""

    def discard(self) -> None:
        """Forget the key after a failed mint (deletes a persisted one)."""

    def close(self) -> None:
        """Release native handles once the key is linked to its stored certificate."""


class NewEntry(Protocol):
    """What a store persists: the certificate, the key it was issued for, the token-leg
    metadata."""

    @property
    def der(self) -> bytes: ...
    @property
    def key(self) -> KeyMaterial: ...  # the one generate_key returned for this mint
    @property
    def client_id(self) -> str: ...
    @property
    def tenant_id(self) -> str: ...
    @property
    def mtls_endpoint(self) -> str: ...
    @property
    def identity_type(self) -> str: ...


class Lock(Protocol):
    """``with lock.hold(blocking=...) as held:`` - held is False only when not blocking."""

    def hold(self, *, blocking: bool = True) -> AbstractContextManager[bool]:
        """Hold the lock for the ``with`` body; StoreError when a blocking wait times out."""


class Response(Protocol):
    """The part of urllib3's ``BaseHTTPResponse`` the token leg reads."""

    status: int

    @property
    def headers(self) -> Any:
        """Case-insensitive response headers (``.get(name)``)."""

    def read(self, amt: int | None = None, decode_content: bool | None = None) -> bytes:
        """Up to ``amt`` bytes of the body."""

    def release_conn(self) -> None:
        """Give the connection back (or close it)."""


class Pool(Protocol):
    """Sends requests presenting one certificate (a urllib3 ``PoolManager`` fits)."""

    def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: Any = None,
        redirect: bool = False,
        preload_content: bool = True,
    ) -> Any:
        """One request; raises urllib3's exception types (``SSLError``, ``ProtocolError``).
        Returns a :class:`Response` (a urllib3 ``BaseHTTPResponse`` for the ssl transport)."""


class Transport(Protocol):
    """mTLS connections per certificate for one store's entries."""

    def pool(self, cert: BindingCertificate) -> Pool:
        """The pool presenting ``cert`` (built once per thumbprint); StaleCertificate when
        the store's entry no longer holds it."""

    def evict(self, x5t_s256: str) -> None:
        """Drop the certificate's pool and close its connections."""

    def context(self, cert: BindingCertificate) -> ssl.SSLContext:
        """An ``ssl.SSLContext`` presenting ``cert`` for the caller's own HTTP client (never
        the one the pools use); KeyNotExportableError when the key cannot leave its store,
        StaleCertificate when the store's entry no longer holds it."""

    def close(self) -> None:
        """Evict every certificate (a later :meth:`pool` builds anew)."""


class Store(Protocol):
    """find / put / remove / purge for one user's (or machine's) certificates."""

    @property
    def description(self) -> str:
        """Where the entries live, for messages (a directory, ``CurrentUser\\My``)."""
    @property
    def directory(self) -> str | None:
        """The file store's directory; None for a store that is not a directory."""

    def find(self, identity: Identity, *, issuer_cn: str | None) -> BindingCertificate | None:
        """The entry for ``identity`` (source ``"store"``), None if absent; CorruptEntry if bad.

        ``issuer_cn``: a fragment the issuer must contain (``issuer=``, ``$MSICERT_ISSUER``),
        or None: the issuer recorded when the entry was minted, and for an entry that records
        none (another library's), the default issuer
        (:data:`~msicert._policy.DEFAULT_ISSUER_CN`)."""

    def put(
        self, identity: Identity, entry: NewEntry, *, issuer_cn: str | None
    ) -> BindingCertificate:
        """Persist atomically with ``entry.key``; :meth:`find` returns it next (a store shared
        with other libraries may keep older entries until they expire). Return it as stored
        (recording its issuer, whatever ``issuer_cn`` says), or with ``source`` ``"memory"``
        when a shared store could not take it now."""

    def remove(self, identity: Identity, x5t_s256: str | None = None) -> bool:
        """Remove the identity's entry (only if it still holds ``x5t_s256`` when given)."""

    def purge(self, identity: Identity) -> list[str]:
        """Remove every entry of ``identity``; return what went: each entry's certificate
        thumbprint (x5t#S256), or ``"unreadable entry"`` for one whose certificate could not
        be read."""

    def lock(self, identity: Identity, *, timeout: float) -> Lock:
        """The cross-process single-flight lock for ``identity``."""

    def read_note(self, identity: Identity, name: str) -> bytes | None:
        """A small note other processes left beside the identity's lock (the mint back-off
        marker), or None: none, unreadable, not ours, or a store that keeps no notes. Never
        raises: a note is advice."""

    def write_note(self, identity: Identity, name: str, data: bytes | None) -> bool:
        """Replace the note atomically (``None`` removes it), with the identity's lock held.
        True when the note is now as asked. Never raises: a note that cannot be written only
        loses its advice."""

    def read_tokens(self, identity: Identity) -> bytes | None:
        """The identity's shared token cache as :meth:`write_tokens` last wrote it, or None:
        none, or one this store will not read (not a regular file of this user's, open to other
        users, over :data:`MAX_TOKEN_CACHE_BYTES`, not decryptable by this user), which is
        logged once at WARNING and replaced by the next write. Never raises."""

    def write_tokens(self, identity: Identity, data: bytes | None) -> bool:
        """Replace the identity's shared token cache atomically (``None`` removes it), with
        ``token_lock(identity, None)`` held; a crash at any instant leaves the old or the new
        bytes. False when it could not be written (full disk, read-only store: logged once).
        Never raises."""

    def token_lock(self, identity: Identity, scope: str | None, *, timeout: float) -> Lock:
        """Cross-process locks of the shared token cache, apart from :meth:`lock` (which a
        mint holds): ``scope`` makes the ESTS requests for that scope single-flight (its
        holder may take :meth:`lock` inside it, never the other way round); ``None`` guards
        writes of the cache (held briefly; no other lock is taken inside it)."""

    def generate_key(self, identity: Identity) -> KeyMaterial:
        """A new RSA-2048 key of the kind this store keeps (file, keyguard, software-ksp)."""

    def transport(self) -> Transport:
        """The mTLS transport that can present this store's certificates."""


# A forked child starts with none of them held: they are made anew (no after_fork).
_thread_locks: _fork.Registry[str, threading.Lock] = _fork.Registry(
    lambda key: threading.Lock())


def thread_lock(key: str) -> threading.Lock:
    """The in-process half of every :class:`Lock`: one ``threading.Lock`` per key, shared by
    all clients of this process (the OS lock only excludes other processes)."""
    return _thread_locks.get(key)
