"""Attestation of KeyGuard keys through ``AttestationClientLib.dll`` (Windows, when present).

The DLL is not redistributable: when it is absent the non-attested flow is used and the log
says so; when it loads but fails, AttestationError carries its status code.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

from ..._errors import AttestationError
from ..._identity import Identity

if TYPE_CHECKING:
    from ...wire._imds import PlatformMetadata
    from ..contract import KeyMaterial

__all__ = ["attestation_token"]

log = logging.getLogger("msicert")


def attestation_token(key: KeyMaterial, meta: PlatformMetadata, identity: Identity) -> str | None:
    """A MAA token for a KeyGuard ``key``, or None for the non-attested flow."""
    if key.kind != "keyguard" or sys.platform != "win32":
        return None
    import msicert_native as native

    dll, looked_in = native.find_attestation_library()
    if dll is None:
        log.info("AttestationClientLib.dll not found (looked in %s); non-attested flow",
                 "; ".join(looked_in))
        return None
    try:
        token = native.attest_keyguard_key(
            dll, endpoint=meta.attestation_endpoint, client_id=meta.client_id,
            key=getattr(key, "handle"),  # noqa: B009 - NCryptRsaKey only (kind keyguard)
        )
    except native.AttestationFailed as exc:
        status = exc.status
        if status is not None and status >= 1 << 31:
            status -= 1 << 32  # the DLL returns a signed int
        raise AttestationError(
            f"AttestKeyGuardImportKey failed for {identity.alias}", status=status
        ) from exc
    from ._ncrypt_key import mark_attested

    mark_attested(getattr(key, "name", ""))  # its certificate is tagged #att=1 (MSAL.NET)
    return token
