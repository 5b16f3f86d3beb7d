"""Token leg for a client: per-certificate mTLS pools, the token cache, and what each refusal
by ESTS calls for (revocation remediation, a claims challenge, a TLS alert)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

from . import _correlation
from ._backoff import Backoff
from ._errors import MsiCertError, StoreError, TokenError
from ._lazylog import LazyLogger
from ._model import AccessToken, BindingCertificate
from ._timeouts import DEFAULT_ESTS_TIMEOUTS, Timeouts
from .backends.contract import StaleCertificate, Transport
from .wire._ests import EstsRejected, EstsTimeout, TokenResponse, request_token, scope_for

if TYPE_CHECKING:
    import urllib3

    from ._shared_tokens import SharedTokens

__all__ = ["MAX_CACHED", "CertificateSource", "TokenManager"]

log = LazyLogger("msicert")
T = TypeVar("T")
_EXPIRY_MARGIN = 300.0
MAX_CACHED = 256  # token cache entries (resources); a service talks to a handful
_STALE_TRIES = 3  # store entry replaced under us again and again: then it is an error
# Pauses between revocation remediation rounds (after the first, which starts at once).
_REMEDIATION_BACKOFF = Backoff(initial=1.0, maximum=30.0)
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


class _Rejected(Exception):
    """Internal: ESTS's TLS layer refused the client certificate."""


class CertificateSource(Protocol):
    """What the token leg needs of a client (``ManagedIdentityClient`` is one): the current
    certificate, and ways to drop, renew or replace it."""

    remediation_timeout: float

    def get_certificate(self) -> BindingCertificate:
        """A usable binding certificate (memory, store, or a new mint)."""

    def forget(self, x5t_s256: str | None = None) -> None:
        """Drop the in-memory certificate (only ``x5t_s256``, when given)."""

    def _binding_certificate(self) -> BindingCertificate:
        """The certificate a new token is bound to (renewed first when less than a day is
        left and renewal is due)."""

    def _replace(self, rejected: str, *, why: str, deadline: float | None = None,
                 gated: bool = True) -> BindingCertificate:
        """A usable certificate other than ``rejected``: someone else's, or a fresh mint."""

    def _gate_check(self, now: float) -> None:
        """Raise the error of an open back-off window."""

    def _refused_recently(self, x5t_s256: str) -> bool:
        """True while ESTS's refusal of that certificate is inside its back-off window."""

    def _certificate_refused(self, cert: BindingCertificate, exc: BaseException) -> None:
        """ESTS kept refusing ``cert`` although it was fresh: open the back-off window."""

    def _token_succeeded(self) -> None:
        """ESTS accepted a certificate: close a window its refusal opened."""


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
        for _ in range(_STALE_TRIES - 1):
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
        :meth:`_token_response`."""
        with _correlation.operation() as cid:
            if replace is not None:
                cert = self._client._replace(replace, why="a resource sent a claims challenge")
                self._evict(replace)
            else:
                cert = self._client._binding_certificate()
            cert, resp = self._token_response(cert, resource, claims, cid, remediation)
            self._client._token_succeeded()
            return self._remember(slot, key, cert, resp, cid)

    def _token_response(
        self, cert: BindingCertificate, resource: str, claims: str | None, cid: str,
        remediation: float | None,
    ) -> tuple[BindingCertificate, TokenResponse]:
        """The token request, and what each refusal calls for:

        - ``invalid_client`` that a new certificate fixes (AADSTS 1000610-1000614, or no
          ``error_codes``): mint with ``bypass_cache=true`` and ask again, round after
          round with growing, jittered pauses, until ESTS accepts or ``remediation_timeout``
          is up (then a TokenError naming the code and the rounds; the back-off opens);
        - a TLS alert about our certificate: one new certificate, one more try;
        - the store entry changed under us: read it again;
        - anything else: raised at once, nothing minted.
        """
        timeout = self._client.remediation_timeout if remediation is None else remediation
        deadline = time.monotonic() + timeout
        rounds = tls_retried = stale = 0
        while True:
            if self._client._refused_recently(cert.x5t_s256):
                self._client._gate_check(self._clock())
            try:
                return cert, self._post_with_retry(
                    cert, resource, claims, cid, deadline if rounds else None)
            except StaleCertificate as exc:
                stale += 1
                if stale >= _STALE_TRIES:
                    raise
                cert = self._reload(cert, exc)
            except EstsRejected as exc:
                if not exc.remediable:
                    raise
                rounds += 1
                cert = self._remediate(cert, exc, rounds, deadline, timeout)
            except _Rejected as exc:
                if tls_retried:
                    error = TokenError(
                        f"ESTS rejected the client certificate twice (new certificate too): "
                        f"{exc}", correlation_id=cid)
                    self._client._certificate_refused(cert, error)
                    raise error from exc
                tls_retried = 1
                log.warning("ESTS rejected certificate %s in the TLS handshake (%s); minting "
                            "a new one (correlation_id=%s)", cert.x5t_s256, exc, cid)
                rejected = cert.x5t_s256
                cert = self._client._replace(rejected, why=f"ESTS refused it in the TLS "
                                             f"handshake ({exc})")
                self._evict(rejected)

    def _remediate(
        self, cert: BindingCertificate, exc: EstsRejected, rounds: int, deadline: float,
        timeout: float,
    ) -> BindingCertificate:
        """One remediation round: wait (after the first), then a fresh certificate. Past
        the deadline (before the pause, or during the mint), a TokenError that names the
        refusal and the rounds made."""

        def exhausted(done: int) -> TokenError:
            error = TokenError(
                f"ESTS kept answering invalid_client ({exc.aadsts}) for the binding "
                f"certificate: {done} remediation round(s), each with a new certificate "
                f"(bypass_cache=true), within remediation_timeout ({timeout:g} s); a "
                "TLS-inspecting proxy, or a revoked identity?",
                error=exc.error, error_description=exc.error_description,
                correlation_id=exc.correlation_id, status=exc.status)
            self._client._certificate_refused(cert, error)
            return error

        left = deadline - time.monotonic()
        if rounds > 1:
            pause = min(_REMEDIATION_BACKOFF.delay(rounds - 1), max(0.0, left))
            if left <= 0 or pause >= left:
                raise exhausted(rounds - 1) from exc
            log.info("ESTS refused the new certificate %s too (%s); round %d in %.1f s",
                     cert.x5t_s256, exc.aadsts, rounds, pause, extra={"wait": True})
            self._sleep(pause)
        else:
            log.warning("ESTS answered invalid_client (%s) for certificate %s: minting a new "
                        "one (correlation_id=%s)", exc.aadsts, cert.x5t_s256,
                        exc.correlation_id)
        rejected = cert.x5t_s256
        try:
            new = self._client._replace(
                rejected, why=f"ESTS answered invalid_client ({exc.aadsts})",
                deadline=deadline, gated=rounds == 1)
        except MsiCertError as failure:
            if rounds > 1 and time.monotonic() >= deadline:
                raise exhausted(rounds - 1) from failure  # the deadline ran out in the mint
            raise
        self._evict(rejected)
        return new

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

    def _post_with_retry(
        self, cert: BindingCertificate, resource: str, claims: str | None, cid: str,
        deadline: float | None,
    ) -> TokenResponse:
        """One token request; a 5xx (without Retry-After) or a connection closed under it is
        retried once. ``deadline`` (a remediation's) bounds the request further."""
        import urllib3

        timeout = urllib3.Timeout(connect=self._timeouts.connect, read=self._timeouts.read)
        total = self._timeouts.total
        if deadline is not None:
            left = max(0.05, deadline - time.monotonic())
            total = left if total is None else min(total, left)
        for attempt in (1, 2):
            try:
                return request_token(
                    self.tls.pool(cert), mtls_endpoint=cert.mtls_endpoint,
                    tenant_id=cert.tenant_id, client_id=cert.client_id, resource=resource,
                    claims=claims, timeout=timeout, total_timeout=total, correlation_id=cid,
                )
            except EstsTimeout:
                raise
            except EstsRejected as exc:
                # MSAL.NET's HttpRetryConditions.Sts: a 5xx is retried, unless ESTS asked
                # to back off with Retry-After.
                if (exc.status is not None and exc.status >= 500 and attempt == 1
                        and not exc.retry_after):
                    log.debug("ESTS answered %s; retrying once", exc.status)
                    self._sleep(self._server_error_delay)
                    continue
                raise
            except urllib3.exceptions.HTTPError as exc:
                from ._transport_failure import Failure, classify

                kind, why = classify(exc)
                if kind is Failure.REJECTED:
                    raise _Rejected(why) from exc
                if kind is Failure.TRANSIENT and attempt == 1:
                    log.debug("connection to ESTS closed during the request (%s); retrying "
                              "once", why)
                    continue
                if kind is Failure.SERVER_UNVERIFIED:
                    raise TokenError(
                        f"ESTS's certificate could not be verified ({why}) at "
                        f"{cert.mtls_endpoint}; check the system trust store (SSL_CERT_FILE/"
                        "SSL_CERT_DIR), the endpoint name and any TLS-inspecting proxy; the "
                        "binding certificate was kept", correlation_id=cid,
                    ) from exc
                if kind is Failure.TLS:
                    raise TokenError(
                        f"TLS with ESTS at {cert.mtls_endpoint} failed ({why}); not an alert "
                        "about our certificate, so it was kept", correlation_id=cid,
                    ) from exc
                if kind is Failure.TRANSIENT:
                    raise TokenError(f"ESTS at {cert.mtls_endpoint} closed the connection "
                                     f"twice ({why}); the certificate was kept",
                                     correlation_id=cid) from exc
                raise TokenError(f"cannot reach ESTS at {cert.mtls_endpoint}: {why}",
                                 correlation_id=cid) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _remember(
        self, slot: _Slot, key: str, cert: BindingCertificate, resp: TokenResponse, cid: str,
    ) -> AccessToken:
        now = self._clock()
        # Never valid past the certificate it is bound to: the resource would refuse it.
        expires_on = int(min(now + resp.expires_in, cert.not_after_ts))
        serve_until = min(expires_on - _EXPIRY_MARGIN, cert.not_after_ts)
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
