"""ESTS ``mtls_pop`` token request (imds-v2-protocol.md section 6) and its response parser."""

from __future__ import annotations

import json
import logging
import math
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from ._errors import TokenError

if TYPE_CHECKING:
    import urllib3

__all__ = ["TokenResponse", "parse_token_response", "request_token", "token_url"]

log = logging.getLogger("msicert")
_MAX_BODY = 256 * 1024


@dataclass(frozen=True)
class TokenResponse:
    """A parsed, validated ESTS success answer."""

    access_token: str
    expires_in: float
    refresh_in: float | None


class EstsRejected(TokenError):
    """ESTS answered with an OAuth error (``error`` holds its code)."""


def token_url(mtls_endpoint: str, tenant_id: str) -> str:
    """``{endpoint without trailing /}/{tenant}/oauth2/v2.0/token``."""
    return f"{mtls_endpoint.rstrip('/')}/{tenant_id}/oauth2/v2.0/token"


def scope_for(resource: str) -> str:
    """``<resource without trailing />/.default`` (a scope given as such is kept)."""
    resource = resource.strip()
    if resource.endswith("/.default"):
        return resource
    return resource.rstrip("/") + "/.default"


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


def parse_token_response(status: int, body: bytes) -> TokenResponse:
    """Validate an ESTS answer; OAuth errors raise EstsRejected, bad shapes TokenError."""
    try:
        doc = json.loads(body) if body else None
    except (ValueError, RecursionError):  # RecursionError: deeply nested arrays
        doc = None
    if not isinstance(doc, dict):
        raise TokenError("ESTS answer is not a JSON object", status=status)
    if status != 200 or "error" in doc:
        raise EstsRejected(
            "ESTS refused the token request",
            error=_text(doc.get("error")),
            error_description=_text(doc.get("error_description")),
            correlation_id=_text(doc.get("correlation_id")),
            status=status,
        )
    token_type = doc.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "mtls_pop":
        raise TokenError("ESTS answered a token_type other than mtls_pop", status=status)
    token = doc.get("access_token")
    if not isinstance(token, str) or not token:
        raise TokenError("ESTS answer lacks access_token", status=status)
    expires_in = _number(doc.get("expires_in"), "expires_in")
    refresh_in = _number(doc["refresh_in"], "refresh_in") if doc.get("refresh_in") else None
    return TokenResponse(token, expires_in, refresh_in)


def request_token(
    pool: urllib3.PoolManager,
    *,
    mtls_endpoint: str,
    tenant_id: str,
    client_id: str,
    resource: str,
    claims: str | None,
    timeout: urllib3.Timeout,
) -> TokenResponse:
    """POST the client_credentials/mtls_pop form over the certificate's mTLS pool."""
    form = {
        "grant_type": "client_credentials",
        "client_id": client_id,
        "scope": scope_for(resource),
        "token_type": "mtls_pop",
    }
    if claims:
        form["claims"] = claims
    cid = str(uuid.uuid4())
    resp = pool.request(
        "POST",
        token_url(mtls_endpoint, tenant_id),
        body=urlencode(form).encode("ascii"),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "client-request-id": cid,
            "return-client-request-id": "true",
        },
        timeout=timeout,
        redirect=False,
        preload_content=False,
    )
    try:
        body = resp.read(_MAX_BODY + 1, decode_content=True)
    finally:
        resp.release_conn()
    log.debug("ESTS answered %s (client-request-id=%s)", resp.status, cid)
    try:
        return parse_token_response(resp.status, body[:_MAX_BODY])
    except TokenError as exc:
        if not exc.correlation_id:
            exc.correlation_id = cid
        raise
