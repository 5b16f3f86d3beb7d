"""ESTS ``mtls_pop`` token request (imds-v2-protocol.md section 6) and its response parser."""

from __future__ import annotations

import json
import math
import sys
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from .._errors import TokenError
from .._lazylog import LazyLogger
from .._secret import Secret

if TYPE_CHECKING:
    import urllib3

    from ..backends.contract import Pool

__all__ = [
    "CLIENT_SKU",
    "REMEDIABLE_CODES",
    "EstsRejected",
    "EstsTimeout",
    "TokenResponse",
    "client_headers",
    "parse_token_response",
    "request_token",
    "token_url",
]

log = LazyLogger("msicert")
_MAX_BODY = 256 * 1024
CLIENT_SKU = "msicert.python"  # x-client-SKU: MSAL.NET sends its flavour, MSAL Python "MSAL.Python"


@dataclass(frozen=True)
class TokenResponse:
    """A parsed, validated ESTS success answer (the token is held redacted)."""

    access_token: Secret[str]
    expires_in: float
    refresh_in: float | None


class EstsTimeout(TokenError):
    """The ESTS request did not complete within ``ests_timeouts.total``."""


#: AADSTS codes of ``invalid_client`` that say the certificate or its attestation is no longer
#: accepted (MSAL.NET's MSI v2 revocation spec): a new certificate fixes them.
REMEDIABLE_CODES = frozenset(range(1000610, 1000615))


class EstsRejected(TokenError):
    """ESTS answered with an OAuth error (``error`` holds its code).

    ``error_codes`` holds the answer's AADSTS codes (``None`` when it had no ``error_codes``
    member), ``retry_after`` whether the answer carried a ``Retry-After`` header.
    """

    error_codes: tuple[int, ...] | None = None
    retry_after: bool = False

    @property
    def remediable(self) -> bool:
        """``invalid_client`` whose first AADSTS code is 1000610-1000614, or with no
        ``error_codes`` at all: the revocation spec's signal to mint a new certificate."""
        if self.error != "invalid_client":
            return False
        return not self.error_codes or self.error_codes[0] in REMEDIABLE_CODES

    @property
    def aadsts(self) -> str:
        """``AADSTS<code>`` of the first code, or ``no error_codes``."""
        return f"AADSTS{self.error_codes[0]}" if self.error_codes else "no error_codes"


def _error_codes(value: Any) -> tuple[int, ...] | None:
    """The ``error_codes`` member as integers; None when absent or empty. A member that is
    present but holds no usable code gives ``(0,)``: present, and never remediable."""
    if value is None or value == []:
        return None
    items = value if isinstance(value, list) else [value]
    codes = []
    for item in items:
        if isinstance(item, bool):
            continue
        if isinstance(item, int) and 0 <= item < 1 << 31:
            codes.append(item)
        elif isinstance(item, str) and item.strip().isdigit() and len(item.strip()) <= 10:
            codes.append(int(item.strip()))
    return tuple(codes) or (0,)


def token_url(mtls_endpoint: str, tenant_id: str) -> str:
    """``{endpoint without trailing /}/{tenant}/oauth2/v2.0/token``."""
    return f"{mtls_endpoint.rstrip('/')}/{tenant_id}/oauth2/v2.0/token"


def scope_for(resource: str) -> str:
    """``<resource without trailing />/.default`` (a scope given as such is kept).

    TypeError for a resource that is not a str, ValueError for one that names nothing (empty,
    blank, ``/`` or a bare ``/.default``): refused here, before any mint or ESTS call.
    """
    if not isinstance(resource, str):
        raise TypeError(f"resource must be a str, not {type(resource).__name__}")
    resource = resource.strip()
    if resource.endswith("/.default"):
        if not resource[: -len("/.default")].strip():
            raise ValueError("resource is empty: name the resource (e.g. https://vault.azure.net)")
        return resource
    if not resource.rstrip("/"):
        raise ValueError("resource is empty: name the resource (e.g. https://vault.azure.net)")
    return resource.rstrip("/") + "/.default"


def check_claims(claims: str) -> None:
    """ValueError unless ``claims`` is a JSON object (a resource's claims challenge), so that a
    malformed challenge costs no fresh certificate before ESTS would refuse it."""
    if not isinstance(claims, str):
        raise TypeError(f"claims must be a str of JSON, not {type(claims).__name__}")
    import json

    try:
        document = json.loads(claims)
    except (ValueError, RecursionError):  # RecursionError: nested beyond the parser's depth
        document = None
    if not isinstance(document, dict):
        raise ValueError("claims must be a JSON object (a resource's claims challenge)")


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool):
        raise TokenError(f"ESTS answer has a non-numeric {name}")
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:  # a JSON integer beyond float range
            raise TokenError(f"ESTS answer has an out-of-range {name}") from None
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise TokenError(f"ESTS answer has a non-numeric {name}") from None
    else:
        raise TokenError(f"ESTS answer has a non-numeric {name}")
    if not math.isfinite(number) or number <= 0:
        raise TokenError(f"ESTS answer has an out-of-range {name}")
    return number


def _text(value: Any) -> str:
    """An OAuth error field as text; a nested JSON value is dropped (str() of it may recurse)."""
    if isinstance(value, str):
        return value
    return "" if value is None or isinstance(value, (dict, list)) else str(value)


def _take_token(doc: dict[str, Any]) -> Secret[str] | None:
    """Move ``access_token`` out of the parsed document into a Secret."""
    value = doc.pop("access_token", None)
    return Secret(value) if isinstance(value, str) else None


def parse_token_response(status: int, body: bytes | Secret[bytes]) -> TokenResponse:
    """Validate an ESTS answer; OAuth errors raise EstsRejected, bad shapes TokenError.

    The body and the token stay in :class:`Secret` holders: an error raised while the rest of
    the answer is checked must not leave the token in a local of this frame.
    """
    try:
        doc = json.loads(body.reveal() if isinstance(body, Secret) else body) if body else None
    except (ValueError, RecursionError):  # RecursionError: deeply nested arrays
        doc = None
    if not isinstance(doc, dict):
        raise TokenError("ESTS answer is not a JSON object", status=status)
    token = _take_token(doc)
    if status != 200 or "error" in doc:
        rejected = EstsRejected(
            "ESTS refused the token request",
            error=_text(doc.get("error")),
            error_description=_text(doc.get("error_description")),
            correlation_id=_text(doc.get("correlation_id")),
            status=status,
        )
        rejected.error_codes = _error_codes(doc.get("error_codes"))
        raise rejected
    token_type = doc.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "mtls_pop":
        raise TokenError("ESTS answered a token_type other than mtls_pop", status=status)
    if not token:
        raise TokenError("ESTS answer lacks access_token", status=status)
    expires_in = _number(doc.get("expires_in"), "expires_in")
    refresh_in = _number(doc["refresh_in"], "refresh_in") if doc.get("refresh_in") else None
    return TokenResponse(token, expires_in, refresh_in)


def client_headers(cid: str) -> dict[str, str]:
    """Headers every ESTS request carries: the correlation id, and who is calling.

    Shapes as MSAL.NET's OAuth2Client sends them (``client-request-id``,
    ``return-client-request-id: true``, ``x-client-SKU``/``-Ver``/``-OS``); the OS value is
    ``sys.platform``, as MSAL Python sends it.
    """
    from .._version import __version__

    return {
        "client-request-id": cid,
        "return-client-request-id": "true",
        "x-client-SKU": CLIENT_SKU,
        "x-client-Ver": __version__,
        "x-client-OS": sys.platform,
    }


def request_token(
    pool: Pool,
    *,
    mtls_endpoint: str,
    tenant_id: str,
    client_id: str,
    resource: str,
    claims: str | None,
    timeout: urllib3.Timeout,
    total_timeout: float | None = None,
    correlation_id: str | None = None,
) -> TokenResponse:
    """POST the client_credentials/mtls_pop form over the certificate's mTLS pool.

    ``total_timeout`` bounds the whole request (connect, handshake, headers and body): a
    watchdog shuts the socket down when it passes, so an ESTS that trickles its answer cannot
    hold the caller longer (the read timeout only bounds each wait for bytes).
    ``correlation_id`` is sent as ``client-request-id`` (one id per operation, as MSAL.NET
    sends its request context's; a new one when None). An :class:`EstsRejected` says in
    ``retry_after`` whether ESTS asked to back off.
    """
    import urllib3

    from ._watchdog import Watchdog

    url = token_url(mtls_endpoint, tenant_id)
    if urlsplit(url).scheme.lower() != "https":
        raise TokenError(f"refusing to request a token from a non-https ESTS endpoint "
                         f"{mtls_endpoint!r}")
    form = {
        "grant_type": "client_credentials",
        "client_id": client_id,
        "scope": scope_for(resource),
        "token_type": "mtls_pop",
    }
    if claims:
        form["claims"] = claims
    cid = correlation_id or str(uuid.uuid4())
    headers = {"Content-Type": "application/x-www-form-urlencoded", **client_headers(cid)}
    watch = Watchdog(total_timeout)
    try:
        with watch:
            resp = pool.request(
                "POST", url, body=urlencode(form).encode("ascii"), headers=headers,
                timeout=watch.clip(timeout), redirect=False, preload_content=False,
            )
            try:
                body = Secret(resp.read(_MAX_BODY + 1, decode_content=True))
            finally:
                watch.disarm()  # before the connection goes back to the pool
                resp.release_conn()
    except urllib3.exceptions.HTTPError as exc:
        if watch.fired:
            raise _timed_out(total_timeout, cid) from exc
        raise
    if watch.fired:  # a close-delimited body ends "cleanly" when the socket is shut down
        raise _timed_out(total_timeout, cid)
    echoed = resp.headers.get("client-request-id")
    if echoed and echoed.strip().lower() != cid:
        log.warning("ESTS returned client-request-id %s for request %s", echoed, cid)
    log.debug("ESTS answered %s (correlation_id=%s, x-ms-request-id=%s)", resp.status, cid,
              resp.headers.get("x-ms-request-id") or "-")
    try:
        return parse_token_response(resp.status, Secret(body.reveal()[:_MAX_BODY]))
    except TokenError as exc:
        if not exc.correlation_id:
            exc.correlation_id = cid
        if isinstance(exc, EstsRejected):
            exc.retry_after = bool((resp.headers.get("Retry-After") or "").strip())
        raise


def _timed_out(total_timeout: float | None, cid: str) -> EstsTimeout:
    return EstsTimeout(
        f"ESTS did not answer within ests_timeouts.total ({total_timeout:g} s)",
        correlation_id=cid,
    )
