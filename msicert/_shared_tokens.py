"""The shared token cache: ``mtls_pop`` tokens the processes of one user reuse, per identity.

Each client's in-memory cache (:mod:`msicert._token_cache`) stays in front; this cache is read
only when memory has no usable token, so a new process (a CLI call, a cron job, a worker) finds
the token another process fetched instead of asking ESTS again. The store keeps the bytes
(:meth:`~msicert.backends.contract.Store.read_tokens` / ``write_tokens``: a 0600 file beside
the certificate, or a DPAPI blob under the user's local application data on Windows); this
module decides what they mean.

* A token is found by identity (one cache per identity), scope and certificate thumbprint, and
  only served while it is servable and bound to the certificate the caller holds: a token of a
  rotated or refused certificate is never served. A claims-driven token replaces the token of
  its scope and certificate, as in memory.
* Bounded: :data:`MAX_ENTRIES` tokens and
  :data:`~msicert.backends.contract.MAX_TOKEN_CACHE_BYTES`; a token longer than
  :data:`MAX_TOKEN_CHARS` stays in its process. Unservable tokens go first, then the oldest.
* Never a reason to fail: unreadable, corrupt or foreign content is ignored (one WARNING) and
  replaced by the next write; a cache that cannot be written or locked leaves its process
  with its in-memory cache.
* Locks (never taken in another order, so never a deadlock with the identity's mint lock): a
  fetch holds its resource's single-flight lock, then possibly the identity lock (a mint),
  released before the token is written; a write holds the cache's own lock for a moment and
  takes no other lock inside it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Callable, Iterator
from typing import Any

from ._errors import StoreError
from ._frozen import Frozen
from ._identity import Identity
from ._lazylog import LazyLogger
from .backends.contract import MAX_TOKEN_CACHE_BYTES, Store

__all__ = ["FORMAT", "MAX_ENTRIES", "MAX_TOKEN_CHARS", "CachedToken", "SharedTokens", "clear",
           "decode", "encode", "entries"]

log = LazyLogger("msicert")

FORMAT = "msicert-tokens/1"
MAX_ENTRIES = 64
"""Tokens kept per identity (a service talks to a handful of resources)."""
MAX_TOKEN_CHARS = 16 * 1024
"""A longer access token is kept in its process only."""
WRITE_WAIT = 5.0
"""Seconds a write waits for the cache's lock (held for a moment by each writer); then the
write is skipped and the token stays in its process."""
_MAX_SCOPE = 2048
# (SHA-256 of the bytes read, identity alias) -> what they decode to: a new client reading an
# unchanged cache skips the parse (any write changes the bytes). Bounded; holds no more than
# the in-memory token caches of this process may hold.
_decoded: dict[tuple[bytes, str], tuple[CachedToken, ...]] = {}
_DECODED_MAX = 16
# The last (bytes object, alias, tokens): a store that hands back the very object it read
# before (its own memo) skips even the hash.
_last: tuple[bytes, str, tuple[CachedToken, ...]] | None = None


class CachedToken(Frozen):
    """One token of the shared cache. ``access_token`` never appears in ``repr``; what
    ``msicert status`` shows is everything but it."""

    _fields = ("scope", "x5t_s256", "access_token", "expires_on", "refresh_on", "serve_until",
               "written")
    __slots__ = _fields
    _hidden = frozenset({"access_token"})

    scope: str
    x5t_s256: str
    access_token: str
    expires_on: int
    refresh_on: float
    serve_until: float
    written: float

    def __init__(self, scope: str, x5t_s256: str, access_token: str, expires_on: int,
                 refresh_on: float, serve_until: float, written: float) -> None:
        self._set(scope=scope, x5t_s256=x5t_s256, access_token=access_token,
                  expires_on=expires_on, refresh_on=refresh_on, serve_until=serve_until,
                  written=written)

    @property
    def resource(self) -> str:
        """The scope without its ``/.default``."""
        return self.scope[: -len("/.default")] if self.scope.endswith("/.default") else self.scope


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} is not a finite number")
    return float(value)


def _token(item: object) -> CachedToken:
    if not isinstance(item, dict):
        raise ValueError("a token is not an object")
    scope, x5t, text = item.get("scope"), item.get("x5t_s256"), item.get("access_token")
    if not isinstance(scope, str) or not scope or len(scope) > _MAX_SCOPE:
        raise ValueError("a token has no usable scope")
    if not isinstance(x5t, str) or len(x5t) != 43 or not x5t.isascii():
        raise ValueError("a token has no usable certificate thumbprint")
    if (not isinstance(text, str) or not text or len(text) > MAX_TOKEN_CHARS
            or not text.isascii() or not text.isprintable() or " " in text):
        raise ValueError("an access token is empty, too long or not visible ASCII")
    expires_on = item.get("expires_on")
    if isinstance(expires_on, bool) or not isinstance(expires_on, int):
        raise ValueError("expires_on is not an integer")
    refresh_on = _number(item.get("refresh_on"), "refresh_on")
    serve_until = _number(item.get("serve_until"), "serve_until")
    written = _number(item.get("written"), "written")
    if not refresh_on <= serve_until <= expires_on:
        raise ValueError("refresh_on, serve_until and expires_on are out of order")
    return CachedToken(scope, x5t, text, expires_on, refresh_on, serve_until, written)


def decode(data: bytes, alias: str) -> list[CachedToken]:
    """The tokens of ``alias`` in ``data``; ValueError (saying why, never quoting a token)
    when ``data`` is not a cache msicert wrote for that identity."""
    if len(data) > MAX_TOKEN_CACHE_BYTES:
        raise ValueError(f"larger than {MAX_TOKEN_CACHE_BYTES} bytes")
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ValueError("not JSON (truncated?)") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"not an {FORMAT} document")
    if document.get("identity") != alias:
        raise ValueError("written for another identity")
    items = document.get("tokens")
    if not isinstance(items, list) or len(items) > MAX_ENTRIES:
        raise ValueError(f"no list of at most {MAX_ENTRIES} tokens")
    tokens = [_token(item) for item in items]
    if len({(t.scope, t.x5t_s256) for t in tokens}) != len(tokens):
        raise ValueError("a scope and certificate appear twice")
    return tokens


def encode(alias: str, tokens: list[CachedToken]) -> bytes:
    """The bytes :func:`decode` reads back."""
    return json.dumps({
        "format": FORMAT, "identity": alias,
        "tokens": [{"scope": t.scope, "x5t_s256": t.x5t_s256, "access_token": t.access_token,
                    "expires_on": t.expires_on, "refresh_on": t.refresh_on,
                    "serve_until": t.serve_until, "written": t.written} for t in tokens],
    }, separators=(",", ":")).encode("ascii")


def _bounded(alias: str, tokens: list[CachedToken], now: float) -> bytes:
    """Encode the servable ``tokens`` (newest last), dropping the oldest until the entry and
    byte bounds hold."""
    kept = sorted((t for t in tokens if now < t.serve_until), key=lambda t: t.written)
    kept = kept[-MAX_ENTRIES:]
    data = encode(alias, kept)
    while len(data) > MAX_TOKEN_CACHE_BYTES and kept:
        kept.pop(0)
        data = encode(alias, kept)
    return data


def _load(store: Store, identity: Identity) -> tuple[CachedToken, ...]:
    global _last
    data = store.read_tokens(identity)
    if data is None:
        return ()
    last = _last
    if last is not None and last[0] is data and last[1] == identity.alias:
        return last[2]
    key = (hashlib.sha256(data).digest(), identity.alias)
    known = _decoded.get(key)
    if known is not None:
        _last = (data, identity.alias, known)
        return known
    try:
        tokens = tuple(decode(data, identity.alias))
    except ValueError as exc:
        log.warning_once(f"{store.description}\0{identity.alias}",
                         "ignoring the shared token cache of %s in %s (%s); it is rebuilt at "
                         "the next token", identity.alias, store.description, exc)
        return ()
    if len(_decoded) >= _DECODED_MAX:
        _decoded.clear()
    _decoded[key] = tokens
    _last = (data, identity.alias, tokens)
    return tokens


def entries(store: Store, identity: Identity) -> list[CachedToken]:
    """Every token of the identity's shared cache (servable or not), oldest first."""
    return sorted(_load(store, identity), key=lambda t: t.written)


def clear(store: Store, identity: Identity) -> int:
    """Remove the identity's shared tokens (``purge``); return how many there were. The file
    goes even when its lock cannot be taken (a removal is atomic)."""
    with _write_lock(store, identity):
        gone = len(_load(store, identity))
        store.write_tokens(identity, None)
        return gone


@contextlib.contextmanager
def _write_lock(store: Store, identity: Identity) -> Iterator[bool]:
    """The cache's own lock: True held, False when it could not be taken within
    :data:`WRITE_WAIT` (busy, or unusable: a read-only store)."""
    with contextlib.ExitStack() as stack:
        try:
            held = stack.enter_context(store.token_lock(identity, None, timeout=WRITE_WAIT).hold())
        except StoreError as exc:
            log.debug("shared token cache of %s: %s", identity.alias, exc)
            held = False
        yield held


class SharedTokens:
    """The shared token cache of one identity in one store (one per client).

    ``fetch_wait()``: how long a fetch waits for another process asking ESTS for the same
    resource (the client allows that process its worst case: a mint, remediation, ESTS);
    asked only when a fetch is about to wait.
    """

    def __init__(self, store: Store, identity: Identity, *,
                 fetch_wait: Callable[[], float]) -> None:
        self._store = store
        self._identity = identity
        self._fetch_wait = fetch_wait

    def get(self, scope: str, x5t_s256: str, now: float) -> CachedToken | None:
        """The servable token of ``scope`` bound to certificate ``x5t_s256``, if any."""
        for token in _load(self._store, self._identity):
            if token.scope == scope and token.x5t_s256 == x5t_s256 and now < token.serve_until:
                return token
        return None

    def put(self, token: CachedToken, now: float) -> None:
        """Replace the token of ``token``'s scope and certificate (too long a token: only the
        old one goes)."""
        self._rewrite(now, lambda t: (t.scope, t.x5t_s256) != (token.scope, token.x5t_s256),
                      token if len(token.access_token) <= MAX_TOKEN_CHARS else None)

    def drop(self, x5t_s256: str, now: float) -> None:
        """Remove every token bound to certificate ``x5t_s256`` (replaced or refused)."""
        self._rewrite(now, lambda t: t.x5t_s256 != x5t_s256, None, only_if_changed=True)

    def _rewrite(self, now: float, keep: Any, new: CachedToken | None, *,
                 only_if_changed: bool = False) -> None:
        store, identity = self._store, self._identity
        with _write_lock(store, identity) as held:
            if not held:
                log.debug("shared token cache of %s cannot be locked; this write is skipped",
                          identity.alias)
                return
            old = _load(store, identity)
            tokens = [t for t in old if keep(t)]
            if only_if_changed and len(tokens) == len(old):
                return
            if new is not None:
                tokens.append(new)
            store.write_tokens(identity, _bounded(identity.alias, tokens, now))

    @contextlib.contextmanager
    def single_flight(self, scope: str, *, wait: bool = True) -> Iterator[bool | None]:
        """Hold ``scope``'s cross-process fetch lock: True held; False busy (only when
        ``wait`` is off); None when it cannot be used (a read-only store, a wait past
        ``fetch_wait``): the caller asks ESTS without it."""
        with contextlib.ExitStack() as stack:
            try:
                held: bool | None = stack.enter_context(self._store.token_lock(
                    self._identity, scope, timeout=self._fetch_wait()).hold(blocking=wait))
            except StoreError as exc:
                log.warning_once(f"{self._store.description}\0lock",
                                 "cannot use the token lock of %s (%s); asking ESTS without it",
                                 self._identity.alias, exc)
                held = None
            yield held
