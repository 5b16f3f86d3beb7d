"""Owners of every native handle: each one is closed exactly once, by ``with`` or ``close()``.

A ``weakref.finalize`` is the safety net for an owner that is dropped unclosed (it frees the
handle at garbage collection); code should still use ``with``. Handles are plain ``int``
addresses here; only the Win32 wrappers (``_win32``) turn them back into pointers.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import TypeVar

from . import _constants as C
from ._backend import impl as _impl
from ._errors import NativeError, NativeTimeoutError

__all__ = [
    "CertRef",
    "CertStore",
    "NCryptKey",
    "NCryptProvider",
    "NativeHandle",
    "WinHttpHandle",
    "named_mutex",
]

_log = logging.getLogger("msicert")
_Self = TypeVar("_Self", bound="NativeHandle")


def _release_quietly(release: Callable[[int], None], handle: int, kind: str) -> None:
    try:
        release(handle)
    except OSError as exc:  # at garbage collection there is nobody to raise to
        _log.debug("leaked %s handle could not be released: %s", kind, exc)


class NativeHandle:
    """Base owner: ``handle`` is valid until :meth:`close` (then it reads 0)."""

    _kind = "native"

    def __init__(self, handle: int, release: Callable[[int], None]) -> None:
        self._handle = handle
        self._release = release
        self._finalizer = weakref.finalize(self, _release_quietly, release, handle, self._kind)

    @property
    def handle(self) -> int:
        """The raw handle; raises ``ValueError`` once closed."""
        if not self._handle:
            raise ValueError(f"{self._kind} handle is closed")
        return self._handle

    @property
    def closed(self) -> bool:
        """True after :meth:`close` (or after an operation that consumed the handle)."""
        return not self._handle

    def close(self) -> None:
        """Release the handle (idempotent); a failing release raises NativeError."""
        handle, self._handle = self._handle, 0
        if handle and self._finalizer.detach() is not None:
            self._release(handle)

    def _consumed(self) -> None:
        """The handle was freed by the API itself (e.g. NCryptDeleteKey): forget it."""
        self._handle = 0
        self._finalizer.detach()

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"0x{self._handle:X}"
        return f"<{type(self).__name__} {state}>"


class CertStore(NativeHandle):
    """An open HCERTSTORE (``location`` is ``"current-user"`` or ``"local-machine"``)."""

    _kind = "HCERTSTORE"

    def __init__(self, handle: int, location: str, name: str) -> None:
        super().__init__(handle, _impl.cert_close_store)
        self.location = location
        self.name = name


class CertRef(NativeHandle):
    """One owned reference to a PCCERT_CONTEXT (its own duplicate: close it when done).

    ``der`` is read once at construction, so it stays available after :meth:`close`.
    """

    _kind = "PCCERT_CONTEXT"

    def __init__(self, handle: int) -> None:
        super().__init__(handle, _impl.cert_free_certificate_context)
        self.der: bytes = _impl.cert_context_encoded(handle)

    def duplicate(self) -> CertRef:
        """Another owned reference to the same context."""
        return CertRef(_impl.cert_duplicate_certificate_context(self.handle))


class NCryptProvider(NativeHandle):
    """An open NCRYPT_PROV_HANDLE."""

    _kind = "NCRYPT_PROV_HANDLE"

    def __init__(self, handle: int, name: str) -> None:
        super().__init__(handle, _impl.ncrypt_free_object)
        self.name = name


class NCryptKey(NativeHandle):
    """An open NCRYPT_KEY_HANDLE of a persisted key named ``name`` in ``provider_name``."""

    _kind = "NCRYPT_KEY_HANDLE"

    def __init__(self, handle: int, name: str, provider_name: str, machine: bool) -> None:
        super().__init__(handle, _impl.ncrypt_free_object)
        self.name = name
        self.provider_name = provider_name
        self.machine = machine
        self.signature_size = 0  # learnt on first signature


class WinHttpHandle(NativeHandle):
    """A WinHTTP session, connection or request HINTERNET."""

    _kind = "HINTERNET"

    def __init__(self, handle: int) -> None:
        super().__init__(handle, _impl.winhttp_close_handle)


class _Mutex(NativeHandle):
    _kind = "mutex HANDLE"

    def __init__(self, handle: int) -> None:
        super().__init__(handle, _impl.close_handle)


@contextlib.contextmanager
def named_mutex(name: str, timeout_ms: int) -> Iterator[bool]:
    """Hold the named mutex ``name`` (e.g. ``Local\\msicert-<id>``) for the ``with`` body.

    Yields True when the previous owner died holding it (WAIT_ABANDONED): the mutex is owned
    all the same, but whatever it protected may be half-written. Windows mutexes are
    recursive: a thread that already holds ``name`` acquires it again at once, so use it
    across processes and keep an in-process lock for threads. Raises
    :class:`NativeTimeoutError` after ``timeout_ms`` (``INFINITE`` = 0xFFFFFFFF waits forever).
    """
    with _Mutex(_impl.create_mutex(name)) as mutex:
        result = _impl.wait_for_single_object(mutex.handle, timeout_ms)
        if result == C.WAIT_TIMEOUT:
            raise NativeTimeoutError(
                "WaitForSingleObject",
                winerror=C.WAIT_TIMEOUT,
                detail=f"named mutex {name!r} still held by another process after {timeout_ms} ms",
            )
        if result not in (C.WAIT_OBJECT_0, C.WAIT_ABANDONED):
            raise NativeError("WaitForSingleObject", winerror=result, detail="unexpected result")
        try:
            yield result == C.WAIT_ABANDONED
        finally:
            _impl.release_mutex(mutex.handle)
