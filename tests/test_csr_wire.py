"""The CSR is byte-exact with the reference clients wherever they are.

The expected bytes are written out here by hand from the references, never produced by
msicert's encoder:

- the signatureAlgorithm DER is the literal that MSAL Go pins in
  ``apps/managedidentity/csr_test.go`` (TestCSRMatchesDotNetEncoding), taken there from a CSR
  that MSAL.NET produced; IMDS refused the NULL parameters and the explicit trailerField;
- the identifiers (client id, tenant, vmId) are the ones in that Go test file;
- the subject is DC=<tenant> as IA5String then CN=<client id> as PrintableString: MSAL Go
  (``csr.go``: an ``ia5`` DC, a plain Go string CN, which encoding/asn1 writes as
  PrintableString) and MSAL.NET (``Csr.cs``: ``X500DistinguishedName("CN=.., DC=..")``);
  the Go test pins the IA5 DC bytes ``16 24 <tenant>`` inside the raw subject;
- the cuId attribute is SEQUENCE { OID 1.3.6.1.4.1.311.90.2.10, SET { UTF8String json } } in
  the ``[0]`` attributes (Go ``pkcs10Attribute`` with a ``set`` of values; .NET
  ``CertificateRequest.cs`` pushes a SET OF around the encoded UTF8String), and the JSON
  literals are the ones ``csr_test.go`` pins (TestCreateCSRCuidOmitsAbsentMembers).
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from msicert.wire._csr import build_csr, csr_to_wire

# MSAL Go csr_test.go constants.
GO_CLIENT_ID = "5c8b5b0a-1f8b-4a1e-9c4a-3f3a1b2c3d4e"
GO_TENANT_ID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
GO_VM_ID = "43ea1f9f-8c9e-4bdd-b5ef-265fbcc94c09"

# MSAL Go csr_test.go TestCSRMatchesDotNetEncoding, wantSigAlg.
REFERENCE_SIGNATURE_ALGORITHM = bytes.fromhex(
    "303d06092a864886f70d01010a3030"
    "a00d300b0609608648016503040201"
    "a11a301806092a864886f70d010108300b0609608648016503040201"
    "a203020120"
)


def _ascii_hex(text: str) -> str:
    return text.encode("ascii").hex()


# SEQUENCE { SET { SEQUENCE { OID 0.9.2342.19200300.100.1.25, IA5String tenant } },
#            SET { SEQUENCE { OID 2.5.4.3, PrintableString client id } } }
REFERENCE_SUBJECT = bytes.fromhex(
    "3065"
    "3134" "3032" "060a0992268993f22c640119" "1624" + _ascii_hex(GO_TENANT_ID)
    + "312d" "302b" "0603550403" "1324" + _ascii_hex(GO_CLIENT_ID)
)
# [0] { SEQUENCE { OID 1.3.6.1.4.1.311.90.2.10, SET { UTF8String {"vmId":"<vm>"} } } }
REFERENCE_ATTRIBUTES_VM_ONLY = bytes.fromhex(
    "a041" "303f" "060a2b0601040182375a020a" "3131" "0c2f"
    + _ascii_hex('{"vmId":"' + GO_VM_ID + '"}')
)

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
SPKI = KEY.public_key().public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
)
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


def _sign(tbs: bytes) -> bytes:
    return KEY.sign(tbs, PSS, hashes.SHA256())


def _csr(cuid: dict[str, str] | None = None, **overrides: str) -> bytes:
    return build_csr(
        spki_der=SPKI,
        sign=_sign,
        client_id=overrides.get("client_id", GO_CLIENT_ID),
        tenant_id=overrides.get("tenant_id", GO_TENANT_ID),
        cuid={"vmId": GO_VM_ID} if cuid is None else cuid,
    )


def _long_tlv_header(tag: int, length: int) -> bytes:
    """A DER header for the two-byte long-form lengths a 2048-bit CSR needs (256..65535)."""
    assert 256 <= length <= 0xFFFF
    return bytes((tag, 0x82, length >> 8, length & 0xFF))


def _split(csr: bytes) -> tuple[bytes, bytes, bytes]:
    """(CertificationRequestInfo, signatureAlgorithm, signature BIT STRING), by byte offsets."""
    assert csr[:2] == b"\x30\x82" and int.from_bytes(csr[2:4], "big") == len(csr) - 4
    assert csr[4:6] == b"\x30\x82"
    info_end = 8 + int.from_bytes(csr[6:8], "big")
    info = csr[4:info_end]
    algorithm_end = info_end + 2 + csr[info_end + 1]
    return info, csr[info_end:algorithm_end], csr[algorithm_end:]


def test_signature_algorithm_is_the_reference_der_byte_for_byte():
    _, algorithm, signature = _split(_csr())
    assert algorithm == REFERENCE_SIGNATURE_ALGORITHM
    assert b"\x05\x00" not in algorithm and b"\xa3" not in algorithm
    assert signature[:5] == b"\x03\x82\x01\x01\x00" and len(signature) == 5 + 256


def test_whole_request_info_is_the_reference_bytes_around_the_key():
    info, _, _ = _split(_csr())
    body = bytes.fromhex("020100") + REFERENCE_SUBJECT + SPKI + REFERENCE_ATTRIBUTES_VM_ONLY
    assert info == _long_tlv_header(0x30, len(body)) + body


def test_subject_is_ia5_dc_then_printable_cn_as_the_references_write_it():
    info, _, _ = _split(_csr())
    assert info[7 : 7 + len(REFERENCE_SUBJECT)] == REFERENCE_SUBJECT
    # The Go test's own probe: the IA5String DC bytes appear in the raw subject.
    assert bytes((0x16, len(GO_TENANT_ID))) + GO_TENANT_ID.encode() in info
    # And no UTF8String CN (today's old form) is left.
    assert bytes((0x0C, len(GO_CLIENT_ID))) + GO_CLIENT_ID.encode() not in info


@pytest.mark.parametrize(
    ("cuid", "json_text"),
    [
        # csr_test.go TestCreateCSRCuidOmitsAbsentMembers: each shape IMDS hands out.
        ({"vmId": GO_VM_ID}, '{"vmId":"' + GO_VM_ID + '"}'),
        ({"vmssId": "scale-set-1"}, '{"vmssId":"scale-set-1"}'),
        ({"vmId": GO_VM_ID, "vmssId": "scale-set-1"},
         '{"vmId":"' + GO_VM_ID + '","vmssId":"scale-set-1"}'),
        # An empty member is omitted, never sent as "" (the service rejects that).
        ({"vmId": GO_VM_ID, "vmssId": ""}, '{"vmId":"' + GO_VM_ID + '"}'),
        # Member order is vmId then vmssId whatever order the metadata arrived in.
        ({"vmssId": "scale-set-1", "vmId": GO_VM_ID},
         '{"vmId":"' + GO_VM_ID + '","vmssId":"scale-set-1"}'),
    ],
)
def test_cuid_attribute_is_a_set_of_one_utf8_compact_json(cuid, json_text):
    info, _, _ = _split(_csr(cuid))
    value = json_text.encode()
    attribute = (
        bytes.fromhex("060a2b0601040182375a020a")
        + bytes((0x31, len(value) + 2, 0x0C, len(value)))
        + value
    )
    expected = bytes((0xA0, len(attribute) + 2, 0x30, len(attribute))) + attribute
    assert info.endswith(expected)


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("client_id", "client_with_underscore", "PrintableString CN"),
        ("client_id", "clïent", "PrintableString CN"),
        ("client_id", "", "PrintableString CN"),
        ("tenant_id", "tenänt", "IA5String DC"),
        ("tenant_id", "", "IA5String DC"),
    ],
)
def test_a_name_the_string_types_cannot_hold_is_refused_not_re_encoded(field, value, words):
    with pytest.raises(ValueError, match=words):
        _csr(**{field: value})


def test_empty_cuid_is_refused():
    with pytest.raises(ValueError, match="non-empty vmId or vmssId"):
        _csr({"vmId": "", "vmssId": ""})


def _openssl(*args: str, data: bytes | None = None) -> str:
    out = subprocess.run(["openssl", *args], input=data, capture_output=True, check=False)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    return (out.stdout + out.stderr).decode(errors="replace")


def test_openssl_verifies_the_csr_and_shows_the_reference_string_types(tmp_path: Path):
    path = tmp_path / "req.der"
    path.write_bytes(_csr({"vmId": GO_VM_ID, "vmssId": "scale-set-1"}))
    assert "verify OK" in _openssl("req", "-inform", "DER", "-in", str(path), "-verify", "-noout")
    text = _openssl("req", "-inform", "DER", "-in", str(path), "-noout", "-text")
    assert re.search(r"Signature Algorithm: rsassaPss", text)
    assert "Hash Algorithm: sha256" in text and "Mask Algorithm: mgf1 with sha256" in text
    assert "Salt Length: 0x20" in text and "Trailer Field: 0x01 (default)" in text
    parsed = _openssl("asn1parse", "-inform", "DER", "-in", str(path))
    strings = re.findall(r"prim:\s+(PRINTABLESTRING|IA5STRING|UTF8STRING)\s*:(.*)", parsed)
    assert strings == [
        ("IA5STRING", GO_TENANT_ID),
        ("PRINTABLESTRING", GO_CLIENT_ID),
        ("UTF8STRING", '{"vmId":"' + GO_VM_ID + '","vmssId":"scale-set-1"}'),
    ]
    # The one NULL is rsaEncryption's (SubjectPublicKeyInfo), as .NET writes it too.
    assert len(re.findall(r"prim:\s+NULL", parsed)) == 1


def test_the_csr_the_client_posts_carries_the_reference_bytes(make_client, emu):
    """End to end: what ManagedIdentityClient sends to issuecredential, read off the wire."""
    make_client().get_certificate()
    (request,) = [r for r in emu.requests if r.endpoint == "issuecredential"]
    body = json.loads(request.body)
    assert set(body) == {"csr"}  # no attestation on this host: the field is omitted
    csr = base64.b64decode(body["csr"], validate=True)
    assert csr_to_wire(csr) == body["csr"]
    info, algorithm, _ = _split(csr)
    assert algorithm == REFERENCE_SIGNATURE_ALGORITHM
    client_id, tenant_id = emu.client_id_for({}), emu.tenant_id
    assert bytes((0x16, len(tenant_id))) + tenant_id.encode() in info
    assert bytes((0x13, len(client_id))) + client_id.encode() in info
    cuid = '{"vmId":"' + emu.cuid["vmId"] + '","vmssId":"' + emu.cuid["vmssId"] + '"}'
    assert info.endswith(bytes((0x0C, len(cuid))) + cuid.encode())
    assert x509.load_der_x509_csr(csr).is_signature_valid
    assert emu.violations == []
