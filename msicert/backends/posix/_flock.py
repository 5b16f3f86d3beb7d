"""Single flight per identity: a thread lock in the process, an advisory file lock across them.

POSIX uses ``fcntl.flock`` on a lock file beside the entry (``msvcrt.locking`` for a file store
on Windows); the kernel drops the lock when its holder dies (even by SIGKILL), so a crashed
minter never blocks the others. The Windows certificate store uses a named mutex instead
(:mod:`msicert.backends.windows._mutex`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator

from ... import _fork
from ..._errors import StoreError
from ..._lazylog import LazyLogger
from ..contract import thread_lock

__all__ = ["IdentityLock"]

log = LazyLogger("msicert")

_POLL = 0.01
_held: set[int] = set()  # descriptors that hold an flock in this process


@_fork.in_child
def _drop_inherited_locks() -> None:
    """A forked child must not keep the parent's flock alive: the lock belongs to the open
    file description, which the child's copy of the descriptor would keep open after the
    parent closes its own. Each copy is pointed at /dev/null instead of closed, so the
    parent's ``with`` block, if it is the one that forked, still closes a valid descriptor."""
    if not _held:
        return
    null = os.open(os.devnull, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        for fd in list(_held):
            os.dup2(null, fd)  # drops the child's reference to the locked description
    finally:
        os.close(null)
    _held.clear()


class IdentityLock:
    """Process-wide and cross-process mutual exclusion for one identity's lock file."""

    def __init__(self, lock_path: str, *, timeout: float = 120.0,
                 waiting_for: str = "another process to finish minting") -> None:
        self.lock_path = lock_path
        self.timeout = timeout
        self.waiting_for = waiting_for  # what the one line per wait says
        self._thread = thread_lock(os.path.abspath(lock_path))

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
            _held.add(fd)
            try:
                yield True
            finally:
                _held.discard(fd)
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
                        log.info("waiting for %s (lock %s, up to %.0f s)", self.waiting_for,
                                 self.lock_path, max(0.0, deadline - time.monotonic()),
                                 extra={"wait": True})
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
