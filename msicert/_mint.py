"""One mint's own steps: the CSR over a new key, issuecredential, and every check on what IMDS
answered, before anything is stored. When to mint (and when not) is :mod:`._lifecycle`'s."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _policy
from ._errors import AttestationRequiredError, ImdsError, ImdsResponseError
from ._frozen import Frozen
from ._identity import Identity
from ._lazylog import LazyLogger
from ._model import BindingCertificate
from ._policy import State

if TYPE_CHECKING:
    from collections.abc import Callable

    from .backends.contract import KeyMaterial
    from .wire._imds import ImdsClient
    from .wire._imds_answers import PlatformMetadata
    from .wire._retry import RetryPolicy

__all__ = ["MINT_OVERHEAD", "Minted", "check_validity", "imds_worst_case", "issue_certificate"]

log = LazyLogger("msicert")

MINT_OVERHEAD = 30.0
"""Seconds a mint may spend outside IMDS (key generation, CSR, attestation, store write): a
lock waiter allows the holder its IMDS budget plus this."""


def imds_worst_case(policy: RetryPolicy, connect_timeout: float, read_timeout: float) -> float:
    """The longest the two IMDS calls of one mint can take under ``policy``.

    Per call: every try the larger budget allows (1 + the retries after a 410) waits at most
    connect + read timeout, and all retry waits together are capped at ``max_total_wait``
    (Retry-After included), times ``scale``. Two calls (getplatformmetadata, issuecredential).
    With the defaults: 2 x (8 x 12 s + 70 s) = 332 s.
    """
    tries = 1 + max(policy.retries, policy.gone_retries)
    waits = policy.max_total_wait
    return 2 * (tries * (connect_timeout + read_timeout) + waits * policy.scale)


class Minted(Frozen):
    """A :class:`~msicert.backends.contract.NewEntry`: what the store links and persists."""

    _fields = ("der", "key", "client_id", "tenant_id", "mtls_endpoint", "identity_type")
    __slots__ = _fields
    _hidden = frozenset({"key"})

    der: bytes
    # The key generate_key returned; its PEM (where exportable) is a Secret inside it.
    key: KeyMaterial
    client_id: str
    tenant_id: str
    mtls_endpoint: str
    identity_type: str

    def __init__(self, der: bytes, key: KeyMaterial, client_id: str, tenant_id: str,
                 mtls_endpoint: str, identity_type: str) -> None:
        self._set(der=der, key=key, client_id=client_id, tenant_id=tenant_id,
                  mtls_endpoint=mtls_endpoint, identity_type=identity_type)


def issue_certificate(
    imds: ImdsClient, meta: PlatformMetadata, key: KeyMaterial, *, identity: Identity,
    issuer_cn: str | None, clock: Callable[[], float], until: float | None,
    bypass_cache: bool, cid: str,
) -> tuple[Minted, BindingCertificate]:
    """CSR over ``key``, issuecredential, and every check on what came back: our key, the
    identity's subject, the issuer (when ``issuer_cn`` is set), usable by this host's clock.
    Returns what to store and the certificate as it will be used."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from .wire._csr import build_csr, csr_to_wire

    csr = build_csr(
        spki_der=key.spki_der, sign=key.sign, client_id=meta.client_id,
        tenant_id=meta.tenant_id, cuid=meta.cuid,
    )
    token = key.attestation_token(meta)
    try:
        issued = imds.issue_credential(identity, csr_to_wire(csr), token, deadline=until,
                                       bypass_cache=bypass_cache, correlation_id=cid)
    except ImdsError as exc:
        from .wire._imds_answers import is_attestation_refusal

        if is_attestation_refusal(exc):
            raise AttestationRequiredError.from_refusal(
                exc, key_kind=key.kind, attested=token is not None
            ) from exc
        raise
    step = "issuecredential"
    try:
        cert = x509.load_der_x509_certificate(issued.certificate_der)
    except ValueError as exc:
        raise ImdsResponseError("issued certificate is not DER X.509", step=step,
                                correlation_id=cid) from exc
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if not key.matches(spki):
        raise ImdsResponseError("issued certificate does not carry our public key",
                                step=step, correlation_id=cid)
    why = _policy.identity_mismatch(
        cert, identity, issuer_cn=issuer_cn,
        client_id=(meta.client_id, issued.client_id),
        tenant_id=(meta.tenant_id, issued.tenant_id),
    )
    if why:
        raise ImdsResponseError(f"issued certificate rejected: {why}", step=step,
                                correlation_id=cid)
    probe = BindingCertificate.from_der(
        issued.certificate_der, cert, identity=identity, client_id=issued.client_id,
        tenant_id=issued.tenant_id, mtls_endpoint=issued.mtls_endpoint,
        identity_type=issued.identity_type, source="imds", key=key.kind, store="",
    )
    check_validity(probe, clock(), cid)  # judged when it arrives
    minted = Minted(
        der=issued.certificate_der, key=key, client_id=issued.client_id,
        tenant_id=issued.tenant_id, mtls_endpoint=issued.mtls_endpoint,
        identity_type=issued.identity_type,
    )
    return minted, probe


def check_validity(probe: BindingCertificate, now: float, cid: str) -> None:
    """Refuse an issued certificate this host cannot use; accept (with one WARNING) one whose
    NotBefore is ahead of this host's clock by at most :data:`~msicert._policy.CLOCK_LAG`."""
    st = probe.state(now)
    ahead = probe.not_before_ts - now
    if st is State.NOT_YET_VALID:
        raise ImdsResponseError(
            f"issued certificate is not yet valid: its NotBefore "
            f"({probe.not_before.isoformat()}) is {_span(ahead)} ahead of this host's clock, "
            f"more than the {_span(_policy.CLOCK_LAG)} tolerated; fix the system clock (NTP)",
            step="issuecredential", correlation_id=cid)
    if st is State.EXPIRED:
        raise ImdsResponseError(
            f"issued certificate is expired by this host's clock (valid "
            f"{probe.not_before.isoformat()} to {probe.not_after.isoformat()}); this host's "
            "clock is probably ahead: fix the system clock (NTP)",
            step="issuecredential", correlation_id=cid)
    if ahead > 0:
        log.warning("clock skew: the new certificate's NotBefore is %s ahead of this host's "
                    "clock; accepted (up to %s is), but fix the system clock (NTP)",
                    _span(ahead), _span(_policy.CLOCK_LAG))


def _span(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"
