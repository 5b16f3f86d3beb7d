"""``MtlsTransport``: azure-core's ``HttpTransport`` over the client's mTLS connections."""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlencode

from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError
from azure.core.pipeline.transport import HttpTransport
from azure.core.rest import HttpRequest

from .._client import ManagedIdentityClient
from .._errors import MsiCertError
from .._lazylog import LazyLogger
from .._transport_failure import scrub
from ._binding import Stale, bind, with_token
from ._credential import acquire
from ._issued import issued_for
from ._responses import BLOCK_SIZE, make_response, request_error

__all__ = ["MAX_REBINDS", "MtlsTransport", "request_body"]

log = LazyLogger("msicert")

MAX_REBINDS = 3
"""Re-acquisitions one send makes when the certificate keeps rotating under it."""


def request_body(request: Any) -> bytes | None:
    """The body of a rest or legacy request as bytes (read whole: a stream, a file, an
    iterable of chunks, text, a form); multipart bodies are refused."""
    if isinstance(request, HttpRequest):
        data = request.content
        files = request._files
    else:
        data, files = request.data, request.files
    if files:
        raise ServiceRequestError("MtlsTransport does not send multipart (files=) bodies")
    if data is None or isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, Mapping):
        return urlencode(list(data.items()), doseq=True).encode("ascii")
    if isinstance(data, io.IOBase) or hasattr(data, "read"):
        read = data.read()
        return read.encode("utf-8") if isinstance(read, str) else bytes(read)
    if isinstance(data, Iterable):
        return b"".join(c.encode("utf-8") if isinstance(c, str) else bytes(c) for c in data)
    raise ServiceRequestError(f"MtlsTransport cannot send a {type(data).__name__} body")


class MtlsTransport(HttpTransport):  # type: ignore[type-arg]
    """azure-core ``HttpTransport`` presenting the client's binding certificate.

    On POSIX it sends through urllib3 with the client's ``SSLContext``; with the Windows
    certificate store, through WinHTTP with the store's certificate context. Each request
    uses the current certificate, so after a rotation the next request re-binds (new context,
    new connections).

    ``Authorization: Bearer <token>`` (what azure-core's policies and Key Vault write) becomes
    ``mtls_pop <token>`` on a copy of the headers, for tokens msicert's credential issued
    only; any other header is sent as it is. When such a token is bound to a certificate that
    is no longer the client's (a renewal, a purge, an eviction), the transport acquires one
    for the current certificate before sending, so the service never sees a mismatch.

    Redirects are not followed. Request bodies are read whole before sending; responses
    stream when the pipeline asks (``stream=True``: ``iter_bytes``, ``stream_download``),
    in chunks of ``data_block_size`` bytes (64 KiB). Timeouts: ``connection_timeout`` and
    ``read_timeout`` per request, else ``timeout`` (30 s).
    """

    def __init__(self, client: ManagedIdentityClient, *, timeout: float = 30.0,
                 data_block_size: int = BLOCK_SIZE) -> None:
        self.client = client
        self._timeout = timeout
        self._block_size = data_block_size
        self._issued = issued_for(client)

    def open(self) -> None:
        """Nothing to open: pools are built per certificate on first use."""

    def close(self) -> None:
        """Leave the client open: it is shared with the credential (close it yourself)."""

    def __enter__(self) -> MtlsTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _bound(self, request: Any) -> tuple[Any, dict[str, str]]:
        """The pool presenting the current certificate and the headers bound to it."""
        source = request.headers
        try:
            for _ in range(MAX_REBINDS + 1):
                cert, pool = self.client._mtls_pool()
                headers = bind(source, self._issued, cert.x5t_s256)
                if not isinstance(headers, Stale):
                    return pool, headers
                log.info("token for %s is bound to an older certificate; acquiring one for "
                         "%s", headers.resource, cert.x5t_s256)
                source = with_token(request.headers, acquire(
                    self.client, headers.resource, None).token)
            log.warning("the binding certificate kept rotating; sending the request as it is")
            return pool, dict(source)
        except BaseException:
            if source is not request.headers:
                source.clear()
            raise

    def send(self, request: Any, **kwargs: Any) -> Any:
        """Send ``request`` over mTLS; returns a rest or legacy response to match it.

        ``stream=True`` leaves the body on the connection for ``iter_bytes`` /
        ``stream_download``. On failure no frame of the traceback keeps the Authorization
        header in a local (error reporters record locals).
        """
        import urllib3

        stream = bool(kwargs.pop("stream", False))
        connect = kwargs.pop("connection_timeout", None) or self._timeout
        read = kwargs.pop("read_timeout", None) or connect
        body = request_body(request)
        headers: dict[str, str] = {}
        try:
            pool, headers = self._bound(request)
            raw = pool.request(
                request.method, request.url, body=body, headers=headers,
                timeout=urllib3.Timeout(connect=connect, read=read), redirect=False,
                preload_content=False,
            )
        except urllib3.exceptions.HTTPError as exc:
            headers.clear()
            scrub(exc)  # urllib3's and http.client's frames held the header
            raise request_error(exc) from exc
        except MsiCertError as exc:
            headers.clear()
            raise ClientAuthenticationError(f"no binding certificate: {exc}") from exc
        except BaseException as exc:
            headers.clear()
            scrub(exc)
            raise
        headers.clear()
        return make_response(request, raw, stream=stream, block_size=self._block_size)
