"""A deadline watchdog: shuts a socket down when its deadline passes.

Socket timeouts bound each wait for bytes, not a whole exchange: a peer that sends one byte
just inside every timeout holds a reader for ever. ``arm`` registers a socket (or anything
with a ``sock`` attribute, such as an ``http.client`` connection, read when the deadline
fires) and a ``time.monotonic()`` deadline; when the deadline passes first, one shared timer
thread calls ``shutdown(SHUT_RDWR)`` on it, so the blocked read returns at once with EOF or
an error. The returned ``cancel`` disarms it (idempotent) and reports whether it fired.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from .. import _fork

if TYPE_CHECKING:
    import urllib3

__all__ = ["Cancel", "Watchdog", "arm", "watched_pool_class"]


class _HasSock(Protocol):
    @property
    def sock(self) -> socket.socket | None: ...


class Cancel:
    """Disarms one watch; ``fired`` is True once the watchdog shut the socket down."""

    __slots__ = ("_entry", "fired")

    def __init__(self, entry: _Entry) -> None:
        self._entry = entry
        self.fired = False

    def __call__(self) -> bool:
        """Disarm (harmless after the deadline); True when the socket was shut down."""
        with _cond:
            self._entry.target = None
        return self.fired


class _Entry:
    __slots__ = ("cancel", "deadline", "target")

    def __init__(self, target: socket.socket | _HasSock, deadline: float) -> None:
        self.target: socket.socket | _HasSock | None = target
        self.deadline = deadline
        self.cancel: Cancel | None = None


_cond = threading.Condition()
_heap: list[tuple[float, int, _Entry]] = []
_order = itertools.count()
_thread: threading.Thread | None = None


@_fork.in_child
def _fresh_timer() -> None:
    """A child has no timer thread, and the parent's watches are not its own."""
    global _cond, _heap, _thread
    _cond, _heap, _thread = threading.Condition(), [], None


def arm(target: socket.socket | _HasSock, deadline: float) -> Cancel:
    """Shut ``target`` down at ``deadline`` (``time.monotonic()``) unless cancelled first.

    ``target`` is a socket, or an object whose ``sock`` attribute holds one when the deadline
    fires (a connection that has not connected yet is left to its connect timeout).
    """
    global _thread
    entry = _Entry(target, deadline)
    cancel = Cancel(entry)
    entry.cancel = cancel
    with _cond:
        heapq.heappush(_heap, (deadline, next(_order), entry))
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_run, name="msicert-watchdog", daemon=True)
            _thread.start()
        _cond.notify()
    return cancel


def _run() -> None:
    while True:
        with _cond:
            while not _heap or _heap[0][0] > time.monotonic():
                # Drop cancelled entries at the top so the heap does not grow with them.
                while _heap and _heap[0][2].target is None:
                    heapq.heappop(_heap)
                if not _heap:
                    _cond.wait()
                else:
                    _cond.wait(max(0.0, _heap[0][0] - time.monotonic()))
            _, _, entry = heapq.heappop(_heap)
            target, entry.target = entry.target, None
            if target is None:
                continue
            assert entry.cancel is not None
            entry.cancel.fired = True
        _shut(target)


def _shut(target: socket.socket | _HasSock) -> None:
    sock = target if isinstance(target, socket.socket) else getattr(target, "sock", None)
    if sock is None:
        return
    with contextlib.suppress(OSError):  # already closed or never connected: nothing to stop
        # The plain socket's shutdown: on an SSLSocket the TLS layer is left to its reader.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


# --- a deadline for a whole ESTS request (per thread, over the ssl transport's pools) ---------

_current = threading.local()


class Watchdog:
    """Bounds one request in time: at the deadline, shuts down the socket it runs on.

    urllib3's read timeout bounds each wait for bytes, so a server that trickles its head or
    body holds a caller without limit. While a Watchdog is entered on a thread, connections of
    pools built with :func:`watched_pool_class` (the ssl transport's) used by that thread
    attach their socket to it (a new connection before its TLS handshake, a pooled one before
    the request); the shared timer of :func:`arm` shuts that socket down at the deadline,
    which ends any blocked read. ``fired`` tells the caller why it failed. ``seconds=None``
    disables it.
    """

    def __init__(self, seconds: float | None) -> None:
        self._until = None if seconds is None else time.monotonic() + seconds
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._armed = False
        self._watch: Cancel | None = None

    @property
    def sock(self) -> socket.socket | None:
        """The socket to shut down (read by the timer when the deadline passes)."""
        with self._lock:
            return self._sock if self._armed else None

    @property
    def fired(self) -> bool:
        """True once the deadline passed while the request was still running."""
        return self._watch is not None and self._watch.fired

    def clip(self, timeout: urllib3.Timeout) -> urllib3.Timeout:
        """``timeout`` with its connect and read parts no longer than the time left."""
        if self._until is None:
            return timeout
        import urllib3

        left = max(0.001, self._until - time.monotonic())
        connect, read = timeout.connect_timeout, timeout.read_timeout
        return urllib3.Timeout(
            connect=left if not isinstance(connect, (int, float)) else min(connect, left),
            read=left if not isinstance(read, (int, float)) else min(read, left),
        )

    def attach(self, sock: socket.socket) -> None:
        """Watch ``sock`` (the last one attached is shut down at the deadline)."""
        with self._lock:
            if not self._armed:
                return
            self._sock = sock
        if self.fired:  # the deadline passed before this socket existed
            _shut(sock)

    def disarm(self) -> None:
        """No shutdown after this (the connection may go back to its pool)."""
        with self._lock:
            self._armed = False
            self._sock = None
        if self._watch is not None:
            self._watch()

    def __enter__(self) -> Watchdog:
        if self._until is not None:
            self._armed = True
            self._watch = arm(self, self._until)
            _current.watchdog = self
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.disarm()
        if getattr(_current, "watchdog", None) is self:
            _current.watchdog = None


def _watching() -> Watchdog | None:
    watchdog: Watchdog | None = getattr(_current, "watchdog", None)
    return watchdog


_WATCHED: list[Any] = []


def watched_pool_class() -> Any:
    """HTTPSConnectionPool whose connections attach their socket to the thread's Watchdog."""
    if _WATCHED:
        return _WATCHED[0]
    from urllib3.connection import HTTPSConnection
    from urllib3.connectionpool import HTTPSConnectionPool

    class WatchedConnection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            sock = super()._new_conn()
            watchdog = _watching()
            if watchdog is not None:
                watchdog.attach(sock)  # before the handshake: a trickled handshake is bounded
            return sock

        def request(self, *args: Any, **kwargs: Any) -> None:
            watchdog = _watching()
            if watchdog is not None and self.sock is not None:
                watchdog.attach(self.sock)  # a kept-alive connection taken from the pool
            super().request(*args, **kwargs)

    class WatchedPool(HTTPSConnectionPool):
        ConnectionCls = WatchedConnection

    _WATCHED.append(WatchedPool)
    return WatchedPool
