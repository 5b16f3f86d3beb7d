"""A child forked without exec starts clean.

Only the forking thread survives in a child: a lock another thread held stays locked for ever,
an ``flock`` descriptor inherited from the parent keeps the parent's lock alive after the parent
releases it, and a pooled connection would carry two processes' requests on one socket. Each
module that owns such state registers a function here; ``os.register_at_fork`` runs them all in
the child, before it returns from ``fork()``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

__all__ = ["in_child"]

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
