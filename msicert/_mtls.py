"""Bring-your-own-HTTP-client support: the non-exportable-key error and resource cleanup."""

from __future__ import annotations

from typing import Any

from ._errors import MsiCertError

__all__ = ["KeyNotExportableError", "close_client_resources"]


class KeyNotExportableError(MsiCertError):
    """The binding key lives in the Windows certificate store (KeyGuard or software KSP) and
    Python's ``ssl`` cannot use it: send the request through ``client.request()`` (WinHTTP)
    or ``msicert.azure.MtlsTransport`` instead of an ``SSLContext``."""

    def __init__(self, x5t_s256: str, key: str, store: str) -> None:
        super().__init__(
            f"certificate {x5t_s256} has a non-exportable {key or 'Windows'} key in {store}; "
            "an ssl.SSLContext cannot present it. Use client.request(method, url, "
            "resource=...) or msicert.azure.MtlsTransport(client), which present it "
            "through WinHTTP"
        )
        self.x5t_s256 = x5t_s256
        self.key = key
        self.store = store


def close_client_resources(tokens: Any, imds: Any) -> None:
    """Close every pool of a client's token manager (mTLS) and IMDS client, drop contexts."""
    if tokens is not None:
        tls = tokens.tls
        # TlsCache keeps (context, pool) per thumbprint, WinHttpCache one pool per thumbprint;
        # evict() closes the connections of either.
        held = getattr(tls, "_entries", None) or getattr(tls, "_pools", None) or {}
        for x5t in list(held):
            tls.evict(x5t)
    if imds is not None:
        pool = getattr(imds, "_pool", None)
        if pool is not None:
            pool.clear()
            imds._pool = None
