"""The ``msicert`` logger for modules on the ``import msicert`` path, imported on first use.

``import logging`` costs about 5 ms (traceback, linecache, string, …), a quarter of what
``import msicert`` adds to ``import cryptography.x509``; the client logs nothing on its fast
path, so a process that only reads a stored certificate never pays it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import logging

__all__ = ["LazyLogger"]


class LazyLogger:
    """Forwards to ``logging.getLogger(name)``; records show the caller's file and line."""

    __slots__ = ("_logger", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._logger: logging.Logger | None = None

    @property
    def logger(self) -> logging.Logger:
        """The real logger (``logging`` is imported here, once)."""
        if self._logger is None:
            import logging

            self._logger = logging.getLogger(self._name)
        return self._logger

    def debug(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """``Logger.debug`` with the caller's location."""
        self.logger.debug(msg, *args, stacklevel=2, **kwargs)

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """``Logger.info`` with the caller's location."""
        self.logger.info(msg, *args, stacklevel=2, **kwargs)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """``Logger.warning`` with the caller's location."""
        self.logger.warning(msg, *args, stacklevel=2, **kwargs)

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """``Logger.error`` with the caller's location."""
        self.logger.error(msg, *args, stacklevel=2, **kwargs)
