"""Certificates for store and policy tests (the emulator issues the real ones)."""

from __future__ import annotations

import datetime as dt
from functools import cache

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

ISSUER_CN = "managedidentitysnissuer.login.microsoft.com"
CLIENT = "11111111-2222-3333-4444-555555555555"
TENANT = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"


@cache
def rsa_key(n: int = 0) -> rsa.RSAPrivateKey:
    """Deterministically-cached keys: key generation is slow, tests need a few distinct ones."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_cert(
    *,
    key: rsa.RSAPrivateKey | None = None,
    spki_der: bytes | None = None,
    cn: str = CLIENT,
    dc: str = TENANT,
    issuer_cn: str = ISSUER_CN,
    not_before: float,
    not_after: float,
) -> x509.Certificate:
    key = key or rsa_key(0)
    # A key that lives elsewhere (a store's CNG key) is given by its public half.
    public = serialization.load_der_public_key(spki_der) if spki_der else key.public_key()
    issuer_key = rsa_key(9)
    subject = x509.Name([
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.DOMAIN_COMPONENT, dc)]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, cn)]),
    ])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]))
        .public_key(public)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime.fromtimestamp(not_before, dt.timezone.utc))
        .not_valid_after(dt.datetime.fromtimestamp(not_after, dt.timezone.utc))
        .sign(issuer_key, hashes.SHA256())
    )


def key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)
