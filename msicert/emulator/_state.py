"""State shared by the emulator's servers: configuration, records, faults, issued credentials."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from . import _ca
from ._faults import ENDPOINTS, HANDSHAKE_KINDS, Fault, FaultQueues

__all__ = ["MAX_AHEAD", "MAX_LIFETIME", "SELECTORS", "RecordedRequest", "State"]

logger = logging.getLogger("msicert.emulator")

SELECTORS = ("client_id", "object_id", "mi_res_id")
TENANT_ID = "8d2e6f4a-1b3c-4d5e-9f70-a1b2c3d4e5f6"
SYSTEM_CLIENT_ID = "5e2c1a7d-3b9f-4c21-8d6e-0f4a9b7c3e12"
VM_ID = "1f2e3d4c-5b6a-4798-a1b2-c3d4e5f60718"
VMSS_ID = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
_NAMESPACE = uuid.UUID("3c7d0f5e-2a41-5b8e-9f6c-0d1e2f3a4b5c")
_NOT_YET_VALID_MARGIN = 3600
MAX_LIFETIME = 100 * 365 * 86400.0
"""Longest certificate lifetime (seconds): NotAfter stays far before the year 9999."""
MAX_AHEAD = 86400.0
"""Furthest NotBefore may lie ahead of the moment of issue (a negative backdate)."""


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the emulator received it (``endpoint`` is one of the four names)."""

    endpoint: str
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    time: float


class State:
    """Everything the IMDS and ESTS handlers share; every method is thread-safe."""

    def __init__(self, *, lifetime: float, backdate: float, token_lifetime: float) -> None:
        self.lifetime = lifetime
        self.backdate = backdate
        self.token_lifetime = token_lifetime
        self.tenant_id = TENANT_ID
        self.cuid: dict[str, str] = {"vmId": VM_ID, "vmssId": VMSS_ID}
        # Act as a host whose IMDS issues only to attested KeyGuard keys: issuecredential
        # without an attestation_token is refused (cross-SDK standard: no software keys yet).
        self.require_attestation = False
        self.issuer_cn = _ca.ISSUER_CN  # the issuing CA's name (a sovereign cloud uses another)
        self.ests_url = ""
        self.faults = FaultQueues()
        self.stopping = threading.Event()
        # Set by the Emulator: closes ESTS keep-alive connections so a queued
        # reject_handshake fault meets a fresh handshake.
        self.drop_idle_ests: Callable[[], object] = lambda: None
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(ENDPOINTS, 0)
        self._requests: list[RecordedRequest] = []
        self._violations: list[str] = []
        self._issued: list[x509.Certificate] = []
        self._tokens: set[str] = set()
        self._challenged: set[str] = set()

    # -- records -------------------------------------------------------------------------
    def record(self, request: RecordedRequest) -> None:
        """Count and keep one received request."""
        with self._lock:
            self._counts[request.endpoint] += 1
            self._requests.append(request)

    def violation(self, text: str) -> None:
        """Keep one wire-contract violation (and log it)."""
        logger.info("contract violation: %s", text)
        with self._lock:
            self._violations.append(text)

    def count(self, endpoint: str) -> int:
        """Requests received by ``endpoint``."""
        if endpoint not in self._counts:
            raise ValueError(f"unknown endpoint {endpoint!r}; expected one of {ENDPOINTS}")
        with self._lock:
            return self._counts[endpoint]

    def counts(self) -> dict[str, int]:
        """All counters."""
        with self._lock:
            return dict(self._counts)

    def requests(self) -> list[RecordedRequest]:
        """A copy of the recorded requests, oldest first."""
        with self._lock:
            return list(self._requests)

    def violations(self) -> list[str]:
        """A copy of the recorded violations, oldest first."""
        with self._lock:
            return list(self._violations)

    def issued(self) -> list[x509.Certificate]:
        """A copy of the certificates issued so far, oldest first."""
        with self._lock:
            return list(self._issued)

    def reset(self) -> None:
        """Forget counts, requests, violations and faults."""
        self.faults.clear()
        with self._lock:
            self._counts = dict.fromkeys(ENDPOINTS, 0)
            self._requests.clear()
            self._violations.clear()

    def inject(self, endpoint: str, fault: Fault) -> None:
        """Queue ``fault`` for ``endpoint`` (ValueError when it cannot apply there)."""
        self.faults.push(endpoint, fault)
        if fault.kind in HANDSHAKE_KINDS:
            self.drop_idle_ests()

    # -- identities ----------------------------------------------------------------------
    def client_id_for(self, query: Mapping[str, str]) -> str:
        """Client id of the identity a query selects (first selector wins)."""
        for name in SELECTORS:
            value = query.get(name)
            if value is not None:
                if name == "client_id":
                    return value
                # GUIDs and ARM ids compare case-insensitively, so the mapping does too.
                return str(uuid.uuid5(_NAMESPACE, value.lower()))
        return SYSTEM_CLIENT_ID

    def cuid_json(self) -> str:
        """Compact cuId JSON the CSR attribute must hold."""
        ordered = {k: self.cuid[k] for k in ("vmId", "vmssId") if self.cuid.get(k)}
        return json.dumps(ordered, separators=(",", ":"))

    # -- credentials ---------------------------------------------------------------------
    def issue(
        self, public_key: rsa.RSAPublicKey, subject: x509.Name, kind: str
    ) -> x509.Certificate:
        """Issue a binding certificate; ``kind`` may ask for a wrong key or a bad window."""
        now = time.time()
        lifetime = max(1, math.ceil(self.lifetime))
        if kind == "expired":
            not_after = math.floor(now) - _NOT_YET_VALID_MARGIN
            not_before = not_after - lifetime
        elif kind == "not_yet_valid":
            not_before = math.floor(now) + _NOT_YET_VALID_MARGIN
            not_after = not_before + lifetime
        else:
            not_before = math.floor(now - self.backdate)
            not_after = not_before + lifetime
        if kind == "wrong_key":
            public_key = _ca.other_key().public_key()
        certificate = _ca.issue(
            _ca.issuing_ca(self.issuer_cn),
            public_key,
            subject,
            dt.datetime.fromtimestamp(not_before, dt.timezone.utc),
            dt.datetime.fromtimestamp(not_after, dt.timezone.utc),
        )
        logger.info(
            "issued certificate serial=%x subject=%s not_after=%s%s",
            certificate.serial_number,
            subject.rfc4514_string(),
            certificate.not_valid_after_utc.isoformat(),
            f" (fault {kind})" if kind else "",
        )
        with self._lock:
            self._issued.append(certificate)
        return certificate

    def remember_token(self, token: str) -> None:
        """Note an access token this emulator minted."""
        with self._lock:
            self._tokens.add(token)

    def minted(self, token: str) -> bool:
        """True when this emulator minted ``token``."""
        with self._lock:
            return token in self._tokens or token in self._challenged

    def challenge_tokens(self) -> None:
        """A claims challenge was sent: every token minted so far is challenged from now on."""
        with self._lock:
            self._challenged |= self._tokens
            self._tokens = set()

    def challenged(self, token: str) -> bool:
        """True for a token minted before the last claims challenge."""
        with self._lock:
            return token in self._challenged
