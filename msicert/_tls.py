"""mTLS transport on POSIX: one SSLContext and one urllib3 PoolManager per certificate.

A context is built once per certificate thumbprint (building one costs ~16 ms here) from the
store file itself, opened once and loaded through ``/dev/fd/N`` so that the certificate and the
key come from the same inode even if another process renews the entry at that instant.
"""

from __future__ import annotations

import os
import ssl
import sys
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

from ._errors import MsiCertError
from ._model import BindingCertificate
from ._trust import add_extra_trust

if TYPE_CHECKING:
    import urllib3

__all__ = ["StaleCertificate", "TlsCache"]

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
    fd = os.open(cert.store, os.O_RDONLY | getattr(os, "O_BINARY", 0) | _O_NOFOLLOW | _O_CLOEXEC)
    try:
        head = os.read(fd, 64 * 1024)
        if not cert.cert_pem or cert.cert_pem not in head:
            raise StaleCertificate(f"store entry {cert.store} no longer holds {cert.x5t_s256}")
        # /dev/fd/N reopens this very inode: key and certificate cannot come from two entries.
        # (Windows has no /dev/fd; there a file being read cannot be renamed over anyway.)
        ctx.load_cert_chain(cert.store if sys.platform == "win32" else f"/dev/fd/{fd}")
    finally:
        os.close(fd)
    return ctx


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
