"""The IMDS side: getplatformmetadata and issuecredential, checked against the wire contract."""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization

from . import _control
from ._csrcheck import check_csr
from ._http import Handler, Reply, apply_fault, error_code, invalid_request, parse_query
from ._state import SELECTORS, RecordedRequest, State

__all__ = ["ATTESTATION_ENDPOINT", "ATTESTATION_MISSING", "IMDS_SERVER_HEADER", "ImdsHandler"]

IMDS_SERVER_HEADER = "IMDS/150.870.65.1854"
ATTESTATION_ENDPOINT = "https://maa.msicert-emulator.invalid"
_PATHS = {
    "/metadata/identity/getplatformmetadata": ("getplatformmetadata", "GET"),
    "/metadata/identity/issuecredential": ("issuecredential", "POST"),
}
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_BODY_FIELDS = frozenset({"csr", "attestation_token"})
# What IMDS answers (HTTP 400, invalid_request) when attestation is required and the request
# has none: MSAL.NET's MockHelpers
# MockCertificateRequestResponse_AttestationRequired_ButMissingToken_Returns400.
ATTESTATION_MISSING = "Attestation Token is missing / empty in the issue credential request"


class ImdsHandler(Handler):
    """Serves the two IMDS v2 calls and the ``/__emulator__/`` control API."""

    server_header = IMDS_SERVER_HEADER

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    @property
    def state(self) -> State:
        """The emulator state this server belongs to."""
        return self.server.state

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        if url.path.startswith(_control.PREFIX):
            _control.handle(self, url.path)
            return
        body = self.read_body()
        if body is None:
            return
        route = _PATHS.get(url.path)
        if route is None:
            self.state.violation(f"imds: unknown path {url.path!r} ({self.command})")
            self.send(Reply(404, {"error": "not_found", "error_description": "no such path"}))
            return
        endpoint, method = route
        query, query_problems = parse_query(url.query)
        self.state.record(
            RecordedRequest(
                endpoint, self.command, url.path, query, self.header_dict(), body, time.time()
            )
        )
        refusal = self._check_request(endpoint, method, query, query_problems)
        fault = self.state.faults.take(endpoint)
        if fault is not None and fault.delay:
            self.state.stopping.wait(fault.delay)
        if fault is not None and fault.replaces_reply:
            description = f"msicert emulator: injected HTTP {fault.status}"
            payload = {"error": error_code(fault.status), "error_description": description}
            reply = Reply(fault.status or 200, payload, body=fault.body)
        elif refusal is not None:
            reply = refusal
        elif endpoint == "getplatformmetadata":
            reply = self._metadata(query)
        else:
            reply = self._issue(query, body, fault.kind if fault is not None else "")
        if fault is not None:
            apply_fault(reply, fault)
        self.send(reply)

    def _violations(self, endpoint: str, problems: list[str]) -> None:
        for problem in problems:
            self.state.violation(f"{endpoint}: {problem}")

    def _check_request(
        self, endpoint: str, method: str, query: dict[str, str], query_problems: list[str]
    ) -> Reply | None:
        """Record every header/query violation; return the refusal real IMDS would send."""
        noted: list[str] = []
        request_id = self.headers.get("x-ms-client-request-id")
        if request_id is not None and not _UUID.fullmatch(request_id.strip()):
            noted.append(f"x-ms-client-request-id {request_id!r} is not a UUID")
        accept = self.headers.get("Accept")
        if accept != "application/json":
            noted.append(f"Accept is {accept!r}; the reference sends 'application/json'")
        allowed: tuple[str, ...] = ("cred-api-version", "msi_res_id")
        if endpoint == "issuecredential":
            allowed += ("bypass_cache",)  # the revocation spec: a fresh certificate
        for name in query:
            if name not in SELECTORS and name not in allowed:
                noted.append(f"unexpected query parameter {name!r}")
        self._violations(endpoint, noted)
        if self.command != method:
            self._violations(endpoint, [f"method {self.command}, expected {method}"])
            return invalid_request(f"{endpoint} accepts {method} only", 405)
        refused = list(query_problems)
        if (self.headers.get("Metadata") or "").strip().lower() != "true":
            refused.append("Metadata: true header is missing")
        if not (request_id or "").strip():  # live IMDS refuses a request without one
            refused.append("x-ms-client-request-id header is missing")
        if query.get("cred-api-version") != "2.0":
            refused.append(f"cred-api-version is {query.get('cred-api-version')!r}, expected '2.0'")
        if "msi_res_id" in query:
            refused.append("msi_res_id is the IMDS v1 selector; v2 uses mi_res_id")
        if "bypass_cache" in query and query["bypass_cache"] not in ("true", "false"):
            refused.append(f"bypass_cache is {query['bypass_cache']!r}, expected true or false")
        selectors = [name for name in SELECTORS if name in query]
        if len(selectors) > 1:
            refused.append(f"more than one identity selector: {', '.join(selectors)}")
        for name in selectors:
            value = query[name]
            if not value:
                refused.append(f"selector {name} is empty")
            elif name != "mi_res_id" and not _UUID.fullmatch(value):
                refused.append(f"selector {name}={value!r} is not a GUID")
        self._violations(endpoint, refused)
        return invalid_request("; ".join(refused)) if refused else None

    def _metadata(self, query: dict[str, str]) -> Reply:
        cuid = {k: self.state.cuid[k] for k in ("vmId", "vmssId") if self.state.cuid.get(k)}
        return Reply(
            200,
            {
                "clientId": self.state.client_id_for(query),
                "tenantId": self.state.tenant_id,
                "cuId": cuid,
                "attestationEndpoint": ATTESTATION_ENDPOINT,
            },
        )

    def _attestation_missing(self, body: bytes) -> bool:
        """In require_attestation mode: True when the body carries no attestation token."""
        if not self.state.require_attestation:
            return False
        try:
            document = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            return False  # not JSON: refused for that reason instead
        if not isinstance(document, dict):
            return False
        token = document.get("attestation_token")
        return not isinstance(token, str) or not token

    def _body_problems(self, body: bytes) -> tuple[bytes | None, list[str]]:
        """The decoded CSR DER, or the problems that make the body unusable."""
        try:
            document = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            return None, ["body is not JSON"]
        if not isinstance(document, dict):
            return None, ["body is not a JSON object"]
        self._violations(
            "issuecredential",
            [f"unexpected body field {name!r}" for name in sorted(set(document) - _BODY_FIELDS)],
        )
        problems: list[str] = []
        if "attestation_token" in document:
            token = document["attestation_token"]
            if not isinstance(token, str) or not token:
                problems.append("attestation_token is present but not a non-empty string")
        csr = document.get("csr")
        if not isinstance(csr, str) or not csr:
            return None, [*problems, "csr is missing or not a non-empty string"]
        if not _BASE64.fullmatch(csr):
            return None, [
                *problems,
                "csr is not single-line standard padded base64 "
                "(no line breaks, no URL-safe alphabet, '=' padding required)",
            ]
        try:
            der = base64.b64decode(csr, validate=True)
        except binascii.Error as exc:
            return None, [*problems, f"csr is not base64: {exc}"]
        return der, problems

    def _issue(self, query: dict[str, str], body: bytes, kind: str) -> Reply:
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            self._violations("issuecredential", [f"Content-Type is {content_type!r}"])
        if self._attestation_missing(body):
            # Not a contract violation: the client sent what it could; this host wants more.
            return invalid_request(ATTESTATION_MISSING)
        der, problems = self._body_problems(body)
        client_id = self.state.client_id_for(query)
        check = check_csr(
            der or b"",
            client_id=client_id,
            tenant_id=self.state.tenant_id,
            cuid_json=self.state.cuid_json(),
        )
        if der is not None:
            problems += check.problems
            self._violations("issuecredential", list(check.notes))
        if problems or check.public_key is None or check.subject is None:
            self._violations("issuecredential", problems)
            return invalid_request("; ".join(problems))
        certificate = self.state.issue(check.public_key, check.subject, kind)
        encoded = certificate.public_bytes(serialization.Encoding.DER)
        assigned = any(name in query for name in SELECTORS)
        identity_type = "UserAssigned" if assigned else "SystemAssigned"
        return Reply(
            200,
            {
                "client_id": client_id,
                "tenant_id": self.state.tenant_id,
                "certificate": base64.b64encode(encoded).decode("ascii"),
                "identity_type": identity_type,
                "mtls_authentication_endpoint": self.state.ests_url,
            },
        )
