"""msicert.wire._watchdog: a socket (or a connection holding one) is shut down at its deadline."""

from __future__ import annotations

import socket
import threading
import time

from msicert.wire import _watchdog


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.settimeout(5.0)  # far beyond the deadline: only the watchdog can end the recv early
    return a, b


def test_a_blocked_recv_returns_when_the_deadline_passes():
    a, b = _pair()
    try:
        cancel = _watchdog.arm(a, time.monotonic() + 0.2)
        t0 = time.monotonic()
        assert a.recv(10) == b""  # shutdown(SHUT_RDWR) ends the read with EOF
        assert time.monotonic() - t0 < 2.0
        assert cancel() is True
    finally:
        a.close()
        b.close()


def test_a_cancelled_watch_never_fires():
    a, b = _pair()
    try:
        cancel = _watchdog.arm(a, time.monotonic() + 0.1)
        assert cancel() is False
        time.sleep(0.3)
        b.sendall(b"still open")
        assert a.recv(10) == b"still open"
        assert cancel() is False
    finally:
        a.close()
        b.close()


def test_a_connection_object_is_watched_through_its_sock_attribute():
    class Conn:
        sock: socket.socket | None = None

    a, b = _pair()
    conn = Conn()
    try:
        cancel = _watchdog.arm(conn, time.monotonic() + 0.2)
        conn.sock = a  # connected after arming: the socket is read when the deadline fires
        assert a.recv(10) == b""
        assert cancel() is True
        unconnected = Conn()
        cancel2 = _watchdog.arm(unconnected, time.monotonic() + 0.05)
        time.sleep(0.3)
        assert cancel2() is True  # fired, found no socket, did nothing
    finally:
        a.close()
        b.close()


def test_many_watches_fire_in_deadline_order_from_one_thread():
    pairs = [_pair() for _ in range(5)]
    try:
        now = time.monotonic()
        cancels = [_watchdog.arm(a, now + 0.1 * (5 - i)) for i, (a, _) in enumerate(pairs)]
        ended: list[int] = []
        threads = [threading.Thread(target=lambda i=i: (pairs[i][0].recv(1), ended.append(i)))
                   for i in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(5)
        assert ended == [4, 3, 2, 1, 0]
        assert all(c() for c in cancels)
        watchdogs = [t for t in threading.enumerate() if t.name == "msicert-watchdog"]
        assert len(watchdogs) == 1  # one timer thread serves every watch
    finally:
        for a, b in pairs:
            a.close()
            b.close()
