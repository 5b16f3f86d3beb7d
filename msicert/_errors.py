"""The msicert error tree.

Every message names what failed and what to do next; none ever contains key material, a
certificate body, an access token or an attestation token.
"""

from __future__ import annotations

__all__ = [
    "AttestationError",
    "ImdsError",
    "ImdsResponseError",
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
