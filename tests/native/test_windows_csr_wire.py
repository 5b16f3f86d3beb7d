"""One CSR contract for every key: a software key and the NCrypt signer give the same bytes.

The CSR is built once with a key that ``cryptography`` holds and once through the production
Windows path (``WindowsStore.generate_key``: the shared binding key, KeyGuard when VBS is
there, else the non-exportable software-KSP ``HardwareRSAKey``, signing through
NCryptSignHash). Outside the SubjectPublicKeyInfo and the signature the two requests are
byte-identical, and their signatureAlgorithm is the reference's (MSAL Go ``csr_test.go``
TestCSRMatchesDotNetEncoding).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from native_testutil import artifact_dir, needs_windows

pytestmark = needs_windows

REFERENCE_ALGORITHM = bytes.fromhex(
    "303d06092a864886f70d01010a3030a00d300b0609608648016503040201a11a301806092a864886f70d"
    "010108300b0609608648016503040201a203020120"
)
CLIENT_ID = "5c8b5b0a-1f8b-4a1e-9c4a-3f3a1b2c3d4e"  # MSAL Go csr_test.go
TENANT_ID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CUID = {"vmId": "43ea1f9f-8c9e-4bdd-b5ef-265fbcc94c09", "vmssId": "scale-set-1"}


def _tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(start, value start, end) of the DER element at ``pos``."""
    first = data[pos + 1]
    if first < 0x80:
        return pos, pos + 2, pos + 2 + first
    count = first & 0x7F
    length = int.from_bytes(data[pos + 2 : pos + 2 + count], "big")
    return pos, pos + 2 + count, pos + 2 + count + length


def _parts(csr: bytes) -> dict[str, bytes]:
    """The CSR cut into its DER elements (no msicert code involved)."""
    _, body, _ = _tlv(csr, 0)
    _, info_body, info_end = _tlv(csr, body)
    parts: dict[str, bytes] = {}
    pos = info_body
    for name in ("version", "subject", "spki", "attributes"):
        start, _, end = _tlv(csr, pos)
        parts[name] = csr[start:end]
        pos = end
    assert pos == info_end
    start, _, end = _tlv(csr, info_end)
    parts["algorithm"] = csr[start:end]
    parts["signature"] = csr[end:]
    return parts


@pytest.fixture
def ncrypt_key() -> Iterator[Any]:
    from msicert._identity import Identity
    from msicert.backends.windows._cert_store import WindowsStore

    key = WindowsStore().generate_key(Identity())
    try:
        yield key
    finally:
        key.close()  # the binding key is shared: it stays


def _build(spki: bytes, sign: Any) -> bytes:
    from msicert.wire._csr import build_csr

    return build_csr(spki_der=spki, sign=sign, client_id=CLIENT_ID, tenant_id=TENANT_ID,
                     cuid=CUID)


def test_software_and_ncrypt_csrs_differ_only_in_key_and_signature(ncrypt_key: Any) -> None:
    import msicert_native as native

    software = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    software_csr = _build(
        software.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo),
        lambda tbs: software.sign(tbs, pss, hashes.SHA256()),
    )
    ncrypt_csr = _build(ncrypt_key.spki_der, ncrypt_key.sign)
    assert ncrypt_key.kind in ("keyguard", "software-ksp")

    a, b = _parts(software_csr), _parts(ncrypt_csr)
    for name in ("version", "subject", "attributes", "algorithm"):
        assert a[name] == b[name], name
    assert a["spki"] != b["spki"] and a["signature"] != b["signature"]
    assert b["algorithm"] == REFERENCE_ALGORITHM
    assert b["subject"] == bytes.fromhex(
        "3065" "3134" "3032" "060a0992268993f22c640119" "1624" + TENANT_ID.encode().hex()
        + "312d" "302b" "0603550403" "1324" + CLIENT_ID.encode().hex()
    )
    assert b["spki"] == native.export_public_spki(ncrypt_key.handle)
    for request in (software_csr, ncrypt_csr):
        assert x509.load_der_x509_csr(request).is_signature_valid
    out = artifact_dir()
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        tag = f"{native.BACKEND}-{uuid.uuid4().hex[:6]}"
        (out / f"csr-wire-software-{tag}.der").write_bytes(software_csr)
        (out / f"csr-wire-ncrypt-{tag}.der").write_bytes(ncrypt_csr)
