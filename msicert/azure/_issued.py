"""Which tokens msicert handed to an Azure SDK pipeline: token -> (resource, certificate).

The transport rewrites ``Authorization: Bearer <token>`` to ``mtls_pop <token>`` only for a
token found here, and re-acquires when the certificate it is bound to is no longer the
client's. The map keeps a SHA-256 of each token, never its text, holds at most
:data:`MAX_ISSUED` entries and forgets each one at its ``expires_on``.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import _fork

if TYPE_CHECKING:
    from .._client import ManagedIdentityClient

__all__ = ["MAX_ISSUED", "Issued", "IssuedTokens", "issued_for"]

MAX_ISSUED = 256
"""Entries per client: an SDK pipeline holds one token per resource at a time."""


@dataclass(frozen=True)
class Issued:
    """What msicert knows of a token it issued (the token itself is not kept)."""

    resource: str
    x5t_s256: str
    expires_on: int


def _key(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class IssuedTokens:
    """Thread-safe, bounded map from a token's digest to :class:`Issued`.

    A full map drops expired entries first, then the oldest ones.
    """

    def __init__(self, *, max_entries: int = MAX_ISSUED,
                 clock: Callable[[], float] = time.time) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[bytes, Issued] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __repr__(self) -> str:
        return f"<IssuedTokens {len(self)} of at most {self._max}>"

    def add(self, token: str, resource: str, x5t_s256: str, expires_on: int) -> None:
        """Remember that msicert issued ``token`` for ``resource``, bound to ``x5t_s256``."""
        key = _key(token)
        now = self._clock()
        with self._lock:
            self._entries.pop(key, None)
            if len(self._entries) >= self._max:
                for k in [k for k, v in self._entries.items() if v.expires_on <= now]:
                    del self._entries[k]
                while len(self._entries) >= self._max:
                    self._entries.popitem(last=False)
            self._entries[key] = Issued(resource, x5t_s256, int(expires_on))

    def lookup(self, token: str) -> Issued | None:
        """The entry for ``token``; None when msicert did not issue it or it has expired."""
        key = _key(token)
        with self._lock:
            found = self._entries.get(key)
            if found is not None and found.expires_on <= self._clock():
                del self._entries[key]
                return None
            return found


    def reset_after_fork(self) -> None:
        """In a forked child: the lock starts free (the entries stay: they describe tokens,
        not connections)."""
        self._lock = threading.Lock()


# One map per client, gone with the client.
_registries: _fork.Registry[ManagedIdentityClient, IssuedTokens] = _fork.Registry(
    lambda client: IssuedTokens(), weak=True, after_fork=IssuedTokens.reset_after_fork)


def issued_for(client: ManagedIdentityClient) -> IssuedTokens:
    """The one map of ``client`` (shared by every credential and transport built on it)."""
    return _registries.get(client)
