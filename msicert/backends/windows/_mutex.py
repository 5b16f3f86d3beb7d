"""Single flight per identity for the Windows certificate store: a thread lock in the process and
a named mutex across processes (``Global\\msicert-<user SID>-<hash>`` so every logon session of
the user meets on it, ``Local\\`` when ``Global\\`` is denied); an abandoned mutex counts as
acquired, so a crashed minter never blocks the others.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..._errors import StoreError
from ..._lazylog import LazyLogger
from ..contract import thread_lock

__all__ = ["MutexLock"]

log = LazyLogger("msicert")

_ERROR_ACCESS_DENIED = 5
_warned_fallback: set[str] = set()


class MutexLock:
    """Thread lock + a Windows named mutex, ``Global\\`` first (see
    :func:`msicert.backends.windows._cert_store.mutex_names` for the namespace decision).

    ``fallback`` (a ``Local\\`` name) is used only when creating or opening ``name`` is
    denied (ERROR_ACCESS_DENIED); a warning (once per name and process) says that exclusion
    is then limited to this logon session.
    """

    def __init__(self, name: str, *, timeout: float = 120.0, fallback: str | None = None) -> None:
        self.name = name
        self.fallback = fallback
        self.timeout = timeout
        self._thread = thread_lock("mutex:" + name)

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
                log.warning(
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
        """Same contract as :meth:`msicert.backends.contract.Lock.hold`."""
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
