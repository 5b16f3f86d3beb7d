"""The ``msicert`` logger, with ``logging`` imported on first use.

``import logging`` costs about 5 ms (traceback, linecache, string, …): a quarter of what
``import msicert`` adds to ``import cryptography.x509``, and a fifth of what a warm
``msicert cert`` process adds to it. The library logs nothing on its fast paths, so a process
that only reads a stored certificate never pays it. Every msicert module logs through a
:class:`LazyLogger`; whoever wants to configure the ``msicert`` logger without importing
``logging`` early (the CLI) registers :func:`on_first_use`.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _fork

if TYPE_CHECKING:
    import logging

__all__ = ["LazyLogger", "activate", "on_first_use"]

_WARNING = 30  # logging.WARNING: what an unconfigured ``logging`` shows (its last resort)
_hooks: list[Callable[[], None]] = []
_active = False
_shown = _WARNING  # the lowest level a pending hook will show
_lock = threading.RLock()
_warned: set[tuple[str, str]] = set()  # (key, message) of warning_once records already made


@_fork.in_child
def _fresh_lock() -> None:
    global _lock
    _lock = threading.RLock()


def on_first_use(hook: Callable[[], None], *, level: int = _WARNING) -> None:
    """Run ``hook`` just before msicert logs for the first time (at once if it already has).

    ``level`` is the lowest level the configuration ``hook`` makes will show. Until
    ``logging`` is imported, a record below every pending hook's level is dropped without
    importing it: nothing could have shown it (an unconfigured ``logging`` shows WARNING and
    above only).
    """
    global _shown
    with _lock:
        if not _active:
            _hooks.append(hook)
            _shown = min(_shown, level)
            return
    hook()


def activate() -> None:
    """Run the :func:`on_first_use` hooks now, once: before the first record of any
    :class:`LazyLogger`, or where records may come from plain ``logging`` loggers (the
    emulator's)."""
    global _active
    if _active:
        return
    with _lock:  # other threads' first records wait until the hooks have run
        if _active:
            return
        pending = _hooks[:]
        _hooks.clear()
        try:
            for hook in pending:
                hook()
        finally:
            _active = True


class LazyLogger:
    """Forwards to ``logging.getLogger(name)``; records show the caller's file and line."""

    __slots__ = ("_logger", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._logger: logging.Logger | None = None

    @property
    def logger(self) -> logging.Logger:
        """The real logger (``logging`` is imported here, once, after the hooks ran)."""
        if self._logger is None:
            activate()
            import logging

            self._logger = logging.getLogger(self._name)
        return self._logger

    def _dropped(self, level: int) -> bool:
        """True when no configuration could show a record at ``level`` (see
        :func:`on_first_use`): ``logging`` is not imported and no pending hook shows it."""
        return self._logger is None and level < _shown and "logging" not in sys.modules

    def debug(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """``Logger.debug`` with the caller's location."""
        if not self._dropped(10):
            self.logger.debug(msg, *args, stacklevel=2, **kwargs)

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """``Logger.info`` with the caller's location."""
        if not self._dropped(20):
            self.logger.info(msg, *args, stacklevel=2, **kwargs)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """``Logger.warning`` with the caller's location."""
        self.logger.warning(msg, *args, stacklevel=2, **kwargs)

    def warning_once(self, key: str, msg: str, *args: Any) -> None:
        """``Logger.warning``, once per process for ``key`` and the formatted message (a
        condition met on every call, such as an unusable cache file, is said once)."""
        seen = (key, msg % args)
        with _lock:
            if seen in _warned:
                return
            _warned.add(seen)
        self.logger.warning(msg, *args, stacklevel=2)

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """``Logger.error`` with the caller's location."""
        self.logger.error(msg, *args, stacklevel=2, **kwargs)
