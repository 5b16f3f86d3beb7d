"""``AsyncMtlsTransport``: azure-core's ``AsyncHttpTransport`` presenting the binding certificate.

Two ways, one rule for ``Authorization`` (:mod:`msicert.azure._binding`):

- aiohttp (POSIX, a file store): azure-core's ``AioHttpTransport`` with the client's
  ``SSLContext`` for each request, so a rotation moves the next request to the new
  certificate (aiohttp keys its connections by context);
- threaded (the Windows certificate store, whose key Python's ``ssl`` cannot use): the
  synchronous :class:`~msicert.azure.MtlsTransport` (WinHTTP) in a worker thread, each body
  chunk read in a worker thread too.

Either way the client's blocking calls (store, mint, token) run in a worker thread.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError
from azure.core.pipeline.transport import AsyncHttpTransport
from azure.core.rest import HttpRequest
from azure.core.rest._http_response_impl_async import AsyncHttpResponseImpl
from azure.core.utils import case_insensitive_dict

from .._client import ManagedIdentityClient
from .._errors import MsiCertError
from .._transport_failure import scrub
from ._binding import Stale, bind, with_token
from ._credential import acquire
from ._issued import issued_for
from ._responses import BLOCK_SIZE, Body, StreamDownload
from ._transport import MAX_REBINDS, MtlsTransport

if TYPE_CHECKING:
    import ssl

__all__ = ["AsyncMtlsTransport"]

_END = object()


class _AsyncBody:
    """A :class:`Body` behind azure-core's async ``close``."""

    def __init__(self, body: Body) -> None:
        self.body = body

    async def close(self) -> None:
        await asyncio.to_thread(self.body.close)


class _AsyncStreamDownload(AsyncIterator[bytes]):
    """Each chunk of a threaded response read in a worker thread."""

    def __init__(self, pipeline: Any, response: Any, *, decompress: bool = True,
                 **kwargs: Any) -> None:
        self._sync = StreamDownload(pipeline, _SyncView(response), decompress=decompress,
                                    **kwargs)
        self.pipeline = pipeline
        self.response = response
        self.request = response.request
        self.block_size = self._sync.block_size
        self.content_length = self._sync.content_length

    def __len__(self) -> int:
        return self.content_length

    async def __anext__(self) -> bytes:
        chunk = await asyncio.to_thread(next, self._sync, _END)
        if chunk is _END:
            raise StopAsyncIteration
        assert isinstance(chunk, bytes)
        return chunk


class _SyncView:
    """What :class:`StreamDownload` reads of a response, taken from the async one."""

    def __init__(self, response: Any) -> None:
        self.request = response.request
        self.headers = response.headers
        self.block_size = response.block_size
        self.internal_response = response.internal_response.body


class _AsyncRestResponse(AsyncHttpResponseImpl):
    def __init__(self, request: HttpRequest, sync: Any, block_size: int) -> None:
        super().__init__(
            request=request, internal_response=_AsyncBody(sync.internal_response),
            status_code=sync.status_code, reason=sync.reason, content_type=sync.content_type,
            headers=sync.headers, block_size=block_size,
            stream_download_generator=_AsyncStreamDownload,
        )
        if sync.is_stream_consumed:  # read whole in the worker thread (stream=False)
            self._content = sync.content
            self._is_stream_consumed = True
            self._is_closed = True


class AsyncMtlsTransport(AsyncHttpTransport):  # type: ignore[type-arg]
    """azure-core ``AsyncHttpTransport`` presenting the client's binding certificate.

    The same rules as :class:`~msicert.azure.MtlsTransport` (``Bearer`` -> ``mtls_pop`` for
    msicert's tokens only, on a copy of the headers; re-acquired for the current certificate
    after a rotation; streaming responses). ``threaded`` picks the way: ``None`` (default)
    uses aiohttp (``pip install "msicert[azure-aio]"``) when the client's store is a
    directory (its key can load into an ``SSLContext``), and WinHTTP or urllib3 in worker
    threads otherwise (the Windows certificate store); ``True``/``False`` force it. The
    threaded way takes ``azure.core.rest`` requests, which every current ``.aio`` client
    sends.
    """

    def __init__(self, client: ManagedIdentityClient, *, threaded: bool | None = None,
                 timeout: float = 30.0, data_block_size: int = BLOCK_SIZE) -> None:
        self.client = client
        self.threaded = client.store.directory is None if threaded is None else threaded
        self._sync = MtlsTransport(client, timeout=timeout, data_block_size=data_block_size)
        self._timeout = timeout
        self._block_size = data_block_size
        self._issued = issued_for(client)
        self._aio: Any = None
        if not self.threaded:
            try:
                import aiohttp  # noqa: F401 - fail here, not on the first request
            except ImportError as exc:
                raise ImportError(
                    "AsyncMtlsTransport uses aiohttp on this platform: pip install "
                    "\"msicert[azure-aio]\" (or pass threaded=True)") from exc

    async def open(self) -> None:
        """Open aiohttp's session (the threaded way has nothing to open)."""
        if not self.threaded:
            await self._aiohttp().open()

    async def close(self) -> None:
        """Close aiohttp's session; the client stays open (it is shared with the credential)."""
        aio, self._aio = self._aio, None
        if aio is not None:
            await aio.close()

    async def __aenter__(self) -> AsyncMtlsTransport:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _aiohttp(self) -> Any:
        if self._aio is None:
            from azure.core.pipeline.transport import AioHttpTransport

            self._aio = AioHttpTransport(connection_timeout=self._timeout,
                                         read_timeout=self._timeout,
                                         connection_data_block_size=self._block_size)
        return self._aio

    async def send(self, request: Any, **kwargs: Any) -> Any:
        """Send ``request`` over mTLS; ``stream=True`` leaves the body to ``iter_bytes``."""
        if self.threaded:
            return await self._send_threaded(request, **kwargs)
        return await self._send_aiohttp(request, **kwargs)

    async def _send_threaded(self, request: Any, **kwargs: Any) -> Any:
        if not isinstance(request, HttpRequest):
            raise ServiceRequestError("the threaded AsyncMtlsTransport sends azure.core.rest "
                                      "requests only")
        stream = bool(kwargs.pop("stream", False))
        sync = await asyncio.to_thread(self._sync.send, request, stream=stream, **kwargs)
        return _AsyncRestResponse(request, sync, self._block_size)

    def _bound(self, request: Any) -> tuple[ssl.SSLContext, dict[str, str]]:
        """(In a worker thread.) The current certificate's context and the headers bound to
        it; the context and the thumbprint are read as one (a rotation in between retries)."""
        source = request.headers
        try:
            for _ in range(MAX_REBINDS + 1):
                before = self.client.get_certificate().x5t_s256
                context = self.client.ssl_context()
                if self.client.get_certificate().x5t_s256 != before:
                    continue
                headers = bind(source, self._issued, before)
                if not isinstance(headers, Stale):
                    return context, headers
                source = with_token(request.headers, acquire(
                    self.client, headers.resource, None).token)
            return context, dict(source)
        except BaseException:
            if source is not request.headers:
                source.clear()
            raise

    async def _send_aiohttp(self, request: Any, **kwargs: Any) -> Any:
        headers: dict[str, str] = {}
        try:
            context, headers = await asyncio.to_thread(self._bound, request)
        except MsiCertError as exc:
            raise ClientAuthenticationError(f"no binding certificate: {exc}") from exc
        clone = copy.copy(request)
        clone.headers = case_insensitive_dict(headers)
        kwargs.setdefault("connection_timeout", self._timeout)
        kwargs.setdefault("read_timeout", self._timeout)
        try:
            return await self._aiohttp().send(clone, ssl=context, **kwargs)
        except BaseException as exc:
            headers.clear()
            clone.headers.clear()
            scrub(exc)  # aiohttp's frames held the header
            raise
        finally:
            headers.clear()
