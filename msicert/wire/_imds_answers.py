"""IMDS v2 answers: the getplatformmetadata and issuecredential answers validated field by
field, and what a failed answer means (the error raised, an attestation refusal).

Pure: no I/O. Whatever the bytes, a parser returns a validated answer or raises
ImdsResponseError (a 200 that breaks the contract) or ImdsError (any other status).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .._errors import ImdsError, ImdsResponseError, MsiV2UnavailableError
from .._identity import is_guid
from .._policy import load_certificate
from ._http import MAX_BODY

__all__ = [
    "IssuedCredential",
    "PlatformMetadata",
    "call_failure",
    "excerpt",
    "is_absolute_url",
    "is_attestation_refusal",
    "mtls_endpoint",
    "parse_issued_credential",
    "parse_platform_metadata",
]


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


def excerpt(body: bytes, redact: tuple[str, ...] = ()) -> str:
    """The first 200 characters of ``body`` as text, with every ``redact`` string masked.

    Masking happens before the cut, so a secret an answer echoes never leaks, not even in part.
    """
    if not any(redact):
        return body[:200].decode("utf-8", "replace")
    text = body[: MAX_BODY + 1].decode("utf-8", "replace")
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


def is_absolute_url(text: str, schemes: tuple[str, ...]) -> bool:
    """True when ``text`` parses as a URL with one of ``schemes`` and a host part."""
    try:
        parts = urlsplit(text)
    except ValueError:  # e.g. "https://[::1" or a netloc that changes under NFKC
        return False
    return parts.scheme.lower() in schemes and bool(parts.netloc)


def _check_success(
    step: str, status: int, body: bytes, cid: str, redact: tuple[str, ...] = ()
) -> None:
    """Only a 200 answer of at most ``MAX_BODY`` bytes is parsed."""
    if status != 200:
        raise ImdsError(f"IMDS {step} failed", step=step, status=status,
                        body_excerpt=excerpt(body, redact), correlation_id=cid)
    if len(body) > MAX_BODY:
        raise ImdsResponseError(
            f"IMDS {step} answer is larger than {MAX_BODY} bytes",
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
    if not is_absolute_url(endpoint, ("https", "http")):
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
            body_excerpt=excerpt(data, redact), correlation_id=cid,
        ) from exc
    if not isinstance(doc, dict):
        raise ImdsResponseError(
            f"IMDS {step} answer is not a JSON object", step=step, status=200, correlation_id=cid
        )
    return doc


def call_failure(
    step: str, status: int | None, transport_error: str | None, data: bytes,
    redact: tuple[str, ...], cid: str,
) -> ImdsError:
    """The error for a call that failed for good: the last ``status`` (None after a transport
    failure named ``transport_error``) and an excerpt of its body, ``redact`` masked."""
    if step == "getplatformmetadata" and status == 404:
        return MsiV2UnavailableError(
            "MSI v2 not available on this host (IMDS v1 only?): getplatformmetadata "
            "answered 404", step=step, status=status, body_excerpt=excerpt(data, redact),
            correlation_id=cid)
    what = (f"failed ({transport_error}; not on Azure? try `msicert emulator`)"
            if status is None else "failed")
    return ImdsError(f"IMDS {step} {what}", step=step, status=status,
                     body_excerpt=excerpt(data, redact), correlation_id=cid)
