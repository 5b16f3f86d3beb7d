"""A loopback HTTP server that answers every connection slowly, for ever (until closed).

``what`` picks the slow part: ``status`` sends the status line one byte at a time, ``headers``
one header line at a time, ``body`` one body byte at a time after a whole head. Each wait is
far below any read timeout, so only a bound on the whole call stops a client.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator


class Trickler:
    """A real TCP server on 127.0.0.1 (threads), its URL in ``url``."""

    def __init__(self, what: str, *, status: bytes = b"HTTP/1.1 400 Bad Request",
                 interval: float = 0.05) -> None:
        self.what, self.status, self.interval = what, status + b"\r\n", interval
        self.stop = threading.Event()
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _chunks(self) -> Iterator[bytes]:
        if self.what == "status":
            yield from (self.status[i : i + 1] for i in range(len(self.status)))
            while True:  # then header bytes, one at a time
                yield b"X"
        yield self.status + b"Server: IMDS/150.870.65.1854\r\n"
        if self.what == "headers":
            n = 0
            while True:
                n += 1
                yield f"X-Slow-{n}: 1\r\n".encode()
        yield b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
        while True:
            yield b"{"

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                for chunk in self._chunks():
                    conn.sendall(chunk)
                    if self.stop.wait(self.interval):
                        return
            except OSError:
                return  # the client gave up: what is being tested

    def close(self) -> None:
        """Stop answering and close the listening socket."""
        self.stop.set()
        self.sock.close()
