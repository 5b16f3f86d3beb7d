"""JWT-shaped mtls_pop access tokens: minted by the emulator's ESTS, readable by anyone.

The signature segment is a fixed marker, not a signature: these tokens only ever travel between
the emulator and the code under test; the ESTS remembers which ones it minted.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

__all__ = ["decode_token_payload", "mint_token"]

_SIGNATURE = b"emulator-signature"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _compact(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode("utf-8")


def mint_token(
    *, resource: str, client_id: str, tenant_id: str, x5t_s256: str, now: int, lifetime: int
) -> str:
    """A token for ``resource`` bound (``cnf.x5t#S256``) to the presented certificate."""
    header = {"typ": "JWT", "alg": "RS256", "kid": "msicert-emulator"}
    payload = {
        "aud": resource,
        "iss": f"https://login.microsoftonline.com/{tenant_id}/v2.0",
        "appid": client_id,
        "tid": tenant_id,
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
        "jti": str(uuid.uuid4()),
        "cnf": {"x5t#S256": x5t_s256},
    }
    segments = (_compact(header), _compact(payload), _SIGNATURE)
    return ".".join(_b64url(segment) for segment in segments)


def decode_token_payload(token: str) -> dict[str, Any]:
    """The JSON payload (claims) of a JWT-shaped token; ValueError when it is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a JWT: expected three dot-separated segments")
    try:
        raw = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a JWT: payload segment is not base64url JSON ({exc})") from exc
    if not isinstance(payload, dict):
        raise ValueError("not a JWT: payload is not a JSON object")
    return payload
