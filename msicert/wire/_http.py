"""HTTP for the IMDS leg over urllib3: pools whose connections arm :mod:`._watchdog` while the
status line and headers arrive, bodies read to a cap and a deadline, one GET within a deadline.

urllib3's timeouts bound each wait for bytes, never a whole answer: everything here keeps a
server that trickles its head or its body a byte at a time from holding a caller past its
deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import urllib3

__all__ = ["MAX_BODY", "get_within", "request_capped", "watched_pool_manager"]

MAX_BODY = 1 << 20  # IMDS answers are a few KiB; refuse to buffer more


class _WatchState(threading.local):
    deadline: float | None = None


# The deadline of the IMDS request this thread is making (None: no deadline). The
# connection class reads it: a pooled connection cannot be handed a per-request argument.
_watch = _WatchState()


def request_capped(
    http: urllib3.PoolManager, method: str, url: str, *, body: bytes | None,
    headers: Mapping[str, str], timeout: urllib3.Timeout, deadline: float | None,
) -> tuple[urllib3.BaseHTTPResponse, bytes | None]:
    """One request on a :func:`watched_pool_manager` pool (no redirect followed): the response
    and up to ``MAX_BODY + 1`` bytes of its body, None for the body when ``deadline``
    (``time.monotonic()``) passed while it was still arriving. urllib3's errors propagate."""
    _watch.deadline = deadline
    try:
        resp = http.request(
            method, url, body=body, headers=headers, timeout=timeout,
            redirect=False, preload_content=False,
        )
        try:
            return resp, _read_capped(resp, deadline)
        finally:
            resp.release_conn()
    finally:
        _watch.deadline = None


def get_within(url: str, headers: Mapping[str, str], until: float) -> int:
    """The status of one GET of ``url`` answered by ``until`` (``time.monotonic()``), body
    read (at most 1 MiB) and dropped. TimeoutError when the deadline passes first, however
    slowly the server trickles its head or body; urllib3's errors for other failures."""
    import urllib3

    left = until - time.monotonic()
    if left <= 0:
        raise TimeoutError("no time left")
    http = watched_pool_manager()
    try:
        resp, body = request_capped(http, "GET", url, body=None, headers=dict(headers),
                                    timeout=urllib3.Timeout(connect=left, read=left),
                                    deadline=until)
    except urllib3.exceptions.HTTPError:
        if time.monotonic() >= until:
            raise TimeoutError("the deadline passed") from None
        raise
    finally:
        http.clear()
    if body is None:
        raise TimeoutError("the answer was still arriving at the deadline")
    return resp.status


def _read_capped(resp: urllib3.BaseHTTPResponse, deadline: float | None) -> bytes | None:
    """Up to ``MAX_BODY + 1`` bytes of the body; None when ``deadline`` passes first.

    The read timeout bounds each wait for bytes, not the whole body: a server that trickles a
    byte at a time would hold one ``read(n)`` far past any deadline, so with a deadline the
    body is read one network read at a time and the clock checked in between.
    """
    if deadline is None:
        return resp.read(MAX_BODY + 1, decode_content=True)
    parts: list[bytes] = []
    size = 0
    while size <= MAX_BODY:
        if time.monotonic() >= deadline:
            resp.close()  # the rest is never read: the connection must not be reused
            return None
        chunk = resp.read1(MAX_BODY + 1 - size, decode_content=True)
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


def watched_pool_manager() -> urllib3.PoolManager:
    """A PoolManager whose connections arm ``_watchdog`` for the status line and headers.

    urllib3's read timeout bounds each recv, so a server that trickles its header lines holds
    ``getresponse`` for ever; the watchdog shuts the socket down at the deadline instead.
    """
    import urllib3
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    from . import _watchdog

    def watched(
        conn: HTTPConnection, getresponse: Callable[[], urllib3.response.HTTPResponse]
    ) -> urllib3.response.HTTPResponse:
        deadline = _watch.deadline
        if deadline is None:
            return getresponse()
        cancel = _watchdog.arm(conn, deadline)
        try:
            return getresponse()
        finally:
            cancel()

    class WatchedHTTPConnection(HTTPConnection):
        def getresponse(self) -> urllib3.response.HTTPResponse:  # type: ignore[override]
            return watched(self, super().getresponse)

    class WatchedHTTPSConnection(HTTPSConnection):
        def getresponse(self) -> urllib3.response.HTTPResponse:  # type: ignore[override]
            return watched(self, super().getresponse)

    class WatchedHTTPPool(HTTPConnectionPool):
        ConnectionCls = WatchedHTTPConnection

    class WatchedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = WatchedHTTPSConnection

    pool = urllib3.PoolManager(retries=False, maxsize=4)
    pool.pool_classes_by_scheme = {"http": WatchedHTTPPool, "https": WatchedHTTPSPool}
    return pool
