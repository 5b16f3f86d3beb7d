"""PKCS#10 CSR bytes exactly as the IMDS v2 contract asks (imds-v2-protocol.md section 3).

The builder takes the public key as SubjectPublicKeyInfo DER and a ``sign`` callable that
returns an RSASSA-PSS (SHA-256, MGF1-SHA-256, salt 32) signature over the bytes it is given.
A software key and an NCrypt key both fit behind that callable.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping

from . import _der as der

__all__ = [
    "CUID_ATTRIBUTE_OID",
    "PSS_ALGORITHM_DER",
    "Signer",
    "build_csr",
    "csr_to_wire",
    "cuid_json",
]

CUID_ATTRIBUTE_OID = "1.3.6.1.4.1.311.90.2.10"
_OID_DC = "0.9.2342.19200300.100.1.25"
_OID_CN = "2.5.4.3"
_OID_RSASSA_PSS = "1.2.840.113549.1.1.10"
_OID_MGF1 = "1.2.840.113549.1.1.8"
_OID_SHA256 = "2.16.840.1.101.3.4.2.1"
PSS_SALT_LENGTH = 32

Signer = Callable[[bytes], bytes]
"""Signs the to-be-signed bytes with RSASSA-PSS, SHA-256, MGF1-SHA-256, salt 32."""


def cuid_json(cuid: Mapping[str, str]) -> str:
    """Compact cuId JSON: vmId then vmssId, empty or absent members omitted, no whitespace."""
    ordered = {k: cuid[k] for k in ("vmId", "vmssId") if cuid.get(k)}
    if not ordered:
        raise ValueError("cuId needs a non-empty vmId or vmssId")
    return json.dumps(ordered, separators=(",", ":"), ensure_ascii=False)


def _pss_algorithm() -> bytes:
    # Byte-exact with the reference clients: the SHA-256 identifiers carry no NULL parameters
    # and trailerField (DEFAULT 1) is left out; MSAL Go records IMDS refusing either.
    sha256 = der.sequence(der.oid(_OID_SHA256))
    params = der.sequence(
        der.context(0, sha256),
        der.context(1, der.sequence(der.oid(_OID_MGF1), sha256)),
        der.context(2, der.integer(PSS_SALT_LENGTH)),
    )
    return der.sequence(der.oid(_OID_RSASSA_PSS), params)


PSS_ALGORITHM_DER = _pss_algorithm()
"""The signatureAlgorithm AlgorithmIdentifier every CSR carries (RSASSA-PSS, SHA-256)."""


def build_csr(
    *,
    spki_der: bytes,
    sign: Signer,
    client_id: str,
    tenant_id: str,
    cuid: Mapping[str, str],
) -> bytes:
    """Return the DER CSR: subject DC=<tenant> then CN=<client id>, one cuId attribute.

    DC is an IA5String and CN a PrintableString, as the reference clients write them. A
    client id outside the PrintableString alphabet (IMDS hands out GUIDs) or a non-ASCII
    tenant raises ValueError rather than switching to another string type the service
    was never seen to accept.
    """
    if not client_id or not der.is_printable(client_id):
        raise ValueError(
            f"client id {client_id!r} cannot be the CSR's PrintableString CN "
            "(IMDS client ids are GUIDs)"
        )
    if not tenant_id or not tenant_id.isascii():
        raise ValueError(f"tenant id {tenant_id!r} cannot be the CSR's IA5String DC")
    subject = der.sequence(
        der.set_of(der.sequence(der.oid(_OID_DC), der.ia5_string(tenant_id))),
        der.set_of(der.sequence(der.oid(_OID_CN), der.printable_string(client_id))),
    )
    attribute = der.sequence(
        der.oid(CUID_ATTRIBUTE_OID), der.set_of(der.utf8_string(cuid_json(cuid)))
    )
    info = der.sequence(
        der.integer(0), subject, spki_der, der.context(0, attribute)
    )
    return der.sequence(info, PSS_ALGORITHM_DER, der.bit_string(sign(info)))


def csr_to_wire(csr_der: bytes) -> str:
    """Single-line, padded, standard base64 of the DER (the JSON field ``csr``)."""
    return base64.b64encode(csr_der).decode("ascii")
