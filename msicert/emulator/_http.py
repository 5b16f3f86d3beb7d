"""HTTP plumbing shared by the IMDS and ESTS servers.

A ThreadingHTTPServer that tracks its live connections (so stop() can close kept-alive ones and
a handshake fault can force a fresh handshake), optionally runs the TLS handshake in the
connection's own thread, and a handler base class that builds JSON replies.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

from ._faults import MISSING_FIELD, Fault
from ._state import State

__all__ = [
    "Handler",
    "Reply",
    "Server",
    "apply_fault",
    "error_code",
    "invalid_request",
    "parse_query",
]

logger = logging.getLogger("msicert.emulator")

_MAX_BODY = 1 << 20
_HANDSHAKE_TIMEOUT = 10.0
_DRAIN_SECONDS = 1.0

ConnectionHook = Callable[[socket.socket], bool]
HandshakeFailureHook = Callable[[Exception], None]


@dataclass
class Reply:
    """An HTTP answer under construction: faults mutate it before it is sent."""

    status: int
    payload: dict[str, Any] | None = None
    body: bytes | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    server_header: bool = True
    content_type: str = "application/json; charset=utf-8"

    def encoded(self) -> bytes:
        """The body bytes (raw body wins over the JSON payload)."""
        if self.body is not None:
            return self.body
        if self.payload is None:
            return b""
        return json.dumps(self.payload, separators=(",", ":")).encode("utf-8")


def invalid_request(description: str, status: int = 400) -> Reply:
    """The ``invalid_request`` JSON error both IMDS and the control API use."""
    return Reply(status, {"error": "invalid_request", "error_description": description})


def error_code(status: int | None) -> str:
    """A plausible OAuth/IMDS ``error`` value for an injected status."""
    codes = {
        400: "invalid_request",
        401: "unauthorized_client",
        403: "access_denied",
        404: "not_found",
        410: "gone",
        429: "temporarily_unavailable",
        503: "temporarily_unavailable",
    }
    if status is None:
        return "server_error"
    return codes.get(status, "server_error" if status >= 500 else "invalid_request")


def apply_fault(reply: Reply, fault: Fault) -> None:
    """Apply the generic parts of ``fault`` (kinds handled by endpoints were applied already)."""
    succeeded = reply.status == 200 and reply.payload is not None
    if fault.kind == "no_server_header":
        reply.server_header = False
    elif fault.kind == "malformed_json" and succeeded:
        whole = reply.encoded()
        reply.body = whole[: max(1, len(whole) // 2)]  # any proper prefix of an object is invalid
    elif fault.kind.startswith(MISSING_FIELD) and succeeded and reply.payload is not None:
        reply.payload.pop(fault.kind[len(MISSING_FIELD) :], None)
    elif fault.kind == "wrapped_certificate" and succeeded and reply.payload is not None:
        text = str(reply.payload.get("certificate", ""))
        reply.payload["certificate"] = "\r\n".join(text[i : i + 64]
                                                    for i in range(0, len(text), 64))
    if fault.kind and fault.status is not None:
        reply.status = fault.status
    if fault.kind and fault.body is not None:
        reply.body = fault.body
    if fault.retry_after is not None:
        reply.headers.append(("Retry-After", format(fault.retry_after, "g")))


def _drain(connection: socket.socket) -> None:
    """Read and drop what the peer still sends, so closing does not reset the connection.

    A TLS 1.3 client finishes its side of the handshake before the server has judged its
    certificate and may already have sent a request; closing on unread bytes would send an RST
    that can overtake the alert. Draining lets the client read the alert itself.
    """
    deadline = time.monotonic() + _DRAIN_SECONDS
    with contextlib.suppress(OSError):
        while (left := deadline - time.monotonic()) > 0:
            connection.settimeout(left)
            if not socket.socket.recv(connection, 65536):  # raw bytes, below the TLS layer
                break


def parse_query(raw: str) -> tuple[dict[str, str], list[str]]:
    """Query parameters (last value wins) and the problems found while parsing them."""
    problems: list[str] = []
    try:
        pairs = parse_qsl(raw, keep_blank_values=True, strict_parsing=bool(raw))
    except ValueError as exc:
        return {}, [f"query string is malformed: {exc}"]
    names = [name for name, _ in pairs]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"query parameter {name!r} appears more than once")
    return dict(pairs), problems


class Server(ThreadingHTTPServer):
    """Threaded HTTP(S) server whose connections can be listed and closed from outside."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        state: State,
        *,
        tls: ssl.SSLContext | None = None,
        before_handshake: ConnectionHook | None = None,
        on_handshake_failure: HandshakeFailureHook | None = None,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.state = state
        self.tls = tls
        self.before_handshake = before_handshake
        self.on_handshake_failure = on_handshake_failure
        self._connections: dict[socket.socket, bool] = {}  # socket -> idle between requests
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the FQDN, which can stall on a broken resolver.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def finish_request(self, request: Any, client_address: Any) -> None:
        connection: socket.socket = request
        self._track(request, idle=False)
        try:
            if self.tls is not None:
                if self.before_handshake is not None and self.before_handshake(request):
                    return
                request.settimeout(_HANDSHAKE_TIMEOUT)
                connection = self.tls.wrap_socket(
                    request, server_side=True, do_handshake_on_connect=False
                )
                self._track(connection, idle=False)
                try:
                    connection.do_handshake()
                except (ssl.SSLError, OSError) as exc:
                    if self.on_handshake_failure is not None:
                        self.on_handshake_failure(exc)
                    _drain(connection)
                    return
            self.set_idle(connection, True)
            super().finish_request(connection, client_address)
        finally:
            self._untrack(request)
            self._untrack(connection)
            if connection is not request:
                connection.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("connection from %s failed", client_address, exc_info=True)

    def _track(self, connection: socket.socket, *, idle: bool) -> None:
        with self._connections_lock:
            self._connections[connection] = idle

    def _untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.pop(connection, None)

    def set_idle(self, connection: socket.socket, idle: bool) -> None:
        """Mark a tracked connection as waiting for its next request (or busy)."""
        with self._connections_lock:
            if connection in self._connections:
                self._connections[connection] = idle

    def close_connections(self, *, idle_only: bool = False) -> int:
        """Shut down live connections (only those between requests when ``idle_only``)."""
        with self._connections_lock:
            targets = [c for c, idle in self._connections.items() if idle or not idle_only]
        for connection in targets:
            with contextlib.suppress(OSError):
                # The base-class call leaves an SSLSocket's state alone for its reader thread.
                socket.socket.shutdown(connection, socket.SHUT_RDWR)
        return len(targets)


class Handler(BaseHTTPRequestHandler):
    """JSON-speaking handler base: logging to ``msicert.emulator``, HTTP/1.1 keep-alive."""

    protocol_version = "HTTP/1.1"
    timeout = 30
    disable_nagle_algorithm = True  # small replies must not wait for delayed ACKs
    server_header = ""
    server: Server

    def handle_one_request(self) -> None:
        self.server.set_idle(self.connection, True)
        super().handle_one_request()

    def parse_request(self) -> bool:
        self.server.set_idle(self.connection, False)
        return super().parse_request()

    def version_string(self) -> str:
        return self.server_header

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def header_dict(self) -> dict[str, str]:
        """Request headers (last value wins), names as sent."""
        return {name: value for name, value in self.headers.items()}

    def read_body(self) -> bytes | None:
        """The request body, or None after answering 411/413 for a body that cannot be read."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self.send(invalid_request("chunked bodies are not accepted", 411))
            return None
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= _MAX_BODY:
            self.close_connection = True
            self.send(invalid_request("bad or oversized Content-Length", 413))
            return None
        return self.rfile.read(length) if length else b""

    def send(self, reply: Reply) -> None:
        """Write ``reply`` in one piece; a client that already hung up is not an error."""
        body = reply.encoded()
        reason = self.responses.get(reply.status, ("",))[0]
        lines = [f"{self.protocol_version} {reply.status} {reason}"]
        if reply.server_header and self.server_header:
            lines.append(f"Server: {self.server_header}")
        lines += [
            f"Date: {self.date_time_string()}",
            f"Content-Type: {reply.content_type}",
            f"Content-Length: {len(body)}",
        ]
        lines += [f"{name}: {value}" for name, value in reply.headers]
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        # Idle from the moment the reply leaves: a fault injected as soon as the client has
        # read it must be able to close this connection.
        self.server.set_idle(self.connection, True)
        try:
            # One write: one TLS record / TCP segment, no wait for a delayed ACK in between.
            self.wfile.write(head + (body if self.command != "HEAD" else b""))
            self.wfile.flush()
        except OSError:
            self.close_connection = True
            logger.debug("client went away before the reply to %s", self.path)
        self.log_request(reply.status, len(body))
