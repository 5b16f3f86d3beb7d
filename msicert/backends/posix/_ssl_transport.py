"""mTLS transport on POSIX: one SSLContext and one urllib3 PoolManager per certificate.

A context is built once per certificate thumbprint (building one costs ~16 ms here) from the
store file itself: the file is opened twice, both descriptors are checked to name one inode, and
OpenSSL reads the certificate through ``/dev/fd/A`` and the key through ``/dev/fd/B``, so both
come from the same inode even if another process renews the entry at that instant.

Why two descriptors, each untouched at offset 0: on Linux, opening ``/dev/fd/N`` opens the file
again (a new offset), but on macOS and the BSDs it duplicates ``N`` and shares its offset, and
OpenSSL opens the path once for the certificate and once more for the key. One descriptor
would hand the key load a position at the end of the file. Where ``/dev/fd`` does not name our
inode (Linux without /proc), the entry is loaded by path and its inode compared afterwards.

:class:`Watchdog` bounds a whole request in time (see ``ests_total_timeout``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import sys
import threading
from collections import OrderedDict
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ..._errors import MsiCertError
from ..._model import BindingCertificate
from ._trust import add_extra_trust

if TYPE_CHECKING:
    import urllib3

__all__ = ["StaleCertificate", "TlsCache", "Watchdog"]

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class StaleCertificate(MsiCertError):
    """The store no longer holds this certificate (another process rotated it)."""


def build_context(cert: BindingCertificate) -> ssl.SSLContext:
    """SSLContext presenting ``cert`` (key from the same store file), system trust, TLS >= 1.2.

    Trust comes from OpenSSL's default paths, so ``SSL_CERT_FILE``/``SSL_CERT_DIR`` apply.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_default_verify_paths()
    add_extra_trust(ctx)  # $MSICERT_CA_BUNDLE (the emulator's CA), msicert only
    load_entry(ctx, cert)
    return ctx


def _open(path: str) -> int:
    return os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | _O_NOFOLLOW | _O_CLOEXEC)


def _inode(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _fd_path(fd: int, inode: tuple[int, int]) -> str | None:
    """``/dev/fd/N`` when it names ``inode`` here, else None (no /dev/fd, or no /proc)."""
    path = f"/dev/fd/{fd}"
    try:
        return path if _inode(os.stat(path)) == inode else None
    except OSError:
        return None


def load_entry(ctx: ssl.SSLContext, cert: BindingCertificate) -> None:
    """Load ``cert`` and its key into ``ctx`` from one inode of the store entry ``cert.store``.

    StaleCertificate when the entry no longer holds ``cert`` (another process rotated it).
    """
    stale = StaleCertificate(f"store entry {cert.store} no longer holds {cert.x5t_s256}")
    fd_cert = _open(cert.store)
    try:
        fd_key = _open(cert.store)
        try:
            inode = _inode(os.fstat(fd_cert))
            if _inode(os.fstat(fd_key)) != inode:
                raise stale  # renamed over between the two opens
            head = os.read(fd_key, 64 * 1024)
            if not cert.cert_pem or cert.cert_pem not in head:
                raise stale
            os.lseek(fd_key, 0, os.SEEK_SET)  # BSD's /dev/fd shares this offset with OpenSSL
            if sys.platform == "win32":  # no /dev/fd; a file being read cannot be renamed over
                ctx.load_cert_chain(cert.store)
                return
            cert_path, key_path = _fd_path(fd_cert, inode), _fd_path(fd_key, inode)
            if cert_path is not None and key_path is not None:
                ctx.load_cert_chain(cert_path, key_path)
                return
            ctx.load_cert_chain(cert.store)
            # Loaded by path: the entry must still be the inode we checked (a renewal installs
            # a new inode and never brings an old one back), else the pair may be mixed.
            try:
                same = _inode(os.stat(cert.store, follow_symlinks=False)) == inode
            except OSError:
                same = False
            if not same:
                raise stale
        finally:
            os.close(fd_key)
    finally:
        os.close(fd_cert)


class TlsCache:
    """Per-certificate SSLContext + PoolManager, built once, bounded (old certificates fall out)."""

    def __init__(self, *, max_entries: int = 4, pool_maxsize: int = 10) -> None:
        self._entries: OrderedDict[str, tuple[ssl.SSLContext, urllib3.PoolManager]] = OrderedDict()
        self._lock = threading.Lock()
        self._max = max_entries
        self._pool_maxsize = pool_maxsize

    def context(self, cert: BindingCertificate) -> ssl.SSLContext:
        """The cached context for ``cert`` (built on first use)."""
        return self._get(cert)[0]

    def pool(self, cert: BindingCertificate) -> urllib3.PoolManager:
        """The cached PoolManager whose TLS presents ``cert``."""
        return self._get(cert)[1]

    def _get(self, cert: BindingCertificate) -> tuple[ssl.SSLContext, urllib3.PoolManager]:
        hit = self._entries.get(cert.x5t_s256)
        if hit is not None:
            return hit
        with self._lock:
            hit = self._entries.get(cert.x5t_s256)
            if hit is not None:
                return hit
            import urllib3

            ctx = build_context(cert)
            pool = urllib3.PoolManager(
                ssl_context=ctx, retries=False, maxsize=self._pool_maxsize, block=False
            )
            pool.pool_classes_by_scheme = {**pool.pool_classes_by_scheme,
                                           "https": _watched_pool_class()}
            self._entries[cert.x5t_s256] = (ctx, pool)
            while len(self._entries) > self._max:
                _, (_, old) = self._entries.popitem(last=False)
                old.clear()
            return ctx, pool

    def evict(self, x5t_s256: str) -> None:
        """Drop a certificate's context and close its connections."""
        with self._lock:
            gone = self._entries.pop(x5t_s256, None)
        if gone is not None:
            gone[1].clear()


# --- a deadline for a whole request ----------------------------------------------------------

_current = threading.local()


class Watchdog:
    """Bounds one request in time: at the deadline, shuts down the socket it runs on.

    urllib3's read timeout bounds each wait for bytes, so a server that trickles its head or
    body holds a caller without limit. While a Watchdog is entered on a thread, connections of
    :class:`TlsCache` pools used by that thread attach their socket to it (a new connection
    before its TLS handshake, a pooled one before the request); a timer shuts that socket down
    at the deadline, which ends any blocked read. ``fired`` tells the caller why it failed.
    ``seconds=None`` disables it.
    """

    def __init__(self, seconds: float | None) -> None:
        import time

        self._seconds = seconds
        self._until = None if seconds is None else time.monotonic() + seconds
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._armed = seconds is not None
        self._timer: threading.Timer | None = None
        self.fired = False

    def clip(self, timeout: urllib3.Timeout) -> urllib3.Timeout:
        """``timeout`` with its connect and read parts no longer than the time left."""
        if self._until is None:
            return timeout
        import time

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
                _shutdown(sock)

    def disarm(self) -> None:
        """No shutdown after this (the connection may go back to its pool)."""
        with self._lock:
            self._armed = False
            self._sock = None
        if self._timer is not None:
            self._timer.cancel()

    def _fire(self) -> None:
        with self._lock:
            if not self._armed:
                return
            self.fired = True
            if self._sock is not None:
                _shutdown(self._sock)

    def __enter__(self) -> Watchdog:
        if self._seconds is not None:
            self._timer = threading.Timer(self._seconds, self._fire)
            self._timer.daemon = True
            self._timer.start()
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


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        # The plain socket's shutdown: on an SSLSocket the TLS layer is left to its reader.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _watching() -> Watchdog | None:
    watchdog: Watchdog | None = getattr(_current, "watchdog", None)
    return watchdog


_WATCHED: list[Any] = []


def _watched_pool_class() -> Any:
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
