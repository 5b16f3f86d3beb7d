"""Token leg for a client: per-certificate mTLS pools, the token cache, evict-and-retry."""

from __future__ import annotations

import enum
import ssl
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from ._errors import TokenError
from ._lazylog import LazyLogger
from ._model import AccessToken, BindingCertificate
from ._timeouts import DEFAULT_ESTS_TIMEOUTS, Timeouts
from .backends.contract import StaleCertificate, Transport
from .wire._ests import EstsRejected, EstsTimeout, TokenResponse, request_token, scope_for

if TYPE_CHECKING:
    import urllib3

__all__ = ["MAX_CACHED", "CertificateSource", "TokenManager"]

log = LazyLogger("msicert")
_EXPIRY_MARGIN = 300.0
MAX_CACHED = 256  # token cache entries (resources); a service talks to a handful


@dataclass(frozen=True)
class _Cached:
    fresh: AccessToken  # source "identity_provider": returned once
    view: AccessToken  # source "cache": returned afterwards
    serve_until: float
    refresh_on: float
    x5t_s256: str


class _Slot:
    """One cache key: the lock that makes its fetch single-flight, and its cached token."""

    __slots__ = ("cached", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cached: _Cached | None = None


# --- what a failed TLS/transport attempt means -----------------------------------------------

class _Failure(enum.Enum):
    REJECTED = "ESTS rejected our certificate"  # evict, mint, retry once
    SERVER_UNVERIFIED = "ESTS's certificate could not be verified"  # never evict
    TRANSIENT = "the connection closed during the request"  # retry once, never evict
    TLS = "TLS with ESTS failed"  # neither
    OTHER = "cannot reach ESTS"


# TLS alerts a server sends about the client's certificate (OpenSSL reason codes).
_CLIENT_CERT_ALERTS = frozenset({
    "SSLV3_ALERT_BAD_CERTIFICATE",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
    "SSLV3_ALERT_CERTIFICATE_REVOKED",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "TLSV1_ALERT_UNKNOWN_CA",
    "TLSV1_ALERT_ACCESS_DENIED",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED",
})
_EOF_REASONS = frozenset({"UNEXPECTED_EOF_WHILE_READING", "EOF_OCCURRED_IN_VIOLATION_OF_PROTOCOL"})
# WinHTTP (the WinHTTP transport raises urllib3 errors caused by a NativeError with .winerror):
# the client certificate was asked for or refused / the server's certificate failed our check.
_WINHTTP_REJECTED = frozenset({12044, 12157})
_WINHTTP_SERVER_UNVERIFIED = frozenset({12037, 12038, 12045, 12169, 12175})


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        e = stack.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack.extend([e.__cause__, e.__context__, *e.args])


def _classify(exc: BaseException) -> tuple[_Failure, str]:
    """What a urllib3 error from the token request means, and a short why (no secrets)."""
    import http.client

    found: dict[_Failure, str] = {}
    for e in _chain(exc):
        reason = getattr(e, "reason", None) if isinstance(e, ssl.SSLError) else None
        winerror = getattr(e, "winerror", None)
        if isinstance(e, ssl.SSLCertVerificationError):
            found.setdefault(_Failure.SERVER_UNVERIFIED,
                             e.verify_message or e.reason or "verification failed")
        elif type(e).__name__ == "CertificateError":  # urllib3's own hostname check
            found.setdefault(_Failure.SERVER_UNVERIFIED, str(e)[:200])
        elif winerror in _WINHTTP_SERVER_UNVERIFIED:
            found.setdefault(_Failure.SERVER_UNVERIFIED, f"WinHTTP error {winerror}")
        elif reason in _CLIENT_CERT_ALERTS:
            found.setdefault(_Failure.REJECTED, f"TLS alert {reason}")
        elif winerror in _WINHTTP_REJECTED:
            found.setdefault(_Failure.REJECTED, f"WinHTTP error {winerror}")
        elif isinstance(e, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError,
                            ConnectionAbortedError, BrokenPipeError,
                            http.client.RemoteDisconnected)) or reason in _EOF_REASONS:
            found.setdefault(_Failure.TRANSIENT, type(e).__name__)
        elif isinstance(e, ssl.SSLError):
            found.setdefault(_Failure.TLS, str(reason or type(e).__name__))
    for kind in (_Failure.SERVER_UNVERIFIED, _Failure.REJECTED, _Failure.TRANSIENT, _Failure.TLS):
        if kind in found:
            return kind, found[kind]
    return _Failure.OTHER, type(exc).__name__


class _Rejected(Exception):
    """Internal: ESTS's TLS layer refused the client certificate."""


def _scrub(exc: BaseException) -> None:
    """Clear the locals of the finished frames in ``exc``'s tracebacks (its chain included).

    Error reporters that capture locals (Sentry and its kin) would find the Authorization
    header in urllib3's and http.client's frames. The stack itself (files, lines) is kept.
    """
    for e in _chain(exc):
        if e.__traceback__ is not None:
            traceback.clear_frames(e.__traceback__)


class CertificateSource(Protocol):
    """What the token leg needs of a client: the current certificate, and two ways to drop
    it (``ManagedIdentityClient`` is one)."""

    def get_certificate(self) -> BindingCertificate:
        """A usable binding certificate (memory, store, or a new mint)."""

    def forget(self) -> None:
        """Drop the in-memory certificate; the next call reads the store again."""

    def invalidate(self, x5t_s256: str) -> None:
        """Forget the certificate and remove it from the store (the service refused it)."""


class TokenManager:
    """The mtls_pop side of a ManagedIdentityClient (one per client).

    ``source`` gives the certificate; ``transport`` (the store's) presents it over mTLS.

    The token cache holds at most :data:`MAX_CACHED` (256) keys, one per resource: when a new key
    would exceed it, keys whose token can no longer be served go first, then the oldest ones.
    ``timeouts`` (the client's ``ests_timeouts``): ``connect`` and ``read`` bound each connect
    and each wait for bytes, ``total`` each ESTS request as a whole.
    """

    def __init__(
        self,
        source: CertificateSource,
        transport: Transport,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], None] = time.sleep,
        timeouts: Timeouts = DEFAULT_ESTS_TIMEOUTS,
        server_error_delay: float = 1.0,
        max_cached: int = MAX_CACHED,
    ) -> None:
        self._client = source
        self._clock = clock
        self._sleep = sleep
        self._timeouts = timeouts
        self._server_error_delay = server_error_delay
        self.tls = transport
        self._max_cached = max_cached
        self._slots: dict[str, _Slot] = {}  # insertion order = age
        self._slots_guard = threading.Lock()
        self._scopes: dict[str, str] = {}

    def acquire(self, resource: str, claims: str | None = None) -> AccessToken:
        """A token for ``resource`` bound to the current certificate (cached when possible)."""
        cert = self._client.get_certificate()
        key = self._scopes.get(resource) or self._scope(resource)
        slot = self._slots.get(key)  # lock-free hit path: a dict read is atomic
        hit = None if claims or slot is None else slot.cached
        if hit is not None and slot is not None and hit.x5t_s256 == cert.x5t_s256:
            now = self._clock()
            if now < hit.refresh_on:
                return hit.view
            if now < hit.serve_until:
                return self._refresh(self._slot(key), key, resource, hit)
        slot = self._slot(key)
        with slot.lock:
            if not claims:
                hit = slot.cached
                cert = self._client.get_certificate()
                if (hit is not None and hit.x5t_s256 == cert.x5t_s256
                        and self._clock() < hit.refresh_on):
                    return hit.view
            return self._fetch(slot, key, resource, claims)

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
                return self._fetch(slot, key, resource, None)
            except TokenError as exc:
                log.warning("token refresh failed; serving the cached token: %s", exc)
                return hit.view
        finally:
            slot.lock.release()

    def _fetch(self, slot: _Slot, key: str, resource: str, claims: str | None) -> AccessToken:
        cert = self._client.get_certificate()
        for attempt in (1, 2):
            try:
                resp = self._post_with_retry(cert, resource, claims)
                break
            except StaleCertificate:
                cert = self._rotate(cert, evict=False)
            except EstsRejected as exc:
                if exc.error != "invalid_client" or attempt == 2:
                    raise
                log.warning("ESTS rejected certificate %s as invalid_client; minting a new one",
                            cert.x5t_s256)
                cert = self._rotate(cert, evict=True)
            except _Rejected as exc:
                if attempt == 2:
                    raise TokenError(
                        f"ESTS rejected the client certificate twice (new certificate too): {exc}"
                    ) from exc
                log.warning("ESTS rejected certificate %s in the TLS handshake (%s); minting a "
                            "new one", cert.x5t_s256, exc)
                cert = self._rotate(cert, evict=True)
        else:  # pragma: no cover - the loop always breaks or raises
            raise TokenError("token request failed")
        return self._remember(slot, key, cert, resp, cache=claims is None)

    def _rotate(self, cert: BindingCertificate, *, evict: bool) -> BindingCertificate:
        self.tls.evict(cert.x5t_s256)
        if evict:
            self._client.invalidate(cert.x5t_s256)
        else:
            self._client.forget()
        with self._slots_guard:  # other threads insert while we look
            for slot in self._slots.values():
                cached = slot.cached
                if cached is not None and cached.x5t_s256 == cert.x5t_s256:
                    slot.cached = None
        return self._client.get_certificate()

    def _post_with_retry(
        self, cert: BindingCertificate, resource: str, claims: str | None
    ) -> TokenResponse:
        """One token request; a 5xx or a connection closed under it is retried once."""
        import urllib3

        timeout = urllib3.Timeout(connect=self._timeouts.connect, read=self._timeouts.read)
        for attempt in (1, 2):
            try:
                return request_token(
                    self.tls.pool(cert), mtls_endpoint=cert.mtls_endpoint,
                    tenant_id=cert.tenant_id, client_id=cert.client_id, resource=resource,
                    claims=claims, timeout=timeout, total_timeout=self._timeouts.total,
                )
            except EstsTimeout:
                raise
            except EstsRejected as exc:
                if exc.status is not None and exc.status >= 500 and attempt == 1:
                    log.debug("ESTS answered %s; retrying once", exc.status)
                    self._sleep(self._server_error_delay)
                    continue
                raise
            except urllib3.exceptions.HTTPError as exc:
                kind, why = _classify(exc)
                if kind is _Failure.REJECTED:
                    raise _Rejected(why) from exc
                if kind is _Failure.TRANSIENT and attempt == 1:
                    log.debug("connection to ESTS closed during the request (%s); retrying "
                              "once", why)
                    continue
                if kind is _Failure.SERVER_UNVERIFIED:
                    raise TokenError(
                        f"ESTS's certificate could not be verified ({why}) at "
                        f"{cert.mtls_endpoint}; check the system trust store (SSL_CERT_FILE/"
                        "SSL_CERT_DIR), the endpoint name and any TLS-inspecting proxy; the "
                        "binding certificate was kept"
                    ) from exc
                if kind is _Failure.TLS:
                    raise TokenError(
                        f"TLS with ESTS at {cert.mtls_endpoint} failed ({why}); not an alert "
                        "about our certificate, so it was kept"
                    ) from exc
                if kind is _Failure.TRANSIENT:
                    raise TokenError(f"ESTS at {cert.mtls_endpoint} closed the connection "
                                     f"twice ({why}); the certificate was kept") from exc
                raise TokenError(f"cannot reach ESTS at {cert.mtls_endpoint}: {why}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _remember(
        self, slot: _Slot, key: str, cert: BindingCertificate, resp: TokenResponse, *,
        cache: bool,
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
        # AccessToken.access_token stays a str (public API); its repr never shows it.
        fresh = AccessToken(resp.access_token.reveal(), "mtls_pop", expires_on, cert.x5t_s256,
                            "identity_provider", refresh_on)
        if cache:
            view = AccessToken(resp.access_token.reveal(), "mtls_pop", expires_on,
                               cert.x5t_s256, "cache", refresh_on)
            entry = _Cached(fresh, view, serve_until, refresh_on, cert.x5t_s256)
            with self._slots_guard:
                slot.cached = entry
                if self._slots.get(key) is not slot:  # evicted while fetching: keep it anyway
                    if len(self._slots) >= self._max_cached:
                        self._make_room()
                    self._slots[key] = slot
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
        """Call ``url`` over mTLS with ``Authorization: mtls_pop <token>`` for ``resource``.

        ``url`` must be https: anything else raises ValueError before any token is acquired
        or any connection made (the token would travel in cleartext).
        """
        require_https(url)
        token = self.acquire(resource)
        cert = self._client.get_certificate()
        if cert.x5t_s256 != token.x5t_s256:  # rotated in between: bind to the new one
            token = self.acquire(resource)
            cert = self._client.get_certificate()
        try:
            resp: urllib3.BaseHTTPResponse = self.tls.pool(cert).request(
                method, url, body=body, headers=_with_authorization(headers, token),
                timeout=timeout, redirect=False,
            )
            return resp
        except BaseException as exc:
            _scrub(exc)  # the frames below held the Authorization header
            raise


def require_https(url: str) -> None:
    """ValueError unless ``url`` is an absolute https URL."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "https" or not parts.hostname:
        shown = parts.scheme or "no scheme"
        raise ValueError(f"request() sends an mtls_pop token and needs an https:// URL, not "
                         f"{shown!r}; refusing before any connection")


def _with_authorization(headers: Mapping[str, str] | None, token: AccessToken) -> dict[str, str]:
    # Built in its own frame: the caller's frame never holds the header in a local.
    merged = {k: v for k, v in (headers or {}).items() if k.lower() != "authorization"}
    merged["Authorization"] = f"mtls_pop {token.access_token}"
    return merged
