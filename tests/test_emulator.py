"""The emulator speaks the IMDS v2 / ESTS wire contract and catches clients that do not.

Driven with plain urllib3 and ssl clients and CSRs from ``msicert.wire._csr.build_csr``; variants
that build_csr cannot produce are assembled with ``msicert.wire._der`` or cryptography's builder.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msicert.emulator import ISSUER_CN, Emulator, Fault, decode_token_payload
from msicert.emulator._csrcheck import check_csr
from msicert.wire import _der as der
from msicert.wire._csr import PSS_ALGORITHM_DER, build_csr, csr_to_wire

ROOT = Path(__file__).resolve().parent.parent
GPM = "/metadata/identity/getplatformmetadata"
ISSUE = "/metadata/identity/issuecredential"
RESOURCE = "https://vault.azure.net"
CUID_OID = "1.3.6.1.4.1.311.90.2.10"
SHA1 = "1.3.14.3.2.26"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
HTTP = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=10))


# -- fixtures and helpers -------------------------------------------------------------------
@pytest.fixture(scope="module")
def _running() -> Iterator[Emulator]:
    with Emulator() as emulator:
        yield emulator


@pytest.fixture
def emulator(_running: Emulator) -> Iterator[Emulator]:
    _running.reset()
    _running.lifetime, _running.backdate, _running.token_lifetime = 3600.0, 60.0, 3600.0
    yield _running
    _running.clear_faults()


def headers(**extra: str) -> dict[str, str]:
    return {"Metadata": "true", "x-ms-client-request-id": str(uuid.uuid4()),
            "Accept": "application/json", **extra}


def imds(
    emulator: Emulator,
    path: str,
    query: str = "cred-api-version=2.0",
    *,
    method: str = "GET",
    head: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 10.0,
) -> urllib3.BaseHTTPResponse:
    url = f"{emulator.imds_url}{path}" + (f"?{query}" if query else "")
    return HTTP.request(
        method, url, headers=headers() if head is None else head, body=body, timeout=timeout
    )


def metadata(emulator: Emulator, query: str = "cred-api-version=2.0") -> dict[str, Any]:
    response = imds(emulator, GPM, query)
    assert response.status == 200, response.data
    return dict(response.json())


def pss_signer(key: rsa.RSAPrivateKey, salt: int = 32) -> Callable[[bytes], bytes]:
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=salt)
    return lambda tbs: key.sign(tbs, pss, hashes.SHA256())


def spki(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def good_csr(md: dict[str, Any], key: rsa.RSAPrivateKey = KEY) -> bytes:
    return build_csr(
        spki_der=spki(key),
        sign=pss_signer(key),
        client_id=md["clientId"],
        tenant_id=md["tenantId"],
        cuid=md["cuId"],
    )


def issue(
    emulator: Emulator,
    csr: bytes | str,
    query: str = "cred-api-version=2.0",
    **document: Any,
) -> urllib3.BaseHTTPResponse:
    wire = csr if isinstance(csr, str) else csr_to_wire(csr)
    body = json.dumps({"csr": wire, **document}).encode()
    head = headers(**{"Content-Type": "application/json"})
    return imds(emulator, ISSUE, query, method="POST", head=head, body=body)


def mint(
    emulator: Emulator, query: str = "cred-api-version=2.0"
) -> tuple[dict[str, Any], x509.Certificate]:
    response = issue(emulator, good_csr(metadata(emulator, query)), query)
    assert response.status == 200, response.data
    credential = dict(response.json())
    der_bytes = base64.b64decode(credential["certificate"])
    return credential, x509.load_der_x509_certificate(der_bytes)


def x5t(certificate: x509.Certificate) -> str:
    digest = hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def mtls(
    emulator: Emulator,
    tmp_path: Path,
    certificate: x509.Certificate | None,
    key: rsa.RSAPrivateKey = KEY,
) -> urllib3.PoolManager:
    context = ssl.create_default_context(cafile=emulator.ca_file)
    if certificate is not None:
        pem = tmp_path / f"client-{certificate.serial_number:x}.pem"
        pem.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            + certificate.public_bytes(serialization.Encoding.PEM)
        )
        context.load_cert_chain(str(pem))
    return urllib3.PoolManager(ssl_context=context, retries=False, timeout=10.0)


def token_request(
    pool: urllib3.PoolManager, credential: dict[str, Any], **overrides: str | None
) -> urllib3.BaseHTTPResponse:
    tenant = overrides.pop("tenant", None) or credential["tenant_id"]
    fields: dict[str, str | None] = {
        "grant_type": "client_credentials",
        "client_id": credential["client_id"],
        "scope": f"{RESOURCE}/.default",
        "token_type": "mtls_pop",
        **overrides,
    }
    form = {k: v for k, v in fields.items() if v is not None}
    url = f"{credential['mtls_authentication_endpoint']}/{tenant}/oauth2/v2.0/token"
    return pool.request("POST", url, fields=form, encode_multipart=False)


def raw_csr(
    md: dict[str, Any],
    key: rsa.RSAPrivateKey = KEY,
    *,
    order: tuple[str, str] = ("DC", "CN"),
    client_id: str | None = None,
    tenant_id: str | None = None,
    cuid_text: str | None = None,
    cuid_tag: int = 0x0C,
    extra_attributes: tuple[bytes, ...] = (),
    algorithm: str = "pss",
    salt: int = 32,
    signed_salt: int | None = None,
    mgf_hash: str = "2.16.840.1.101.3.4.2.1",
) -> bytes:
    """A CSR assembled by hand, so each field can break the contract on its own."""
    values = {
        "DC": der.ia5_string(tenant_id or md["tenantId"]),
        "CN": der.printable_string(client_id or md["clientId"]),
    }
    oids = {"DC": "0.9.2342.19200300.100.1.25", "CN": "2.5.4.3"}
    subject = der.sequence(*(der.set_of(der.sequence(der.oid(oids[n]), values[n])) for n in order))
    if cuid_text is None:
        cuid = md["cuId"]
        cuid_text = json.dumps(
            {k: cuid[k] for k in ("vmId", "vmssId") if k in cuid}, separators=(",", ":")
        )
    attribute = der.sequence(der.oid(CUID_OID), der.set_of(der.tlv(cuid_tag, cuid_text.encode())))
    info = der.sequence(
        der.integer(0),
        subject,
        spki(key),
        der.context(0, b"".join(sorted((attribute, *extra_attributes)))),
    )
    # As the reference writes them: no NULL parameters on the hash identifiers.
    sha256 = der.sequence(der.oid("2.16.840.1.101.3.4.2.1"))
    mgf = der.sequence(der.oid(mgf_hash))
    if algorithm == "pss":
        fields = [der.context(0, sha256)]
        if mgf_hash != SHA1:  # DER omits DEFAULT values: MGF1-SHA-1 and salt 20
            fields.append(der.context(1, der.sequence(der.oid("1.2.840.113549.1.1.8"), mgf)))
        if salt != 20:
            fields.append(der.context(2, der.integer(salt)))
        params = der.sequence(*fields)
        alg = der.sequence(der.oid("1.2.840.113549.1.1.10"), params)
        mgf_algorithm = hashes.SHA1() if mgf_hash == SHA1 else hashes.SHA256()
        pss = padding.PSS(
            mgf=padding.MGF1(mgf_algorithm),
            salt_length=salt if signed_salt is None else signed_salt,
        )
        signature = key.sign(info, pss, hashes.SHA256())
    else:
        alg = der.sequence(der.oid("1.2.840.113549.1.1.11"), der.null())
        signature = key.sign(info, padding.PKCS1v15(), hashes.SHA256())
    return der.sequence(info, alg, der.bit_string(signature))


def builder_csr(md: dict[str, Any], *, extension: bool) -> bytes:
    cuid = json.dumps(md["cuId"], separators=(",", ":")).encode()
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.DOMAIN_COMPONENT, md["tenantId"]),
                    x509.NameAttribute(
                        NameOID.COMMON_NAME, md["clientId"], _ASN1Type.PrintableString
                    ),
                ]
            )
        )
        .add_attribute(ObjectIdentifier(CUID_OID), cuid, _tag=_ASN1Type.UTF8String)
    )
    if extension:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True
        )
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    csr = builder.sign(KEY, hashes.SHA256(), rsa_padding=pss)
    # cryptography writes NULL parameters into the PSS identifiers, which IMDS refuses; the
    # algorithm lies outside the signed bytes, so the reference's encoding is swapped in.
    return der.sequence(csr.tbs_certrequest_bytes, PSS_ALGORITHM_DER, der.bit_string(csr.signature))


# -- IMDS: getplatformmetadata and the request checks ------------------------------------------
def test_getplatformmetadata_answers_contract_fields_with_imds_server_header(emulator):
    response = imds(emulator, GPM)
    assert response.status == 200
    assert "imds" in response.headers["Server"].lower()
    md = response.json()
    assert md["clientId"] == emulator.client_id_for({})
    assert md["tenantId"] == emulator.tenant_id
    assert md["cuId"]["vmId"] and list(md["cuId"]) == ["vmId", "vmssId"]
    assert md["attestationEndpoint"].startswith("https://")
    assert emulator.violations == [] and emulator.count("getplatformmetadata") == 1


def test_selectors_name_distinct_deterministic_identities(emulator):
    guid = str(uuid.uuid4())
    system = metadata(emulator)["clientId"]
    by_client = metadata(emulator, f"cred-api-version=2.0&client_id={guid}")["clientId"]
    by_object = metadata(emulator, f"cred-api-version=2.0&object_id={guid}")["clientId"]
    res_id = "/subscriptions/x/resourceGroups/rg/providers/Microsoft.ManagedIdentity/uami/a"
    by_res = metadata(emulator, f"cred-api-version=2.0&mi_res_id={res_id}")["clientId"]
    assert by_client == guid
    assert len({system, by_client, by_object, by_res}) == 4
    assert by_object == emulator.client_id_for({"object_id": guid})
    assert by_res == emulator.client_id_for({"mi_res_id": res_id})
    assert emulator.violations == []


@pytest.mark.parametrize(
    ("query", "head", "status", "violation"),
    [
        ("cred-api-version=2.0", {"x-ms-client-request-id": str(uuid.uuid4())}, 400, "Metadata"),
        ("cred-api-version=2.0", {"Metadata": "true"}, 400, "x-ms-client-request-id header"),
        (
            "cred-api-version=2.0",
            {"Metadata": "true", "x-ms-client-request-id": "req-1"},
            200,
            "is not a UUID",
        ),
        ("cred-api-version=1.0", None, 400, "cred-api-version"),
        ("", None, 400, "cred-api-version"),
        ("cred-api-version=2.0&msi_res_id=/subscriptions/x", None, 400, "msi_res_id"),
        (
            f"cred-api-version=2.0&client_id={uuid.uuid4()}&object_id={uuid.uuid4()}",
            None,
            400,
            "more than one identity selector",
        ),
        ("cred-api-version=2.0&client_id=not-a-guid", None, 400, "not a GUID"),
        ("cred-api-version=2.0&cred-api-version=2.0", None, 400, "more than once"),
        ("cred-api-version=2.0&resource=x", None, 200, "unexpected query parameter"),
    ],
)
def test_request_violations_are_recorded(emulator, query, head, status, violation):
    response = imds(emulator, GPM, query, head=head)
    assert response.status == status
    assert any(violation in v for v in emulator.violations), emulator.violations
    if status == 400:
        assert response.json()["error"] == "invalid_request"


def test_wrong_method_and_unknown_path_are_refused(emulator):
    assert imds(emulator, GPM, method="POST", body=b"{}").status == 405
    assert imds(emulator, "/metadata/identity/oauth2/token").status == 404
    assert len(emulator.violations) == 2


# -- IMDS: issuecredential ---------------------------------------------------------------------
def test_issued_certificate_follows_the_contract(emulator):
    md = metadata(emulator)
    before = time.time()
    response = issue(emulator, good_csr(md))
    assert response.status == 200, response.data
    body = response.json()
    assert body["client_id"] == md["clientId"] and body["tenant_id"] == md["tenantId"]
    assert body["identity_type"] == "SystemAssigned"
    assert body["mtls_authentication_endpoint"] == emulator.ests_url
    certificate = x509.load_der_x509_certificate(base64.b64decode(body["certificate"]))
    assert certificate.issuer.rfc4514_string() == f"CN={ISSUER_CN}"
    assert [attr.oid for rdn in certificate.subject.rdns for attr in rdn] == [
        NameOID.DOMAIN_COMPONENT,
        NameOID.COMMON_NAME,
    ]
    assert certificate.subject.rfc4514_string() == f"CN={md['clientId']},DC={md['tenantId']}"
    assert certificate.public_key() == KEY.public_key()
    not_before = certificate.not_valid_before_utc.timestamp()
    lifetime = certificate.not_valid_after_utc.timestamp() - not_before
    assert lifetime == 3600
    assert before - 60 - 1 <= not_before <= time.time() - 60
    assert isinstance(certificate.signature_hash_algorithm, hashes.SHA256)
    basic = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert basic.ca is False and list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert emulator.issued[-1] == certificate
    assert emulator.violations == [] and emulator.count("issuecredential") == 1


def test_lifetime_and_backdate_apply_from_the_next_issue(emulator):
    emulator.lifetime, emulator.backdate = 600.0, 0.0
    _, first = mint(emulator)
    emulator.lifetime, emulator.backdate = 7 * 86400.0, 3600.0
    _, second = mint(emulator)
    assert (first.not_valid_after_utc - first.not_valid_before_utc).total_seconds() == 600
    assert abs(first.not_valid_before_utc.timestamp() - time.time()) < 3
    assert (second.not_valid_after_utc - second.not_valid_before_utc).days == 7
    assert abs(second.not_valid_before_utc.timestamp() - (time.time() - 3600)) < 3
    assert second.serial_number != first.serial_number


def test_user_assigned_identity_gets_its_own_subject(emulator):
    guid = str(uuid.uuid4())
    credential, certificate = mint(emulator, f"cred-api-version=2.0&client_id={guid}")
    assert credential["identity_type"] == "UserAssigned" and credential["client_id"] == guid
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == guid


def test_openssl_verifies_the_csr_the_emulator_accepts(emulator, tmp_path):
    csr = good_csr(metadata(emulator))
    path = tmp_path / "req.der"
    path.write_bytes(csr)
    out = subprocess.run(
        ["openssl", "req", "-inform", "DER", "-in", str(path), "-verify", "-noout"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0 and "verify OK" in out.stdout + out.stderr, out.stderr
    assert issue(emulator, csr).status == 200 and emulator.violations == []


CHALLENGE_PASSWORD = der.sequence(
    der.oid("1.2.840.113549.1.9.7"), der.set_of(der.utf8_string("secret"))
)


@pytest.mark.parametrize(
    ("variant", "violation"),
    [
        ({"salt": 20}, "salt length is 20"),
        ({"signed_salt": 20}, "signature does not verify"),
        ({"algorithm": "pkcs1"}, "sha256WithRSAEncryption (PKCS#1 v1.5)"),
        ({"mgf_hash": SHA1}, "MGF1 hash is SHA-1"),
        ({"order": ("CN", "DC")}, "expected exactly [DC, CN]"),
        ({"client_id": "00000000-0000-0000-0000-000000000000"}, "subject CN"),
        ({"tenant_id": "00000000-0000-0000-0000-000000000000"}, "subject DC"),
        ({"cuid_text": "WHITESPACE"}, "expected compact JSON"),
        ({"cuid_text": "REVERSED"}, "expected compact JSON"),
        ({"cuid_tag": 0x16}, "not UTF8String"),
        ({"extra_attributes": (CHALLENGE_PASSWORD,)}, "unexpected CSR attribute"),
    ],
)
def test_csr_contract_violations_are_refused(emulator, variant, violation):
    md = metadata(emulator)
    cuid = md["cuId"]
    if variant.get("cuid_text") == "WHITESPACE":
        variant = {"cuid_text": json.dumps(cuid)}
    elif variant.get("cuid_text") == "REVERSED":
        variant = {"cuid_text": json.dumps(dict(reversed(cuid.items())), separators=(",", ":"))}
    issued_before = len(emulator.issued)
    response = issue(emulator, raw_csr(md, **variant))
    assert response.status == 400
    assert response.json()["error"] == "invalid_request"
    assert any(violation in v for v in emulator.violations), emulator.violations
    assert len(emulator.issued) == issued_before


def test_hand_built_csr_without_a_variant_is_accepted(emulator):
    # The control for the table above: the builder itself produces a conforming CSR.
    assert issue(emulator, raw_csr(metadata(emulator))).status == 200
    assert emulator.violations == []


def test_csr_with_extension_is_refused_and_without_accepted(emulator):
    md = metadata(emulator)
    assert issue(emulator, builder_csr(md, extension=False)).status == 200
    assert emulator.violations == []
    assert issue(emulator, builder_csr(md, extension=True)).status == 400
    assert any("extensions" in v for v in emulator.violations)


def test_wrong_key_size_is_refused(emulator):
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    assert issue(emulator, good_csr(metadata(emulator), small)).status == 400
    assert any("1024 bits, not 2048" in v for v in emulator.violations)


@pytest.mark.parametrize(
    ("body", "violation"),
    [
        (b"csr=abc", "not JSON"),
        (b'["csr"]', "not a JSON object"),
        (b"{}", "csr is missing"),
        ("NEWLINES", "single-line standard padded base64"),
        ("URLSAFE", "single-line standard padded base64"),
        ("UNPADDED", "single-line standard padded base64"),
        ("EMPTY_ATTESTATION", "attestation_token"),
    ],
)
def test_bad_issuecredential_bodies_are_refused(emulator, body, violation):
    csr = good_csr(metadata(emulator))
    wire = csr_to_wire(csr)
    if body == "NEWLINES":
        body = json.dumps({"csr": base64.encodebytes(csr).decode()}).encode()
    elif body == "URLSAFE":
        body = json.dumps({"csr": base64.urlsafe_b64encode(csr).decode()}).encode()
        assert "-" in body.decode() or "_" in body.decode(), "pick a CSR with +/ in it"
    elif body == "UNPADDED":
        while not wire.endswith("="):  # a fresh signature changes the length's padding
            csr = good_csr(metadata(emulator), rsa.generate_private_key(65537, 2048))
            wire = csr_to_wire(csr)
        body = json.dumps({"csr": wire.rstrip("=")}).encode()
    elif body == "EMPTY_ATTESTATION":
        body = json.dumps({"csr": wire, "attestation_token": ""}).encode()
    head = headers(**{"Content-Type": "application/json"})
    response = imds(emulator, ISSUE, method="POST", head=head, body=body)
    assert response.status == 400, response.data
    assert any(violation in v for v in emulator.violations), emulator.violations


def test_attestation_token_is_accepted_and_content_type_is_checked(emulator):
    md = metadata(emulator)
    assert issue(emulator, good_csr(md), attestation_token="eyJ.maa.token").status == 200
    assert emulator.violations == []
    body = json.dumps({"csr": csr_to_wire(good_csr(md))}).encode()
    head = headers(**{"Content-Type": "text/plain"})
    assert imds(emulator, ISSUE, method="POST", head=head, body=body).status == 200
    assert emulator.violations == ["issuecredential: Content-Type is 'text/plain'"]


def _valid_csr_bytes() -> bytes:
    md = {"clientId": "c", "tenantId": "t", "cuId": {"vmId": "v"}}
    return good_csr(md)


VALID_CSR = _valid_csr_bytes()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    position=st.integers(min_value=0, max_value=len(VALID_CSR) - 1),
    flip=st.integers(min_value=1, max_value=255),
    cut=st.booleans(),
)
def test_any_corrupted_csr_is_refused_without_crashing(position, flip, cut):
    expected = {"client_id": "c", "tenant_id": "t", "cuid_json": '{"vmId":"v"}'}
    assert check_csr(VALID_CSR, **expected).ok
    corrupted = bytearray(VALID_CSR)
    if cut:
        del corrupted[position:]
    else:
        corrupted[position] ^= flip
    result = check_csr(bytes(corrupted), **expected)
    assert not result.ok and result.problems


# -- faults --------------------------------------------------------------------------------
def test_status_fault_answers_json_error_with_retry_after(emulator):
    emulator.inject("getplatformmetadata", Fault(status=429, retry_after=7))
    response = imds(emulator, GPM)
    assert response.status == 429 and response.headers["Retry-After"] == "7"
    assert response.json()["error"] == "temporarily_unavailable"
    assert imds(emulator, GPM).status == 200


def test_fault_body_replaces_the_answer(emulator):
    emulator.inject("issuecredential", Fault(status=503, body=b"upstream busy"))
    issued_before = len(emulator.issued)
    response = issue(emulator, good_csr(metadata(emulator)))
    assert (response.status, response.data) == (503, b"upstream busy")
    assert len(emulator.issued) == issued_before


def test_faults_apply_their_times_in_fifo_order(emulator):
    emulator.inject("getplatformmetadata", Fault(status=500, times=2))
    emulator.inject("getplatformmetadata", Fault(status=410))
    statuses = [imds(emulator, GPM).status for _ in range(4)]
    assert statuses == [500, 500, 410, 200]
    assert emulator.count("getplatformmetadata") == 4


def test_forever_fault_lasts_until_cleared(emulator):
    emulator.inject("getplatformmetadata", Fault(status=404, times=None))
    assert [imds(emulator, GPM).status for _ in range(5)] == [404] * 5
    emulator.clear_faults()
    assert imds(emulator, GPM).status == 200


def test_delay_fault_makes_a_client_time_out(emulator):
    emulator.inject("getplatformmetadata", Fault(delay=0.6))
    started = time.monotonic()
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        imds(emulator, GPM, timeout=0.15)
    assert time.monotonic() - started < 0.5
    assert emulator.count("getplatformmetadata") == 1
    assert imds(emulator, GPM).status == 200  # the fault was used up by the timed-out call


def test_no_server_header_fault_drops_only_the_server_header(emulator):
    emulator.inject("getplatformmetadata", Fault(kind="no_server_header"))
    response = imds(emulator, GPM)
    assert response.status == 200 and "Server" not in response.headers
    assert response.json()["clientId"]
    assert "IMDS" in imds(emulator, GPM).headers["Server"]


def test_malformed_json_fault_sends_invalid_json(emulator):
    emulator.inject("getplatformmetadata", Fault(kind="malformed_json"))
    response = imds(emulator, GPM)
    assert response.status == 200 and response.headers["Content-Type"].startswith("application")
    with pytest.raises(ValueError):
        json.loads(response.data)


@pytest.mark.parametrize(
    ("endpoint", "field"),
    [("getplatformmetadata", "cuId"), ("issuecredential", "certificate")],
)
def test_missing_field_fault_drops_that_field(emulator, endpoint, field):
    md = metadata(emulator)
    emulator.inject(endpoint, Fault(kind=f"missing_field:{field}"))
    if endpoint == "getplatformmetadata":
        response = imds(emulator, GPM)
    else:
        response = issue(emulator, good_csr(md))
    assert response.status == 200 and field not in response.json()
    assert len(response.json()) >= 3


def test_wrong_key_fault_issues_a_valid_looking_certificate_over_another_key(emulator):
    emulator.inject("issuecredential", Fault(kind="wrong_key"))
    _, certificate = mint(emulator)
    assert certificate.public_key() != KEY.public_key()
    assert isinstance(certificate.public_key(), rsa.RSAPublicKey)
    assert certificate.issuer.rfc4514_string() == f"CN={ISSUER_CN}"
    now = dt.datetime.now(dt.timezone.utc)
    assert certificate.not_valid_before_utc <= now < certificate.not_valid_after_utc


@pytest.mark.parametrize("kind", ["expired", "not_yet_valid"])
def test_validity_faults_issue_unusable_certificates(emulator, kind):
    emulator.inject("issuecredential", Fault(kind=kind))
    _, certificate = mint(emulator)
    now = dt.datetime.now(dt.timezone.utc)
    if kind == "expired":
        assert certificate.not_valid_after_utc < now - dt.timedelta(minutes=10)
    else:
        assert certificate.not_valid_before_utc > now + dt.timedelta(minutes=10)
    assert certificate.public_key() == KEY.public_key()


@pytest.mark.parametrize(
    ("endpoint", "fault"),
    [
        ("token", Fault(kind="no_such_kind")),
        ("getplatformmetadata", Fault(kind="wrong_key")),
        ("issuecredential", Fault(kind="invalid_client")),
        ("nowhere", Fault(status=500)),
        ("token", Fault(status=500, times=0)),
        ("token", Fault(kind="missing_field:")),
    ],
)
def test_inject_rejects_faults_that_cannot_apply(emulator, endpoint, fault):
    with pytest.raises(ValueError):
        emulator.inject(endpoint, fault)


def test_counts_include_faulted_requests_and_reset_clears_state(emulator):
    emulator.inject("getplatformmetadata", Fault(status=500, times=None))
    imds(emulator, GPM)
    imds(emulator, GPM, head={})
    assert emulator.count("getplatformmetadata") == 2 and emulator.violations
    recorded = emulator.requests[0]
    assert (recorded.endpoint, recorded.method, recorded.path) == (
        "getplatformmetadata",
        "GET",
        GPM,
    )
    assert recorded.query == {"cred-api-version": "2.0"} and recorded.headers["Metadata"] == "true"
    emulator.reset()
    assert emulator.count("getplatformmetadata") == 0
    assert emulator.requests == [] and emulator.violations == []
    assert imds(emulator, GPM).status == 200  # the forever fault went too
    with pytest.raises(ValueError):
        emulator.count("metadata")


# -- ESTS over mutual TLS -------------------------------------------------------------------
def test_token_is_bound_to_the_presented_certificate(emulator, tmp_path):
    credential, certificate = mint(emulator)
    response = token_request(mtls(emulator, tmp_path, certificate), credential)
    assert response.status == 200, response.data
    body = response.json()
    assert body["token_type"] == "mtls_pop"
    assert body["expires_in"] == 3600 and body["refresh_in"] == 1800
    claims = decode_token_payload(body["access_token"])
    assert claims["cnf"] == {"x5t#S256": x5t(certificate)}
    assert claims["aud"] == RESOURCE and claims["appid"] == credential["client_id"]
    assert claims["tid"] == emulator.tenant_id
    assert claims["exp"] - claims["iat"] == 3600 and claims["nbf"] == claims["iat"]
    assert emulator.count("token") == 1 and emulator.violations == []


def test_resource_accepts_only_a_token_bound_to_the_connection_certificate(emulator, tmp_path):
    credential, first = mint(emulator)
    _, second = mint(emulator)  # same key, different certificate and thumbprint
    pool = mtls(emulator, tmp_path, first)
    access_token = token_request(pool, credential).json()["access_token"]
    url = f"{emulator.ests_url}/resource/items"
    ok = pool.request("GET", url, headers={"Authorization": f"mtls_pop {access_token}"})
    assert ok.status == 200
    assert ok.json() == {"ok": True, "x5t#S256": x5t(first), "client_id": credential["client_id"]}
    assert emulator.violations == []
    other = mtls(emulator, tmp_path, second)
    stolen = other.request("GET", url, headers={"Authorization": f"mtls_pop {access_token}"})
    assert stolen.status == 401 and stolen.json()["error"] == "invalid_token"
    assert "bound to another certificate" in emulator.violations[-1]
    assert emulator.count("resource") == 2


@pytest.mark.parametrize(
    "authorization", [None, "Bearer {token}", "mtls_pop not-a-token", "mtls_pop "]
)
def test_resource_refuses_missing_or_wrong_authorization(emulator, tmp_path, authorization):
    credential, certificate = mint(emulator)
    pool = mtls(emulator, tmp_path, certificate)
    access_token = token_request(pool, credential).json()["access_token"]
    head = (
        {} if authorization is None else {"Authorization": authorization.format(token=access_token)}
    )
    response = pool.request("GET", f"{emulator.ests_url}/resource", headers=head)
    assert response.status == 401 and "WWW-Authenticate" in response.headers
    assert len(emulator.violations) == 1


def test_handshake_without_a_client_certificate_fails_with_the_alert(emulator, tmp_path):
    credential, _ = mint(emulator)
    # A TLS 1.3 client has sent its request before the server judges the certificate; the
    # emulator must let the alert arrive instead of resetting the connection (plain EOF).
    # Repeated, because without that care the alert still wins about a third of the time.
    for _ in range(8):
        with pytest.raises(urllib3.exceptions.SSLError, match=r"(?i)certificate required"):
            token_request(mtls(emulator, tmp_path, None), credential)
    _wait_for(lambda: any("without a client certificate" in v for v in emulator.violations))
    assert emulator.count("token") == 0


def _other_ca_certificate(subject: x509.Name) -> x509.Certificate:
    """Same issuer name, same subject, same key, but a CA key the emulator never saw."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER_CN)]))
        .public_key(KEY.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def test_handshake_with_a_certificate_from_another_ca_fails(emulator, tmp_path):
    credential, genuine = mint(emulator)
    forged = _other_ca_certificate(genuine.subject)
    with pytest.raises(urllib3.exceptions.SSLError):
        token_request(mtls(emulator, tmp_path, forged), credential)
    _wait_for(lambda: any("client certificate rejected" in v for v in emulator.violations))
    assert emulator.count("token") == 0


def test_handshake_with_an_expired_emulator_certificate_fails(emulator, tmp_path):
    emulator.inject("issuecredential", Fault(kind="expired"))
    credential, expired = mint(emulator)
    with pytest.raises(urllib3.exceptions.SSLError):
        token_request(mtls(emulator, tmp_path, expired), credential)
    _wait_for(lambda: any("expired" in v for v in emulator.violations))


def test_certificate_that_expires_on_a_kept_alive_connection_gets_invalid_client(
    emulator, tmp_path
):
    emulator.lifetime, emulator.backdate = 2.0, 0.0
    credential, certificate = mint(emulator)
    pool = mtls(emulator, tmp_path, certificate)
    assert token_request(pool, credential).status == 200
    time.sleep(max(0.0, certificate.not_valid_after_utc.timestamp() - time.time()) + 0.05)
    response = token_request(pool, credential)  # same pooled connection, no new handshake
    assert response.status == 401 and response.json()["error"] == "invalid_client"
    assert response.json()["error_description"].startswith("AADSTS")


@pytest.mark.parametrize(
    ("overrides", "violation"),
    [
        ({"grant_type": "password"}, "grant_type"),
        ({"client_id": "11111111-1111-1111-1111-111111111111"}, "not the certificate CN"),
        ({"scope": f"{RESOURCE}/"}, "scope"),
        ({"scope": f"{RESOURCE}//.default"}, "scope"),
        ({"token_type": None}, "token_type"),
        ({"token_type": "Bearer"}, "token_type"),
        ({"claims": "{not json"}, "claims"),
        ({"client_secret": "s"}, "unexpected form field"),
        ({"tenant": "00000000-0000-0000-0000-000000000000"}, "tenant"),
    ],
)
def test_bad_token_requests_are_refused(emulator, tmp_path, overrides, violation):
    credential, certificate = mint(emulator)
    response = token_request(mtls(emulator, tmp_path, certificate), credential, **overrides)
    assert response.status == 400
    assert response.json()["error"] == "invalid_request"
    assert response.json()["correlation_id"]
    assert any(violation in v for v in emulator.violations), emulator.violations


def test_client_id_matches_the_certificate_case_insensitively(emulator, tmp_path):
    credential, certificate = mint(emulator)
    upper = credential["client_id"].upper()
    claims = '{"access_token":{"xms_cc":{"values":["cp1"]}}}'
    pool = mtls(emulator, tmp_path, certificate)
    response = token_request(pool, credential, client_id=upper, claims=claims)
    assert response.status == 200 and emulator.violations == []


def test_invalid_client_fault_answers_the_revocation_error(emulator, tmp_path):
    credential, certificate = mint(emulator)
    pool = mtls(emulator, tmp_path, certificate)
    emulator.inject("token", Fault(kind="invalid_client"))
    response = token_request(pool, credential)
    body = response.json()
    assert response.status == 401 and body["error"] == "invalid_client"
    assert body["error_codes"] == [1000613]
    assert body["error_description"].startswith("AADSTS1000613: ") and body["correlation_id"]
    assert token_request(pool, credential).status == 200


@pytest.mark.parametrize(("codes", "member"), [((), None), ((7000215,), [7000215]),
                                               ((1000610, 50000), [1000610, 50000])])
def test_invalid_client_fault_sends_the_error_codes_asked_for(emulator, tmp_path, codes,
                                                              member):
    credential, certificate = mint(emulator)
    pool = mtls(emulator, tmp_path, certificate)
    emulator.inject("token", Fault(kind="invalid_client", error_codes=codes))
    body = token_request(pool, credential).json()
    assert body.get("error_codes") == member and body["error"] == "invalid_client"
    assert ("AADSTS" in body["error_description"]) == bool(codes)


def test_error_codes_belong_to_invalid_client_faults_only(emulator):
    with pytest.raises(ValueError, match="error_codes applies to kind 'invalid_client' only"):
        emulator.inject("token", Fault(status=500, error_codes=(1000613,)))
    with pytest.raises(ValueError, match="error_codes must be non-negative integers"):
        emulator.inject("token", Fault(kind="invalid_client", error_codes=(-1,)))


def test_token_shape_faults(emulator, tmp_path):
    credential, certificate = mint(emulator)
    pool = mtls(emulator, tmp_path, certificate)
    emulator.inject("token", Fault(kind="wrong_token_type"))
    emulator.inject("token", Fault(kind="expires_in_string"))
    emulator.inject("token", Fault(kind="missing_field:access_token"))
    assert token_request(pool, credential).json()["token_type"] == "Bearer"
    assert token_request(pool, credential).json()["expires_in"] == "3600"
    assert "access_token" not in token_request(pool, credential).json()
    assert emulator.count("token") == 3


def test_status_fault_on_token_keeps_the_aad_error_shape(emulator, tmp_path):
    credential, certificate = mint(emulator)
    emulator.inject("token", Fault(status=503, retry_after=1))
    response = token_request(mtls(emulator, tmp_path, certificate), credential)
    assert response.status == 503 and response.headers["Retry-After"] == "1"
    assert response.json()["error"] == "temporarily_unavailable"
    assert response.json()["correlation_id"]


def test_reject_handshake_fails_the_next_handshake_even_on_a_pooled_client(emulator, tmp_path):
    credential, certificate = mint(emulator)
    pool = mtls(emulator, tmp_path, certificate)
    assert token_request(pool, credential).status == 200  # leaves a kept-alive connection
    emulator.inject("token", Fault(kind="reject_handshake"))
    with pytest.raises(urllib3.exceptions.SSLError, match=r"(?i)handshake failure"):
        token_request(pool, credential)
    assert token_request(pool, credential).status == 200
    assert emulator.count("token") == 3
    assert [r.method for r in emulator.requests if r.endpoint == "token"] == ["POST", "TLS", "POST"]
    assert emulator.violations == []


def test_unknown_ests_path_is_404(emulator, tmp_path):
    _, certificate = mint(emulator)
    response = mtls(emulator, tmp_path, certificate).request("GET", f"{emulator.ests_url}/x")
    assert response.status == 404 and emulator.violations


# -- control API ------------------------------------------------------------------------------
def control(emulator: Emulator, method: str, name: str, document: Any = None) -> Any:
    body = None if document is None else json.dumps(document).encode()
    response = HTTP.request(method, f"{emulator.imds_url}/__emulator__/{name}", body=body)
    return response.status, response.json()


def test_control_api_drives_faults_config_stats_and_reset(emulator):
    status, _ = control(
        emulator,
        "POST",
        "faults",
        {"endpoint": "getplatformmetadata", "status": 503, "times": 2, "retry_after": 3},
    )
    assert status == 200
    assert [imds(emulator, GPM).status for _ in range(3)] == [503, 503, 200]
    status, config = control(emulator, "POST", "config", {"lifetime": 120, "backdate": 0})
    assert status == 200 and config == {
        "lifetime": 120.0,
        "backdate": 0.0,
        "token_lifetime": 3600.0,
        "require_attestation": False,
        "issuer_cn": "managedidentitysnissuer.login.microsoft.com",
    }
    assert emulator.lifetime == 120.0
    _, certificate = mint(emulator)
    assert (certificate.not_valid_after_utc - certificate.not_valid_before_utc).seconds == 120
    imds(emulator, GPM, head={})
    status, stats = control(emulator, "GET", "stats")
    assert stats["counts"] == {
        "getplatformmetadata": 5,
        "issuecredential": 1,
        "token": 0,
        "resource": 0,
        "keyvault": 0,
        "blob": 0,
    }
    assert len(stats["violations"]) == 3 and stats["issued"] >= 1
    assert control(emulator, "POST", "reset")[0] == 200
    assert control(emulator, "GET", "stats")[1]["counts"]["getplatformmetadata"] == 0


@pytest.mark.parametrize(
    "document",
    [
        {"endpoint": "token", "kind": "bogus"},
        {"endpoint": "nowhere", "status": 500},
        {"endpoint": "token", "status": "500"},
        {"endpoint": "token", "times": 0},
        {"endpoint": "token", "colour": "red"},
        {"endpoint": "resource", "status": 401, "claims": "{}"},
        {"endpoint": "resource", "kind": "claims_challenge", "claims": 7},
        [1, 2],
    ],
)
def test_control_api_refuses_bad_faults(emulator, document):
    status, body = control(emulator, "POST", "faults", document)
    assert status == 400 and body["error"] == "invalid_request"


def test_control_api_claims_challenge_carries_the_claims_asked_for(emulator, tmp_path):
    _, certificate = mint(emulator)
    pool = mtls(emulator, tmp_path, certificate)
    claims = '{"access_token":{"xms_cc":{"values":["cp1"]}}}'
    status, _ = control(emulator, "POST", "faults",
                        {"endpoint": "resource", "kind": "claims_challenge", "claims": claims})
    assert status == 200
    response = pool.request("GET", f"{emulator.ests_url}/resource")
    challenge = response.headers["WWW-Authenticate"]
    encoded = challenge.split('claims="', 1)[1].rstrip('"')
    assert response.status == 401 and 'error="insufficient_claims"' in challenge
    assert base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode() == claims


def test_control_api_forever_fault_with_null_times(emulator):
    control(
        emulator,
        "POST",
        "faults",
        {"endpoint": "getplatformmetadata", "status": 500, "times": None},
    )
    assert [imds(emulator, GPM).status for _ in range(3)] == [500] * 3


# -- lifecycle ---------------------------------------------------------------------------------
def _wait_for(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_env_points_msicert_alone_at_the_emulator(emulator, tmp_path, monkeypatch):
    env = emulator.env()
    assert env == {
        "AZURE_POD_IDENTITY_AUTHORITY_HOST": emulator.imds_url,
        "MSICERT_CA_BUNDLE": emulator.ca_file,
        "MSICERT_STORE_DIR": emulator.store_dir,
    }
    assert Path(emulator.store_dir).parent == Path(emulator.ca_file).parent  # goes on stop()
    assert emulator.imds_url.startswith("http://127.0.0.1:")
    assert emulator.ests_url.startswith("https://127.0.0.1:")
    monkeypatch.setenv("SSL_CERT_FILE", emulator.ca_file)
    context = ssl.create_default_context()  # the CA file is a plain PEM bundle
    host, port = emulator.ests_url.removeprefix("https://").split(":")
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_stop_closes_ports_live_connections_and_the_temp_dir(tmp_path):
    started = time.perf_counter()
    emulator = Emulator().start()
    assert time.perf_counter() - started < 0.5  # CA material is cached per process
    temp_dir = Path(emulator.ca_file).parent
    port = int(emulator.imds_url.rsplit(":", 1)[1])
    keep_alive = urllib3.PoolManager(retries=False)
    url = f"{emulator.imds_url}{GPM}?cred-api-version=2.0"
    assert keep_alive.request("GET", url, headers=headers()).status == 200
    emulator.inject("getplatformmetadata", Fault(delay=30))
    neighbour = Emulator().start()  # a neighbour, to prove stop() is per instance
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        HTTP.request("GET", url, headers=headers(), timeout=0.1)
    started = time.perf_counter()
    emulator.stop()
    assert time.perf_counter() - started < 1.0
    assert not temp_dir.exists()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    with pytest.raises(urllib3.exceptions.HTTPError):
        keep_alive.request("GET", url, headers=headers())
    with pytest.raises(RuntimeError):
        _ = emulator.imds_url
    emulator.stop()  # idempotent
    with pytest.raises(RuntimeError):
        emulator.start()
    assert metadata(neighbour)["clientId"]
    neighbour.stop()


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_serve_prints_exports_and_stops_on_a_signal(stop_signal):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    code = "from msicert.emulator import serve; serve(lifetime=120.0)"
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env, cwd=str(ROOT)
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(3)]
        assert lines[0].startswith("export AZURE_POD_IDENTITY_AUTHORITY_HOST=http://127.0.0.1:")
        assert lines[1].startswith("export MSICERT_CA_BUNDLE=/")
        assert lines[2].startswith("export MSICERT_STORE_DIR=/")
        assert "ready" in process.stdout.readline()
        imds_url = lines[0].strip().split("=", 1)[1]
        ca_file = Path(lines[1].strip().split("=", 1)[1])
        assert ca_file.is_file()
        response = HTTP.request("GET", f"{imds_url}{GPM}?cred-api-version=2.0", headers=headers())
        assert response.status == 200
        stats = HTTP.request("GET", f"{imds_url}/__emulator__/stats").json()
        assert stats["counts"]["getplatformmetadata"] == 1
        process.send_signal(stop_signal)
        assert process.wait(timeout=5) == 0
        assert not ca_file.parent.exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_decode_token_payload_refuses_what_is_not_a_jwt():
    with pytest.raises(ValueError):
        decode_token_payload("opaque")
    with pytest.raises(ValueError):
        decode_token_payload("a.!!!.c")
    assert decode_token_payload("e30.eyJhIjoxfQ.c2ln") == {"a": 1}


def test_control_api_issues_under_a_sovereign_issuer_name_and_refuses_unknown_ones(emulator):
    from msicert.emulator._ca import ISSUER_CN, SOVEREIGN_ISSUER_CN

    status, config = control(emulator, "POST", "config", {"issuer_cn": SOVEREIGN_ISSUER_CN})
    try:
        assert status == 200 and config["issuer_cn"] == SOVEREIGN_ISSUER_CN
        _, certificate = mint(emulator)
        assert certificate.issuer.rfc4514_string() == f"CN={SOVEREIGN_ISSUER_CN}"
        status, body = control(emulator, "POST", "config", {"issuer_cn": "evil.example"})
        assert status == 400 and "issuer_cn must be one of" in body["error_description"]
    finally:
        control(emulator, "POST", "config", {"issuer_cn": ISSUER_CN})
    with pytest.raises(ValueError, match="issuer_cn must be one of"):
        emulator.issuer_cn = "evil.example"
