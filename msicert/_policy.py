"""Pure decisions about a certificate at an instant: usable? renewal due? which one wins?

Nothing here reads a clock or touches a file: every function takes ``now`` (POSIX seconds).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Protocol, TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.x509.oid import NameOID

from ._identity import Identity, is_guid

__all__ = [
    "DEFAULT_ISSUER_CN",
    "SYSTEM_ASSIGNED_CN",
    "State",
    "identity_mismatch",
    "issuer_matches",
    "load_certificate",
    "pick_best",
    "renew_after",
    "renew_fraction",
    "skew",
    "state",
]

DEFAULT_ISSUER_CN = "managedidentitysnissuer.login.microsoft.com"
_MAX_SKEW = 300.0
_F_MIN, _F_SPAN = 0.45, 0.05


class State(enum.Enum):
    """Where a certificate stands at ``now``."""

    FRESH = "fresh"  # usable, renewal not yet due
    RENEW = "renew"  # usable, past renew_after
    EXPIRED = "expired"  # now >= NotAfter - skew
    NOT_YET_VALID = "not_yet_valid"  # now < NotBefore - skew


def renew_fraction(thumbprint: bytes) -> float:
    """f in [0.45, 0.50) from the thumbprint: every process agrees, a fleet spreads out."""
    return _F_MIN + _F_SPAN * (int.from_bytes(thumbprint[:8], "big") / 2.0**64)


def renew_after(not_before: float, not_after: float, thumbprint: bytes) -> float:
    """NotBefore + lifetime x f."""
    return not_before + (not_after - not_before) * renew_fraction(thumbprint)


def skew(not_before: float, not_after: float) -> float:
    """min(5 min, 1 % of the lifetime)."""
    return min(_MAX_SKEW, 0.01 * max(0.0, not_after - not_before))


def state(not_before: float, not_after: float, renew_at: float, now: float) -> State:
    """Classify a certificate with validity [not_before, not_after] and ``renew_at``.

    The same skew that retires a certificate early admits it early: a clock that lags IMDS's
    by a few seconds must not reject (and re-mint in a loop) a certificate just issued.
    """
    margin = skew(not_before, not_after)
    if now < not_before - margin:
        return State.NOT_YET_VALID
    if now >= not_after - margin:
        return State.EXPIRED
    if now >= renew_at:
        return State.RENEW
    return State.FRESH


# What cryptography raises for a malformed certificate: on load (InvalidVersion is no
# ValueError) and later, when a lazily parsed part is first touched (names: ValueError,
# KeyError, TypeError; an unknown key algorithm: UnsupportedAlgorithm).
_CERT_ERRORS = (ValueError, TypeError, KeyError, x509.InvalidVersion, UnsupportedAlgorithm)


def load_certificate(der: bytes) -> x509.Certificate:
    """Parse DER X.509 and touch every part msicert reads later; ValueError if any is bad.

    cryptography parses names, the public key and the validity lazily, so a certificate that
    loads can still raise later (and not always ValueError). After this returns, those
    accessors are known to work on these bytes.
    """
    try:
        cert = x509.load_der_x509_certificate(der)
        cert.subject.rfc4514_string()
        cert.issuer.rfc4514_string()
        cert.public_key()
        cert.not_valid_before_utc.timestamp()
        cert.not_valid_after_utc.timestamp()
    except _CERT_ERRORS as exc:
        raise ValueError(f"not a usable DER X.509 certificate ({type(exc).__name__})") from exc
    return cert


def _single(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    values = name.get_attributes_for_oid(oid)
    if len(values) != 1:
        return None
    value = values[0].value
    return value if isinstance(value, str) else None


#: The subject CN that MSAL.NET's tests expect on the system-assigned identity's certificate
#: (``Constants.ManagedIdentityDefaultClientId``); MSAL Go's docs say the canonical client id
#: GUID instead, so both are accepted for that identity.
SYSTEM_ASSIGNED_CN = "system_assigned_managed_identity"


def issuer_matches(issuer: x509.Name, expected: str) -> bool:
    """MSAL.NET's rule: ``expected`` occurs in the issuer DN, ignoring case.

    MSAL.NET (WindowsCngKeyOperations) looks for its issuer name as a case-insensitive
    fragment of the whole issuer DN string, so extra RDNs (and any RDN order) are accepted.
    Each attribute value is searched, which is the same test for a host name fragment (it
    contains no ``,`` or ``=``) and does not depend on how a DN is rendered as text.
    """
    needle = expected.strip().lower()
    if not needle:
        return False
    return any(
        isinstance(attr.value, str) and needle in attr.value.lower() for attr in issuer
    ) or needle in issuer.rfc4514_string().lower()


def _names(value: str | Iterable[str] | None) -> set[str]:
    if value is None:
        return set()
    items = [value] if isinstance(value, str) else list(value)
    return {v.lower() for v in items if v}


def identity_mismatch(
    cert: x509.Certificate,
    identity: Identity,
    *,
    issuer_cn: str = DEFAULT_ISSUER_CN,
    client_id: str | Iterable[str] | None = None,
    tenant_id: str | Iterable[str] | None = None,
    subject_vetted: bool = False,
) -> str | None:
    """Why ``cert`` does not belong to ``identity`` (None when it does).

    ``subject_vetted`` (a store entry whose subject was recorded when it was minted): the
    subject was checked then, so only the selector's client id and the issuer are checked.

    The subject must hold one CN and one DC (other RDNs are tolerated). CN is a client id:
    one of ``client_id`` (getplatformmetadata's and issuecredential's, compared without case)
    when given, else any GUID; the system-assigned identity may also carry
    ``system_assigned_managed_identity``. A ``client_id`` selector fixes the CN. DC must be one
    of ``tenant_id`` when given. The issuer must contain ``issuer_cn`` (``issuer_matches``).
    """
    cn = _single(cert.subject, NameOID.COMMON_NAME)
    dc = _single(cert.subject, NameOID.DOMAIN_COMPONENT)
    if subject_vetted:
        expected = identity.expects_client_id()
        if expected is not None and (cn is None or cn.lower() != expected.lower()):
            return "subject CN is another client id"
        return _issuer_problem(cert, issuer_cn)
    if cn is None or dc is None:
        return "subject is not CN=<client id>, DC=<tenant>"
    system_literal = identity.kind == "system" and cn.lower() == SYSTEM_ASSIGNED_CN
    expected = identity.expects_client_id()
    if expected is not None and cn.lower() != expected.lower():
        return "subject CN is another client id"
    client_ids = _names(client_id)
    if not system_literal:
        if client_ids:
            if cn.lower() not in client_ids:
                return "subject CN differs from the recorded client id"
        elif not is_guid(cn):
            return "subject CN is not a GUID (nor the system-assigned literal)"
    tenants = _names(tenant_id)
    if tenants and dc.lower() not in tenants:
        return "subject DC differs from the recorded tenant"
    return _issuer_problem(cert, issuer_cn)


ISSUER_MISMATCH = "issuer is "
"""How every issuer-mismatch reason starts: the client keeps such an entry (the expectation,
``issuer=``, may be what is wrong) instead of deleting a certificate on its own say-so."""


def _issuer_problem(cert: x509.Certificate, issuer_cn: str) -> str | None:
    """Expected vs found, so that a wrong ``issuer=`` explains itself (only on a mismatch)."""
    if issuer_matches(cert.issuer, issuer_cn):
        return None
    found = cert.issuer.rfc4514_string()
    return f"{ISSUER_MISMATCH}{found!r}, expected {issuer_cn!r} (issuer= or $MSICERT_ISSUER)"


class _Dated(Protocol):
    @property
    def not_after_ts(self) -> float: ...


T = TypeVar("T", bound=_Dated)


def pick_best(candidates: Iterable[T]) -> T | None:
    """Newest NotAfter wins among (already usable) candidates."""
    best: T | None = None
    for c in candidates:
        if best is None or c.not_after_ts > best.not_after_ts:
            best = c
    return best
