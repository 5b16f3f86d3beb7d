"""msicert: the Azure Managed Identity v2 binding certificate, store-first, and mtls_pop tokens.

``ManagedIdentityClient().get_certificate()`` returns a usable binding certificate from
memory, the per-user store or, only when neither has one, a fresh mint through IMDS.
"""

from __future__ import annotations

from ._client import ManagedIdentityClient
from ._errors import (
    AttestationError,
    AttestationRequiredError,
    ImdsError,
    ImdsResponseError,
    MsiCertError,
    MsiV2UnavailableError,
    StoreError,
    TokenError,
)
from ._identity import Identity
from ._model import AccessToken, BindingCertificate

__all__ = [
    "AccessToken",
    "AttestationError",
    "AttestationRequiredError",
    "BindingCertificate",
    "Identity",
    "ImdsError",
    "ImdsResponseError",
    "ManagedIdentityClient",
    "MsiCertError",
    "MsiV2UnavailableError",
    "StoreError",
    "TokenError",
]

__version__ = "0.1.0"
