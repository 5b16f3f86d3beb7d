"""Fault injection: what a queued fault is, which endpoints accept it, and the FIFO queues."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

__all__ = ["ENDPOINTS", "HANDSHAKE_KINDS", "IMDS_ENDPOINTS", "Fault", "FaultQueues", "check_fault"]

IMDS_ENDPOINTS = ("getplatformmetadata", "issuecredential")
ESTS_ENDPOINTS = ("token", "resource")
RESOURCE_ENDPOINTS = ("keyvault", "blob")  # the Key Vault and Blob stand-ins (_resources.py)
ENDPOINTS = IMDS_ENDPOINTS + ESTS_ENDPOINTS + RESOURCE_ENDPOINTS

_ALL = frozenset(ENDPOINTS)
_KIND_ENDPOINTS: dict[str, frozenset[str]] = {
    "": _ALL,
    "no_server_header": frozenset(IMDS_ENDPOINTS),
    "malformed_json": frozenset(IMDS_ENDPOINTS + ESTS_ENDPOINTS),
    "wrong_key": frozenset({"issuecredential"}),
    "expired": frozenset({"issuecredential"}),
    "not_yet_valid": frozenset({"issuecredential"}),
    "wrapped_certificate": frozenset({"issuecredential"}),
    "invalid_client": frozenset({"token"}),
    "reject_handshake": frozenset(ESTS_ENDPOINTS),
    "wrong_token_type": frozenset({"token"}),
    "expires_in_string": frozenset({"token"}),
    "reject_certificate": frozenset(ESTS_ENDPOINTS),
    "untrusted_server": frozenset(ESTS_ENDPOINTS),
    "wrong_server_name": frozenset(ESTS_ENDPOINTS),
    "close_handshake": frozenset(ESTS_ENDPOINTS),
    "reset_handshake": frozenset(ESTS_ENDPOINTS),
    "trickle_headers": frozenset(ESTS_ENDPOINTS),
    "trickle_body": frozenset(ESTS_ENDPOINTS),
    "claims_challenge": frozenset({"resource"}),
}
# ESTS faults that act on the next new TLS connection (idle kept-alive ones are closed).
HANDSHAKE_KINDS = frozenset(
    {"reject_handshake", "reject_certificate", "untrusted_server", "wrong_server_name",
     "close_handshake", "reset_handshake"}
)
MISSING_FIELD = "missing_field:"


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour, queued per endpoint and applied to the next request(s).

    ``status`` answers that HTTP status; ``body`` replaces the body (default: a JSON error body
    for a bare status fault); ``retry_after`` adds a ``Retry-After`` header (seconds);
    ``delay`` sleeps before answering; ``times`` is how many requests it applies to
    (``None`` = every request until cleared); ``error_codes`` (``invalid_client`` only) are
    the AADSTS codes of the answer: ``None`` gives ESTS's revocation code 1000613 (a
    certificate or attestation no longer accepted), ``()`` leaves the ``error_codes`` member
    out (the revocation spec's "unspecified credential issue"), any other tuple is sent as
    given (e.g. ``(7000215,)``, which no new certificate fixes); the answer is HTTP 401 unless
    ``status`` says otherwise. ``kind`` names a contract-level misbehaviour:
    ``no_server_header``, ``malformed_json``, ``missing_field:<name>``, ``wrong_key``,
    ``expired``, ``not_yet_valid``, ``invalid_client``, ``reject_handshake``,
    ``wrapped_certificate`` (the certificate's base64 broken into CRLF-separated lines, as
    .NET's and Go's decoders accept), ``wrong_token_type``, ``expires_in_string`` or
    ``claims_challenge`` (resource: 401 with
    ``WWW-Authenticate: mtls_pop error="insufficient_claims", claims="<base64url>"``, of
    ``claims`` when given, else a CAE ``nbf`` challenge; every
    token minted before it is challenged from then on, so only a token requested after the
    challenge is accepted, as with a continuous access evaluation event).

    ``reject_handshake`` (token or resource) acts on the next new TLS connection to ESTS: the
    server reads the ClientHello and answers with a fatal ``handshake_failure`` alert, so the
    client's handshake raises ``ssl.SSLError`` (``SSLV3_ALERT_HANDSHAKE_FAILURE``; urllib3
    wraps it in ``urllib3.exceptions.SSLError``, and its default Retry counts it as an "other"
    error and retries). Injecting it closes idle kept-alive ESTS connections, so a pooled
    client needs a fresh handshake. It counts as one request of its endpoint, recorded with
    method ``"TLS"``. The other handshake kinds work the same way:

    - ``reject_certificate``: the server checks the client certificate against a CA that did
      not issue it, so OpenSSL itself sends the ``unknown_ca`` alert about *our* certificate
      (TLS 1.3: the client reads it after its side of the handshake, with the answer);
    - ``untrusted_server``: the server presents a leaf from a CA no client trusts;
    - ``wrong_server_name``: the server presents a leaf from the trusted CA that names only
      ``wrong-name.invalid`` (a hostname mismatch);
    - ``close_handshake``: the server reads the ClientHello and closes the connection;
      ``reset_handshake`` resets it instead (an RST).

    ``trickle_headers`` / ``trickle_body`` answer slowly: the status line, then one header
    line (or, after the whole head, one body byte) every ``delay`` seconds (0.2 when unset),
    until the client gives up; ``delay`` is not slept before answering for these kinds.
    """

    status: int | None = None
    body: bytes | None = None
    retry_after: float | None = None
    delay: float = 0.0
    times: int | None = 1
    kind: str = ""
    error_codes: tuple[int, ...] | None = None
    claims: str | None = None

    @property
    def replaces_reply(self) -> bool:
        """A fault without a kind that sets a status or a body replaces the whole answer."""
        return not self.kind and (self.status is not None or self.body is not None)


def check_fault(endpoint: str, fault: Fault) -> None:
    """Raise ValueError when ``fault`` cannot apply to ``endpoint``."""
    if endpoint not in _ALL:
        raise ValueError(f"unknown endpoint {endpoint!r}; expected one of {', '.join(ENDPOINTS)}")
    kind = fault.kind
    if kind.startswith(MISSING_FIELD):
        if not kind[len(MISSING_FIELD) :]:
            raise ValueError("missing_field: needs a field name, e.g. missing_field:clientId")
        kind = ""
    allowed = _KIND_ENDPOINTS.get(kind)
    if allowed is None:
        raise ValueError(f"unknown fault kind {fault.kind!r}")
    if endpoint not in allowed:
        raise ValueError(f"fault kind {fault.kind!r} does not apply to {endpoint!r}")
    if fault.status is not None and not 100 <= fault.status <= 599:
        raise ValueError(f"status {fault.status} is not an HTTP status")
    if fault.times is not None and fault.times < 1:
        raise ValueError("times must be >= 1 or None (forever)")
    if fault.delay < 0 or (fault.retry_after is not None and fault.retry_after < 0):
        raise ValueError("delay and retry_after must not be negative")
    if fault.error_codes is not None:
        if fault.kind != "invalid_client":
            raise ValueError("error_codes applies to kind 'invalid_client' only")
        if not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 1 << 31
                   for c in fault.error_codes):
            raise ValueError("error_codes must be non-negative integers")
    if fault.claims is not None and fault.kind != "claims_challenge":
        raise ValueError("claims applies to kind 'claims_challenge' only")


@dataclass
class _Entry:
    fault: Fault
    remaining: int | None


@dataclass
class FaultQueues:
    """Thread-safe FIFO of faults per endpoint; the head applies until its ``times`` run out."""

    _lock: threading.Lock = field(default_factory=threading.Lock)
    _queues: dict[str, deque[_Entry]] = field(
        default_factory=lambda: {name: deque() for name in ENDPOINTS}
    )

    def push(self, endpoint: str, fault: Fault) -> None:
        """Queue ``fault`` behind any earlier ones for ``endpoint``."""
        check_fault(endpoint, fault)
        with self._lock:
            self._queues[endpoint].append(_Entry(fault, fault.times))

    def take(self, endpoint: str, *, kind: str | None = None) -> Fault | None:
        """Consume one application of the head fault (only if it has ``kind``, when given)."""
        with self._lock:
            queue = self._queues[endpoint]
            if not queue or (kind is not None and queue[0].fault.kind != kind):
                return None
            entry = queue[0]
            if entry.remaining is not None:
                entry.remaining -= 1
                if entry.remaining <= 0:
                    queue.popleft()
            return entry.fault

    def clear(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            for queue in self._queues.values():
                queue.clear()
