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
from typing import Protocol

__all__ = ["Cancel", "arm"]


class _HasSock(Protocol):
    sock: socket.socket | None


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
        sock.shutdown(socket.SHUT_RDWR)
