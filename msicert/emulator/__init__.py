"""Local IMDS v2 + ESTS emulator for msicert's tests, demos and off-Azure development.

``Emulator`` runs real servers on loopback: IMDS over HTTP (getplatformmetadata,
issuecredential, and a ``/__emulator__/`` control API) and ESTS over mutual TLS (the
``mtls_pop`` token endpoint and a protected ``/resource``), plus Key Vault and Blob storage
stand-ins over mutual TLS for the real Azure SDK clients. It checks every request against
the wire contract, records violations, and injects faults on demand.
"""

from __future__ import annotations

from ._ca import ISSUER_CN
from ._faults import ENDPOINTS, Fault
from ._server import Emulator, serve
from ._state import RecordedRequest
from ._token import decode_token_payload

__all__ = [
    "ENDPOINTS",
    "ISSUER_CN",
    "Emulator",
    "Fault",
    "RecordedRequest",
    "decode_token_payload",
    "serve",
]
