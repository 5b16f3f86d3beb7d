"""The token request to ESTS, and what each refusal calls for.

:func:`token_response` is the miss path of the token leg
(:class:`~msicert._token_cache.TokenManager`): one token request for a binding certificate
(a 5xx without Retry-After, or a connection closed under it, is retried once), then, by
refusal:

- ``invalid_client`` that a new certificate fixes: revocation remediation, round after round
  with a new certificate (``bypass_cache=true``) and growing, jittered pauses, within the
  client's ``remediation_timeout``;
- a TLS alert about our certificate: one new certificate, one more try;
- the store entry changed under us (another process renewed it): read it again;
- anything else: raised at once, nothing minted.

What a failed TLS or transport attempt means is read by :mod:`msicert._transport_failure`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from ._backoff import Backoff
from ._errors import MsiCertError, TokenError
from ._lazylog import LazyLogger
from ._model import BindingCertificate
from ._timeouts import Timeouts
from .backends.contract import StaleCertificate, Transport
from .wire._ests import EstsRejected, EstsTimeout, TokenResponse, request_token

__all__ = ["STALE_TRIES", "CertificateSource", "TokenLeg", "token_response"]

log = LazyLogger("msicert")
STALE_TRIES = 3  # store entry replaced under us again and again: then it is an error
# Pauses between revocation remediation rounds (after the first, which starts at once).
_REMEDIATION_BACKOFF = Backoff(initial=1.0, maximum=30.0)


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


class TokenLeg(Protocol):
    """What a token request uses of the token leg (``TokenManager`` is one): its client, clock,
    pauses, ESTS timeouts and transport, and the two ways it lets go of a certificate."""

    _client: CertificateSource
    _clock: Callable[[], float]
    _sleep: Callable[[float], None]
    _timeouts: Timeouts
    _server_error_delay: float

    @property
    def tls(self) -> Transport:
        """The mTLS transport."""

    def _evict(self, x5t_s256: str) -> None:
        """A certificate that was replaced: its pool, contexts and tokens go."""

    def _reload(self, cert: BindingCertificate, why: BaseException) -> BindingCertificate:
        """The store entry no longer holds ``cert``: forget it and read the store again."""


class Rejected(Exception):
    """Internal: ESTS's TLS layer refused the client certificate."""


def token_response(
    leg: TokenLeg, cert: BindingCertificate, resource: str, claims: str | None, cid: str,
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
    client = leg._client
    timeout = client.remediation_timeout if remediation is None else remediation
    deadline = time.monotonic() + timeout
    rounds = tls_retried = stale = 0
    while True:
        if client._refused_recently(cert.x5t_s256):
            client._gate_check(leg._clock())
        try:
            return cert, _post_with_retry(
                leg, cert, resource, claims, cid, deadline if rounds else None)
        except StaleCertificate as exc:
            stale += 1
            if stale >= STALE_TRIES:
                raise
            cert = leg._reload(cert, exc)
        except EstsRejected as exc:
            if not exc.remediable:
                raise
            rounds += 1
            cert = _remediate(leg, cert, exc, rounds, deadline, timeout)
        except Rejected as exc:
            if tls_retried:
                error = TokenError(
                    f"ESTS rejected the client certificate twice (new certificate too): "
                    f"{exc}", correlation_id=cid)
                client._certificate_refused(cert, error)
                raise error from exc
            tls_retried = 1
            log.warning("ESTS rejected certificate %s in the TLS handshake (%s); minting "
                        "a new one (correlation_id=%s)", cert.x5t_s256, exc, cid)
            rejected = cert.x5t_s256
            cert = client._replace(rejected, why=f"ESTS refused it in the TLS "
                                   f"handshake ({exc})")
            leg._evict(rejected)


def _remediate(
    leg: TokenLeg, cert: BindingCertificate, exc: EstsRejected, rounds: int, deadline: float,
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
        leg._client._certificate_refused(cert, error)
        return error

    left = deadline - time.monotonic()
    if rounds > 1:
        pause = min(_REMEDIATION_BACKOFF.delay(rounds - 1), max(0.0, left))
        if left <= 0 or pause >= left:
            raise exhausted(rounds - 1) from exc
        log.info("ESTS refused the new certificate %s too (%s); round %d in %.1f s",
                 cert.x5t_s256, exc.aadsts, rounds, pause, extra={"wait": True})
        leg._sleep(pause)
    else:
        log.warning("ESTS answered invalid_client (%s) for certificate %s: minting a new "
                    "one (correlation_id=%s)", exc.aadsts, cert.x5t_s256,
                    exc.correlation_id)
    rejected = cert.x5t_s256
    try:
        new = leg._client._replace(
            rejected, why=f"ESTS answered invalid_client ({exc.aadsts})",
            deadline=deadline, gated=rounds == 1)
    except MsiCertError as failure:
        if rounds > 1 and time.monotonic() >= deadline:
            raise exhausted(rounds - 1) from failure  # the deadline ran out in the mint
        raise
    leg._evict(rejected)
    return new


def _post_with_retry(
    leg: TokenLeg, cert: BindingCertificate, resource: str, claims: str | None, cid: str,
    deadline: float | None,
) -> TokenResponse:
    """One token request; a 5xx (without Retry-After) or a connection closed under it is
    retried once. ``deadline`` (a remediation's) bounds the request further."""
    import urllib3

    timeout = urllib3.Timeout(connect=leg._timeouts.connect, read=leg._timeouts.read)
    total = leg._timeouts.total
    if deadline is not None:
        left = max(0.05, deadline - time.monotonic())
        total = left if total is None else min(total, left)
    for attempt in (1, 2):
        try:
            return request_token(
                leg.tls.pool(cert), mtls_endpoint=cert.mtls_endpoint,
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
                leg._sleep(leg._server_error_delay)
                continue
            raise
        except urllib3.exceptions.HTTPError as exc:
            from ._transport_failure import Failure, classify

            kind, why = classify(exc)
            if kind is Failure.REJECTED:
                raise Rejected(why) from exc
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
