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
    "CLOCK_LAG",
    "DEFAULT_ISSUER_CN",
    "MIN_BINDING_LIFETIME",
    "SYSTEM_ASSIGNED_CN",
    "IssuerMismatch",
    "Mismatch",
    "State",
    "der_element",
    "identity_mismatch",
    "issuer_fragment_in",
    "issuer_matches",
    "load_certificate",
    "name_values",
    "pick_best",
    "renew_after",
    "renew_fraction",
    "skew",
    "state",
    "vetted_names_mismatch",
]

DEFAULT_ISSUER_CN = "managedidentitysnissuer.login.microsoft.com"
_MAX_SKEW = 300.0
CLOCK_LAG = 900.0
"""How far NotBefore may lie ahead of this host's clock (seconds) for the certificate to be
used: IMDS and ESTS judge validity by their own clock, so a host clock up to 15 minutes behind
theirs must not reject, and re-mint in a loop, what they just issued."""
MIN_BINDING_LIFETIME = 86400.0
"""A certificate with less life than this left is renewed before a new token is bound to it,
when renewal is due and a mint is possible (the references' 24-hour rule: MSAL.NET's
``CertificateCacheEntry.MinRemainingLifetime``, MSAL Go's ``bindingCertRefreshWindow``)."""
_F_MIN, _F_SPAN = 0.45, 0.05


class State(enum.Enum):
    """Where a certificate stands at ``now``."""

    FRESH = "fresh"  # usable, renewal not yet due
    RENEW = "renew"  # usable, past renew_after
    EXPIRED = "expired"  # now >= NotAfter - skew
    NOT_YET_VALID = "not_yet_valid"  # now < NotBefore - CLOCK_LAG


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

    Not yet valid only before NotBefore - :data:`CLOCK_LAG`: a host clock up to 15 minutes
    behind the service's must use (not reject and re-mint) what the service just issued.
    Expired from NotAfter - :func:`skew`, so it is retired before the service refuses it.
    """
    if now < not_before - CLOCK_LAG:
        return State.NOT_YET_VALID
    if now >= not_after - skew(not_before, not_after):
        return State.EXPIRED
    if now >= renew_at:
        return State.RENEW
    return State.FRESH


# What cryptography raises for a malformed certificate: on load (InvalidVersion is no
# ValueError) and later, when a lazily parsed part is first touched (names: ValueError,
# KeyError, TypeError; an unknown key algorithm: UnsupportedAlgorithm).
CERT_ERRORS = (ValueError, TypeError, KeyError, x509.InvalidVersion, UnsupportedAlgorithm)


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
    except CERT_ERRORS as exc:
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


def issuer_fragment_in(values: Iterable[str], expected: str) -> bool:
    """True when ``expected`` (stripped) occurs in one of ``values``, ignoring case.

    The per-attribute half of :func:`issuer_matches`; an empty ``expected`` matches nothing.
    """
    needle = expected.strip().lower()
    return bool(needle) and any(needle in value.lower() for value in values)


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
    return issuer_fragment_in(
        (attr.value for attr in issuer if isinstance(attr.value, str)), needle
    ) or needle in issuer.rfc4514_string().lower()


# --- names straight from DER (the store's read path) -----------------------------------------
# Building cryptography ``Name`` objects and RFC 4514 strings costs more than parsing the whole
# certificate; a store entry records its names' DER at mint time, so the read path compares
# bytes and reads the few attribute values it needs with the strict reader below. It accepts
# only what cryptography's own name parsing accepts without error or warning, so a name it
# reads is one ``cert.subject``/``cert.issuer`` and ``rfc4514_string()`` read too; anything
# else returns None and the caller takes the cryptography path.

#: DER contents of the OIDs the identity rules read: commonName, domainComponent.
OID_CN = b"\x55\x04\x03"
OID_DC = b"\x09\x92\x26\x89\x93\xf2\x2c\x64\x01\x19"
# cryptography warns about these outside their lengths (UTF-8 bytes): commonName 1-64,
# countryName and jurisdictionCountryName exactly 2.
_LENGTH_LIMITS = {
    OID_CN: (1, 64),
    b"\x55\x04\x06": (2, 2),
    b"\x2b\x06\x01\x04\x01\x82\x37\x3c\x02\x01\x03": (2, 2),
}
# String types read here (a subset of cryptography's: its other types decode differently).
_UTF8, _PRINTABLE, _IA5 = 0x0C, 0x13, 0x16
_PRINTABLE_BYTES = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 '()+,-./:=?"
)
_good_oids: set[bytes] = {OID_CN, OID_DC}  # OID encodings already checked (public bytes)


def der_element(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, start, stop) of the DER element at ``data[pos:end]``: its value is
    ``data[start:stop]``. ValueError unless it is a low-tag-number element with a definite,
    minimally encoded length that ends within ``end``."""
    if pos + 2 > end:
        raise ValueError("truncated DER element")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise ValueError("high DER tag number")
    length = data[pos + 1]
    start = pos + 2
    if length >= 0x80:
        count = length & 0x7F
        if not 0 < count <= 3 or start + count > end or data[start] == 0:
            raise ValueError("bad DER length")
        length = int.from_bytes(data[start : start + count], "big")
        start += count
        if length < 0x80:
            raise ValueError("non-minimal DER length")
    stop = start + length
    if stop > end:
        raise ValueError("DER element overruns its container")
    return tag, start, stop


def _oid_ok(oid: bytes) -> bool:
    """An OID's contents: base-128 arcs, none starting with a 0x80 byte, each of at most 9
    bytes (63 bits, well within what cryptography's parser takes), 63 bytes in all."""
    if oid in _good_oids:
        return True
    if not 0 < len(oid) <= 63 or oid[-1] >= 0x80:
        return False
    at = 0  # bytes read of the current arc
    for byte in oid:
        if at == 0 and byte == 0x80:
            return False
        at += 1
        if byte < 0x80:
            at = 0
        elif at >= 9:
            return False
    _good_oids.add(oid)
    return True


def name_values(der: bytes) -> list[tuple[bytes, str]] | None:
    """The (OID DER contents, value) pairs of a DER X.501 Name, in encoding order.

    None for any name this strict reader does not vouch for: another string type (BMP,
    Teletex, ...), a value that is not valid for its type, an empty or unsorted multi-valued
    RDN, a duplicate attribute in one RDN, a length cryptography would warn about, or
    malformed DER. cryptography parses every name this accepts to the same values.
    """
    element = der_element
    try:
        tag, pos, end = element(der, 0, len(der))
        if tag != 0x30 or end != len(der):
            return None
        out: list[tuple[bytes, str]] = []
        while pos < end:
            tag, rpos, rend = element(der, pos, end)
            if tag != 0x31 or rpos == rend:
                return None
            first = len(out)
            previous = b""
            while rpos < rend:
                # AttributeTypeAndValue ::= SEQUENCE { OID, value }: short DER lengths are
                # read inline (a name is a hot spot of a first store lookup)
                if der[rpos] != 0x30:
                    return None
                size = der[rpos + 1]
                if size < 0x80:
                    apos, aend = rpos + 2, rpos + 2 + size
                    if aend > rend:
                        return None
                else:
                    tag, apos, aend = element(der, rpos, rend)
                encoding = der[rpos:aend]
                if encoding <= previous:  # DER sorts a SET OF strictly
                    return None
                previous, rpos = encoding, aend
                size = der[apos + 1]
                if der[apos] != 0x06 or size >= 0x80:
                    return None
                opos, oend = apos + 2, apos + 2 + size
                oid = der[opos:oend]
                vtag, vpos, vend = element(der, oend, aend)
                if vend != aend or not _oid_ok(oid):
                    return None
                raw = der[vpos:vend]
                if vtag == _UTF8:
                    value = raw.decode("utf-8")
                elif ((vtag == _PRINTABLE and _PRINTABLE_BYTES.issuperset(raw))
                      or (vtag == _IA5 and raw.isascii())):
                    value = raw.decode("ascii")
                else:
                    return None
                limits = _LENGTH_LIMITS.get(oid)
                if limits is not None and not limits[0] <= len(raw) <= limits[1]:
                    return None
                if first != len(out) and (oid, value) in out[first:]:
                    return None  # cryptography refuses a duplicate attribute in one RDN
                out.append((oid, value))
            pos = rend
        return out
    except (ValueError, IndexError, UnicodeDecodeError):
        return None


class Mismatch(str):
    """Why a certificate does not belong to an identity (the text is the reason)."""

    __slots__ = ()


class IssuerMismatch(Mismatch):
    """The issuer is not the one the caller expects. The expectation (``issuer=``,
    ``$MSICERT_ISSUER``) may be what is wrong, so a store entry refused for this is kept
    rather than deleted on the caller's say-so."""

    __slots__ = ()


def _single_value(values: list[tuple[bytes, str]], oid: bytes) -> str | None:
    found = [value for o, value in values if o == oid]
    return found[0] if len(found) == 1 else None


def vetted_names_mismatch(
    subject: list[tuple[bytes, str]],
    issuer: list[tuple[bytes, str]],
    identity: Identity,
    *,
    issuer_cn: str | None,
) -> Mismatch | None:
    """:func:`identity_mismatch` with ``subject_vetted=True``, on :func:`name_values` output.

    Never accepts what :func:`identity_mismatch` refuses. It may refuse an issuer that the
    DN-string half of :func:`issuer_matches` accepts (an ``issuer_cn`` spanning attributes,
    e.g. ``CN=x,O=y``), so a caller confirms a refusal with :func:`identity_mismatch`.
    """
    expected = identity.expects_client_id()
    if expected is not None:
        cn = _single_value(subject, OID_CN)
        if cn is None or cn.lower() != expected.lower():
            return Mismatch("subject CN is another client id")
    if issuer_cn is not None and not issuer_fragment_in((value for _, value in issuer),
                                                         issuer_cn):
        return IssuerMismatch("issuer is not the expected issuer")
    return None


def _names(value: str | Iterable[str] | None) -> set[str]:
    if value is None:
        return set()
    items = [value] if isinstance(value, str) else list(value)
    return {v.lower() for v in items if v}


def identity_mismatch(
    cert: x509.Certificate,
    identity: Identity,
    *,
    issuer_cn: str | None = DEFAULT_ISSUER_CN,
    client_id: str | Iterable[str] | None = None,
    tenant_id: str | Iterable[str] | None = None,
    subject_vetted: bool = False,
) -> Mismatch | None:
    """Why ``cert`` does not belong to ``identity`` (None when it does).

    ``subject_vetted`` (a store entry whose subject was recorded when it was minted): the
    subject was checked then, so only the selector's client id and the issuer are checked.

    The subject must hold one CN and one DC (other RDNs are tolerated). CN is a client id:
    one of ``client_id`` (getplatformmetadata's and issuecredential's, compared without case)
    when given, else any GUID; the system-assigned identity may also carry
    ``system_assigned_managed_identity``. A ``client_id`` selector fixes the CN. DC must be one
    of ``tenant_id`` when given. The issuer must contain ``issuer_cn`` (``issuer_matches``);
    ``issuer_cn=None`` checks no issuer (what IMDS issued, or recorded at mint, is accepted).
    """
    cn = _single(cert.subject, NameOID.COMMON_NAME)
    dc = _single(cert.subject, NameOID.DOMAIN_COMPONENT)
    if subject_vetted:
        expected = identity.expects_client_id()
        if expected is not None and (cn is None or cn.lower() != expected.lower()):
            return Mismatch("subject CN is another client id")
        return _issuer_problem(cert, issuer_cn)
    if cn is None or dc is None:
        return Mismatch("subject is not CN=<client id>, DC=<tenant>")
    system_literal = identity.kind == "system" and cn.lower() == SYSTEM_ASSIGNED_CN
    expected = identity.expects_client_id()
    if expected is not None and cn.lower() != expected.lower():
        return Mismatch("subject CN is another client id")
    client_ids = _names(client_id)
    if not system_literal:
        if client_ids:
            if cn.lower() not in client_ids:
                return Mismatch("subject CN differs from the recorded client id")
        elif not is_guid(cn):
            return Mismatch("subject CN is not a GUID (nor the system-assigned literal)")
    tenants = _names(tenant_id)
    if tenants and dc.lower() not in tenants:
        return Mismatch("subject DC differs from the recorded tenant")
    return _issuer_problem(cert, issuer_cn)


def _issuer_problem(cert: x509.Certificate, issuer_cn: str | None) -> IssuerMismatch | None:
    """Expected vs found, so that a wrong ``issuer=`` explains itself (only on a mismatch)."""
    if issuer_cn is None or issuer_matches(cert.issuer, issuer_cn):
        return None
    found = cert.issuer.rfc4514_string()
    return IssuerMismatch(
        f"issuer is {found!r}, expected {issuer_cn!r} (issuer= or $MSICERT_ISSUER)"
    )


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
