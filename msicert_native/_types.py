"""Plain value types shared by both backends (no native code here)."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["KeyProvInfo"]


class KeyProvInfo(NamedTuple):
    """CERT_KEY_PROV_INFO_PROP_ID of a certificate: where its private key lives.

    ``container`` is the CNG key name (or CAPI container), ``provider`` the KSP/CSP name,
    ``prov_type`` 0 for CNG, ``flags`` e.g. NCRYPT_MACHINE_KEY_FLAG / NCRYPT_SILENT_FLAG,
    ``key_spec`` 0 for CNG or AT_KEYEXCHANGE / AT_SIGNATURE for CAPI.
    """

    container: str
    provider: str
    prov_type: int
    flags: int
    key_spec: int
