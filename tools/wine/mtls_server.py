"""Loopback HTTPS server that requires a client certificate (Wine tier, WinHTTP mTLS test).

Usage: python3 mtls_server.py TLS_DIR PORT_FILE. Starts six servers on 127.0.0.1 and writes
their ports as ``mtls=P1 nocert=P2 anon=P3 untrusted=P4 big=P5 bigtoken=P6`` to PORT_FILE:
``mtls`` and ``nocert`` require a client certificate, the others ask for none. A path
containing ``/big`` gets an endless (1 GiB) body, for the body-cap tests. One port per test,
because Wine's WinHTTP caches per host:port within a process (a resumed or already-accepted
connection would carry an earlier client certificate or skip server verification). Every
GET/POST gets JSON naming the client certificate's subject CN, with a Content-Length (openssl
s_server -www sends none and keeps the connection open). Stops by itself after
MSICERT_WINE_SERVER_LIFETIME seconds (default 1800) so it never outlives the run for long.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _reply(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body_in = self.rfile.read(length) if length else b""
        if "/big" in self.path:
            self._endless()
            return
        peer = self.connection.getpeercert() or {}
        cn = next((v for rdn in peer.get("subject", ()) for k, v in rdn if k == "commonName"), "")
        body = json.dumps(
            {
                "client_cn": cn,
                "method": self.command,
                "path": self.path,
                "request_id": self.headers.get("x-ms-client-request-id", ""),
                "body_length": len(body_in),
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Msicert-Test", "a")
        self.send_header("X-Msicert-Test", "b")
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _reply

    def _endless(self) -> None:
        """A 1 GiB JSON-looking body, sent until the client hangs up (body-cap tests)."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(1 << 30))
        self.end_headers()
        chunk = b"x" * 65536
        try:
            self.wfile.write(b'{"access_token": "')
            for _ in range((1 << 30) // len(chunk)):
                self.wfile.write(chunk)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            pass  # the client stopped reading: what the test wants
        self.close_connection = True

    def log_message(self, fmt: str, *args: object) -> None:
        sys.stderr.write("mtls_server: " + fmt % args + "\n")


def _server(tls: Path, *, client_cert: bool) -> ThreadingHTTPServer:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls / "server.pem", tls / "server.key")
    context.load_verify_locations(tls / "ca.pem")
    context.verify_mode = ssl.CERT_REQUIRED if client_cert else ssl.CERT_NONE
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    return server


def main() -> None:
    tls, port_file = Path(sys.argv[1]), Path(sys.argv[2])
    servers = {
        "mtls": _server(tls, client_cert=True),
        "nocert": _server(tls, client_cert=True),
        "anon": _server(tls, client_cert=False),
        "untrusted": _server(tls, client_cert=False),
        "big": _server(tls, client_cert=False),
        "bigtoken": _server(tls, client_cert=False),
    }
    for server in servers.values():
        threading.Thread(target=server.serve_forever, daemon=True).start()
    port_file.write_text(
        " ".join(f"{name}={server.server_address[1]}" for name, server in servers.items())
    )
    time.sleep(float(os.environ.get("MSICERT_WINE_SERVER_LIFETIME", "1800")))


if __name__ == "__main__":
    main()
