"""Checks a PKCS#10 request against the IMDS v2 contract (imds-v2-protocol.md section 3).

Every deviation becomes one human-readable problem; the emulator records each as a violation
and refuses the request. cryptography supplies the subject and the key; the DER reader supplies
what cryptography does not expose (string tags, PSS parameters, the to-be-signed bytes).

The refusals follow what the reference clients record the live service refusing (MSAL Go
``apps/managedidentity/csr.go`` and ``csr_test.go``): NULL parameters on the SHA-256
identifiers, an explicit trailerField, a DC that is not an IA5String, an empty cuId member.
A CN that is not a PrintableString is only *noted*: both references emit a PrintableString,
but neither records the service refusing another string type, so refusing it would be a guess.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from . import _asn1 as asn1

__all__ = ["CUID_OID", "REFERENCE_PSS_ALGORITHM", "CsrCheck", "check_csr"]

CUID_OID = "1.3.6.1.4.1.311.90.2.10"
_EXTENSION_REQUEST_OID = "1.2.840.113549.1.9.14"
_RSASSA_PSS_OID = "1.2.840.113549.1.1.10"
_MGF1_OID = "1.2.840.113549.1.1.8"
_SHA256_OID = "2.16.840.1.101.3.4.2.1"
_SALT_LENGTH = 32
_IA5_STRING = 0x16
_PRINTABLE_STRING = 0x13
_STRING_TYPES = {
    0x0C: "UTF8String",
    0x13: "PrintableString",
    0x14: "TeletexString",
    0x16: "IA5String",
    0x1C: "UniversalString",
    0x1E: "BMPString",
}
_OID_DC = "0.9.2342.19200300.100.1.25"
_OID_CN = "2.5.4.3"
# The reference's signatureAlgorithm, byte for byte (MSAL Go csr_test.go
# TestCSRMatchesDotNetEncoding, taken from an MSAL.NET CSR).
REFERENCE_PSS_ALGORITHM = bytes.fromhex(
    "303d06092a864886f70d01010a3030a00d300b0609608648016503040201a11a301806092a864886f70d"
    "010108300b0609608648016503040201a203020120"
)
_SHORT = {NameOID.DOMAIN_COMPONENT: "DC", NameOID.COMMON_NAME: "CN"}
_ALGORITHM_NAMES = {
    "1.2.840.113549.1.1.5": "sha1WithRSAEncryption (PKCS#1 v1.5)",
    "1.2.840.113549.1.1.11": "sha256WithRSAEncryption (PKCS#1 v1.5)",
    "1.2.840.113549.1.1.12": "sha384WithRSAEncryption (PKCS#1 v1.5)",
    "1.2.840.10045.4.3.2": "ecdsa-with-SHA256",
    "1.3.14.3.2.26": "SHA-1",
    "2.16.840.1.101.3.4.2.2": "SHA-384",
}


@dataclass(frozen=True)
class CsrCheck:
    """Outcome of :func:`check_csr`: problems (empty when acceptable), key and subject.

    ``notes`` are deviations from the reference clients' bytes that the service is not
    recorded to refuse: recorded as violations, never refused.
    """

    problems: tuple[str, ...]
    public_key: rsa.RSAPublicKey | None = None
    subject: x509.Name | None = None
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when the request follows the contract."""
        return not self.problems and self.public_key is not None and self.subject is not None


def _name(oid: str) -> str:
    return f"{_ALGORITHM_NAMES[oid]} ({oid})" if oid in _ALGORITHM_NAMES else f"OID {oid}"


def _digest_oid(algorithm_id: asn1.Tlv, where: str, problems: list[str]) -> str:
    """OID of a hash AlgorithmIdentifier; NULL parameters are noted as a problem."""
    parts = asn1.children(algorithm_id)
    if not parts or len(parts) > 2 or (len(parts) == 2 and parts[1].raw != b"\x05\x00"):
        raise asn1.DerError("malformed hash AlgorithmIdentifier")
    if len(parts) == 2:
        problems.append(
            f"RSASSA-PSS {where} AlgorithmIdentifier carries NULL parameters "
            "(IMDS rejects them; leave the parameters absent)"
        )
    return asn1.oid_text(parts[0])


def _pss_problems(algorithm: asn1.Tlv) -> list[str]:
    parts = asn1.children(algorithm)
    oid = asn1.oid_text(parts[0])
    if oid != _RSASSA_PSS_OID:
        return [f"signature algorithm is {_name(oid)}, not RSASSA-PSS"]
    if len(parts) != 2 or parts[1].tag != asn1.SEQUENCE:
        return ["RSASSA-PSS parameters are missing (defaults mean SHA-1)"]
    fields = {f.tag: f for f in asn1.children(parts[1])}
    problems: list[str] = []
    hash_oid = "1.3.14.3.2.26"
    if 0xA0 in fields:
        hash_oid = _digest_oid(asn1.children(fields[0xA0])[0], "hash", problems)
    if hash_oid != _SHA256_OID:
        problems.append(f"RSASSA-PSS hash is {_name(hash_oid)}, not SHA-256")
    mgf_hash = "1.3.14.3.2.26"
    if 0xA1 in fields:
        mgf = asn1.children(asn1.children(fields[0xA1])[0])
        if asn1.oid_text(mgf[0]) != _MGF1_OID or len(mgf) != 2:
            problems.append("RSASSA-PSS mask generation function is not MGF1")
        else:
            mgf_hash = _digest_oid(mgf[1], "MGF1 hash", problems)
    if mgf_hash != _SHA256_OID:
        problems.append(f"RSASSA-PSS MGF1 hash is {_name(mgf_hash)}, not SHA-256")
    salt = asn1.uint(asn1.children(fields[0xA2])[0]) if 0xA2 in fields else 20
    if salt != _SALT_LENGTH:
        problems.append(f"RSASSA-PSS salt length is {salt}, not {_SALT_LENGTH}")
    if 0xA3 in fields:
        trailer = asn1.uint(asn1.children(fields[0xA3])[0])
        problems.append(
            f"RSASSA-PSS trailerField is present (value {trailer}); DER omits the DEFAULT "
            "and IMDS rejects it"
        )
    if not problems and algorithm.raw != REFERENCE_PSS_ALGORITHM:
        problems.append(
            f"signature AlgorithmIdentifier {algorithm.raw.hex()} is not byte-exact with the "
            f"reference {REFERENCE_PSS_ALGORITHM.hex()}"
        )
    return problems


def _subject_problems(subject: x509.Name, client_id: str, tenant_id: str) -> list[str]:
    rdns = subject.rdns
    shape = [[attr.oid for attr in rdn] for rdn in rdns]
    if shape != [[NameOID.DOMAIN_COMPONENT], [NameOID.COMMON_NAME]]:
        order = ", ".join("+".join(_SHORT.get(o, o.dotted_string) for o in r) for r in shape)
        return [f"subject RDNs in DER order are [{order}]; expected exactly [DC, CN]"]
    problems: list[str] = []
    dc = next(iter(rdns[0])).value
    cn = next(iter(rdns[1])).value
    if cn != client_id:
        problems.append(f"subject CN is {cn!r}, expected the client id {client_id!r}")
    if dc != tenant_id:
        problems.append(f"subject DC is {dc!r}, expected the tenant id {tenant_id!r}")
    return problems


def _string_tags(subject: asn1.Tlv) -> dict[str, list[int]]:
    """The ASN.1 string tag of each DC and CN value, in DER order."""
    tags: dict[str, list[int]] = {_OID_DC: [], _OID_CN: []}
    for rdn in asn1.children(subject):
        for attribute in asn1.children(rdn):
            oid_element, value = asn1.children(attribute)
            tags.setdefault(asn1.oid_text(oid_element), []).append(value.tag)
    return tags


def _tag_name(tag: int) -> str:
    return _STRING_TYPES.get(tag, f"tag 0x{tag:02x}")


def _subject_tag_findings(subject: asn1.Tlv) -> tuple[list[str], list[str]]:
    """(problems, notes) about the string types: DC must be IA5, CN should be Printable."""
    tags = _string_tags(subject)
    problems = [
        f"subject DC is a {_tag_name(tag)}, not an IA5String (IMDS rejects it)"
        for tag in tags[_OID_DC]
        if tag != _IA5_STRING
    ]
    notes = [
        f"subject CN is a {_tag_name(tag)}; the reference clients send a PrintableString"
        for tag in tags[_OID_CN]
        if tag != _PRINTABLE_STRING
    ]
    return problems, notes


def _cuid_problems(text: str, cuid_json: str) -> list[str]:
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: hostile deeply nested arrays
        document = None
    if isinstance(document, dict):
        empty = [name for name, value in document.items() if value in ("", None)]
        if empty:
            return [
                f"cuId attribute has empty member(s) {', '.join(empty)} "
                "(IMDS rejects them; omit absent members)"
            ]
    if text != cuid_json:
        return [
            f"cuId attribute is {text!r}, expected compact JSON {cuid_json!r} "
            "(the cuId getplatformmetadata handed out)"
        ]
    return []


def _attribute_problems(attributes: asn1.Tlv, cuid_json: str) -> list[str]:
    if attributes.tag != 0xA0:
        return ["CSR attributes field [0] is missing"]
    problems: list[str] = []
    cuid_values: list[asn1.Tlv] = []
    for attribute in asn1.children(attributes):
        oid_element, values = asn1.children(attribute)
        oid = asn1.oid_text(oid_element)
        if oid == _EXTENSION_REQUEST_OID:
            problems.append("CSR carries extensions (extensionRequest attribute); none allowed")
        elif oid == CUID_OID:
            cuid_values.extend(asn1.children(values))
        else:
            problems.append(f"unexpected CSR attribute {oid}")
    if len(cuid_values) != 1:
        problems.append(f"expected exactly one cuId attribute value, found {len(cuid_values)}")
        return problems
    value = cuid_values[0]
    if value.tag != asn1.UTF8_STRING:
        problems.append(f"cuId attribute has ASN.1 tag 0x{value.tag:02x}, not UTF8String")
    problems += _cuid_problems(value.value.decode("utf-8", "replace"), cuid_json)
    return problems


def _key_problems(key: object) -> list[str]:
    if not isinstance(key, rsa.RSAPublicKey):
        return [f"public key is {type(key).__name__}, not RSA"]
    problems = []
    if key.key_size != 2048:
        problems.append(f"RSA key is {key.key_size} bits, not 2048")
    if key.public_numbers().e != 65537:
        problems.append(f"RSA public exponent is {key.public_numbers().e}, not 65537")
    return problems


def check_csr(der: bytes, *, client_id: str, tenant_id: str, cuid_json: str) -> CsrCheck:
    """Check ``der`` for the identity (client id, tenant, compact cuId JSON) it must name."""
    try:
        info, algorithm, signature = asn1.children(asn1.read_one(der, asn1.SEQUENCE))
        info_parts = asn1.children(info)
    except (ValueError, asn1.DerError) as exc:
        return CsrCheck((f"CSR is not a DER PKCS#10 request: {exc}",))
    try:
        pss = _pss_problems(algorithm)
    except (ValueError, IndexError, KeyError, asn1.DerError) as exc:
        pss = [f"signature algorithm is malformed: {exc}"]
    try:
        csr = x509.load_der_x509_csr(der)
        key = csr.public_key()
        subject = csr.subject
    except Exception as exc:
        # Hostile input meets a parser that raises ValueError, KeyError (unknown string tags),
        # InvalidVersion or UnsupportedAlgorithm; any of them means "refuse", never "crash".
        # Say what is wrong with the algorithm too: explicit DEFAULT values trip the parser.
        return CsrCheck((f"CSR is not a DER PKCS#10 request: {exc}", *pss))
    problems: list[str] = []
    notes: list[str] = []
    try:
        if asn1.uint(info_parts[0]) != 0:
            problems.append("CSR version is not 0 (v1)")
        problems += _subject_problems(subject, client_id, tenant_id)
        tag_problems, notes = _subject_tag_findings(info_parts[1])
        problems += tag_problems
        problems += _key_problems(key)
        if len(info_parts) != 4:
            problems.append("CSR attributes field [0] is missing")
        else:
            problems += _attribute_problems(info_parts[3], cuid_json)
        problems += pss
        if not pss and isinstance(key, rsa.RSAPublicKey):
            if signature.tag != asn1.BIT_STRING or signature.value[:1] != b"\x00":
                problems.append("CSR signature is not a whole-byte BIT STRING")
            else:
                pss_padding = padding.PSS(
                    mgf=padding.MGF1(hashes.SHA256()), salt_length=_SALT_LENGTH
                )
                key.verify(signature.value[1:], info.raw, pss_padding, hashes.SHA256())
    except InvalidSignature:
        problems.append(
            "CSR signature does not verify (RSASSA-PSS, SHA-256, MGF1-SHA-256, salt 32)"
        )
    except (ValueError, IndexError, KeyError, TypeError, asn1.DerError) as exc:
        problems.append(f"CSR structure is malformed: {exc}")
    if problems or not isinstance(key, rsa.RSAPublicKey):
        return CsrCheck(tuple(problems), notes=tuple(notes))
    return CsrCheck((), key, subject, tuple(notes))
