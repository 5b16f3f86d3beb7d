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
from ._handles import CertRef, WinHttpHandle

__all__ = ["HttpResponse", "https_request"]

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
) -> HttpResponse:
    """Send one request to an ``https://`` URL and return the whole response.

    ``client_cert`` is presented in the TLS handshake (WINHTTP_OPTION_CLIENT_CERT_CONTEXT);
    its private key is found through the certificate's key provider info. ``timeout_ms``
    bounds each phase (resolve, connect, send, receive). ``verify_server=False`` ignores
    server-certificate errors: for a local emulator with its own test CA only.
    Failures raise :class:`~msicert_native.NativeError` (e.g. winerror 12044 when the server
    wants a client certificate, 12175 for a TLS failure, 12002 on timeout).
    """
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError("https_request needs an https:// URL with a host")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    header_text = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())

    with WinHttpHandle(
        _impl.winhttp_open(user_agent, C.WINHTTP_ACCESS_TYPE_DEFAULT_PROXY, 0)
    ) as session:
        _impl.winhttp_set_timeouts(session.handle, timeout_ms, timeout_ms, timeout_ms, timeout_ms)
        port = parts.port or C.INTERNET_DEFAULT_HTTPS_PORT
        with (
            WinHttpHandle(
                _impl.winhttp_connect(session.handle, parts.hostname, port)
            ) as connection,
            WinHttpHandle(
                _impl.winhttp_open_request(
                    connection.handle, method.upper(), path, C.WINHTTP_FLAG_SECURE
                )
            ) as request,
        ):
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
            chunks = []
            while chunk := _impl.winhttp_read_data(request.handle, _READ_CHUNK):
                chunks.append(chunk)
    return HttpResponse(status, response_headers, b"".join(chunks))


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
