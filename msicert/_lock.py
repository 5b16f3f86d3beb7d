"""Single flight per identity: a thread lock in the process, an advisory file lock across them.

POSIX uses ``fcntl.flock`` on a lock file beside the entry (``msvcrt.locking`` for a file store
on Windows); the kernel drops the lock when its holder dies (even by SIGKILL), so a crashed
minter never blocks the others. The Windows certificate store uses a named mutex instead
(:class:`MutexLock`, ``Global\\msicert-<user SID>-<hash>`` so every logon session of the user
meets on it, ``Local\\`` when ``Global\\`` is denied): an abandoned mutex counts as acquired.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator

from ._errors import StoreError

__all__ = ["IdentityLock", "MutexLock"]

log = logging.getLogger("msicert")

_registry: dict[str, threading.Lock] = {}
_registry_lock = threading.Lock()
_POLL = 0.01


def _thread_lock(key: str) -> threading.Lock:
    with _registry_lock:
        lock = _registry.get(key)
        if lock is None:
            lock = _registry[key] = threading.Lock()
        return lock


class IdentityLock:
    """Process-wide and cross-process mutual exclusion for one identity's lock file."""

    def __init__(self, lock_path: str, *, timeout: float = 120.0) -> None:
        self.lock_path = lock_path
        self.timeout = timeout
        self._thread = _thread_lock(os.path.abspath(lock_path))

    @contextlib.contextmanager
    def hold(self, *, blocking: bool = True) -> Iterator[bool]:
        """Yield True with both locks held; False when ``blocking`` is off and they are busy.

        A blocking wait longer than ``timeout`` raises StoreError.
        """
        deadline = time.monotonic() + self.timeout
        if not self._thread.acquire(blocking, self.timeout if blocking else -1):
            if blocking:
                raise StoreError(
                    f"timed out after {self.timeout:.0f} s waiting for {self.lock_path}"
                )
            yield False
            return
        try:
            fd = self._acquire_file(blocking, deadline)
            if fd is None:
                yield False
                return
            try:
                yield True
            finally:
                os.close(fd)  # closing the descriptor releases the flock
        finally:
            self._thread.release()

    def _acquire_file(self, blocking: bool, deadline: float) -> int | None:
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.lock_path, flags, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot open lock file {self.lock_path}: {exc}") from exc
        waiting = False
        try:
            while True:
                try:
                    _try_lock(fd)
                    return fd
                except (BlockingIOError, PermissionError):
                    if not blocking:
                        os.close(fd)
                        return None
                    if not waiting:  # one line per wait: the CLI shows it on stderr
                        waiting = True
                        log.info("waiting for another process to finish minting (lock %s, "
                                 "up to %.0f s)", self.lock_path,
                                 max(0.0, deadline - time.monotonic()), extra={"wait": True})
                    if time.monotonic() >= deadline:
                        raise StoreError(
                            f"timed out after {self.timeout:.0f} s waiting for another process "
                            f"holding {self.lock_path}"
                        ) from None
                    time.sleep(_POLL)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise


if sys.platform == "win32":
    import msvcrt

    def _try_lock(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # released by the OS when the process dies

else:
    import fcntl

    def _try_lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


_ERROR_ACCESS_DENIED = 5
_warned_fallback: set[str] = set()


class MutexLock:
    """Thread lock + a Windows named mutex, ``Global\\`` first (see
    :func:`msicert._store_windows.mutex_names` for the namespace decision).

    ``fallback`` (a ``Local\\`` name) is used only when creating or opening ``name`` is
    denied (ERROR_ACCESS_DENIED); a warning (once per name and process) says that exclusion
    is then limited to this logon session.
    """

    def __init__(self, name: str, *, timeout: float = 120.0, fallback: str | None = None) -> None:
        self.name = name
        self.fallback = fallback
        self.timeout = timeout
        self._thread = _thread_lock("mutex:" + name)

    def _enter(self, stack: contextlib.ExitStack, wait_ms: int) -> str:
        """Hold ``name`` (or the fallback when ``name`` is denied); return the one held."""
        import msicert_native

        try:
            stack.enter_context(msicert_native.named_mutex(self.name, wait_ms))
            return self.name
        except msicert_native.NativeTimeoutError:
            raise
        except msicert_native.NativeError as exc:
            if self.fallback is None or exc.winerror != _ERROR_ACCESS_DENIED:
                raise StoreError(f"cannot create the mutex {self.name}: {exc}") from exc
            if self.name not in _warned_fallback:
                _warned_fallback.add(self.name)
                logging.getLogger("msicert").warning(
                    "access to %s denied (%s); using %s: other logon sessions of this user "
                    "are not excluded and may mint at the same time", self.name, exc,
                    self.fallback)
        try:
            stack.enter_context(msicert_native.named_mutex(self.fallback, wait_ms))
        except msicert_native.NativeTimeoutError:
            raise
        except msicert_native.NativeError as exc:
            raise StoreError(f"cannot create the mutex {self.fallback}: {exc}") from exc
        return self.fallback

    @contextlib.contextmanager
    def hold(self, *, blocking: bool = True) -> Iterator[bool]:
        """Same contract as :meth:`IdentityLock.hold`."""
        import msicert_native

        if not self._thread.acquire(blocking, self.timeout if blocking else -1):
            if blocking:
                raise StoreError(f"timed out after {self.timeout:.0f} s waiting for {self.name}")
            yield False
            return
        try:
            with contextlib.ExitStack() as stack:
                try:
                    self._enter(stack, 0)  # free: no wait, and nothing to say
                except msicert_native.NativeTimeoutError:
                    if not blocking:
                        yield False
                        return
                    # One line per wait: the CLI shows it on stderr (as the POSIX flock does).
                    log.info("waiting for another process to finish minting (mutex %s, up to "
                             "%.0f s)", self.name, self.timeout, extra={"wait": True})
                    try:
                        self._enter(stack, int(self.timeout * 1000))
                    except msicert_native.NativeTimeoutError as exc:
                        raise StoreError(
                            f"timed out after {self.timeout:.0f} s waiting for another process "
                            f"holding {self.name}"
                        ) from exc
                yield True
        finally:
            self._thread.release()
