"""mTLS on Windows: WinHTTP with the store's CERT_CONTEXT (Python's ssl cannot use a CNG key).

Presents the same small surface as the ``ssl`` transport's
:class:`~msicert.backends.posix._ssl_transport.TlsCache` (``pool(cert).request``, ``evict``),
and raises urllib3's exception types so the token leg treats both platforms alike.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..._lazylog import LazyLogger
from ..._model import BindingCertificate

if TYPE_CHECKING:
    import ssl

    from msicert_native import CertRef, HttpStream

__all__ = ["ENV_INSECURE", "WinHttpCache", "WinHttpPool"]

log = LazyLogger("msicert")

ENV_INSECURE = "MSICERT_EMULATOR_INSECURE_TLS"  # emulator only: skip ESTS server verification
_TLS_ERRORS = frozenset({12044, 12045, 12157, 12169, 12175, 12038, 12037})  # winhttp.h


class _Response:
    """The bits of urllib3's response that the token leg reads.

    With ``preload_content=False`` the body stays in WinHTTP until :meth:`read` asks for it,
    and no more than asked is read - the same bound as urllib3 on POSIX (the token leg reads
    ``_MAX_BODY + 1`` bytes, so an endless body costs at most that much).
    """

    def __init__(self, status: int, headers: dict[str, str], body: bytes = b"",
                 stream: HttpStream | None = None) -> None:
        self.status = status
        self.headers = headers
        self._body = body
        self._pos = 0
        self._stream = stream

    @property
    def data(self) -> bytes:
        """The whole body (read now if it was not preloaded)."""
        if self._stream is not None:
            self._body += self.read()
            self._pos = len(self._body)
            self.release_conn()
        return self._body

    def read(self, amt: int | None = None, decode_content: bool = True) -> bytes:
        """Up to ``amt`` bytes (all when None); WinHTTP failures raise urllib3 ProtocolError."""
        if self._stream is None:  # preloaded: serve from the buffer, .data keeps it all
            end = len(self._body) if amt is None else self._pos + amt
            head, self._pos = self._body[self._pos:end], min(end, len(self._body))
            return head
        import urllib3

        from msicert_native import NativeError

        try:
            return self._stream.read(amt)
        except NativeError as exc:
            self.release_conn()
            raise urllib3.exceptions.ProtocolError(f"WinHTTP failure: {exc}") from exc

    def release_conn(self) -> None:
        """Close the WinHTTP handles (nothing is pooled)."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None


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
        headers: Mapping[str, str] | None = None,
        timeout: Any = None,
        redirect: bool = False,
        preload_content: bool = True,
    ) -> _Response:
        """One WinHTTP request; TLS failures raise urllib3 SSLError, others ProtocolError."""
        import urllib3

        from msicert_native import NativeError, https_open

        seconds = 30.0
        if isinstance(timeout, (int, float)):
            seconds = float(timeout)
        elif timeout is not None:
            seconds = max(float(timeout.connect_timeout or 0), float(timeout.read_timeout or 0))
        try:
            stream = https_open(
                method, url, headers=headers, body=body or b"", client_cert=self._ref,
                timeout_ms=max(1, int(seconds * 1000)), verify_server=self._verify,
            )
        except NativeError as exc:
            if exc.winerror in _TLS_ERRORS:
                raise urllib3.exceptions.SSLError(f"WinHTTP TLS failure: {exc}") from exc
            raise urllib3.exceptions.ProtocolError(f"WinHTTP failure: {exc}") from exc
        resp = _Response(stream.status, stream.headers, stream=stream)
        if preload_content:  # as urllib3: the whole body now, nothing left open
            try:
                resp.data  # noqa: B018 - reads the body
            finally:
                resp.release_conn()
        return resp

    def clear(self) -> None:
        """Release the certificate context."""
        self._ref.close()


class WinHttpCache:
    """One :class:`WinHttpPool` per certificate thumbprint.

    ``cert_ref`` opens a thumbprint's CERT_CONTEXT in the store (``WindowsStore.cert_ref``);
    ``description`` names that store in messages. Taking the function, not the store, keeps
    this module free of an import of the store module (which imports this one).
    """

    def __init__(self, cert_ref: Callable[[str], CertRef], description: str) -> None:
        self._cert_ref = cert_ref
        self._description = description
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
                hit = WinHttpPool(self._cert_ref(cert.x5t_s256), verify_server=self._verify)
                self._pools[cert.x5t_s256] = hit
            return hit

    def evict(self, x5t_s256: str) -> None:
        """Drop a certificate's context."""
        with self._lock:
            gone = self._pools.pop(x5t_s256, None)
        if gone is not None:
            gone.clear()

    def context(self, cert: BindingCertificate) -> ssl.SSLContext:
        """Never: the key lives in CNG, which Python's ``ssl`` cannot use."""
        from ..._mtls import KeyNotExportableError

        raise KeyNotExportableError(cert.x5t_s256, cert.key, cert.store or self._description)

    def close(self) -> None:
        """Release every certificate context."""
        with self._lock:
            gone = list(self._pools.values())
            self._pools.clear()
        for pool in gone:
            pool.clear()
