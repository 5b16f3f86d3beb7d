"""mTLS on Windows: WinHTTP with the store's CERT_CONTEXT (Python's ssl cannot use a CNG key).

Presents the same small surface as :class:`msicert._tls.TlsCache` (``pool(cert).request``,
``evict``), and raises urllib3's exception types so the token leg treats both platforms alike.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any

from ._model import BindingCertificate

if TYPE_CHECKING:
    from msicert_native import CertRef

    from ._store_windows import WindowsStore

__all__ = ["ENV_INSECURE", "WinHttpCache", "WinHttpPool"]

log = logging.getLogger("msicert")

ENV_INSECURE = "MSICERT_EMULATOR_INSECURE_TLS"  # emulator only: skip ESTS server verification
_TLS_ERRORS = frozenset({12044, 12045, 12157, 12169, 12175, 12038, 12037})  # winhttp.h


class _Response:
    """The bits of urllib3's response that the token leg reads."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.data = body

    def read(self, amt: int | None = None, decode_content: bool = True) -> bytes:
        return self.data if amt is None else self.data[:amt]

    def release_conn(self) -> None:
        """Nothing pooled: WinHTTP handles are closed per request."""


class WinHttpPool:
    """Sends requests presenting one certificate (owned CERT_CONTEXT from the store)."""

    def __init__(self, ref: CertRef, *, verify_server: bool) -> None:
        self._ref = ref
        self._verify = verify_server

    def request(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: Any = None,
        redirect: bool = False,
        preload_content: bool = True,
    ) -> _Response:
        """One WinHTTP request; TLS failures raise urllib3 SSLError, others ProtocolError."""
        import urllib3

        from msicert_native import NativeError, https_request

        seconds = 30.0
        if isinstance(timeout, (int, float)):
            seconds = float(timeout)
        elif timeout is not None:
            seconds = max(float(timeout.connect_timeout or 0), float(timeout.read_timeout or 0))
        try:
            resp = https_request(
                method, url, headers=headers, body=body or b"", client_cert=self._ref,
                timeout_ms=max(1, int(seconds * 1000)), verify_server=self._verify,
            )
        except NativeError as exc:
            if exc.winerror in _TLS_ERRORS:
                raise urllib3.exceptions.SSLError(f"WinHTTP TLS failure: {exc}") from exc
            raise urllib3.exceptions.ProtocolError(f"WinHTTP failure: {exc}") from exc
        return _Response(resp.status, resp.headers, resp.body)

    def clear(self) -> None:
        """Release the certificate context."""
        self._ref.close()


class WinHttpCache:
    """One :class:`WinHttpPool` per certificate thumbprint."""

    def __init__(self, store: WindowsStore) -> None:
        self._store = store
        self._pools: dict[str, WinHttpPool] = {}
        self._lock = threading.Lock()
        self._verify = os.environ.get(ENV_INSECURE) != "1"
        if not self._verify:
            log.warning("%s=1: the ESTS server certificate is NOT verified (emulator use only)",
                        ENV_INSECURE)

    def pool(self, cert: BindingCertificate) -> WinHttpPool:
        """The pool presenting ``cert`` (its CERT_CONTEXT looked up once)."""
        hit = self._pools.get(cert.x5t_s256)
        if hit is not None:
            return hit
        with self._lock:
            hit = self._pools.get(cert.x5t_s256)
            if hit is None:
                hit = WinHttpPool(self._store.cert_ref(cert.x5t_s256), verify_server=self._verify)
                self._pools[cert.x5t_s256] = hit
            return hit

    def evict(self, x5t_s256: str) -> None:
        """Drop a certificate's context."""
        with self._lock:
            gone = self._pools.pop(x5t_s256, None)
        if gone is not None:
            gone.clear()
