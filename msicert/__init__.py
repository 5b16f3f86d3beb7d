"""msicert: the Azure Managed Identity v2 binding certificate, store-first, and mtls_pop tokens.

``ManagedIdentityClient().get_certificate()`` returns a usable binding certificate from
memory, the per-user store or, only when neither has one, a fresh mint through IMDS.
"""

from __future__ import annotations

from typing import Any

from ._backoff import Backoff, BackoffActive
from ._client import ManagedIdentityClient
from ._errors import (
    AttestationError,
    AttestationRequiredError,
    ImdsError,
    ImdsResponseError,
    MinStrengthNotMet,
    MsiCertError,
    MsiV2UnavailableError,
    StoreError,
    TokenError,
)
from ._identity import Identity
from ._model import AccessToken, BindingCertificate
from ._mtls import KeyNotExportableError
from ._timeouts import Timeouts
from ._version import __version__ as __version__

__all__ = [
    "AccessToken",
    "AttestationError",
    "AttestationRequiredError",
    "Backoff",
    "BackoffActive",
    "BindingCertificate",
    "Identity",
    "ImdsError",
    "ImdsResponseError",
    "KeyNotExportableError",
    "ManagedIdentityClient",
    "MinStrengthNotMet",
    "MsiCertError",
    "MsiV2UnavailableError",
    "StoreError",
    "Timeouts",
    "TokenError",
    "capabilities",
    "probe",
]



def __getattr__(name: str) -> Any:
    # probe pulls in urllib3: imported on first use so `import msicert` stays cheap.
    if name == "probe":
        from ._probe import probe

        return probe
    if name == "capabilities":
        from ._capabilities import capabilities

        return capabilities
    raise AttributeError(f"module 'msicert' has no attribute {name!r}")
