"""Timeouts that travel together, one value per network leg (in the spirit of urllib3's
``Timeout``): ``ManagedIdentityClient(imds_timeouts=..., ests_timeouts=...)``."""

from __future__ import annotations

import math

from ._frozen import Frozen

__all__ = ["DEFAULT_ESTS_TIMEOUTS", "DEFAULT_IMDS_TIMEOUTS", "Timeouts", "check_seconds"]


def check_seconds(name: str, value: float | None, *, zero_ok: bool = False) -> None:
    """ValueError unless ``value`` is None or a finite number of seconds (> 0, or >= 0 when
    ``zero_ok``): a NaN or infinite timeout would silently disable the bound it names."""
    if value is None:
        return
    if not (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and (value >= 0 if zero_ok else value > 0)):
        raise ValueError(f"{name} must be a finite number of seconds "
                         f"{'>= 0' if zero_ok else '> 0'}, got {value!r}")


class Timeouts(Frozen):
    """Seconds for one network leg: ``connect`` bounds each connection attempt, ``read`` each
    wait for bytes, ``total`` (None: no bound of its own) the whole call.

    For IMDS, ``total`` bounds all the IMDS work of one client call, retries included; for
    ESTS it bounds each token request, however slowly ESTS trickles its answer. Change one
    field with
    ``DEFAULT_IMDS_TIMEOUTS.replace(total=30.0)``.
    """

    _fields = ("connect", "read", "total")
    __slots__ = _fields
    connect: float
    read: float
    total: float | None

    def __init__(self, connect: float, read: float, total: float | None = None) -> None:
        check_seconds("Timeouts.connect", connect)
        check_seconds("Timeouts.read", read)
        check_seconds("Timeouts.total", total)
        self._set(connect=connect, read=read, total=total)


DEFAULT_IMDS_TIMEOUTS = Timeouts(connect=2.0, read=10.0, total=None)
"""IMDS: 2 s to connect, 10 s per wait; the whole mint is bounded by the retry policy's worst
case (:func:`msicert._client.imds_worst_case`) when ``total`` is None."""

DEFAULT_ESTS_TIMEOUTS = Timeouts(connect=5.0, read=30.0, total=60.0)
"""ESTS: 5 s to connect, 30 s per wait, 60 s per token request."""
