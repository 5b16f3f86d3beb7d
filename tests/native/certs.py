"""Throw-away X.509 material for the native tests (cryptography only, EC keys: fast)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def name(cn: str, dc: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.DOMAIN_COMPONENT, dc)] if dc else []
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def issue(subject: x509.Name, issuer: x509.Name, key: Any, issuer_key: Any) -> bytes:
    """DER of a 1-day certificate for ``key`` signed by ``issuer_key``."""
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(issuer_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def leaf(subject_cn: str, dc: str, issuer_cn: str) -> bytes:
    """A certificate ``CN=subject_cn, DC=dc`` issued by a fresh ``CN=issuer_cn``."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    key = ec.generate_private_key(ec.SECP256R1())
    return issue(name(subject_cn, dc), name(issuer_cn), key, ca_key)
