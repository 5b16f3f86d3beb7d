"""azure-core responses over a urllib3 (POSIX) or WinHTTP (Windows) response that streams.

Both backends' responses read with ``read(amt, decode_content=...)`` and give their
connection back with ``release_conn()``; :class:`Body` adapts that to what azure-core's
responses call (``read``, ``close``). A response sent with ``stream=True`` is read chunk by
chunk through :class:`StreamDownload` (``iter_bytes``, ``stream_download``: Blob's
``download_blob`` and ``readinto``); any other is read whole before ``send`` returns.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator, MutableMapping
from typing import Any

from azure.core.exceptions import (
    AzureError,
    DecodeError,
    IncompleteReadError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.core.pipeline.transport import HttpRequest as LegacyHttpRequest
from azure.core.pipeline.transport import HttpResponse as LegacyHttpResponse
from azure.core.rest import HttpRequest
from azure.core.rest._http_response_impl import HttpResponseImpl
from azure.core.utils import case_insensitive_dict

__all__ = ["BLOCK_SIZE", "Body", "StreamDownload", "make_response", "request_error",
           "stream_error"]

BLOCK_SIZE = 64 * 1024
"""Bytes per chunk a streamed body is read in (``data_block_size`` changes it)."""


def _caused_by(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> bool:
    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        e = todo.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        if isinstance(e, kinds):
            return True
        seen.add(id(e))
        todo.extend([e.__cause__, e.__context__, *e.args])
    return False


def request_error(exc: Exception) -> AzureError:
    """The azure-core error for a urllib3 error raised while sending (no header in the text)."""
    import urllib3

    text = f"mTLS request failed: {type(exc).__name__}: {exc}"
    if isinstance(exc, urllib3.exceptions.ConnectTimeoutError) and not isinstance(
            exc, urllib3.exceptions.NewConnectionError):
        return ServiceRequestTimeoutError(text, error=exc)
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
        return ServiceResponseTimeoutError(text, error=exc)
    if isinstance(exc, urllib3.exceptions.ProtocolError):
        return ServiceResponseError(text, error=exc)
    return ServiceRequestError(text, error=exc)


def stream_error(exc: Exception) -> AzureError:
    """The azure-core error for a urllib3 error raised while a body streams."""
    import urllib3

    text = f"reading the mTLS response failed: {type(exc).__name__}: {exc}"
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
        return ServiceResponseTimeoutError(text, error=exc)
    if isinstance(exc, urllib3.exceptions.DecodeError):
        return DecodeError(text, error=exc)
    if _caused_by(exc, (urllib3.exceptions.IncompleteRead, http.client.IncompleteRead)):
        return IncompleteReadError(text, error=exc)
    return ServiceResponseError(text, error=exc)


class Body:
    """A backend response whose body is still on the connection.

    ``close`` gives a fully read connection back to its pool and closes one that still has
    unread bytes (it cannot carry another request).
    """

    def __init__(self, response: Any) -> None:
        self._response = response
        self._done = False

    def read(self, amt: int, *, decode: bool) -> bytes:
        """Up to ``amt`` bytes; ``b""`` at the end (then the connection is released)."""
        chunk: bytes = self._response.read(amt, decode_content=decode)
        if not chunk:
            self._done = True
            self.close()
        return chunk

    def close(self) -> None:
        """Release the connection (closed first when the body was not read to the end)."""
        response, self._response = self._response, _Closed()
        if isinstance(response, _Closed):
            return
        if not self._done:
            close = getattr(response, "close", None)  # urllib3; WinHTTP's closes on release
            if close is not None:
                close()
        response.release_conn()


class _Closed:
    def read(self, amt: int, decode_content: bool = True) -> bytes:
        return b""

    def release_conn(self) -> None:
        """Nothing left to release."""


class StreamDownload:
    """azure-core's stream-download generator for a :class:`Body`.

    Called as ``(pipeline, response, decompress=...)`` (``stream_download``) and as
    ``(response=..., pipeline=None, decompress=...)`` (``iter_bytes``/``iter_raw``). Blob's
    downloader sets attributes on it and reads ``response`` and ``content_length``.
    """

    def __init__(self, pipeline: Any, response: Any, *, decompress: bool = True,
                 **kwargs: Any) -> None:
        if kwargs:
            raise TypeError(f"unexpected keyword argument {next(iter(kwargs))!r}")
        self.pipeline = pipeline
        self.response = response
        self.request = response.request
        self.block_size: int = response.block_size or BLOCK_SIZE
        self.content_length = int(response.headers.get("Content-Length", 0) or 0)
        self._body: Body = response.internal_response
        self._decompress = decompress

    def __len__(self) -> int:
        return self.content_length

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        import urllib3

        try:
            chunk = self._body.read(self.block_size, decode=self._decompress)
        except urllib3.exceptions.HTTPError as exc:
            self._body.close()
            raise stream_error(exc) from exc
        except BaseException:
            self._body.close()
            raise
        if not chunk:
            raise StopIteration
        return chunk


class _RestResponse(HttpResponseImpl):
    def __init__(self, request: HttpRequest, status: int, reason: str,
                 headers: MutableMapping[str, str], body: Body, block_size: int) -> None:
        super().__init__(
            request=request, internal_response=body, status_code=status, reason=reason,
            content_type=headers.get("Content-Type"), headers=headers, block_size=block_size,
            stream_download_generator=StreamDownload,
        )


class _LegacyResponse(LegacyHttpResponse):
    def __init__(self, request: LegacyHttpRequest, status: int, reason: str,
                 headers: MutableMapping[str, str], body: Body, block_size: int) -> None:
        super().__init__(request, body, block_size=block_size)
        self.status_code = status
        self.reason = reason
        self.headers = headers
        self.content_type = headers.get("Content-Type")
        self._content: bytes | None = None

    def body(self) -> bytes:
        if self._content is None:
            self._content = b"".join(StreamDownload(None, self))
        return self._content

    def stream_download(self, pipeline: Any, **kwargs: Any) -> Iterator[bytes]:
        """The body, chunk by chunk (``decompress=False`` leaves it as sent)."""
        return StreamDownload(pipeline, self, **kwargs)


def make_response(request: Any, raw: Any, *, stream: bool, block_size: int) -> Any:
    """A rest or legacy azure-core response (to match ``request``) over the backend's ``raw``
    response; read whole now unless ``stream``."""
    headers = case_insensitive_dict(dict(raw.headers.items()))
    reason = getattr(raw, "reason", None) or http.client.responses.get(raw.status, "")
    body = Body(raw)
    try:
        if isinstance(request, HttpRequest):
            rest = _RestResponse(request, raw.status, reason, headers, body, block_size)
            if not stream:
                rest.read()
            return rest
        legacy = _LegacyResponse(request, raw.status, reason, headers, body, block_size)
        if not stream:
            legacy.body()
        return legacy
    except BaseException:
        body.close()
        raise
