"""What a failed HTTPS attempt over mTLS means, and what its traceback must not keep.

:func:`classify` reads a urllib3 error (its whole chain: causes, contexts, arguments) from a
token request to ESTS: ESTS refused our certificate in the TLS handshake, ESTS's certificate
failed our check, the connection closed during the request, another TLS failure, or ESTS was
not reached. OpenSSL's alerts and WinHTTP's error codes both count. :func:`scrub` clears the
locals of a failed request's frames, where urllib3 and http.client held the Authorization
header.

``ssl``, ``http.client`` and ``traceback`` are imported only once a request has failed: a
token served from a cache never loads them.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import Any

__all__ = ["Failure", "chain", "classify", "scrub"]


class Failure(enum.Enum):
    """What a failed attempt means, and so what the caller does about it."""

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


def chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it holds (cause, context, arguments), each once."""
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        e = stack.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack.extend([e.__cause__, e.__context__, *e.args])


def classify(exc: BaseException) -> tuple[Failure, str]:
    """What a urllib3 error from the token request means, and a short why (no secrets)."""
    import http.client
    import ssl  # not before a request failed: a shared-cache hit never loads it

    found: dict[Failure, str] = {}
    for e in chain(exc):
        reason = getattr(e, "reason", None) if isinstance(e, ssl.SSLError) else None
        winerror = getattr(e, "winerror", None)
        if isinstance(e, ssl.SSLCertVerificationError):
            found.setdefault(Failure.SERVER_UNVERIFIED,
                             e.verify_message or e.reason or "verification failed")
        elif type(e).__name__ == "CertificateError":  # urllib3's own hostname check
            found.setdefault(Failure.SERVER_UNVERIFIED, str(e)[:200])
        elif winerror in _WINHTTP_SERVER_UNVERIFIED:
            found.setdefault(Failure.SERVER_UNVERIFIED, f"WinHTTP error {winerror}")
        elif reason in _CLIENT_CERT_ALERTS:
            found.setdefault(Failure.REJECTED, f"TLS alert {reason}")
        elif winerror in _WINHTTP_REJECTED:
            found.setdefault(Failure.REJECTED, f"WinHTTP error {winerror}")
        elif isinstance(e, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError,
                            ConnectionAbortedError, BrokenPipeError,
                            http.client.RemoteDisconnected)) or reason in _EOF_REASONS:
            found.setdefault(Failure.TRANSIENT, type(e).__name__)
        elif isinstance(e, ssl.SSLError):
            found.setdefault(Failure.TLS, str(reason or type(e).__name__))
    for kind in (Failure.SERVER_UNVERIFIED, Failure.REJECTED, Failure.TRANSIENT, Failure.TLS):
        if kind in found:
            return kind, found[kind]
    return Failure.OTHER, type(exc).__name__


def scrub(exc: BaseException) -> None:
    """Clear the locals of the finished frames in ``exc``'s tracebacks (its chain included).

    Error reporters that capture locals (Sentry and its kin) would find the Authorization
    header in urllib3's and http.client's frames. The stack itself (files, lines) is kept.
    """
    import traceback

    for e in chain(exc):
        if e.__traceback__ is not None:
            traceback.clear_frames(e.__traceback__)
