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

Its pools' connections attach their sockets to the thread's
:class:`~msicert.wire._watchdog.Watchdog`, which bounds a whole ESTS request in time.
"""

from __future__ import annotations

import os
import ssl
import stat
import sys
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

from ..._model import BindingCertificate
from ..._secret import Secret
from ...wire._watchdog import watched_pool_class
from ..contract import StaleCertificate
from ._trust import add_extra_trust

if TYPE_CHECKING:
    import urllib3

__all__ = ["StaleCertificate", "TlsCache", "build_context", "load_entry"]

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO planted as the entry must not block open


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
    return os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | _O_NOFOLLOW | _O_CLOEXEC
                   | _O_NONBLOCK)


def _inode(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _fd_path(fd: int, inode: tuple[int, int]) -> str | None:
    """``/dev/fd/N`` when it names ``inode`` here, else None (no /dev/fd, or no /proc)."""
    path = f"/dev/fd/{fd}"
    try:
        return path if _inode(os.stat(path)) == inode else None
    except OSError:
        return None


def _holds(fd: int, cert_pem: bytes) -> bool:
    """True when the entry open at ``fd`` holds ``cert_pem``. The bytes read hold the private
    key: they live only inside this call's expression, never in a local of any frame."""
    return bool(cert_pem) and cert_pem in Secret(os.read(fd, 64 * 1024)).reveal()


def load_entry(ctx: ssl.SSLContext, cert: BindingCertificate) -> None:
    """Load ``cert`` and its key into ``ctx`` from one inode of the store entry ``cert.store``.

    StaleCertificate when the entry no longer holds ``cert``: another process rotated it, or
    it (or the whole directory) is gone, cannot be read any more, or is no regular file (a
    FIFO or a directory planted in its place: never opened for blocking, never read).
    """
    stale = StaleCertificate(f"store entry {cert.store} no longer holds {cert.x5t_s256}")
    try:
        fd_cert = _open(cert.store)
    except OSError as exc:
        raise StaleCertificate(f"store entry {cert.store} cannot be opened "
                               f"({exc.strerror or type(exc).__name__})") from None
    try:
        try:
            fd_key = _open(cert.store)
        except OSError:
            raise stale from None  # removed between the two opens
        try:
            st = os.fstat(fd_cert)
            inode = _inode(st)
            if not stat.S_ISREG(st.st_mode) or _inode(os.fstat(fd_key)) != inode:
                raise stale  # not a file, or renamed over between the two opens
            try:
                held = _holds(fd_key, cert.cert_pem)
            except OSError:
                held = False
            if not held:
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
        self._callers: OrderedDict[str, ssl.SSLContext] = OrderedDict()
        self._lock = threading.Lock()
        self._max = max_entries
        self._pool_maxsize = pool_maxsize

    def context(self, cert: BindingCertificate) -> ssl.SSLContext:
        """A context presenting ``cert`` for the caller's own HTTP client, built once per
        certificate and never the one msicert's pools use: trusting an extra CA in it
        (``load_verify_locations``) cannot make msicert trust that CA for ESTS."""
        hit = self._callers.get(cert.x5t_s256)
        if hit is not None:
            return hit
        with self._lock:
            hit = self._callers.get(cert.x5t_s256)
            if hit is None:
                hit = self._callers[cert.x5t_s256] = build_context(cert)
                while len(self._callers) > self._max:
                    self._callers.popitem(last=False)
            return hit

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
                                           "https": watched_pool_class()}
            self._entries[cert.x5t_s256] = (ctx, pool)
            while len(self._entries) > self._max:
                _, (_, old) = self._entries.popitem(last=False)
                old.clear()
            return ctx, pool

    def evict(self, x5t_s256: str) -> None:
        """Drop a certificate's contexts and close its connections."""
        with self._lock:
            gone = self._entries.pop(x5t_s256, None)
            self._callers.pop(x5t_s256, None)
        if gone is not None:
            gone[1].clear()

    def close(self) -> None:
        """Drop every context and close every connection."""
        with self._lock:
            gone = list(self._entries.values())
            self._entries.clear()
            self._callers.clear()
        for _, pool in gone:
            pool.clear()
