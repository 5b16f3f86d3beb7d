"""A call to a resource over mTLS with ``Authorization: mtls_pop <token>``
(:meth:`ManagedIdentityClient.request <msicert.ManagedIdentityClient.request>`).

https only, refused before any token is acquired; the token bound to the certificate whose
pool sends it (a rotation in between is followed); the whole call bounded by a watchdog; the
body read capped at :data:`MAX_RESPONSE`; the header built in a frame of its own, and the
frames of a failure scrubbed, so that no local of any frame holds the token.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urlsplit

from ._model import AccessToken, BindingCertificate
from ._transport_failure import scrub
from .backends.contract import Transport

if TYPE_CHECKING:
    import urllib3

__all__ = ["MAX_RESPONSE", "TokenSource", "request", "require_https"]

T = TypeVar("T")

MAX_RESPONSE = 64 * 1024 * 1024
"""The most :func:`request` reads of a response body (bytes)."""


class TokenSource(Protocol):
    """What a resource call uses of the token leg (``TokenManager`` is one)."""

    @property
    def tls(self) -> Transport:
        """The mTLS transport."""

    def acquire(self, resource: str, claims: str | None = None) -> AccessToken:
        """A token for ``resource`` bound to the current certificate."""

    def current(self, use: Callable[[BindingCertificate], T]) -> tuple[BindingCertificate, T]:
        """``use(cert)`` for the current certificate, following a store change."""


def request(
    tokens: TokenSource,
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
    or any connection made (the token would travel in cleartext). ``timeout`` bounds the
    whole request (a watchdog shuts the socket down when it passes), however slowly the
    server sends its head or body: when it runs out, TimeoutError (the built-in) naming
    the URL and the timeout, caused by what urllib3 raised. A resource that cannot be reached
    (refused, unresolvable, reset, a TLS failure) raises ConnectionError (the built-in)
    naming the URL and the reason, caused by what urllib3 raised. The body read is capped at
    :data:`MAX_RESPONSE` bytes.
    """
    import urllib3

    from .wire._watchdog import Watchdog

    require_https(url)
    token = tokens.acquire(resource)
    cert, pool = tokens.current(tokens.tls.pool)
    if cert.x5t_s256 != token.x5t_s256:  # rotated in between: bind to the new one
        token = tokens.acquire(resource)
        cert, pool = tokens.current(tokens.tls.pool)
    watch = Watchdog(timeout)
    try:
        try:
            with watch:
                resp: urllib3.BaseHTTPResponse = pool.request(
                    method, url, body=body, headers=_with_authorization(headers, token),
                    timeout=watch.clip(urllib3.Timeout(connect=timeout, read=timeout)),
                    redirect=False, preload_content=False,
                )
                try:
                    data = resp.read(MAX_RESPONSE + 1, decode_content=True)
                finally:
                    watch.disarm()
                    resp.release_conn()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            # The watchdog shut the socket down (whatever urllib3 made of that), or a
            # connect or read timeout ran out: either way the time was up.
            if watch.fired or _timed_out(exc):
                raise TimeoutError(f"{url} did not answer within {timeout:g} s") from exc
            raise ConnectionError(f"{url} could not be reached: {_reason(exc)}") from exc
        if watch.fired:
            raise TimeoutError(f"{url} did not answer within {timeout:g} s")
        if len(data) > MAX_RESPONSE:
            raise ValueError(f"{url} answered more than {MAX_RESPONSE} bytes")
        return _preloaded(resp, data, url)
    except BaseException as exc:
        scrub(exc)  # the frames below held the Authorization header
        raise


def _reason(exc: BaseException) -> str:
    """What went wrong, in words: the type urllib3 (or WinHTTP's adapter) raised and the OS or
    TLS error under it, without urllib3's ``<...Connection object at 0x...>: `` prefix."""
    inner = exc.__cause__ or exc.__context__
    if isinstance(inner, OSError) and str(inner):
        return f"{type(exc).__name__}: {inner}"
    text = str(exc)
    if text.startswith("<") and ">: " in text:
        text = text.split(">: ", 1)[1]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _timed_out(exc: BaseException) -> bool:
    """True for urllib3's connect or read timeout (not a refused connection, which urllib3 2
    makes a subclass of its connect timeout)."""
    import urllib3

    errors = urllib3.exceptions
    return (isinstance(exc, (errors.ReadTimeoutError, errors.ConnectTimeoutError, TimeoutError))
            and not isinstance(exc, errors.NewConnectionError))


def _preloaded(resp: Any, data: bytes, url: str) -> urllib3.BaseHTTPResponse:
    """A urllib3 response holding ``data`` (already decoded), as ``preload_content=True``
    would have returned it, for what the transport answered (urllib3's or WinHTTP's)."""
    import urllib3

    return urllib3.HTTPResponse(
        body=data, headers=resp.headers, status=resp.status,
        reason=getattr(resp, "reason", None), version=getattr(resp, "version", 11) or 11,
        preload_content=False, decode_content=False, request_url=url,
    )


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
