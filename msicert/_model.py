"""Value types handed to callers: the binding certificate and the access token."""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime, timezone

from cryptography import x509

from . import _policy
from ._frozen import Frozen
from ._identity import Identity

__all__ = ["AccessToken", "BindingCertificate", "x5t_s256"]


def x5t_s256(der: bytes) -> str:
    """base64url (no padding) of SHA-256 over the certificate DER (RFC 8705)."""
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode("ascii")


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


class BindingCertificate(Frozen):
    """The MSI v2 binding certificate plus what the token leg needs, and where it came from.

    ``source`` is ``"memory"``, ``"store"`` or ``"imds"``; ``key`` is ``"file"``,
    ``"in-memory"``, ``"keyguard"`` or ``"software-ksp"``; ``store`` describes where the entry
    lives (a file path, or ``CurrentUser\\My``).
    """

    # No __slots__: from_der and with_source fill __dict__ in one call (the hot paths).
    _fields = ("certificate", "der", "identity", "client_id", "tenant_id", "mtls_endpoint",
               "identity_type", "source", "key", "store", "not_before_ts", "not_after_ts",
               "renew_after_ts", "x5t_s256", "cert_pem")
    _hidden = frozenset({"cert_pem"})
    _compare = False  # one certificate object is one entry: identity equality, as before

    certificate: x509.Certificate
    der: bytes
    identity: Identity
    client_id: str
    tenant_id: str
    mtls_endpoint: str
    identity_type: str
    source: str
    key: str
    store: str
    not_before_ts: float
    not_after_ts: float
    renew_after_ts: float
    x5t_s256: str
    cert_pem: bytes

    def __init__(
        self,
        certificate: x509.Certificate,
        der: bytes,
        identity: Identity,
        client_id: str,
        tenant_id: str,
        mtls_endpoint: str,
        identity_type: str,
        source: str,
        key: str,
        store: str,
        not_before_ts: float,
        not_after_ts: float,
        renew_after_ts: float,
        x5t_s256: str,
        cert_pem: bytes = b"",
    ) -> None:
        self.__dict__.update(
            certificate=certificate, der=der, identity=identity, client_id=client_id,
            tenant_id=tenant_id, mtls_endpoint=mtls_endpoint, identity_type=identity_type,
            source=source, key=key, store=store, not_before_ts=not_before_ts,
            not_after_ts=not_after_ts, renew_after_ts=renew_after_ts, x5t_s256=x5t_s256,
            cert_pem=cert_pem,
        )

    @classmethod
    def from_der(
        cls,
        der: bytes,
        certificate: x509.Certificate,
        *,
        identity: Identity,
        client_id: str,
        tenant_id: str,
        mtls_endpoint: str,
        identity_type: str,
        source: str,
        key: str,
        store: str,
        cert_pem: bytes = b"",
    ) -> BindingCertificate:
        """Derive the timing fields once (policy is pure; this is where it is applied)."""
        digest = hashlib.sha256(der).digest()
        nb = certificate.not_valid_before_utc.timestamp()
        na = certificate.not_valid_after_utc.timestamp()
        return cls(
            certificate, der, identity, client_id, tenant_id, mtls_endpoint, identity_type,
            source, key, store, nb, na, _policy.renew_after(nb, na, digest),
            base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii"), cert_pem,
        )

    @property
    def not_before(self) -> datetime:
        """NotBefore (aware, UTC)."""
        return _utc(self.not_before_ts)

    @property
    def not_after(self) -> datetime:
        """NotAfter (aware, UTC)."""
        return _utc(self.not_after_ts)

    @property
    def renew_after(self) -> datetime:
        """When proactive renewal starts (aware, UTC)."""
        return _utc(self.renew_after_ts)

    @property
    def subject(self) -> str:
        """RFC 4514 subject."""
        return self.certificate.subject.rfc4514_string()

    @property
    def issuer(self) -> str:
        """RFC 4514 issuer."""
        return self.certificate.issuer.rfc4514_string()

    def with_source(self, source: str) -> BindingCertificate:
        """The same certificate labelled with another ``source`` (cheap shallow copy)."""
        twin = object.__new__(BindingCertificate)
        twin.__dict__.update(self.__dict__)
        twin.__dict__["source"] = source
        return twin

    def state(self, now: float) -> _policy.State:
        """Policy state at ``now``."""
        return _policy.state(self.not_before_ts, self.not_after_ts, self.renew_after_ts, now)

    def to_json(self) -> dict[str, str]:
        """The ``msicert cert --json`` object."""
        return {
            "x5t_s256": self.x5t_s256,
            "subject": self.subject,
            "issuer": self.issuer,
            "not_before": self.not_before.isoformat().replace("+00:00", "Z"),
            "not_after": self.not_after.isoformat().replace("+00:00", "Z"),
            "renew_after": self.renew_after.isoformat().replace("+00:00", "Z"),
            "source": self.source,
            "identity": self.identity.alias,
            "client_id": self.client_id,
            "tenant_id": self.tenant_id,
            "mtls_endpoint": self.mtls_endpoint,
            "identity_type": self.identity_type,
            "key": self.key,
            "store": self.store,
        }


class AccessToken(Frozen):
    """An ``mtls_pop`` access token bound to the certificate ``x5t_s256``.

    ``source`` is ``"cache"`` or ``"identity_provider"``; ``expires_on`` is POSIX seconds.
    The token text never appears in ``repr``.
    """

    _fields = ("access_token", "token_type", "expires_on", "x5t_s256", "source", "refresh_on")
    __slots__ = _fields
    _hidden = frozenset({"access_token"})

    access_token: str
    token_type: str
    expires_on: int
    x5t_s256: str
    source: str
    refresh_on: float

    def __init__(
        self,
        access_token: str,
        token_type: str,
        expires_on: int,
        x5t_s256: str,
        source: str,
        refresh_on: float = 0.0,
    ) -> None:
        self._set(access_token=access_token, token_type=token_type, expires_on=expires_on,
                  x5t_s256=x5t_s256, source=source, refresh_on=refresh_on)
