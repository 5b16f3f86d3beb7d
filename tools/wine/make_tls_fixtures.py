"""Write the Wine tier's TLS material: test CA, server cert/key (PEM), client PFXs (3DES/SHA1).

Usage: python3 make_tls_fixtures.py OUT_DIR. The PFXs (client.pfx and its spares) use the
legacy PKCS#12 algorithms that every CryptoAPI implementation (Wine's included) imports;
password "msicert".
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, issuer: str, key, issuer_key, *, ca: bool, eku=None, san=None):
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


SPARE_CLIENT_KEYS = 3


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    ca_key = rsa.generate_private_key(65537, 2048)
    ca = _cert("msicert-test-ca", "msicert-test-ca", ca_key, ca_key, ca=True)
    server_key = rsa.generate_private_key(65537, 2048)
    server = _cert(
        "127.0.0.1",
        "msicert-test-ca",
        server_key,
        ca_key,
        ca=False,
        eku=[ExtendedKeyUsageOID.SERVER_AUTH],
        san=[x509.DNSName("localhost")],
    )
    (out / "ca.pem").write_bytes(ca.public_bytes(pem))
    (out / "server.pem").write_bytes(server.public_bytes(pem))
    (out / "server.key").write_bytes(
        server_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    encryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(2048)
        .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
        .hmac_hash(hashes.SHA1())
        .build(b"msicert")
    )
    # client.pfx, plus spares with their own keys: Wine's SChannel (GnuTLS) fails to sign with
    # about one imported CAPI key in ten, on every try with that key, so a Wine-tier test that
    # hits it moves on to a spare (tests/native/test_windows_winhttp.py). Real Windows uses
    # client.pfx only.
    for name in ("client.pfx", *(f"client-spare-{i}.pfx" for i in range(1, SPARE_CLIENT_KEYS + 1))):
        client_key = rsa.generate_private_key(65537, 2048)
        client = _cert(
            "msicert-test-client",
            "msicert-test-ca",
            client_key,
            ca_key,
            ca=False,
            eku=[ExtendedKeyUsageOID.CLIENT_AUTH],
        )
        (out / name).write_bytes(
            pkcs12.serialize_key_and_certificates(b"client", client_key, client, None, encryption)
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
