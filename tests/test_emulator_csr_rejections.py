"""Contract: the emulator's issuecredential refuses what the live IMDS is recorded to refuse.

Each CSR is assembled here from raw DER, signed with a real RSA-2048 key, and posted to the
real emulator on 127.0.0.1. The refusals come from MSAL Go (``apps/managedidentity/csr.go``,
``csr_test.go``), which records live IMDS rejecting: NULL parameters on the SHA-256
identifiers and an explicit trailerField (TestCSRMatchesDotNetEncoding), a DC that is not an
IA5String (the PrintableString a plain Go string would give), an empty cuId member (the
``omitempty`` on ``cuidInfo``), and a cuId other than the one IMDS handed out (IMDS "validates
this string against the cuId it handed out"). The error body has IMDS's shape
(``{"error":"invalid_request","error_description":...}``, MSAL.NET MockHelpers).

A CN that is not a PrintableString is accepted but recorded as a violation: both references
send a PrintableString, yet neither records the service refusing a UTF8String CN (Go itself
would send UTF8String for a client id with non-printable characters), so refusing it would
make the emulator stricter than the evidence.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import urllib3
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from msicert.wire import _der as der

ISSUE = "/metadata/identity/issuecredential"
GPM = "/metadata/identity/getplatformmetadata"
HTTP = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=10))
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
SPKI = KEY.public_key().public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
)
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)

OID_DC = bytes.fromhex("060a0992268993f22c640119")
OID_CN = bytes.fromhex("0603550403")
OID_CUID = bytes.fromhex("060a2b0601040182375a020a")
OID_PSS = bytes.fromhex("06092a864886f70d01010a")
OID_MGF1 = bytes.fromhex("06092a864886f70d010108")
OID_SHA256 = bytes.fromhex("0609608648016503040201")
NULL = b"\x05\x00"
# MSAL Go csr_test.go TestCSRMatchesDotNetEncoding (from an MSAL.NET CSR).
REFERENCE_ALGORITHM = bytes.fromhex(
    "303d06092a864886f70d01010a3030a00d300b0609608648016503040201a11a301806092a864886f70d"
    "010108300b0609608648016503040201a203020120"
)


def pss_algorithm(*, hash_null: bool = False, mgf_null: bool = False,
                  trailer: bool = False) -> bytes:
    """RSASSA-PSS SHA-256 AlgorithmIdentifier with the chosen deviations from the reference."""
    sha_hash = der.sequence(OID_SHA256, *([NULL] if hash_null else []))
    sha_mgf = der.sequence(OID_SHA256, *([NULL] if mgf_null else []))
    fields = [
        der.context(0, sha_hash),
        der.context(1, der.sequence(OID_MGF1, sha_mgf)),
        der.context(2, der.integer(32)),
    ]
    if trailer:
        fields.append(der.context(3, der.integer(1)))
    return der.sequence(OID_PSS, der.sequence(*fields))


def csr(
    md: dict[str, Any],
    *,
    algorithm: bytes = REFERENCE_ALGORITHM,
    dc_tag: int = 0x16,
    cn_tag: int = 0x13,
    cuid_text: str | None = None,
) -> bytes:
    """A CSR for the identity in ``md`` (getplatformmetadata), built from raw DER."""
    if cuid_text is None:
        cuid_text = json.dumps(md["cuId"], separators=(",", ":"))
    subject = der.sequence(
        der.set_of(der.sequence(OID_DC, der.tlv(dc_tag, md["tenantId"].encode()))),
        der.set_of(der.sequence(OID_CN, der.tlv(cn_tag, md["clientId"].encode()))),
    )
    attribute = der.sequence(OID_CUID, der.set_of(der.tlv(0x0C, cuid_text.encode())))
    info = der.sequence(der.integer(0), subject, SPKI, der.context(0, attribute))
    return der.sequence(info, algorithm, der.bit_string(KEY.sign(info, PSS, hashes.SHA256())))


def headers() -> dict[str, str]:
    return {"Metadata": "true", "x-ms-client-request-id": str(uuid.uuid4()),
            "Accept": "application/json", "Content-Type": "application/json; charset=utf-8"}


def metadata(emu: Any) -> dict[str, Any]:
    response = HTTP.request("GET", f"{emu.imds_url}{GPM}?cred-api-version=2.0",
                            headers=headers())
    assert response.status == 200
    return dict(response.json())


def post(emu: Any, request: bytes) -> urllib3.BaseHTTPResponse:
    body = json.dumps({"csr": base64.b64encode(request).decode()}).encode()
    return HTTP.request("POST", f"{emu.imds_url}{ISSUE}?cred-api-version=2.0",
                        headers=headers(), body=body)


@pytest.fixture
def imds(emu: Any) -> Iterator[Any]:
    saved = dict(emu.cuid)
    yield emu
    emu.cuid = saved


def test_the_exact_reference_form_is_issued_without_a_violation(imds):
    response = post(imds, csr(metadata(imds)))
    assert response.status == 200, response.data
    assert set(response.json()) >= {"certificate", "client_id", "tenant_id"}
    assert imds.violations == [] and len(imds.issued) >= 1


def test_the_reference_form_for_a_plain_vm_has_no_vmss_member(imds):
    imds.cuid = {"vmId": imds.cuid["vmId"]}
    md = metadata(imds)
    assert md["cuId"] == {"vmId": imds.cuid["vmId"]}
    assert post(imds, csr(md)).status == 200
    assert imds.violations == []


REJECTIONS = [
    pytest.param({"algorithm": pss_algorithm(hash_null=True, mgf_null=True)},
                 ["hash AlgorithmIdentifier carries NULL parameters",
                  "MGF1 hash AlgorithmIdentifier carries NULL parameters"],
                 id="both-NULLs-(msicert-before-issue-10)"),
    pytest.param({"algorithm": pss_algorithm(hash_null=True)},
                 ["hash AlgorithmIdentifier carries NULL parameters"], id="hash-NULL"),
    pytest.param({"algorithm": pss_algorithm(mgf_null=True)},
                 ["MGF1 hash AlgorithmIdentifier carries NULL parameters"], id="mgf1-NULL"),
    pytest.param({"algorithm": pss_algorithm(trailer=True)},
                 ["trailerField is present"], id="trailerField"),
    pytest.param({"dc_tag": 0x13}, ["subject DC is a PrintableString, not an IA5String"],
                 id="DC-PrintableString"),
    pytest.param({"dc_tag": 0x0C}, ["subject DC is a UTF8String, not an IA5String"],
                 id="DC-UTF8String"),
    pytest.param({"cuid_text": "EMPTY_VMSS"}, ["empty member(s) vmssId"],
                 id="cuId-empty-member"),
    pytest.param({"cuid_text": "OTHER_VM"}, ["the cuId getplatformmetadata handed out"],
                 id="cuId-differs"),
    pytest.param({"cuid_text": "VM_ONLY"}, ["the cuId getplatformmetadata handed out"],
                 id="cuId-drops-the-vmss-member"),
]


@pytest.mark.parametrize(("variant", "words"), REJECTIONS)
def test_what_imds_refuses_is_refused_with_an_imds_error_body(imds, variant, words):
    md = metadata(imds)
    cuid_text = {
        "EMPTY_VMSS": json.dumps({"vmId": md["cuId"]["vmId"], "vmssId": ""},
                                 separators=(",", ":")),
        "OTHER_VM": json.dumps({"vmId": str(uuid.uuid4()), "vmssId": md["cuId"]["vmssId"]},
                               separators=(",", ":")),
        "VM_ONLY": json.dumps({"vmId": md["cuId"]["vmId"]}, separators=(",", ":")),
    }.get(variant.get("cuid_text", ""))
    if cuid_text is not None:
        variant = {**variant, "cuid_text": cuid_text}
    issued_before = len(imds.issued)
    response = post(imds, csr(md, **variant))
    assert response.status == 400
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "error_description"} and body["error"] == "invalid_request"
    for phrase in words:
        assert phrase in body["error_description"], body
        assert any(phrase in v for v in imds.violations), imds.violations
    assert len(imds.issued) == issued_before
    assert imds.count("issuecredential") == 1


def test_an_empty_member_in_a_plain_vm_cuid_is_refused(imds):
    imds.cuid = {"vmId": imds.cuid["vmId"]}
    md = metadata(imds)
    text = json.dumps({"vmId": md["cuId"]["vmId"], "vmssId": ""}, separators=(",", ":"))
    response = post(imds, csr(md, cuid_text=text))
    assert response.status == 400
    assert "empty member(s) vmssId" in response.json()["error_description"]


def test_a_utf8_cn_is_issued_but_recorded_as_a_deviation_from_the_references(imds):
    response = post(imds, csr(metadata(imds), cn_tag=0x0C))
    assert response.status == 200, response.data
    assert imds.violations == [
        "issuecredential: subject CN is a UTF8String; the reference clients send a "
        "PrintableString"
    ]


def test_a_hostile_deeply_nested_cuid_is_refused_without_crashing():
    from msicert.emulator._csrcheck import check_csr

    md = {"clientId": "c", "tenantId": "t", "cuId": {"vmId": "v"}}
    request = csr(md, cuid_text="[" * 200_000)
    result = check_csr(request, client_id="c", tenant_id="t", cuid_json='{"vmId":"v"}')
    assert not result.ok
    assert any("expected compact JSON" in problem for problem in result.problems)
