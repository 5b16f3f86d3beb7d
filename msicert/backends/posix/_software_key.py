"""Key providers. Linux/macOS: an RSA-2048 key made in memory, persisted only in the store file.

(Windows adds KeyGuard and software-KSP providers on msicert_native.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ..._secret import Secret
from ...wire._csr import PSS_SALT_LENGTH

if TYPE_CHECKING:
    from ...wire._imds_answers import PlatformMetadata

__all__ = ["SoftwareKey"]


@dataclass(frozen=True)
class SoftwareKey:
    """An RSA-2048 key held by ``cryptography`` (kind ``"file"`` once stored)."""

    private_key: rsa.RSAPrivateKey
    kind: str = "file"

    @classmethod
    def generate(cls) -> SoftwareKey:
        """RSA 2048, public exponent 65537."""
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @property
    def name(self) -> str:
        """No container: the key lives only inside the entry file."""
        return ""

    @property
    def spki_der(self) -> bytes:
        """SubjectPublicKeyInfo DER."""
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, data: bytes) -> bytes:
        """RSASSA-PSS, SHA-256, MGF1-SHA-256, salt 32."""
        return self.private_key.sign(
            data, padding.PSS(padding.MGF1(hashes.SHA256()), PSS_SALT_LENGTH), hashes.SHA256()
        )

    @property
    def key_pem(self) -> Secret[bytes]:
        """Unencrypted PKCS#8 PEM, written only into the 0600 store file.

        Wrapped from the moment it exists: a traceback that captures locals shows the Secret.
        """
        return Secret(self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ))

    def attestation_token(self, meta: PlatformMetadata) -> str | None:
        """None: a software key has no isolation to attest (the non-attested flow)."""
        return None

    def discard(self) -> None:
        """Nothing persisted outside the store file: nothing to delete."""

    def close(self) -> None:
        """Nothing to release."""

    def matches(self, spki_der: bytes) -> bool:
        """True when ``spki_der`` is this key's public half."""
        return spki_der == self.spki_der
