"""The msicert error tree.

Every message names what failed and what to do next; none ever contains key material, a
certificate body, an access token or an attestation token.
"""

from __future__ import annotations

__all__ = [
    "AttestationError",
    "AttestationRequiredError",
    "ImdsError",
    "ImdsResponseError",
    "MinStrengthNotMet",
    "MsiCertError",
    "MsiV2UnavailableError",
    "StoreError",
    "TokenError",
]


class MsiCertError(Exception):
    """Base class of every error msicert raises on purpose."""


class ImdsError(MsiCertError):
    """An IMDS call failed (after the retries the protocol allows).

    ``status`` is the last HTTP status (``None`` for a transport failure), ``body_excerpt``
    the first bytes of the response body as text, ``correlation_id`` the
    ``x-ms-client-request-id`` that was sent, ``step`` the IMDS call that failed.
    """

    def __init__(
        self,
        message: str,
        *,
        step: str = "",
        status: int | None = None,
        body_excerpt: str = "",
        correlation_id: str = "",
    ) -> None:
        parts = [message]
        if step:
            parts.append(f"step={step}")
        if status is not None:
            parts.append(f"status={status}")
        if correlation_id:
            parts.append(f"correlation_id={correlation_id}")
        if body_excerpt:
            parts.append(f"body={body_excerpt!r}")
        super().__init__("; ".join(parts))
        self.step = step
        self.status = status
        self.body_excerpt = body_excerpt
        self.correlation_id = correlation_id


class MsiV2UnavailableError(ImdsError):
    """getplatformmetadata answered 404 after retries: this host has IMDS v1 only."""


_KEY_KINDS = {
    "file": "a software key (held by msicert in a file; it cannot be attested)",
    "software-ksp": "a software-KSP key (Microsoft Software Key Storage Provider without VBS "
    "isolation; it cannot be attested)",
    "keyguard": "a KeyGuard key without an attestation token (AttestationClientLib.dll not "
    "found?)",
}


class AttestationRequiredError(ImdsError):
    """issuecredential refused the CSR because this host's IMDS issues only to attested keys.

    IMDS does not yet issue binding certificates for software keys (the MSAL cross-SDK mTLS
    PoP standard); such a host answers 400 "Attestation Token is missing / empty". Never
    retried: the same key would be refused again. ``key_kind`` names the key that was used
    (``file``, ``software-ksp`` or ``keyguard``), ``attested`` whether a token was sent.
    """

    def __init__(
        self,
        *,
        key_kind: str,
        attested: bool,
        step: str = "issuecredential",
        status: int | None = None,
        body_excerpt: str = "",
        correlation_id: str = "",
    ) -> None:
        if attested:
            used = f"a {key_kind} key with an attestation token that IMDS did not accept"
        else:
            used = _KEY_KINDS.get(key_kind, f"a {key_kind!r} key without attestation")
        super().__init__(
            "this host's IMDS requires a KeyGuard key with attestation "
            f"(Attestation Token missing), but the CSR was made with {used}; "
            "IMDS does not issue binding certificates for software keys: run on a "
            "VBS-enabled Windows VM with AttestationClientLib.dll available",
            step=step, status=status, body_excerpt=body_excerpt, correlation_id=correlation_id,
        )
        self.key_kind = key_kind
        self.attested = attested

    @classmethod
    def from_refusal(cls, exc: ImdsError, *, key_kind: str, attested: bool
                     ) -> AttestationRequiredError:
        """The refusal ``exc`` (see ``_imds_answers.is_attestation_refusal``) with the key named."""
        return cls(key_kind=key_kind, attested=attested, step=exc.step, status=exc.status,
                   body_excerpt=exc.body_excerpt, correlation_id=exc.correlation_id)


class ImdsResponseError(ImdsError):
    """IMDS answered 200 with something that breaks the wire contract."""


class StoreError(MsiCertError):
    """The certificate store cannot be used (unsafe directory, I/O failure, lock timeout)."""


class TokenError(MsiCertError):
    """ESTS refused or failed the mtls_pop token request."""

    def __init__(
        self,
        message: str,
        *,
        error: str = "",
        error_description: str = "",
        correlation_id: str = "",
        status: int | None = None,
    ) -> None:
        parts = [message]
        if status is not None:
            parts.append(f"status={status}")
        if error:
            parts.append(f"error={error}")
        if error_description:
            parts.append(f"description={error_description[:300]!r}")
        if correlation_id:
            parts.append(f"correlation_id={correlation_id}")
        super().__init__("; ".join(parts))
        self.error = error
        self.error_description = error_description
        self.correlation_id = correlation_id
        self.status = status


class AttestationError(MsiCertError):
    """The attestation library loaded but failed; ``status`` is its return code."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message if status is None else f"{message}; status={status}")
        self.status = status


class MinStrengthNotMet(MsiCertError):
    """The host cannot bind tokens as strongly as ``min_strength`` requires (MSAL.NET's
    ``min_strength_not_met``). ``actual`` and ``required`` are strength names."""

    code = "min_strength_not_met"

    def __init__(self, actual: str, required: str, reason: str) -> None:
        super().__init__(
            f"this host's maximum binding strength is {actual!r} ({reason}), below "
            f"min_strength={required!r}; msicert never downgrades: run where a {required} "
            f"key can be made, or lower the floor")
        self.actual = actual
        self.required = required
        self.reason = reason
