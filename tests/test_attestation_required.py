"""A host whose IMDS issues only to attested KeyGuard keys: an honest error, never retried.

The cross-SDK mTLS PoP standard (MSAL JS ``lib/msal-node/docs/
mtls-pop-cross-sdk-implementation-standard.md``) says IMDS does not yet issue binding
certificates for software keys. Such a host answers issuecredential with HTTP 400 and the body
MSAL.NET's MockHelpers record
(``MockCertificateRequestResponse_AttestationRequired_ButMissingToken_Returns400``):
``{"error":"invalid_request","error_description":"Attestation Token is missing / empty in the
issue credential request"}``. The emulator plays that host (``require_attestation``); msicert
turns the refusal into AttestationRequiredError naming the key kind it used.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import urllib3
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from msicert import AttestationRequiredError, ImdsError, ManagedIdentityClient
from msicert.emulator import Emulator, Fault
from msicert.wire._csr import build_csr, csr_to_wire
from msicert.wire._imds_answers import is_attestation_refusal
from tests.conftest import run_cli

# MSAL.NET src/client/Microsoft.Identity.Lab.Api/Http/MockHelpers.cs, as data.
REFERENCE_REFUSAL = {
    "error": "invalid_request",
    "error_description": "Attestation Token is missing / empty in the issue credential request",
}
HTTP = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=10))
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def _attesting() -> Iterator[Emulator]:
    with Emulator(require_attestation=True) as emulator:
        yield emulator


@pytest.fixture
def host(_attesting: Emulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    """The emulator as an attestation-only host, reset, with the environment pointing at it."""
    _attesting.reset()
    _attesting.require_attestation = True
    for name, value in _attesting.env().items():
        monkeypatch.setenv(name, value)
    yield _attesting
    _attesting.require_attestation = True


def _issue(host: Emulator, **document: Any) -> urllib3.BaseHTTPResponse:
    md = HTTP.request(
        "GET", f"{host.imds_url}/metadata/identity/getplatformmetadata?cred-api-version=2.0",
        headers={"Metadata": "true", "x-ms-client-request-id": str(uuid.uuid4()),
                 "Accept": "application/json"},
    ).json()
    csr = build_csr(
        spki_der=KEY.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
        sign=lambda tbs: KEY.sign(
            tbs, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32), hashes.SHA256()),
        client_id=md["clientId"], tenant_id=md["tenantId"], cuid=md["cuId"],
    )
    body = json.dumps({"csr": csr_to_wire(csr), **document}).encode()
    return HTTP.request(
        "POST", f"{host.imds_url}/metadata/identity/issuecredential?cred-api-version=2.0",
        headers={"Metadata": "true", "x-ms-client-request-id": str(uuid.uuid4()),
                 "Accept": "application/json", "Content-Type": "application/json; charset=utf-8"},
        body=body,
    )


def _control(host: Emulator, document: Any) -> tuple[int, Any]:
    response = HTTP.request("POST", f"{host.imds_url}/__emulator__/config",
                            body=json.dumps(document).encode())
    return response.status, response.json()


# -- the emulator plays the host ------------------------------------------------------------------
@pytest.mark.parametrize("document", [{}, {"attestation_token": ""}],
                         ids=["token-missing", "token-empty"])
def test_attestation_only_host_answers_the_reference_refusal(host, document):
    issued_before = len(host.issued)
    response = _issue(host, **document)
    assert response.status == 400
    assert response.json() == REFERENCE_REFUSAL
    assert len(host.issued) == issued_before and host.violations == []


def test_attestation_only_host_issues_when_a_token_comes_with_the_csr(host):
    # The emulator cannot verify a MAA token; it checks only that one is there.
    issued_before = len(host.issued)
    response = _issue(host, attestation_token="header.payload.signature")
    assert response.status == 200, response.data
    assert len(host.issued) == issued_before + 1


def test_require_attestation_is_set_through_the_control_api(host):
    status, config = _control(host, {"require_attestation": False})
    assert status == 200 and config["require_attestation"] is False
    assert host.require_attestation is False
    assert _issue(host).status == 200
    status, config = _control(host, {"require_attestation": True})
    assert status == 200 and config["require_attestation"] is True
    assert _issue(host).json() == REFERENCE_REFUSAL


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_require_attestation_accepts_only_a_boolean(host, value):
    status, body = _control(host, {"require_attestation": value})
    assert status == 400 and body["error"] == "invalid_request"
    assert "require_attestation must be true or false" in body["error_description"]
    assert host.require_attestation is True


def test_the_default_emulator_does_not_require_attestation(emu):
    assert emu.require_attestation is False


# -- the client's error ---------------------------------------------------------------------------
def test_software_key_refusal_raises_attestation_required_once(host, tmp_path):
    issued_before = len(host.issued)
    client = ManagedIdentityClient(imds_endpoint=host.imds_url, store_dir=str(tmp_path / "s"))
    with pytest.raises(AttestationRequiredError) as info:
        client.get_certificate()
    err = info.value
    assert isinstance(err, ImdsError)
    assert err.key_kind == "file" and err.attested is False
    assert err.step == "issuecredential" and err.status == 400
    message = str(err)
    assert "this host's IMDS requires a KeyGuard key with attestation" in message
    assert "a software key (held by msicert in a file" in message
    assert "Attestation Token is missing" in err.body_excerpt
    # Never retried: one metadata call, exactly one issuecredential, nothing issued or stored.
    assert host.count("getplatformmetadata") == 1 and host.count("issuecredential") == 1
    assert len(host.issued) == issued_before and client.status() is None


def test_other_issuecredential_400s_stay_plain_imds_errors(host, tmp_path):
    host.require_attestation = False
    host.inject("issuecredential", Fault(status=400))
    client = ManagedIdentityClient(imds_endpoint=host.imds_url, store_dir=str(tmp_path / "s"))
    with pytest.raises(ImdsError) as info:
        client.get_certificate()
    assert type(info.value) is ImdsError and info.value.status == 400
    assert host.count("issuecredential") == 1


def test_cli_cert_prints_the_attestation_message_after_one_call(host, tmp_path):
    proc = run_cli("cert", "--store-dir", str(tmp_path / "cli"), env=dict(os.environ))
    assert proc.returncode == 1 and proc.stdout == ""
    assert "this host's IMDS requires a KeyGuard key with attestation" in proc.stderr
    assert "a software key (held by msicert in a file" in proc.stderr
    assert host.count("issuecredential") == 1


@pytest.mark.parametrize(
    ("kind", "attested", "words"),
    [
        ("file", False, "a software key (held by msicert in a file; it cannot be attested)"),
        ("software-ksp", False, "a software-KSP key (Microsoft Software Key Storage Provider"),
        ("keyguard", False, "a KeyGuard key without an attestation token"),
        ("keyguard", True, "a keyguard key with an attestation token that IMDS did not accept"),
    ],
)
def test_the_message_names_each_key_kind(kind, attested, words):
    # Built directly: a KeyGuard key needs VBS hardware, which cannot run here.
    err = AttestationRequiredError(key_kind=kind, attested=attested, status=400)
    assert "this host's IMDS requires a KeyGuard key with attestation" in str(err)
    assert words in str(err)


@pytest.mark.parametrize(
    ("step", "status", "body", "expected"),
    [
        ("issuecredential", 400, json.dumps(REFERENCE_REFUSAL), True),
        ("issuecredential", 400, "Attestation Token is EMPTY", True),
        ("issuecredential", 400, '{"error":"invalid_request","error_description":"bad csr"}',
         False),
        ("issuecredential", 500, json.dumps(REFERENCE_REFUSAL), False),
        ("getplatformmetadata", 400, json.dumps(REFERENCE_REFUSAL), False),
    ],
)
def test_attestation_refusal_is_recognised_only_on_issuecredential_400(step, status, body,
                                                                      expected):
    err = ImdsError("x", step=step, status=status, body_excerpt=body)
    assert is_attestation_refusal(err) is expected

