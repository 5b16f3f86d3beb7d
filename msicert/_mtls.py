"""Bring-your-own-HTTP-client support: the error for a key that Python's ``ssl`` cannot use."""

from __future__ import annotations

from ._errors import MsiCertError

__all__ = ["KeyNotExportableError"]


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
