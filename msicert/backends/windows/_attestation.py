"""Attestation of KeyGuard keys through ``AttestationClientLib.dll`` (Windows, when present).

The DLL is not redistributable: when it is absent the non-attested flow is used and the log
says so; when it loads but fails, AttestationError carries its status code.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from ..._errors import AttestationError
from ..._lazylog import LazyLogger

if TYPE_CHECKING:
    from msicert_native import NCryptKey

    from ...wire._imds_answers import PlatformMetadata

__all__ = ["attestation_token"]

log = LazyLogger("msicert")


def attestation_token(handle: NCryptKey, meta: PlatformMetadata, alias: str) -> str | None:
    """A MAA token for the KeyGuard key ``handle``, or None for the non-attested flow
    (``alias`` names the identity in errors). Called by the key itself
    (:meth:`~msicert.backends.windows._ncrypt_key.NCryptRsaKey.attestation_token`)."""
    if sys.platform != "win32":
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
            key=handle,
        )
    except native.AttestationFailed as exc:
        status = exc.status
        if status is not None and status >= 1 << 31:
            status -= 1 << 32  # the DLL returns a signed int
        raise AttestationError(
            f"AttestKeyGuardImportKey failed for {alias}", status=status
        ) from exc
    return token
