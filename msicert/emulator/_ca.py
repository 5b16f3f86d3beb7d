"""The emulator's certificate authorities, generated once per process.

Key generation dominates start-up (RSA-2048 takes tens of milliseconds), so the issuing CA,
the spare "wrong" key and the ESTS server certificates are cached at module level and shared
by every Emulator in the process. That mirrors Azure: one issuer, trusted by every ESTS.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import threading
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "ISSUER_CN",
    "ISSUER_CNS",
    "SOVEREIGN_ISSUER_CN",
    "IssuingCa",
    "ServerTls",
    "issue",
    "issuing_ca",
    "other_key",
    "server_tls",
    "trusted_issuers_pem",
    "x5t_s256",
]

ISSUER_CN = "managedidentitysnissuer.login.microsoft.com"
SOVEREIGN_ISSUER_CN = "managedidentitysnissuer.login.microsoftonline.us"
"""An issuer name a sovereign cloud might use: the name msicert looks for is not in it."""
ISSUER_CNS = (ISSUER_CN, SOVEREIGN_ISSUER_CN)
_SERVER_CA_CN = "msicert emulator ESTS test CA"
_LOOPBACK_SANS = ("127.0.0.1", "::1", "localhost")

_lock = threading.Lock()
_cache: dict[str, object] = {}


@dataclass(frozen=True)
class IssuingCa:
    """The CA that signs binding certificates (subject ``CN=<ISSUER_CN>``)."""

    key: rsa.RSAPrivateKey
    certificate: x509.Certificate
    pem: bytes


@dataclass(frozen=True)
class ServerTls:
    """ESTS server credentials: the CA PEM clients trust and the leaf chain + key PEM."""

    ca_pem: bytes
    leaf_pem: bytes
    key_pem: bytes


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def _cn(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _ca_certificate(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, name: x509.Name
) -> x509.Certificate:
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def issuing_ca(cn: str = ISSUER_CN) -> IssuingCa:
    """The process-wide issuing CA named ``cn`` (one of :data:`ISSUER_CNS`; created on first
    use)."""
    if cn not in ISSUER_CNS:
        raise ValueError(f"unknown issuer {cn!r}; expected one of {', '.join(ISSUER_CNS)}")
    with _lock:
        cached = _cache.get("issuer:" + cn)
        if isinstance(cached, IssuingCa):
            return cached
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        certificate = _ca_certificate(key, _cn(cn))
        ca = IssuingCa(key, certificate, certificate.public_bytes(serialization.Encoding.PEM))
        _cache["issuer:" + cn] = ca
        return ca


def trusted_issuers_pem() -> str:
    """Every issuing CA, PEM: what ESTS trusts for client certificates."""
    return "".join(issuing_ca(cn).pem.decode("ascii") for cn in ISSUER_CNS)


def other_key() -> rsa.RSAPrivateKey:
    """A second RSA-2048 key, for certificates deliberately issued over the wrong key."""
    with _lock:
        cached = _cache.get("other")
        if isinstance(cached, rsa.RSAPrivateKey):
            return cached
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _cache["other"] = key
        return key


def _san_for(host: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for text in dict.fromkeys((*_LOOPBACK_SANS, host)):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(text)))
        except ValueError:
            names.append(x509.DNSName(text))
    return names


def _server_leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    cn: str,
    names: list[x509.GeneralName],
    *,
    days: int,
) -> ServerTls:
    """A TLS server leaf (EC P-256, serverAuth) for ``names``, signed by the given CA."""
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_cn(cn))
        .issuer_name(ca_cert.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return ServerTls(
        ca_pem=ca_cert.public_bytes(serialization.Encoding.PEM),
        leaf_pem=leaf.public_bytes(serialization.Encoding.PEM),
        key_pem=leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def server_tls(host: str) -> ServerTls:
    """ESTS server material whose leaf names loopback and ``host`` (cached per host)."""
    with _lock:
        ca_entry = _cache.get("server-ca")
        if not isinstance(ca_entry, tuple):
            ca_key = ec.generate_private_key(ec.SECP256R1())
            ca_entry = (ca_key, _ca_certificate(ca_key, _cn(_SERVER_CA_CN)))
            _cache["server-ca"] = ca_entry
        ca_key, ca_cert = ca_entry
        cached = _cache.get(f"leaf:{host}")
        if isinstance(cached, ServerTls):
            return cached
        material = _server_leaf(ca_key, ca_cert, "localhost", _san_for(host), days=825)
        _cache[f"leaf:{host}"] = material
        return material


def issue(
    ca: IssuingCa,
    public_key: rsa.RSAPublicKey,
    subject: x509.Name,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> x509.Certificate:
    """A binding certificate: client-auth leaf over ``public_key``, signed SHA-256 RSA."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )


def x5t_s256(certificate_der: bytes) -> str:
    """RFC 8705 thumbprint: base64url, unpadded, of SHA-256 over the certificate DER."""
    digest = hashlib.sha256(certificate_der).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def fault_server_tls(host: str, *, trusted: bool) -> ServerTls:
    """ESTS server material a client must refuse (for the handshake faults).

    ``trusted``: a leaf from the trusted server CA that names only ``wrong-name.invalid``;
    otherwise a loopback leaf from a throwaway CA no client trusts. Cached per host and kind.
    """
    server_tls(host)  # the trusted server CA exists from here on
    label = f"fault:{'wrong-name' if trusted else 'untrusted'}:{host}"
    with _lock:
        cached = _cache.get(label)
        if isinstance(cached, ServerTls):
            return cached
        if trusted:
            ca_key, ca_cert = _cache["server-ca"]  # type: ignore[misc]
            names: list[x509.GeneralName] = [x509.DNSName("wrong-name.invalid")]
        else:
            ca_key = ec.generate_private_key(ec.SECP256R1())
            ca_cert = _ca_certificate(ca_key, _cn("msicert emulator untrusted CA"))
            names = _san_for(host)
        material = _server_leaf(ca_key, ca_cert, "msicert emulator fault", names, days=30)
        _cache[label] = material
        return material
