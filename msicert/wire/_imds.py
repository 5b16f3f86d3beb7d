"""IMDS v2: getplatformmetadata and issuecredential over urllib3, with the protocol's retries."""

from __future__ import annotations

import base64
import binascii
import email.utils
import json
import math
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from .._errors import ImdsError, ImdsResponseError, MsiV2UnavailableError
from .._identity import Identity, is_guid
from .._lazylog import LazyLogger
from .._policy import load_certificate

if TYPE_CHECKING:
    import urllib3

__all__ = [
    "DEFAULT_IMDS",
    "ImdsClient",
    "IssuedCredential",
    "PlatformMetadata",
    "RetryPolicy",
    "get_within",
    "is_attestation_refusal",
    "parse_issued_credential",
    "parse_platform_metadata",
]

log = LazyLogger("msicert")

DEFAULT_IMDS = "http://169.254.169.254"
ENV_IMDS = "AZURE_POD_IDENTITY_AUTHORITY_HOST"
ENV_RETRY_SCALE = "MSICERT_IMDS_RETRY_SCALE"
_API = "cred-api-version=2.0"
_MAX_BODY = 1 << 20  # IMDS answers are a few KiB; refuse to buffer more
# HttpRetryConditions.Imds: 404, 408, 410, 429 and every 5xx; of transport failures only a
# timeout (TaskCanceledException in .NET), never a refused or reset connection.
_RETRIED = frozenset({404, 408, 410, 429}) | frozenset(range(500, 600))
_GONE = 410


@dataclass(frozen=True)
class RetryPolicy:
    """MSAL.NET's ImdsRetryPolicy; ``scale`` shrinks every wait (tests, emulator runs).

    The first answer fixes the budget: a 410 allows ``gone_retries`` (7) retries, anything
    else ``retries`` (3). A 410 waits ``gone_delay`` (10 s); any other answer waits
    ``backoff(n)`` before retry n+1: 1, 2, 4, 4, ... s. A ``Retry-After`` may stretch one
    wait, but never so far that the whole call could wait longer than ``max_total_wait``, the
    reference's own worst case (7 x 10 s = 70 s).
    """

    retries: int = 3
    gone_retries: int = 7
    gone_delay: float = 10.0
    min_backoff: float = 1.0
    max_backoff: float = 4.0
    delta_backoff: float = 2.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale >= 0):
            raise ValueError(f"retry scale must be a finite number >= 0, got {self.scale!r}")

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """Default policy, with ``MSICERT_IMDS_RETRY_SCALE`` applied when set (a finite
        number >= 0; anything else is ignored with a warning)."""
        raw = os.environ.get(ENV_RETRY_SCALE)
        if not raw:
            return cls()
        try:
            return cls(scale=float(raw))
        except ValueError:
            log.warning("ignoring %s=%r: not a finite number >= 0", ENV_RETRY_SCALE, raw)
            return cls()

    def backoff(self, retry: int) -> float:
        """Unscaled wait before retry ``retry + 1`` after an answer other than 410."""
        if retry <= 0:
            return self.min_backoff
        return min(self.delta_backoff * 2.0 ** (retry - 1), self.max_backoff)

    @property
    def max_total_wait(self) -> float:
        """Unscaled worst case of all waits of one call in the reference (70 s)."""
        return max(self.retries, self.gone_retries) * max(self.gone_delay, self.max_backoff)


@dataclass(frozen=True)
class PlatformMetadata:
    """The validated getplatformmetadata answer."""

    client_id: str
    tenant_id: str
    cuid: dict[str, str]
    attestation_endpoint: str


@dataclass(frozen=True)
class IssuedCredential:
    """The validated issuecredential answer."""

    client_id: str
    tenant_id: str
    certificate_der: bytes
    identity_type: str
    mtls_endpoint: str


def imds_base_from_env() -> str:
    """``AZURE_POD_IDENTITY_AUTHORITY_HOST`` (scheme://host[:port]) or the link-local IMDS."""
    return (os.environ.get(ENV_IMDS) or DEFAULT_IMDS).rstrip("/")


def _excerpt(body: bytes, redact: tuple[str, ...] = ()) -> str:
    """The first 200 characters of ``body`` as text, with every ``redact`` string masked.

    Masking happens before the cut, so a secret an answer echoes never leaks, not even in part.
    """
    if not any(redact):
        return body[:200].decode("utf-8", "replace")
    text = body[: _MAX_BODY + 1].decode("utf-8", "replace")
    for secret in redact:
        if secret:
            text = text.replace(secret, "<redacted>")
    return text[:200]


# The longest value each field may hold: what a store entry records must fit in one
# (``MAX_ENTRY_BYTES``), so an oversized field is refused here, as an IMDS error, rather than
# by the store as a corrupt entry. Real values are far shorter (a certificate ~1.5 KiB).
_MAX_FIELD = {"certificate": 24 * 1024, "mtls_authentication_endpoint": 2048,
              "identity_type": 64, "attestationEndpoint": 2048}
_MAX_OTHER_FIELD = 256  # ids and tenants: a GUID is 36, a DNS name at most 253


def _require_str(doc: dict[str, Any], name: str, step: str, cid: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ImdsResponseError(
            f"IMDS {step} answer lacks a non-empty {name!r}", step=step, correlation_id=cid
        )
    limit = _MAX_FIELD.get(name, _MAX_OTHER_FIELD)
    if len(value) > limit:
        raise ImdsResponseError(
            f"IMDS {step} answer has a {name!r} of {len(value)} characters (at most {limit})",
            step=step, correlation_id=cid,
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # JSON may spell a lone surrogate ("\ud800"); nothing stores it
        raise ImdsResponseError(
            f"IMDS {step} answer has a {name!r} that is not valid Unicode",
            step=step, correlation_id=cid,
        ) from None
    return value.strip()


# Printable ASCII and beyond, no control characters (a line break would split a store header).
_PRINTABLE = re.compile(r"[^\x00-\x1f\x7f-\x9f\u2028\u2029]+")
# identity_type: a short name (SystemAssigned, UserAssigned), printable ASCII only.
_IDENTITY_TYPE = re.compile(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?")
# What .NET's Convert.FromBase64String skips inside base64 (MSAL Go's StdEncoding skips \r
# and \n): IMDS may wrap the certificate, and the references accept it.
_BASE64_SPACE = re.compile(r"[ \t\r\n]+")
# A tenant as the authority takes it: a GUID, or a DNS name (contoso.onmicrosoft.com). Either
# is safe in a URL path segment and as the CSR's IA5String DC; nothing else is accepted.
_TENANT_DOMAIN = re.compile(r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
                            r"[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _client_id(doc: dict[str, Any], name: str, step: str, cid: str) -> str:
    value = _require_str(doc, name, step, cid)
    if not is_guid(value):
        raise ImdsResponseError(f"IMDS {step} {name} is not a GUID", step=step,
                                correlation_id=cid)
    return value


def _tenant_id(doc: dict[str, Any], name: str, step: str, cid: str) -> str:
    value = _require_str(doc, name, step, cid)
    if not (is_guid(value) or _TENANT_DOMAIN.fullmatch(value)):
        raise ImdsResponseError(
            f"IMDS {step} {name} is neither a GUID nor a tenant domain name", step=step,
            correlation_id=cid)
    return value


def mtls_endpoint(raw: str, cid: str = "") -> str:
    """The ESTS mTLS base URL from ``mtls_authentication_endpoint``, always https.

    A bare ``host[:port]`` gets ``https://`` (as MSAL Go does); ``http://`` and anything that
    is not a plain https origin with an optional path (userinfo, query, fragment, backslash,
    control characters) is refused with ImdsResponseError. The path is kept, as MSAL.NET
    keeps it (it appends ``/<tenant>``)."""
    step = "issuecredential"
    text = raw.strip().rstrip("/")

    def refuse(why: str) -> ImdsResponseError:
        return ImdsResponseError(f"mtls_authentication_endpoint {why}", step=step,
                                 correlation_id=cid)

    if "\\" in text or not text.isprintable() or " " in text:
        raise refuse("holds a backslash, a space or a control character")
    if "://" not in text:
        text = "https://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise refuse("is not a URL") from exc
    if parts.scheme.lower() == "http":
        raise refuse("is plain http: the token leg must use https (mTLS)")
    if parts.scheme.lower() != "https":
        raise refuse(f"has scheme {parts.scheme!r}, not https")
    if not parts.hostname:
        raise refuse("names no host")
    if "@" in parts.netloc:
        raise refuse("carries userinfo")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise refuse("carries a query or fragment")
    if port is None and parts.netloc.rsplit("]", 1)[-1].count(":"):
        raise refuse("has a malformed port")
    return f"https://{parts.netloc}{parts.path}"


def _is_absolute_url(text: str, schemes: tuple[str, ...]) -> bool:
    try:
        parts = urlsplit(text)
    except ValueError:  # e.g. "https://[::1" or a netloc that changes under NFKC
        return False
    return parts.scheme.lower() in schemes and bool(parts.netloc)


def _check_success(
    step: str, status: int, body: bytes, cid: str, redact: tuple[str, ...] = ()
) -> None:
    """Only a 200 answer of at most ``_MAX_BODY`` bytes is parsed."""
    if status != 200:
        raise ImdsError(f"IMDS {step} failed", step=step, status=status,
                        body_excerpt=_excerpt(body, redact), correlation_id=cid)
    if len(body) > _MAX_BODY:
        raise ImdsResponseError(
            f"IMDS {step} answer is larger than {_MAX_BODY} bytes",
            step=step, status=200, correlation_id=cid,
        )


def parse_platform_metadata(
    status: int, headers: Mapping[str, str], body: bytes, cid: str
) -> PlatformMetadata:
    """Validate a getplatformmetadata answer (imds-v2-protocol.md sections 1 and 2).

    Pure: no I/O. Raises ImdsResponseError for a 200 that breaks the contract, ImdsError for
    any other status; nothing else escapes, whatever the bytes.
    """
    step = "getplatformmetadata"
    _check_success(step, status, body, cid)
    server = next((v for k, v in headers.items() if k.lower() == "server"), "")
    if "imds" not in server.lower():
        raise ImdsResponseError(
            "getplatformmetadata answer lacks a Server header naming IMDS: not from IMDS",
            step=step, status=200, correlation_id=cid,
        )
    doc = _json_object(body, step, cid)
    client_id = _client_id(doc, "clientId", step, cid)
    tenant_id = _tenant_id(doc, "tenantId", step, cid)
    raw_cuid = doc.get("cuId")
    cuid = {}
    if isinstance(raw_cuid, dict):
        cuid = {
            k: v for k in ("vmId", "vmssId")
            if isinstance(v := raw_cuid.get(k), str) and v and _PRINTABLE.fullmatch(v)
        }
    if not cuid:
        raise ImdsResponseError(
            "cuId must be an object with a non-empty vmId or vmssId",
            step=step, correlation_id=cid,
        )
    endpoint = _require_str(doc, "attestationEndpoint", step, cid)
    if not _is_absolute_url(endpoint, ("https", "http")):
        raise ImdsResponseError(
            "attestationEndpoint is not an absolute URL", step=step, correlation_id=cid
        )
    return PlatformMetadata(client_id, tenant_id, cuid, endpoint)


def parse_issued_credential(
    status: int, headers: Mapping[str, str], body: bytes, cid: str,
    *, redact: tuple[str, ...] = (),
) -> IssuedCredential:
    """Validate an issuecredential answer (imds-v2-protocol.md section 4).

    Pure: no I/O. ``certificate`` must be base64 of a DER X.509 certificate whose names, key
    and validity parse. ``redact`` lists secrets that were sent (the attestation token) and
    must not reach an error message even if the answer echoes them. Raises ImdsResponseError
    for a 200 that breaks the contract, ImdsError for any other status; nothing else escapes.
    """
    step = "issuecredential"
    _check_success(step, status, body, cid, redact)
    doc = _json_object(body, step, cid, redact)
    fields = {
        name: _require_str(doc, name, step, cid)
        for name in ("client_id", "tenant_id", "certificate", "identity_type",
                     "mtls_authentication_endpoint")
    }
    fields["client_id"] = _client_id(doc, "client_id", step, cid)
    fields["tenant_id"] = _tenant_id(doc, "tenant_id", step, cid)
    if not _IDENTITY_TYPE.fullmatch(fields["identity_type"]):
        raise ImdsResponseError("identity_type is not a short printable ASCII name",
                                step=step, correlation_id=cid)
    try:
        der = base64.b64decode(_BASE64_SPACE.sub("", fields["certificate"]), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImdsResponseError(
            "issuecredential certificate is not base64", step=step, correlation_id=cid
        ) from exc
    try:
        load_certificate(der)  # here, so no odd cryptography error escapes the caller later
    except ValueError as exc:
        raise ImdsResponseError(
            "issued certificate is not DER X.509", step=step, correlation_id=cid
        ) from exc
    endpoint = mtls_endpoint(fields["mtls_authentication_endpoint"], cid)
    return IssuedCredential(
        fields["client_id"], fields["tenant_id"], der, fields["identity_type"], endpoint
    )


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
        if not _is_absolute_url(self.base_url, ("http", "https")):
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
            self._pool = _watched_pool_manager()
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

        Only a 200 returns; its body is at most ``_MAX_BODY + 1`` bytes (the parsers refuse
        the extra byte). ``deadline`` (``time.monotonic()`` value) bounds the whole call:
        timeouts shrink to the time left, a watchdog shuts the socket down when it passes
        (headers trickled a byte at a time included), and no retry starts that could not
        finish in it."""
        import urllib3

        cid = correlation_id or str(uuid.uuid4())
        headers = request_headers(cid, with_body=body is not None)
        timeout = urllib3.Timeout(connect=self.connect_timeout, read=self.read_timeout)
        policy = self.retry
        budget: int | None = None  # fixed by the first answer, as the reference does
        waited = 0.0  # unscaled
        retry = 0
        status: int | None = None
        data = b""
        while True:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ImdsError(f"IMDS {step} did not succeed within the deadline",
                                    step=step, status=status,
                                    body_excerpt=_excerpt(data, redact), correlation_id=cid)
                timeout = urllib3.Timeout(connect=min(self.connect_timeout, left),
                                          read=min(self.read_timeout, left))
            _watch.deadline = deadline
            try:
                resp = self._http().request(
                    method, url, body=body, headers=headers, timeout=timeout,
                    redirect=False, preload_content=False,
                )
                try:
                    body_read = _read_capped(resp, deadline)
                finally:
                    resp.release_conn()
                if body_read is None:  # the answer trickled in slower than the deadline allows
                    raise ImdsError(f"IMDS {step} answer still arriving at the deadline",
                                    step=step, status=resp.status, correlation_id=cid)
                data = body_read
                status, resp_headers = resp.status, {k.lower(): v for k, v in resp.headers.items()}
                transport_error: str | None = None
                retryable = status in _RETRIED
            except urllib3.exceptions.HTTPError as exc:
                status, resp_headers, data = None, {}, b""
                transport_error = type(exc).__name__
                retryable = isinstance(exc, urllib3.exceptions.TimeoutError) and not isinstance(
                    exc, urllib3.exceptions.NewConnectionError)
            finally:
                _watch.deadline = None
            if status == 200:
                return status, resp_headers, data, cid
            if status is None and deadline is not None and time.monotonic() >= deadline:
                # The watchdog shut the socket down (or a timeout met the deadline): say so.
                raise ImdsError(f"IMDS {step} did not succeed within the deadline "
                                f"({transport_error})", step=step, correlation_id=cid)
            if budget is None:
                budget = policy.gone_retries if status == _GONE else policy.retries
            if not retryable or retry >= budget:
                raise _failure(step, status, transport_error, data, redact, cid)
            scheduled = policy.gone_delay if status == _GONE else policy.backoff(retry)
            # Every retry still to come may need a full 410 wait: keep room for them.
            reserve = (budget - retry - 1) * policy.gone_delay
            room = policy.max_total_wait - waited - reserve
            asked = _retry_after(resp_headers.get("retry-after"))
            unscaled = max(scheduled, min(asked, room))
            waited += unscaled
            wait = unscaled * policy.scale
            retry += 1
            if deadline is not None and time.monotonic() + wait >= deadline:
                raise ImdsError(
                    f"IMDS {step} failed and the deadline leaves no time to retry", step=step,
                    status=status, body_excerpt=_excerpt(data, redact), correlation_id=cid)
            answer = f"answered {status}" if status is not None else \
                f"failed ({transport_error})"
            stretched = f" (Retry-After {asked:g} s)" if unscaled > scheduled else ""
            log.info("IMDS %s %s; retry %d/%d in %.1f s%s (correlation_id=%s)",
                     step, answer, retry, budget, wait, stretched, cid, extra={"wait": True})
            self._sleep(wait)

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


def is_attestation_refusal(exc: ImdsError) -> bool:
    """True when issuecredential answered 400 because the request had no attestation token.

    IMDS words it "Attestation Token is missing / empty in the issue credential request"
    (MSAL.NET MockHelpers); the check is on those words, case-insensitively.
    """
    if exc.step != "issuecredential" or exc.status != 400:
        return False
    text = exc.body_excerpt.lower()
    return "attestation token" in text and ("missing" in text or "empty" in text)


def _json_object(
    data: bytes, step: str, cid: str, redact: tuple[str, ...] = ()
) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:  # RecursionError: deeply nested arrays
        raise ImdsResponseError(
            f"IMDS {step} answer is not JSON", step=step, status=200,
            body_excerpt=_excerpt(data, redact), correlation_id=cid,
        ) from exc
    if not isinstance(doc, dict):
        raise ImdsResponseError(
            f"IMDS {step} answer is not a JSON object", step=step, status=200, correlation_id=cid
        )
    return doc


def _read_capped(resp: urllib3.BaseHTTPResponse, deadline: float | None) -> bytes | None:
    """Up to ``_MAX_BODY + 1`` bytes of the body; None when ``deadline`` passes first.

    The read timeout bounds each wait for bytes, not the whole body: a server that trickles a
    byte at a time would hold one ``read(n)`` far past any deadline, so with a deadline the
    body is read one network read at a time and the clock checked in between.
    """
    if deadline is None:
        return resp.read(_MAX_BODY + 1, decode_content=True)
    parts: list[bytes] = []
    size = 0
    while size <= _MAX_BODY:
        if time.monotonic() >= deadline:
            resp.close()  # the rest is never read: the connection must not be reused
            return None
        chunk = resp.read1(_MAX_BODY + 1 - size, decode_content=True)
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


def _retry_after(value: str | None, cap: float = math.inf) -> float:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or HTTP-date), at most ``cap``;
    0 if unusable."""
    if not value:
        return 0.0
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return 0.0
        if when.tzinfo is None:
            return 0.0
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return 0.0
    return min(max(seconds, 0.0), cap)


def _failure(
    step: str, status: int | None, transport_error: str | None, data: bytes,
    redact: tuple[str, ...], cid: str,
) -> ImdsError:
    if step == "getplatformmetadata" and status == 404:
        return MsiV2UnavailableError(
            "MSI v2 not available on this host (IMDS v1 only?): getplatformmetadata "
            "answered 404", step=step, status=status, body_excerpt=_excerpt(data, redact),
            correlation_id=cid)
    what = (f"failed ({transport_error}; not on Azure? try `msicert emulator`)"
            if status is None else "failed")
    return ImdsError(f"IMDS {step} {what}", step=step, status=status,
                     body_excerpt=_excerpt(data, redact), correlation_id=cid)


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


def get_within(url: str, headers: Mapping[str, str], until: float) -> int:
    """The status of one GET of ``url`` answered by ``until`` (``time.monotonic()``), body
    read (at most 1 MiB) and dropped. TimeoutError when the deadline passes first, however
    slowly the server trickles its head or body; urllib3's errors for other failures."""
    import urllib3

    left = until - time.monotonic()
    if left <= 0:
        raise TimeoutError("no time left")
    http = _watched_pool_manager()
    _watch.deadline = until
    try:
        resp = http.request("GET", url, headers=dict(headers), redirect=False,
                            timeout=urllib3.Timeout(connect=left, read=left),
                            preload_content=False)
        try:
            body = _read_capped(resp, until)
        finally:
            resp.release_conn()
    except urllib3.exceptions.HTTPError:
        if time.monotonic() >= until:
            raise TimeoutError("the deadline passed") from None
        raise
    finally:
        _watch.deadline = None
        http.clear()
    if body is None:
        raise TimeoutError("the answer was still arriving at the deadline")
    return resp.status


class _WatchState(threading.local):
    deadline: float | None = None


# The deadline of the IMDS request this thread is making (None: no deadline). The
# connection class reads it: a pooled connection cannot be handed a per-request argument.
_watch = _WatchState()


def _watched_pool_manager() -> urllib3.PoolManager:
    """A PoolManager whose connections arm ``_watchdog`` for the status line and headers.

    urllib3's read timeout bounds each recv, so a server that trickles its header lines holds
    ``getresponse`` for ever; the watchdog shuts the socket down at the deadline instead.
    """
    import urllib3
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    from . import _watchdog

    def watched(
        conn: HTTPConnection, getresponse: Callable[[], urllib3.response.HTTPResponse]
    ) -> urllib3.response.HTTPResponse:
        deadline = _watch.deadline
        if deadline is None:
            return getresponse()
        cancel = _watchdog.arm(conn, deadline)
        try:
            return getresponse()
        finally:
            cancel()

    class WatchedHTTPConnection(HTTPConnection):
        def getresponse(self) -> urllib3.response.HTTPResponse:  # type: ignore[override]
            return watched(self, super().getresponse)

    class WatchedHTTPSConnection(HTTPSConnection):
        def getresponse(self) -> urllib3.response.HTTPResponse:  # type: ignore[override]
            return watched(self, super().getresponse)

    class WatchedHTTPPool(HTTPConnectionPool):
        ConnectionCls = WatchedHTTPConnection

    class WatchedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = WatchedHTTPSConnection

    pool = urllib3.PoolManager(retries=False, maxsize=4)
    pool.pool_classes_by_scheme = {"http": WatchedHTTPPool, "https": WatchedHTTPSPool}
    return pool
