"""IMDS v2: the getplatformmetadata and issuecredential requests, made with the protocol's
retries (:mod:`._retry`) over urllib3 (:mod:`._http`); their answers are checked by
:mod:`._imds_answers`."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from .._errors import ImdsError
from .._identity import Identity
from .._lazylog import LazyLogger
from ._http import request_capped, watched_pool_manager
from ._imds_answers import (
    IssuedCredential,
    PlatformMetadata,
    call_failure,
    excerpt,
    is_absolute_url,
    parse_issued_credential,
    parse_platform_metadata,
)
from ._retry import Retries, RetryPolicy

if TYPE_CHECKING:
    import urllib3

__all__ = ["DEFAULT_IMDS", "ImdsClient", "imds_base_from_env", "request_headers"]

log = LazyLogger("msicert")

DEFAULT_IMDS = "http://169.254.169.254"
ENV_IMDS = "AZURE_POD_IDENTITY_AUTHORITY_HOST"
_API = "cred-api-version=2.0"


def imds_base_from_env() -> str:
    """``AZURE_POD_IDENTITY_AUTHORITY_HOST`` (scheme://host[:port]) or the link-local IMDS."""
    return (os.environ.get(ENV_IMDS) or DEFAULT_IMDS).rstrip("/")


def request_headers(correlation_id: str, *, with_body: bool) -> dict[str, str]:
    """The headers MSAL.NET sends on both IMDS legs (its HttpClient adds the Accept)."""
    headers = {
        "Accept": "application/json",
        "Metadata": "true",
        "x-ms-client-request-id": correlation_id,
    }
    if with_body:  # StringContent(body, Encoding.UTF8, "application/json") on the wire
        headers["Content-Type"] = "application/json; charset=utf-8"
    return headers


class ImdsClient:
    """Talks to one IMDS endpoint. Thread-safe (urllib3 pools are)."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        connect_timeout: float = 2.0,
        read_timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = (base_url or imds_base_from_env()).rstrip("/")
        if not is_absolute_url(self.base_url, ("http", "https")):
            raise ValueError(f"IMDS endpoint must be scheme://host[:port], got {self.base_url!r}")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.retry = retry or RetryPolicy.from_env()
        self._sleep = sleep
        self._pool: urllib3.PoolManager | None = None

    def close(self) -> None:
        """Close the pooled connections (a later call opens new ones)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.clear()

    def _http(self) -> urllib3.PoolManager:
        if self._pool is None:
            self._pool = watched_pool_manager()
        return self._pool

    def _url(self, name: str, identity: Identity, *, bypass_cache: bool = False) -> str:
        query = _API + ("&" + urlencode(identity.query) if identity.query else "")
        if bypass_cache:
            query += "&bypass_cache=true"
        return f"{self.base_url}/metadata/identity/{name}?{query}"

    def _call(
        self, step: str, method: str, url: str, body: bytes | None,
        redact: tuple[str, ...] = (), deadline: float | None = None,
        correlation_id: str | None = None,
    ) -> tuple[int, dict[str, str], bytes, str]:
        """One IMDS call with the retry policy; returns (status, headers, body, correlation).

        ``correlation_id`` is the ``x-ms-client-request-id`` of every try (a new one when
        None): one mint sends one id on both legs, as MSAL.NET sends its request context's.

        Only a 200 returns; its body is at most ``MAX_BODY + 1`` bytes (the parsers refuse
        the extra byte). ``deadline`` (``time.monotonic()`` value) bounds the whole call:
        timeouts shrink to the time left, a watchdog shuts the socket down when it passes
        (headers trickled a byte at a time included), and no retry starts that could not
        finish in it."""
        import urllib3

        cid = correlation_id or str(uuid.uuid4())
        headers = request_headers(cid, with_body=body is not None)
        timeout = urllib3.Timeout(connect=self.connect_timeout, read=self.read_timeout)
        retries = Retries(self.retry)
        status: int | None = None
        data = b""
        while True:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ImdsError(f"IMDS {step} did not succeed within the deadline",
                                    step=step, status=status,
                                    body_excerpt=excerpt(data, redact), correlation_id=cid)
                timeout = urllib3.Timeout(connect=min(self.connect_timeout, left),
                                          read=min(self.read_timeout, left))
            try:
                resp, body_read = request_capped(self._http(), method, url, body=body,
                                                 headers=headers, timeout=timeout,
                                                 deadline=deadline)
                if body_read is None:  # the answer trickled in slower than the deadline allows
                    raise ImdsError(f"IMDS {step} answer still arriving at the deadline",
                                    step=step, status=resp.status, correlation_id=cid)
                data = body_read
                status, resp_headers = resp.status, {k.lower(): v for k, v in resp.headers.items()}
                transport_error: str | None = None
                timed_out = False
            except urllib3.exceptions.HTTPError as exc:
                status, resp_headers, data = None, {}, b""
                transport_error = type(exc).__name__
                timed_out = isinstance(exc, urllib3.exceptions.TimeoutError) and not isinstance(
                    exc, urllib3.exceptions.NewConnectionError)
            if status == 200:
                return status, resp_headers, data, cid
            if status is None and deadline is not None and time.monotonic() >= deadline:
                # The watchdog shut the socket down (or a timeout met the deadline): say so.
                raise ImdsError(f"IMDS {step} did not succeed within the deadline "
                                f"({transport_error})", step=step, correlation_id=cid)
            wait = retries.next_wait(status, timed_out, resp_headers.get("retry-after"))
            if wait is None:
                raise call_failure(step, status, transport_error, data, redact, cid)
            if deadline is not None and time.monotonic() + wait.seconds >= deadline:
                raise ImdsError(
                    f"IMDS {step} failed and the deadline leaves no time to retry", step=step,
                    status=status, body_excerpt=excerpt(data, redact), correlation_id=cid)
            answer = f"answered {status}" if status is not None else \
                f"failed ({transport_error})"
            stretched = f" (Retry-After {wait.retry_after:g} s)" \
                if wait.retry_after is not None else ""
            log.info("IMDS %s %s; retry %d/%d in %.1f s%s (correlation_id=%s)",
                     step, answer, retries.done, retries.budget, wait.seconds, stretched, cid,
                     extra={"wait": True})
            self._sleep(wait.seconds)

    def get_platform_metadata(
        self, identity: Identity, *, deadline: float | None = None,
        correlation_id: str | None = None,
    ) -> PlatformMetadata:
        """GET getplatformmetadata, check the Server header and every required field."""
        step = "getplatformmetadata"
        return parse_platform_metadata(
            *self._call(step, "GET", self._url(step, identity), None, deadline=deadline,
                        correlation_id=correlation_id)
        )

    def issue_credential(
        self, identity: Identity, csr_b64: str, attestation_token: str | None = None,
        *, deadline: float | None = None, bypass_cache: bool = False,
        correlation_id: str | None = None,
    ) -> IssuedCredential:
        """POST issuecredential with the CSR; return the validated answer.

        ``bypass_cache`` adds ``bypass_cache=true`` to the query: IMDS must issue a new
        certificate rather than one it holds (the revocation spec: claims challenges and
        revocation remediation).
        """
        step = "issuecredential"
        payload: dict[str, str] = {"csr": csr_b64}
        redact: tuple[str, ...] = ()
        if attestation_token:
            payload["attestation_token"] = attestation_token
            redact = (attestation_token,)
        body = json.dumps(payload, separators=(",", ":")).encode("ascii")
        status, headers, data, cid = self._call(
            step, "POST", self._url(step, identity, bypass_cache=bypass_cache), body, redact,
            deadline=deadline, correlation_id=correlation_id,
        )
        return parse_issued_credential(status, headers, data, cid, redact=redact)

