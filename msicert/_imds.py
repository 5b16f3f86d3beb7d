"""IMDS v2: getplatformmetadata and issuecredential over urllib3, with the protocol's retries."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from ._errors import ImdsError, ImdsResponseError, MsiV2UnavailableError
from ._identity import Identity, is_guid
from ._policy import load_certificate

if TYPE_CHECKING:
    import urllib3

__all__ = [
    "DEFAULT_IMDS",
    "ImdsClient",
    "IssuedCredential",
    "PlatformMetadata",
    "RetryPolicy",
    "parse_issued_credential",
    "parse_platform_metadata",
]

log = logging.getLogger("msicert")

DEFAULT_IMDS = "http://169.254.169.254"
ENV_IMDS = "AZURE_POD_IDENTITY_AUTHORITY_HOST"
ENV_RETRY_SCALE = "MSICERT_IMDS_RETRY_SCALE"
_API = "cred-api-version=2.0"
_MAX_BODY = 1 << 20  # IMDS answers are a few KiB; refuse to buffer more
_RETRIED = frozenset({404, 408, 429}) | frozenset(range(500, 600))


@dataclass(frozen=True)
class RetryPolicy:
    """imds-v2-protocol.md section 5; ``scale`` shrinks every wait (tests, emulator runs)."""

    delays: tuple[float, ...] = (1.0, 2.0, 4.0)
    gone_retries: int = 7
    gone_delay: float = 10.0
    max_retry_after: float = 60.0
    scale: float = 1.0

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """Default policy, with ``MSICERT_IMDS_RETRY_SCALE`` applied when set."""
        raw = os.environ.get(ENV_RETRY_SCALE)
        try:
            return cls(scale=float(raw)) if raw else cls()
        except ValueError:
            log.warning("ignoring %s=%r: not a number", ENV_RETRY_SCALE, raw)
            return cls()


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


def _require_str(doc: dict[str, Any], name: str, step: str, cid: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ImdsResponseError(
            f"IMDS {step} answer lacks a non-empty {name!r}", step=step, correlation_id=cid
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # JSON may spell a lone surrogate ("\ud800"); nothing stores it
        raise ImdsResponseError(
            f"IMDS {step} answer has a {name!r} that is not valid Unicode",
            step=step, correlation_id=cid,
        ) from None
    return value.strip()


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
    client_id = _require_str(doc, "clientId", step, cid)
    if not is_guid(client_id):
        raise ImdsResponseError("clientId is not a GUID", step=step, correlation_id=cid)
    tenant_id = _require_str(doc, "tenantId", step, cid)
    raw_cuid = doc.get("cuId")
    cuid = {}
    if isinstance(raw_cuid, dict):
        cuid = {
            k: v for k in ("vmId", "vmssId")
            if isinstance(v := raw_cuid.get(k), str) and v
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
    try:
        der = base64.b64decode(fields["certificate"], validate=True)
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
    endpoint = fields["mtls_authentication_endpoint"].rstrip("/")
    if not _is_absolute_url(endpoint, ("https",)):
        raise ImdsResponseError(
            "mtls_authentication_endpoint is not an https URL", step=step, correlation_id=cid
        )
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

    def _http(self) -> urllib3.PoolManager:
        if self._pool is None:
            import urllib3  # deferred: `import msicert` stays cheap

            self._pool = urllib3.PoolManager(retries=False, maxsize=4)
        return self._pool

    def _url(self, name: str, identity: Identity) -> str:
        query = _API + ("&" + urlencode(identity.query) if identity.query else "")
        return f"{self.base_url}/metadata/identity/{name}?{query}"

    def _call(
        self, step: str, method: str, url: str, body: bytes | None,
        redact: tuple[str, ...] = (), deadline: float | None = None,
    ) -> tuple[int, dict[str, str], bytes, str]:
        """One IMDS call with the retry policy; returns (status, headers, body, correlation).

        Only a 200 returns; its body is at most ``_MAX_BODY + 1`` bytes (the parsers refuse
        the extra byte). ``deadline`` (``time.monotonic()`` value) bounds the whole call:
        timeouts shrink to the time left and no retry starts that could not finish in it."""
        import urllib3

        cid = str(uuid.uuid4())
        headers = {"Metadata": "true", "x-ms-client-request-id": cid}
        if body is not None:
            headers["Content-Type"] = "application/json"
        timeout = urllib3.Timeout(connect=self.connect_timeout, read=self.read_timeout)
        policy = self.retry
        normal_left, gone_left = len(policy.delays), policy.gone_retries
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
            except urllib3.exceptions.HTTPError as exc:
                status, resp_headers, data = None, {}, b""
                transport_error = type(exc).__name__
            if status == 200:
                return status, resp_headers, data, cid
            retryable = status is None or status in _RETRIED or status == 410
            if status == 410 and gone_left > 0:
                gone_left -= 1
                wait = policy.gone_delay
            elif retryable and status != 410 and normal_left > 0:
                wait = policy.delays[len(policy.delays) - normal_left]
                normal_left -= 1
            else:
                what = (f"failed ({transport_error}; not on Azure? try `msicert emulator`)"
                        if status is None else "failed")
                cls = MsiV2UnavailableError if (step == "getplatformmetadata" and status == 404) \
                    else ImdsError
                msg = (
                    "MSI v2 not available on this host (IMDS v1 only?): getplatformmetadata "
                    "answered 404" if cls is MsiV2UnavailableError else f"IMDS {step} {what}"
                )
                raise cls(msg, step=step, status=status, body_excerpt=_excerpt(data, redact),
                          correlation_id=cid)
            retry_after = _retry_after(resp_headers.get("retry-after"), policy.max_retry_after)
            wait = max(wait, retry_after) * policy.scale
            if deadline is not None and time.monotonic() + wait >= deadline:
                raise ImdsError(
                    f"IMDS {step} failed and the deadline leaves no time to retry", step=step,
                    status=status, body_excerpt=_excerpt(data, redact), correlation_id=cid)
            log.debug(
                "IMDS %s answered %s (correlation_id=%s); retrying in %.3f s",
                step, status if status is not None else transport_error, cid, wait,
            )
            self._sleep(wait)

    def get_platform_metadata(
        self, identity: Identity, *, deadline: float | None = None
    ) -> PlatformMetadata:
        """GET getplatformmetadata, check the Server header and every required field."""
        step = "getplatformmetadata"
        return parse_platform_metadata(
            *self._call(step, "GET", self._url(step, identity), None, deadline=deadline)
        )

    def issue_credential(
        self, identity: Identity, csr_b64: str, attestation_token: str | None = None,
        *, deadline: float | None = None,
    ) -> IssuedCredential:
        """POST issuecredential with the CSR; return the validated answer."""
        step = "issuecredential"
        payload: dict[str, str] = {"csr": csr_b64}
        redact: tuple[str, ...] = ()
        if attestation_token:
            payload["attestation_token"] = attestation_token
            redact = (attestation_token,)
        body = json.dumps(payload, separators=(",", ":")).encode("ascii")
        status, headers, data, cid = self._call(
            step, "POST", self._url(step, identity), body, redact, deadline=deadline
        )
        return parse_issued_credential(status, headers, data, cid, redact=redact)


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


def _retry_after(value: str | None, cap: float) -> float:
    if not value:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        return 0.0  # HTTP-date form: the scheduled delay applies
    if math.isnan(seconds):
        return 0.0
    return min(max(seconds, 0.0), cap)
