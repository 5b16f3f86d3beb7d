"""One synchronous HTTPS request through WinHTTP/SChannel, optionally with a client certificate.

This is the Windows mTLS transport: SChannel can sign the handshake with a non-exportable (even
KeyGuard) CNG key that only the certificate store's CERT_CONTEXT points at, which OpenSSL
cannot. Redirects are never followed (a credential-bearing request must not wander).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import urlsplit

from . import _constants as C
from ._backend import impl as _impl
from ._errors import NativeError
from ._handles import CertRef, WinHttpHandle

__all__ = ["HttpResponse", "HttpStream", "https_open", "https_request"]

_READ_CHUNK = 64 * 1024
_IGNORE_SERVER_CERT_ERRORS = (
    C.SECURITY_FLAG_IGNORE_UNKNOWN_CA
    | C.SECURITY_FLAG_IGNORE_CERT_CN_INVALID
    | C.SECURITY_FLAG_IGNORE_CERT_DATE_INVALID
    | C.SECURITY_FLAG_IGNORE_CERT_WRONG_USAGE
)


class HttpResponse(NamedTuple):
    """``(status, headers, body)``; header names are lower-cased, repeats joined by ", "."""

    status: int
    headers: dict[str, str]
    body: bytes


class HttpStream:
    """A response whose body is read on demand: WinHTTP is never asked for more bytes than
    the caller reads, so a caller that caps its read stops the transfer there.

    Use it in a ``with`` (or call :meth:`close`): it owns the session, connection and request
    handles until then.
    """

    def __init__(self, handles: list[WinHttpHandle], status: int, headers: dict[str, str]) -> None:
        self._handles = handles
        self.status = status
        self.headers = headers
        self._done = False

    def read(self, amt: int | None = None) -> bytes:
        """Up to ``amt`` bytes of the body (all of it when ``amt`` is None); ``b""`` at its end."""
        if self._done or amt == 0:
            return b""
        request = self._handles[-1]
        chunks: list[bytes] = []
        size = 0
        while amt is None or size < amt:
            want = _READ_CHUNK if amt is None else min(_READ_CHUNK, amt - size)
            chunk = _impl.winhttp_read_data(request.handle, want)
            if not chunk:
                self._done = True
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        """Close the request, connection and session handles (idempotent)."""
        self._done = True
        while self._handles:
            self._handles.pop().close()

    def __enter__(self) -> HttpStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def https_request(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    client_cert: CertRef | None = None,
    timeout_ms: int = 30_000,
    verify_server: bool = True,
    user_agent: str = "msicert",
    max_body: int | None = None,
) -> HttpResponse:
    """Send one request to an ``https://`` URL and return the whole response.

    ``client_cert`` is presented in the TLS handshake (WINHTTP_OPTION_CLIENT_CERT_CONTEXT);
    its private key is found through the certificate's key provider info. ``timeout_ms``
    bounds each phase (resolve, connect, send, receive). ``verify_server=False`` ignores
    server-certificate errors: for a local emulator with its own test CA only.
    ``max_body`` caps the body: reading stops at ``max_body + 1`` bytes and a longer body
    raises NativeError (function ``WinHttpReadData``); None reads it all.
    Failures raise :class:`~msicert_native.NativeError` (e.g. winerror 12044 when the server
    wants a client certificate, 12175 for a TLS failure, 12002 on timeout).
    """
    with https_open(
        method, url, headers=headers, body=body, client_cert=client_cert,
        timeout_ms=timeout_ms, verify_server=verify_server, user_agent=user_agent,
    ) as stream:
        data = stream.read(None if max_body is None else max_body + 1)
    if max_body is not None and len(data) > max_body:
        raise NativeError("WinHttpReadData", detail=f"response body exceeds {max_body} bytes")
    return HttpResponse(stream.status, stream.headers, data)


def https_open(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    client_cert: CertRef | None = None,
    timeout_ms: int = 30_000,
    verify_server: bool = True,
    user_agent: str = "msicert",
) -> HttpStream:
    """Like :func:`https_request`, but return once the headers arrived: the body is read
    through :meth:`HttpStream.read` (close the stream when done)."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError("https_request needs an https:// URL with a host")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    header_text = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())

    handles: list[WinHttpHandle] = []
    try:
        session = WinHttpHandle(
            _impl.winhttp_open(user_agent, C.WINHTTP_ACCESS_TYPE_DEFAULT_PROXY, 0))
        handles.append(session)
        _impl.winhttp_set_timeouts(session.handle, timeout_ms, timeout_ms, timeout_ms, timeout_ms)
        port = parts.port or C.INTERNET_DEFAULT_HTTPS_PORT
        connection = WinHttpHandle(_impl.winhttp_connect(session.handle, parts.hostname, port))
        handles.append(connection)
        request = WinHttpHandle(_impl.winhttp_open_request(
            connection.handle, method.upper(), path, C.WINHTTP_FLAG_SECURE))
        handles.append(request)
        _impl.winhttp_set_option_dword(
            request.handle,
            C.WINHTTP_OPTION_REDIRECT_POLICY,
            C.WINHTTP_OPTION_REDIRECT_POLICY_NEVER,
        )
        # One handshake per request: a pooled connection authenticated with another
        # client certificate (or none) must never carry this request. Wine pools
        # connections across sessions, so without this its tests would see reuse.
        _impl.winhttp_set_option_dword(
            request.handle, C.WINHTTP_OPTION_DISABLE_FEATURE, C.WINHTTP_DISABLE_KEEP_ALIVE
        )
        if not verify_server:
            _impl.winhttp_set_option_dword(
                request.handle, C.WINHTTP_OPTION_SECURITY_FLAGS, _IGNORE_SERVER_CERT_ERRORS
            )
        if client_cert is not None:
            _impl.winhttp_set_option_cert_context(request.handle, client_cert.handle)
        _impl.winhttp_send_request(request.handle, header_text, body)
        _impl.winhttp_receive_response(request.handle)
        status = _impl.winhttp_query_status_code(request.handle)
        response_headers = _read_headers(request)
    except BaseException:
        while handles:
            handles.pop().close()
        raise
    return HttpStream(handles, status, response_headers)


def _read_headers(request: WinHttpHandle) -> dict[str, str]:
    size, _ = _impl.winhttp_query_raw_headers(request.handle, 0)
    _, raw = _impl.winhttp_query_raw_headers(request.handle, size)
    return parse_raw_headers(raw or "")


def parse_raw_headers(raw: str) -> dict[str, str]:
    """Parse WINHTTP_QUERY_RAW_HEADERS_CRLF text (status line first) into a dict."""
    result: dict[str, str] = {}
    for line in raw.split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            continue
        key = name.strip().lower()
        value = value.strip()
        result[key] = f"{result[key]}, {value}" if key in result else value
    return result
