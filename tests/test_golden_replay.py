"""Golden replays: the reference clients' own test payloads, fed to msicert as data.

Every payload lives in ``tests/golden/*.json`` with a ``source`` field naming the reference
repository and file it was taken from. Each is run through msicert's parsers and, for the IMDS
legs, through a real client against a tiny replay server on 127.0.0.1 that answers with the
recorded status, headers and body. Each is accepted, or refused for the reason a reference
refuses it.

Decision on the issuecredential certificates: MSAL.NET's mock certificate
(``TestConstants.ValidRawCertificate``, CN=Test, self-signed) is over a key msicert does not
generate, and MSAL Go's fake issues over whatever CSR arrives. The parser-level test takes
MSAL.NET's certificate verbatim: its shape is accepted, its public key is the published
``XmlPrivateKey`` modulus, so a fresh key of ours does not match it (the same reason .NET's
``CopyWithPrivateKey`` would refuse the pair). The client-level replay substitutes a
certificate issued over the CSR's key (subject as the reference's fake issues it) and keeps
every other field verbatim; a ``{...}`` placeholder in a golden body marks the substituted
values (the certificate, and Go's token-server host:port, which is dynamic there too).

Sources used (see each file's ``source``):
- AzureAD/microsoft-authentication-library-for-dotnet:
  src/client/Microsoft.Identity.Lab.Api/Http/MockHelpers.cs (MockCsrResponse,
  MockCsrResponseFailure, MockCertificateRequestResponse,
  MockCertificateRequestResponse_AttestationRequired_ButMissingToken_Returns400,
  CreateServerErrorMessage, GetImdsV2EntraTokenResponse) and
  src/client/Microsoft.Identity.Lab.Api/Internal/TestConstants.cs (ClientId, TenantId,
  ValidRawCertificate, XmlPrivateKey modulus, ATSecret, MtlsAuthenticationEndpoint);
  tests/Microsoft.Identity.Test.Unit/ManagedIdentityTests/ImdsV2Tests.cs (the
  system_assigned_managed_identity subject).
- AzureAD/microsoft-authentication-library-for-go PR #662:
  apps/managedidentity/imdsv2_flow_test.go (imdsFake handleMetadata, handleIssue, handleToken).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from msicert import (
    AttestationRequiredError,
    ImdsError,
    ImdsResponseError,
    ManagedIdentityClient,
)
from msicert._errors import TokenError
from msicert._identity import Identity
from msicert._policy import identity_mismatch, load_certificate
from msicert.wire._ests import EstsRejected, parse_token_response
from msicert.wire._imds_answers import parse_issued_credential, parse_platform_metadata
from msicert.wire._retry import RetryPolicy

GOLDEN = Path(__file__).parent / "golden"
CERT_SLOT = "{certificate issued over the CSR key}"
HOST_SLOT = "{token server host:port}"
SAMI_CN = "system_assigned_managed_identity"
ERRORS = {"ImdsError": ImdsError, "ImdsResponseError": ImdsResponseError,
          "TokenError": TokenError, "EstsRejected": EstsRejected}


def golden(name: str) -> dict[str, Any]:
    return json.loads((GOLDEN / name).read_text(encoding="utf-8"))


ALL = sorted(p.name for p in GOLDEN.glob("*.json"))


def test_every_golden_payload_names_its_reference_source():
    assert len(ALL) == 15
    for name in ALL:
        source = golden(name)["source"]
        assert source.startswith(("AzureAD/microsoft-authentication-library-for-dotnet: ",
                                  "AzureAD/microsoft-authentication-library-for-go: ")), name
        assert (".cs" in source) or (".go" in source), name


# --- a certificate authority for substituted certificates --------------------------------------
_CA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def issue_over(public_key: Any, subject: x509.Name, issuer_cn: str) -> bytes:
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(_CA_KEY, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def dc_cn(tenant: str, cn: str) -> x509.Name:
    return x509.Name([
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.DOMAIN_COMPONENT, tenant)]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, cn)]),
    ])


# --- parser level -------------------------------------------------------------------------------
IMDS_PARSE = [n for n in ALL if golden(n)["endpoint"] != "token"
              and golden(n)["status"] == 200 and CERT_SLOT not in golden(n)["body"]]


@pytest.mark.parametrize("name", IMDS_PARSE)
def test_imds_payload_is_accepted_or_refused_for_the_reference_reason(name):
    g = golden(name)
    parse = parse_platform_metadata if g["endpoint"] == "getplatformmetadata" \
        else parse_issued_credential
    body = g["body"].encode("utf-8")
    if g["expect"]["accepted"]:
        parsed = parse(g["status"], g["headers"], body, "cid")
        assert parsed.client_id in g["body"] and parsed.tenant_id in g["body"]
    else:
        with pytest.raises(ERRORS[g["expect"]["error"]], match=g["expect"]["reason"]):
            parse(g["status"], g["headers"], body, "cid")


def test_msal_net_mock_certificate_has_the_accepted_shape_and_the_published_key():
    g = golden("msal_net_issuecredential.json")
    body = json.loads(g["body"])
    cert = load_certificate(base64.b64decode(body["certificate"], validate=True))
    modulus = int.from_bytes(base64.b64decode(g["certificate_key_modulus"]), "big")
    public = cert.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.public_numbers().n == modulus  # the reference's key, not one msicert holds
    ours = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    assert ours.public_numbers().n != modulus  # so the client's key check refuses it
    # msicert is stricter than MSAL.NET here: CN=Test is no client id, and the issuer is not
    # IMDS's (MSAL.NET checks neither on an issued certificate).
    assert identity_mismatch(cert, Identity(), client_id=body["client_id"],
                             tenant_id=body["tenant_id"]) == \
        "subject is not CN=<client id>, DC=<tenant>"


def test_go_issued_credential_with_a_bare_host_port_is_accepted_as_https():
    g = golden("go_issuecredential.json")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    doc = json.loads(g["body"])
    der = issue_over(key.public_key(), dc_cn(doc["tenant_id"], doc["client_id"]), "imds-test-ca")
    body = g["body"].replace(CERT_SLOT, base64.b64encode(der).decode()).replace(
        HOST_SLOT, "127.0.0.1:4443")
    issued = parse_issued_credential(200, g["headers"], body.encode(), "cid")
    assert issued.mtls_endpoint == "https://127.0.0.1:4443"
    assert (issued.client_id, issued.identity_type) == (doc["client_id"], "SAMI")


@pytest.mark.parametrize("name", [n for n in ALL if golden(n)["endpoint"] == "token"])
def test_token_payload_is_accepted_or_refused_for_the_reference_reason(name):
    g = golden(name)
    body = g["body"].encode("utf-8")
    if g["expect"]["accepted"]:
        parsed = parse_token_response(g["status"], body)
        assert parsed.expires_in == g["expect"]["expires_in"]
        assert parsed.access_token.reveal() == json.loads(g["body"])["access_token"]
    else:
        with pytest.raises(ERRORS[g["expect"]["error"]]) as info:
            parse_token_response(g["status"], body)
        assert g["expect"]["reason"] in f"{info.value} {getattr(info.value, 'error', '')}"


# --- client level: a replay server on 127.0.0.1 --------------------------------------------------
class Replay:
    """Answers each IMDS path from its queue of golden payloads; records every request."""

    def __init__(self, answers: dict[str, list[dict[str, Any]]], *, subject: str = "csr",
                 issuer_cn: str = "managedidentitysnissuer.login.microsoft.com") -> None:
        self.answers, self.subject, self.issuer_cn = answers, subject, issuer_cn
        self.requests: list[dict[str, Any]] = []
        replay = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                replay.answer(self)

            do_POST = do_GET

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, h: BaseHTTPRequestHandler) -> None:
        url = urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        step = url.path.rsplit("/", 1)[-1]
        self.requests.append({"step": step, "method": h.command, "headers": dict(h.headers),
                              "query": dict(parse_qsl(url.query)), "body": body})
        queue = self.answers.get(step, [])
        if not queue:
            h.send_response(404)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        g = queue[0] if len(queue) == 1 else queue.pop(0)
        text = g["body"]
        if CERT_SLOT in text:
            text = text.replace(CERT_SLOT, self._certificate(body, json.loads(text)))
        text = text.replace(HOST_SLOT, "127.0.0.1:4443")
        payload = text.encode("utf-8")
        h.send_response(g["status"])
        for k, v in g["headers"].items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)

    def _certificate(self, request_body: bytes, doc: dict[str, str]) -> str:
        csr = x509.load_der_x509_csr(base64.b64decode(json.loads(request_body)["csr"]))
        subject = {"csr": csr.subject, "sami": dc_cn(doc["tenant_id"], SAMI_CN),
                   "issued": dc_cn(doc["tenant_id"], doc["client_id"])}[self.subject]
        return base64.b64encode(issue_over(csr.public_key(), subject, self.issuer_cn)).decode()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def replay():
    servers: list[Replay] = []

    def start(answers: dict[str, list[dict[str, Any]]], **kw: str) -> Replay:
        servers.append(Replay(answers, **kw))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def _client(r: Replay, store_dir: str, waits: list[float], **kw: str) -> ManagedIdentityClient:
    return ManagedIdentityClient(imds_endpoint=r.url, store_dir=store_dir, retry=RetryPolicy(),
                                 sleep=waits.append, **kw)


def _reference_request_shape(r: Replay) -> None:
    """What MSAL.NET's mocks demand of every IMDS request (ExpectedQueryParams,
    ExpectedRequestHeaders, PresentRequestHeaders)."""
    assert r.requests
    for req in r.requests:
        headers = {k.lower(): v for k, v in req["headers"].items()}
        assert req["query"] == {"cred-api-version": "2.0"}
        assert headers["metadata"] == "true" and headers["x-ms-client-request-id"]
        assert headers["accept"] == "application/json"
        if req["method"] == "POST":
            assert headers["content-type"] == "application/json; charset=utf-8"


def test_msal_net_mocks_replayed_end_to_end_are_refused_for_the_plain_http_endpoint(
        replay, store_dir):
    # MSAL.NET's mock endpoint is http://; MSAL Go refuses a non-https endpoint and so does
    # msicert. The substituted certificate is over our key: the http endpoint is the reason.
    issue = golden("msal_net_issuecredential.json")
    issue["body"] = issue["body"].replace(json.loads(issue["body"])["certificate"], CERT_SLOT)
    r = replay({"getplatformmetadata": [golden("msal_net_getplatformmetadata.json")],
                "issuecredential": [issue]})
    waits: list[float] = []
    with pytest.raises(ImdsResponseError, match="plain http"):
        _client(r, store_dir, waits).get_certificate()
    assert [q["step"] for q in r.requests] == ["getplatformmetadata", "issuecredential"]
    _reference_request_shape(r)
    assert not Path(store_dir, "msal_mtls.pem").exists()


def test_go_fixtures_replayed_end_to_end_mint_store_and_reload(replay, store_dir):
    r = replay({"getplatformmetadata": [golden("go_getplatformmetadata.json")],
                "issuecredential": [golden("go_issuecredential.json")]},
               issuer_cn="imds-test-ca")
    waits: list[float] = []
    cert = _client(r, store_dir, waits, issuer="imds-test-ca").get_certificate()
    assert cert.source == "imds" and cert.mtls_endpoint == "https://127.0.0.1:4443"
    assert cert.client_id == "8c8a1b0a-4d40-4d9e-9a4f-1f2a3b4c5d6e"
    assert cert.identity_type == "SAMI" and waits == []
    _reference_request_shape(r)
    empty = replay({})
    again = _client(empty, store_dir, waits, issuer="imds-test-ca").get_certificate()
    assert again.source == "store" and again.x5t_s256 == cert.x5t_s256
    assert empty.requests == []


def test_the_msal_net_system_assigned_subject_mints_and_reloads_from_the_store(replay,
                                                                               store_dir):
    # ImdsV2Tests expects CN=system_assigned_managed_identity on the system identity.
    r = replay({"getplatformmetadata": [golden("go_getplatformmetadata.json")],
                "issuecredential": [golden("go_issuecredential.json")]},
               subject="sami", issuer_cn="imds-test-ca")
    waits: list[float] = []
    cert = _client(r, store_dir, waits, issuer="imds-test-ca").get_certificate()
    assert cert.subject.startswith(f"CN={SAMI_CN},DC=")
    again = _client(replay({}), store_dir, waits, issuer="imds-test-ca").get_certificate()
    assert again.source == "store" and again.x5t_s256 == cert.x5t_s256


@pytest.mark.parametrize(("name", "waits_expected", "error"), [
    ("msal_net_getplatformmetadata_400.json", [], ImdsError),
    # The reference's own "attestation required" answer: the software key gets the honest error.
    ("msal_net_issuecredential_400_attestation.json", [], AttestationRequiredError),
    # Every answer says Retry-After: 3, which stretches the 1 s and 2 s waits, not the 4 s one
    # (MSAL.NET ignores Retry-After on IMDS and would wait 1, 2, 4 s).
    ("msal_net_server_error.json", [3.0, 3.0, 4.0], ImdsError),
    ("go_getplatformmetadata_error.json", [1.0, 2.0, 4.0], ImdsError),
    ("go_issuecredential_missing_header.json", [], ImdsError),
])
def test_error_payloads_replayed_end_to_end(replay, store_dir, name, waits_expected, error):
    g = golden(name)
    answers = {g["endpoint"]: [g]}
    if g["endpoint"] == "issuecredential":
        answers["getplatformmetadata"] = [golden("go_getplatformmetadata.json")]
    r = replay(answers)
    waits: list[float] = []
    with pytest.raises(ImdsError) as info:
        _client(r, store_dir, waits).get_certificate()
    assert type(info.value) is error and info.value.status == g["status"]
    assert sum(q["step"] == g["endpoint"] for q in r.requests) == g["expect"]["attempts"]
    assert waits == waits_expected


def test_a_cn_naming_the_issuecredential_client_id_is_accepted_and_reloads(replay, store_dir):
    # MSAL.NET takes issuecredential's client_id as the canonical one; here it differs from
    # getplatformmetadata's (Go fixture, client_id changed) and the certificate's CN names it.
    issue = golden("go_issuecredential.json")
    canonical = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
    issue["body"] = issue["body"].replace("8c8a1b0a-4d40-4d9e-9a4f-1f2a3b4c5d6e", canonical)
    r = replay({"getplatformmetadata": [golden("go_getplatformmetadata.json")],
                "issuecredential": [issue]}, subject="issued", issuer_cn="imds-test-ca")
    waits: list[float] = []
    cert = _client(r, store_dir, waits, issuer="imds-test-ca").get_certificate()
    assert cert.client_id == canonical and f"CN={canonical}" in cert.subject
    again = _client(replay({}), store_dir, waits, issuer="imds-test-ca").get_certificate()
    assert again.source == "store" and again.x5t_s256 == cert.x5t_s256
