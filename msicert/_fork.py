"""Process-wide state, and a child forked without exec that starts clean.

Only the forking thread survives in a child: a lock another thread held stays locked for ever,
an ``flock`` descriptor inherited from the parent keeps the parent's lock alive after the parent
releases it, and a pooled connection would carry two processes' requests on one socket. Each
module that owns such state registers a function here (:func:`in_child`), or keeps it in a
:class:`Registry`; ``os.register_at_fork`` runs the resets in the child, before it returns from
``fork()``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Callable, MutableMapping
from typing import Generic, TypeVar

__all__ = ["Registry", "in_child"]

K = TypeVar("K")
V = TypeVar("V")

_resets: list[Callable[[], None]] = []


def in_child(reset: Callable[[], None]) -> Callable[[], None]:
    """Run ``reset`` in every child forked from now on (usable as a decorator)."""
    _resets.append(reset)
    return reset


def _after_fork_in_child() -> None:
    for reset in list(_resets):
        # A reset must never break the child: the next ones still run.
        with contextlib.suppress(Exception):
            reset()


if hasattr(os, "register_at_fork"):  # POSIX; Windows has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Registry(Generic[K, V]):
    """One value per key for the whole process, made by ``make(key)`` on first use under a
    lock (``weak``: the keys are objects whose entries go with them). In a forked child the
    lock starts free and ``after_fork`` runs on every value; without it the values are dropped,
    so each is made anew (a thread lock a parent thread held must not be inherited)."""

    def __init__(self, make: Callable[[K], V], *, weak: bool = False,
                 after_fork: Callable[[V], None] | None = None) -> None:
        self._make = make
        self._weak = weak
        self._values: MutableMapping[K, V] = weakref.WeakKeyDictionary() if weak else {}
        self._guard = threading.Lock()
        self._after_fork = after_fork
        in_child(self._reset)

    def get(self, key: K) -> V:
        """The value for ``key`` (made now if there is none)."""
        with self._guard:
            value = self._values.get(key)
            if value is None:
                value = self._values[key] = self._make(key)
            return value

    def _reset(self) -> None:
        self._guard = threading.Lock()
        if self._after_fork is None:
            self._values.clear()
            return
        for value in list(self._values.values()):
            self._after_fork(value)
