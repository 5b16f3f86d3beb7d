"""Token leg for a client: the token cache in front of ESTS, per certificate.

:class:`TokenManager` serves a token from memory (lock-free on a hit), else from the
identity's token cache shared with other processes (:mod:`msicert._shared_tokens`), else from
one ESTS request per scope at a time, in this process and across processes
(:mod:`msicert._token_request` says what each refusal calls for). It refreshes a token before
it must, answers a claims challenge with a new certificate, and follows a certificate that
another process replaced in the store. Calls to resources with the token live in
:mod:`msicert._resource_call`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from . import _correlation, _policy
from ._errors import StoreError, TokenError
from ._lazylog import LazyLogger
from ._model import AccessToken, BindingCertificate
from ._timeouts import DEFAULT_ESTS_TIMEOUTS, Timeouts
from ._token_request import STALE_TRIES, CertificateSource, token_response
from .backends.contract import StaleCertificate, Transport
from .wire._ests import TokenResponse, check_claims, scope_for

if TYPE_CHECKING:
    import urllib3

    from ._shared_tokens import SharedTokens

__all__ = ["MAX_CACHED", "TokenManager"]

log = LazyLogger("msicert")
T = TypeVar("T")
_EXPIRY_MARGIN = 300.0
MAX_CACHED = 256  # token cache entries (resources); a service talks to a handful
_REFRESH_REMEDIATION = 10.0  # a refresh serves a good cached token: it waits this long at most


@dataclass(frozen=True)
class _Cached:
    fresh: AccessToken  # source "identity_provider": returned once
    view: AccessToken  # source "cache": returned afterwards
    serve_until: float
    refresh_on: float
    x5t_s256: str


class _Slot:
    """One cache key: the lock that makes its fetch single-flight, its cached token, and the
    last claims challenge it answered (claims, when, the token)."""

    __slots__ = ("cached", "claims_done", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cached: _Cached | None = None
        self.claims_done: tuple[str, float, AccessToken] | None = None


class TokenManager:
    """The mtls_pop side of a ManagedIdentityClient (one per client).

    ``source`` gives the certificate; ``transport`` (the store's) presents it over mTLS.

    The token cache holds at most :data:`MAX_CACHED` (256) keys, one per resource: when a new key
    would exceed it, keys whose token can no longer be served go first, then the oldest ones.
    ``timeouts`` (the client's ``ests_timeouts``): ``connect`` and ``read`` bound each connect
    and each wait for bytes, ``total`` each ESTS request as a whole.

    ``shared`` (:class:`~msicert._shared_tokens.SharedTokens`): the identity's token cache
    shared with other processes, read when memory has no usable token and written with each
    token ESTS issues; its per-scope lock makes a fetch single-flight across processes. The
    transport is built by ``make_transport`` at its first use when ``transport`` is None, so a
    token found in memory or in the shared cache never loads ``ssl`` or urllib3.
    """

    def __init__(
        self,
        source: CertificateSource,
        transport: Transport | None,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], None] = time.sleep,
        timeouts: Timeouts = DEFAULT_ESTS_TIMEOUTS,
        server_error_delay: float = 1.0,
        max_cached: int = MAX_CACHED,
        shared: SharedTokens | None = None,
        make_transport: Callable[[], Transport] | None = None,
    ) -> None:
        self._client = source
        self._clock = clock
        self._sleep = sleep
        self._timeouts = timeouts
        self._server_error_delay = server_error_delay
        self._tls = transport
        self._tls_guard = threading.Lock()
        self._make_transport = make_transport
        self._shared = shared
        self._max_cached = max_cached
        self._slots: dict[str, _Slot] = {}  # insertion order = age
        self._slots_guard = threading.Lock()
        self._scopes: dict[str, str] = {}

    @property
    def tls(self) -> Transport:
        """The mTLS transport (built at its first use)."""
        tls = self._tls
        if tls is None:
            with self._tls_guard:
                if self._tls is None:
                    if self._make_transport is None:
                        raise RuntimeError("TokenManager has no transport")
                    self._tls = self._make_transport()
                tls = self._tls
        return tls

    @tls.setter
    def tls(self, transport: Transport) -> None:
        self._tls = transport

    def close(self) -> None:
        """Close the transport's pools, if it was ever built."""
        if self._tls is not None:
            self._tls.close()

    def acquire(self, resource: str, claims: str | None = None) -> AccessToken:
        """A token for ``resource`` bound to the current certificate (cached when possible).

        With ``claims``, the certificate the cached token is bound to is replaced first (one
        mint with ``bypass_cache=true``; concurrent calls with the same claims share it) and
        the new token replaces the cached one.
        """
        if claims:
            return self._acquire_with_claims(resource, claims)
        key = self._scopes.get(resource) or self._scope(resource)
        slot = self._slots.get(key)  # lock-free hit path: a dict read is atomic
        hit = None if slot is None else slot.cached
        if hit is not None and slot is not None:
            cert = self._client.get_certificate()
            if hit.x5t_s256 == cert.x5t_s256:
                now = self._clock()
                if now < hit.refresh_on:
                    return hit.view
                if now < hit.serve_until:
                    return self._refresh(self._slot(key), key, resource, hit)
        # A miss is one operation: a mint it needs and the token request share one id.
        with _correlation.operation():
            slot = self._slot(key)
            with slot.lock:
                hit = slot.cached
                cert = self._client.get_certificate()
                if (hit is not None and hit.x5t_s256 == cert.x5t_s256
                        and self._clock() < hit.refresh_on):
                    return hit.view
                token = self._through_shared(slot, key, resource, cert)
                assert token is not None  # a waiting call always has an answer
                return token

    def _acquire_with_claims(self, resource: str, claims: str) -> AccessToken:
        check_claims(claims)
        with _correlation.operation():
            return self._claims_fetch(resource, claims)

    def _claims_fetch(self, resource: str, claims: str) -> AccessToken:
        key = self._scopes.get(resource) or self._scope(resource)
        slot = self._slot(key)
        started = time.monotonic()
        cached = slot.cached
        # The certificate the challenged token is bound to (a resource refused that token).
        challenged = cached.x5t_s256 if cached is not None else \
            self._client.get_certificate().x5t_s256
        with slot.lock:
            done = slot.claims_done
            if done is not None and done[0] == claims and done[1] >= started:
                log.debug("claims challenge for %s answered by a concurrent call", key)
                return done[2]
            with self._single_flight(key):
                token = self._fetch(slot, key, resource, claims, replace=challenged)
            slot.claims_done = (claims, time.monotonic(), token)
            return token

    def _scope(self, resource: str) -> str:
        scope = scope_for(resource)
        if len(self._scopes) < self._max_cached:  # bounded: resources are few in practice
            self._scopes[resource] = scope
        return scope

    def _slot(self, key: str) -> _Slot:
        with self._slots_guard:
            slot = self._slots.get(key)
            if slot is None:
                if len(self._slots) >= self._max_cached:
                    self._make_room()
                slot = self._slots[key] = _Slot()
            return slot

    def _make_room(self) -> None:
        """Under the guard: drop unservable keys, then the oldest, never one being fetched."""
        now = self._clock()
        idle = [(k, s) for k, s in self._slots.items() if not s.lock.locked()]
        dead = [k for k, s in idle if s.cached is None or now >= s.cached.serve_until]
        gone = set(dead)
        for k in dead + [k for k, _ in idle if k not in gone]:
            if len(self._slots) < self._max_cached:
                break
            del self._slots[k]

    def _refresh(self, slot: _Slot, key: str, resource: str, hit: _Cached) -> AccessToken:
        if not slot.lock.acquire(blocking=False):
            return hit.view  # someone else is refreshing; the cached token is still good
        try:
            current = slot.cached
            if current is not None and current is not hit:
                return current.view
            try:
                # A refresh must not hold its caller as long as a first fetch may: the
                # cached token is still good (also while another process refreshes it).
                token = self._through_shared(
                    slot, key, resource, self._client.get_certificate(), wait=False,
                    remediation=min(self._client.remediation_timeout, _REFRESH_REMEDIATION))
                return hit.view if token is None else token
            except (TokenError, StoreError) as exc:
                log.warning("token refresh failed; serving the cached token: %s", exc)
                return hit.view
        finally:
            slot.lock.release()

    # --- the shared token cache --------------------------------------------------------------
    def _single_flight(self, key: str) -> AbstractContextManager[bool | None]:
        shared = self._shared
        return contextlib.nullcontext(None) if shared is None else shared.single_flight(key)

    def _through_shared(
        self, slot: _Slot, key: str, resource: str, cert: BindingCertificate, *,
        wait: bool = True, remediation: float | None = None,
    ) -> AccessToken | None:
        """With ``slot.lock`` held and no fresh token in memory: the token another process
        left in the shared cache for ``cert``, else one ESTS request while holding the
        scope's cross-process lock (the others wait for it, then read its token).

        A shared token past its refresh time is served when another process is refreshing
        it or the refresh fails, as a cached one is. None: ``wait`` is off and another
        process is asking ESTS (the caller serves what it has).
        """
        if self._shared is None:
            return self._fetch(slot, key, resource, None, remediation=remediation)
        due = self._adopt(slot, key, cert)
        if due is not None and self._clock() < due.refresh_on:
            return due.fresh
        with self._shared.single_flight(key, wait=wait and due is None) as held:
            if held is False:
                return None if due is None else due.fresh
            if held:  # the process we waited for (if any) has written its token by now
                found = self._adopt(slot, key, self._client.get_certificate())
                if found is not None and self._clock() < found.refresh_on:
                    return found.fresh
            try:
                return self._fetch(slot, key, resource, None, remediation=remediation)
            except (TokenError, StoreError) as exc:
                if due is None or self._clock() >= due.serve_until:
                    raise
                log.warning("token refresh failed; serving the shared cached token: %s", exc)
                return due.fresh

    def _adopt(self, slot: _Slot, key: str, cert: BindingCertificate) -> _Cached | None:
        """Put the shared cache's servable token for ``key`` and ``cert`` in memory when it is
        newer than what memory holds, and return it (its first view says "shared_cache")."""
        assert self._shared is not None
        found = self._shared.get(key, cert.x5t_s256, self._clock())
        if found is None:
            return None
        held = slot.cached
        if (held is not None and held.x5t_s256 == found.x5t_s256
                and held.refresh_on >= found.refresh_on):
            return None  # memory's token is the same one, or newer
        text = found.access_token
        entry = _Cached(
            AccessToken(text, "mtls_pop", found.expires_on, found.x5t_s256, "shared_cache",
                        found.refresh_on),
            AccessToken(text, "mtls_pop", found.expires_on, found.x5t_s256, "cache",
                        found.refresh_on),
            found.serve_until, found.refresh_on, found.x5t_s256)
        self._store_slot(slot, key, entry)
        return entry

    def current(self, use: Callable[[BindingCertificate], T]) -> tuple[BindingCertificate, T]:
        """``use(cert)`` for the current certificate, following a rotation or removal that
        another process made under us: a stale or missing entry is forgotten and the store
        read again (or one certificate minted) instead of failing the caller."""
        cert = self._client.get_certificate()
        for _ in range(STALE_TRIES - 1):
            try:
                return cert, use(cert)
            except StaleCertificate as exc:
                cert = self._reload(cert, exc)
        return cert, use(cert)

    def _reload(self, cert: BindingCertificate, why: BaseException) -> BindingCertificate:
        log.info("certificate %s is no longer what the store holds (%s); looking again",
                 cert.x5t_s256, why)
        self.tls.evict(cert.x5t_s256)
        self._client.forget(cert.x5t_s256)
        self._drop_tokens_of(cert.x5t_s256)
        return self._client.get_certificate()

    def _fetch(
        self, slot: _Slot, key: str, resource: str, claims: str | None, *,
        replace: str | None = None, remediation: float | None = None,
    ) -> AccessToken:
        """Ask ESTS, in one operation (one correlation id). ``replace``: first put a fresh
        certificate in place of that one (a claims challenge). Refusals are handled by
        :func:`~msicert._token_request.token_response`."""
        with _correlation.operation() as cid:
            if replace is not None:
                cert = self._client._replace(replace, why="a resource sent a claims challenge")
                self._evict(replace)
            else:
                cert = self._client._binding_certificate()
            cert, resp = token_response(self, cert, resource, claims, cid, remediation)
            self._client._token_succeeded()
            return self._remember(slot, key, cert, resp, cid)

    def _evict(self, x5t_s256: str) -> None:
        """A certificate that was replaced: its pool, contexts and tokens go."""
        self.tls.evict(x5t_s256)
        self._drop_tokens_of(x5t_s256)

    def _drop_tokens_of(self, x5t_s256: str) -> None:
        with self._slots_guard:  # other threads insert while we look
            for slot in self._slots.values():
                cached = slot.cached
                if cached is not None and cached.x5t_s256 == x5t_s256:
                    slot.cached = None
        if self._shared is not None:  # other processes never read them again either
            self._shared.drop(x5t_s256, self._clock())

    def _remember(
        self, slot: _Slot, key: str, cert: BindingCertificate, resp: TokenResponse, cid: str,
    ) -> AccessToken:
        now = self._clock()
        # Never valid past the certificate it is bound to: the resource would refuse it.
        expires_on = int(min(now + resp.expires_in, cert.not_after_ts))
        # Served until 5 min before ESTS's expiry, or until the certificate itself is retired
        # (NotAfter - skew), whichever comes first: a certificate with minutes left (its
        # renewal failing) still serves its token from the cache until it is retired.
        retired = cert.not_after_ts - _policy.skew(cert.not_before_ts, cert.not_after_ts)
        serve_until = min(now + resp.expires_in - _EXPIRY_MARGIN, retired)
        if resp.refresh_in is not None:
            refresh_on = now + resp.refresh_in
        elif resp.expires_in > 7200:
            refresh_on = now + resp.expires_in / 2
        else:
            refresh_on = serve_until
        refresh_on = min(refresh_on, serve_until)
        # AccessToken.access_token stays a str (public API); its repr never shows it.
        fresh = AccessToken(resp.access_token.reveal(), "mtls_pop", expires_on, cert.x5t_s256,
                            "identity_provider", refresh_on)
        view = AccessToken(resp.access_token.reveal(), "mtls_pop", expires_on, cert.x5t_s256,
                           "cache", refresh_on)
        entry = _Cached(fresh, view, serve_until, refresh_on, cert.x5t_s256)
        self._store_slot(slot, key, entry)
        if self._shared is not None:  # replaces the token of this scope and certificate
            from ._shared_tokens import CachedToken

            self._shared.put(CachedToken(key, cert.x5t_s256, fresh.access_token, expires_on,
                                         refresh_on, serve_until, now), now)
        log.info("acquired mtls_pop token for %s bound to %s (expires_on %d, correlation_id=%s)",
                 scope_for(key), cert.x5t_s256, expires_on, cid)
        return fresh

    def _store_slot(self, slot: _Slot, key: str, entry: _Cached) -> None:
        with self._slots_guard:
            slot.cached = entry
            if self._slots.get(key) is not slot:  # evicted while fetching: keep it anyway
                if len(self._slots) >= self._max_cached:
                    self._make_room()
                self._slots[key] = slot

    def after_fork_in_child(self, transport: Transport | None) -> None:
        """In a forked child: new pools (the parent's sockets are never used; ``None``: built
        at the next use), free locks. Cached tokens stay: they are bound to a certificate,
        not to a connection."""
        self._tls = transport
        self._tls_guard = threading.Lock()
        self._slots_guard = threading.Lock()
        for slot in list(self._slots.values()):
            slot.lock = threading.Lock()

    def request(
        self,
        method: str,
        url: str,
        *,
        resource: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> urllib3.BaseHTTPResponse:
        """Call ``url`` over mTLS with ``Authorization: mtls_pop <token>`` for ``resource``
        (https only; ``timeout`` bounds the whole call): see
        :func:`msicert._resource_call.request`."""
        from ._resource_call import request

        return request(self, method, url, resource=resource, body=body, headers=headers,
                       timeout=timeout)
