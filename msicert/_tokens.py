"""Token leg for a client: per-certificate mTLS pools, the token cache, evict-and-retry."""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._errors import TokenError
from ._model import AccessToken, BindingCertificate
from ._tls import StaleCertificate, TlsCache
from ._token import EstsRejected, TokenResponse, request_token, scope_for

if TYPE_CHECKING:
    import urllib3

    from ._client import ManagedIdentityClient

__all__ = ["TokenManager"]

log = logging.getLogger("msicert")
_EXPIRY_MARGIN = 300.0


@dataclass(frozen=True)
class _Cached:
    fresh: AccessToken  # source "identity_provider": returned once
    view: AccessToken  # source "cache": returned afterwards
    serve_until: float
    refresh_on: float
    x5t_s256: str


def _tls_failure(exc: BaseException) -> bool:
    """True when a urllib3 error comes from TLS (handshake, or a post-handshake alert)."""
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        e = stack.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ssl.SSLError) or type(e).__name__ == "SSLError":
            return True
        stack.extend([e.__cause__, e.__context__, *e.args])
    return False


class TokenManager:
    """The mtls_pop side of a ManagedIdentityClient (one per client)."""

    def __init__(
        self,
        client: ManagedIdentityClient,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], None] = time.sleep,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        server_error_delay: float = 1.0,
    ) -> None:
        self._client = client
        self._clock = clock
        self._sleep = sleep
        self._timeouts = (connect_timeout, read_timeout)
        self._server_error_delay = server_error_delay
        transport = getattr(client.store, "transport", None)  # WinHTTP on the Windows store
        self.tls: TlsCache = transport() if transport is not None else TlsCache()
        self._cache: dict[str, _Cached] = {}
        self._scopes: dict[str, str] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def acquire(self, resource: str, claims: str | None = None) -> AccessToken:
        """A token for ``resource`` bound to the current certificate (cached when possible)."""
        cert = self._client.get_certificate()
        key = self._scopes.get(resource) or self._scope(resource)
        hit = None if claims else self._cache.get(key)
        if hit is not None and hit.x5t_s256 == cert.x5t_s256:
            now = self._clock()
            if now < hit.refresh_on:
                return hit.view
            if now < hit.serve_until:
                return self._refresh(key, resource, hit)
        with self._lock_for(key):
            if not claims:
                hit = self._cache.get(key)
                cert = self._client.get_certificate()
                if (hit is not None and hit.x5t_s256 == cert.x5t_s256
                        and self._clock() < hit.refresh_on):
                    return hit.view
            return self._fetch(key, resource, claims)

    def _scope(self, resource: str) -> str:
        scope = scope_for(resource)
        if len(self._scopes) < 256:  # bounded: resources are few in practice
            self._scopes[resource] = scope
        return scope

    def _lock_for(self, key: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    def _refresh(self, key: str, resource: str, hit: _Cached) -> AccessToken:
        lock = self._lock_for(key)
        if not lock.acquire(blocking=False):
            return hit.view  # someone else is refreshing; the cached token is still good
        try:
            current = self._cache.get(key)
            if current is not None and current is not hit:
                return current.view
            try:
                return self._fetch(key, resource, None)
            except TokenError as exc:
                log.warning("token refresh failed; serving the cached token: %s", exc)
                return hit.view
        finally:
            lock.release()

    def _fetch(self, key: str, resource: str, claims: str | None) -> AccessToken:
        cert = self._client.get_certificate()
        for attempt in (1, 2):
            try:
                resp = self._post_with_5xx_retry(cert, resource, claims)
                break
            except StaleCertificate:
                cert = self._rotate(cert, evict=False)
            except EstsRejected as exc:
                if exc.error != "invalid_client" or attempt == 2:
                    raise
                log.warning("ESTS rejected certificate %s as invalid_client; minting a new one",
                            cert.x5t_s256)
                cert = self._rotate(cert, evict=True)
            except _HandshakeFailed as exc:
                if attempt == 2:
                    raise TokenError(
                        f"mTLS handshake with ESTS failed twice (new certificate too): {exc}"
                    ) from exc
                log.warning("mTLS handshake failed with certificate %s; minting a new one",
                            cert.x5t_s256)
                cert = self._rotate(cert, evict=True)
        else:  # pragma: no cover - the loop always breaks or raises
            raise TokenError("token request failed")
        return self._remember(key, cert, resp, cache=claims is None)

    def _rotate(self, cert: BindingCertificate, *, evict: bool) -> BindingCertificate:
        self.tls.evict(cert.x5t_s256)
        if evict:
            self._client.invalidate(cert.x5t_s256)
        else:
            self._client.forget()
        for k in [k for k, v in self._cache.items() if v.x5t_s256 == cert.x5t_s256]:
            self._cache.pop(k, None)
        return self._client.get_certificate()

    def _post_with_5xx_retry(
        self, cert: BindingCertificate, resource: str, claims: str | None
    ) -> TokenResponse:
        import urllib3

        timeout = urllib3.Timeout(connect=self._timeouts[0], read=self._timeouts[1])
        for attempt in (1, 2):
            try:
                return request_token(
                    self.tls.pool(cert), mtls_endpoint=cert.mtls_endpoint,
                    tenant_id=cert.tenant_id, client_id=cert.client_id, resource=resource,
                    claims=claims, timeout=timeout,
                )
            except EstsRejected as exc:
                if exc.status is not None and exc.status >= 500 and attempt == 1:
                    log.debug("ESTS answered %s; retrying once", exc.status)
                    self._sleep(self._server_error_delay)
                    continue
                raise
            except urllib3.exceptions.HTTPError as exc:
                if _tls_failure(exc):
                    raise _HandshakeFailed(type(exc).__name__) from exc
                raise TokenError(f"cannot reach ESTS at {cert.mtls_endpoint}: "
                                 f"{type(exc).__name__}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _remember(
        self, key: str, cert: BindingCertificate, resp: TokenResponse, *, cache: bool
    ) -> AccessToken:
        now = self._clock()
        expires_on = int(now + resp.expires_in)
        serve_until = min(expires_on - _EXPIRY_MARGIN, cert.not_after_ts)
        if resp.refresh_in is not None:
            refresh_on = now + resp.refresh_in
        elif resp.expires_in > 7200:
            refresh_on = now + resp.expires_in / 2
        else:
            refresh_on = serve_until
        refresh_on = min(refresh_on, serve_until)
        fresh = AccessToken(resp.access_token, "mtls_pop", expires_on, cert.x5t_s256,
                            "identity_provider", refresh_on)
        if cache:
            view = AccessToken(resp.access_token, "mtls_pop", expires_on, cert.x5t_s256,
                               "cache", refresh_on)
            self._cache[key] = _Cached(fresh, view, serve_until, refresh_on, cert.x5t_s256)
        log.info("acquired mtls_pop token for %s bound to %s (expires_on %d)",
                 scope_for(key), cert.x5t_s256, expires_on)
        return fresh

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
        """Call ``url`` over mTLS with ``Authorization: mtls_pop <token>`` for ``resource``."""
        token = self.acquire(resource)
        cert = self._client.get_certificate()
        if cert.x5t_s256 != token.x5t_s256:  # rotated in between: bind to the new one
            token = self.acquire(resource)
            cert = self._client.get_certificate()
        merged = dict(headers or {})
        merged["Authorization"] = f"mtls_pop {token.access_token}"
        return self.tls.pool(cert).request(method, url, body=body, headers=merged,
                                           timeout=timeout, redirect=False)


class _HandshakeFailed(Exception):
    """Internal: the TLS layer refused the client certificate."""
