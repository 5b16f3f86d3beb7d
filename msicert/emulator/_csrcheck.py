"""Checks a PKCS#10 request against the IMDS v2 contract (imds-v2-protocol.md section 3).

Every deviation becomes one human-readable problem; the emulator records each as a violation
and refuses the request. cryptography supplies the subject and the key; the DER reader supplies
what cryptography does not expose (attribute tags, PSS parameters, the to-be-signed bytes).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from . import _asn1 as asn1

__all__ = ["CUID_OID", "CsrCheck", "check_csr"]

CUID_OID = "1.3.6.1.4.1.311.90.2.10"
_EXTENSION_REQUEST_OID = "1.2.840.113549.1.9.14"
_RSASSA_PSS_OID = "1.2.840.113549.1.1.10"
_MGF1_OID = "1.2.840.113549.1.1.8"
_SHA256_OID = "2.16.840.1.101.3.4.2.1"
_SALT_LENGTH = 32
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
    """Outcome of :func:`check_csr`: problems (empty when acceptable), key and subject."""

    problems: tuple[str, ...]
    public_key: rsa.RSAPublicKey | None = None
    subject: x509.Name | None = None

    @property
    def ok(self) -> bool:
        """True when the request follows the contract."""
        return not self.problems and self.public_key is not None and self.subject is not None


def _name(oid: str) -> str:
    return f"{_ALGORITHM_NAMES[oid]} ({oid})" if oid in _ALGORITHM_NAMES else f"OID {oid}"


def _digest_oid(algorithm_id: asn1.Tlv) -> str:
    """OID of an AlgorithmIdentifier whose parameters are absent or NULL."""
    parts = asn1.children(algorithm_id)
    if not parts or len(parts) > 2 or (len(parts) == 2 and parts[1].raw != b"\x05\x00"):
        raise asn1.DerError("malformed hash AlgorithmIdentifier")
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
    hash_oid = _digest_oid(asn1.children(fields[0xA0])[0]) if 0xA0 in fields else "1.3.14.3.2.26"
    if hash_oid != _SHA256_OID:
        problems.append(f"RSASSA-PSS hash is {_name(hash_oid)}, not SHA-256")
    mgf_hash = "1.3.14.3.2.26"
    if 0xA1 in fields:
        mgf = asn1.children(asn1.children(fields[0xA1])[0])
        if asn1.oid_text(mgf[0]) != _MGF1_OID or len(mgf) != 2:
            problems.append("RSASSA-PSS mask generation function is not MGF1")
        else:
            mgf_hash = _digest_oid(mgf[1])
    if mgf_hash != _SHA256_OID:
        problems.append(f"RSASSA-PSS MGF1 hash is {_name(mgf_hash)}, not SHA-256")
    salt = asn1.uint(asn1.children(fields[0xA2])[0]) if 0xA2 in fields else 20
    if salt != _SALT_LENGTH:
        problems.append(f"RSASSA-PSS salt length is {salt}, not {_SALT_LENGTH}")
    if 0xA3 in fields and asn1.uint(asn1.children(fields[0xA3])[0]) != 1:
        problems.append("RSASSA-PSS trailer field is not 1")
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
    text = value.value.decode("utf-8", "replace")
    if text != cuid_json:
        problems.append(f"cuId attribute is {text!r}, expected compact JSON {cuid_json!r}")
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
    try:
        if asn1.uint(info_parts[0]) != 0:
            problems.append("CSR version is not 0 (v1)")
        problems += _subject_problems(subject, client_id, tenant_id)
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
        return CsrCheck(tuple(problems))
    return CsrCheck((), key, subject)
