"""The IMDS retry policy: which failures are retried, how many times, and how long each wait.

MSAL.NET's ``ImdsRetryPolicy`` and ``HttpRetryConditions.Imds``: :class:`RetryPolicy` holds the
numbers, :class:`Retries` applies them to the answers of one call (the first answer fixes the
budget; a ``Retry-After`` may stretch a wait within the reference's worst case).
"""

from __future__ import annotations

import email.utils
import math
import os
import time
from dataclasses import dataclass

from .._lazylog import LazyLogger

__all__ = ["ENV_RETRY_SCALE", "Retries", "RetryPolicy", "Wait"]

log = LazyLogger("msicert")

ENV_RETRY_SCALE = "MSICERT_IMDS_RETRY_SCALE"
# HttpRetryConditions.Imds: 404, 408, 410, 429 and every 5xx; of transport failures only a
# timeout (TaskCanceledException in .NET), never a refused or reset connection.
_RETRIED = frozenset({404, 408, 410, 429}) | frozenset(range(500, 600))
_GONE = 410


@dataclass(frozen=True)
class RetryPolicy:
    """MSAL.NET's ImdsRetryPolicy; ``scale`` shrinks every wait (tests, emulator runs).

    The first answer fixes the budget: a 410 allows ``gone_retries`` (7) retries, anything
    else ``retries`` (3). A 410 waits ``gone_delay`` (10 s); any other answer waits
    ``backoff(n)`` before retry n+1: 1, 2, 4, 4, ... s. A ``Retry-After`` may stretch one
    wait, but never so far that the whole call could wait longer than ``max_total_wait``, the
    reference's own worst case (7 x 10 s = 70 s).
    """

    retries: int = 3
    gone_retries: int = 7
    gone_delay: float = 10.0
    min_backoff: float = 1.0
    max_backoff: float = 4.0
    delta_backoff: float = 2.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale >= 0):
            raise ValueError(f"retry scale must be a finite number >= 0, got {self.scale!r}")

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """Default policy, with ``MSICERT_IMDS_RETRY_SCALE`` applied when set (a finite
        number >= 0; anything else is ignored with a warning)."""
        raw = os.environ.get(ENV_RETRY_SCALE)
        if not raw:
            return cls()
        try:
            return cls(scale=float(raw))
        except ValueError:
            log.warning("ignoring %s=%r: not a finite number >= 0", ENV_RETRY_SCALE, raw)
            return cls()

    def backoff(self, retry: int) -> float:
        """Unscaled wait before retry ``retry + 1`` after an answer other than 410."""
        if retry <= 0:
            return self.min_backoff
        return min(self.delta_backoff * 2.0 ** (retry - 1), self.max_backoff)

    @property
    def max_total_wait(self) -> float:
        """Unscaled worst case of all waits of one call in the reference (70 s)."""
        return max(self.retries, self.gone_retries) * max(self.gone_delay, self.max_backoff)


@dataclass(frozen=True)
class Wait:
    """The wait before the next try: ``seconds`` (scaled), and ``retry_after``, the seconds a
    ``Retry-After`` asked for when it stretched the policy's own wait (else None)."""

    seconds: float
    retry_after: float | None


class Retries:
    """The retries of one call under ``policy``, decided answer by answer."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.budget: int | None = None  # fixed by the first answer, as the reference does
        self.done = 0  # retries granted so far
        self._waited = 0.0  # unscaled

    def next_wait(
        self, status: int | None, timed_out: bool, retry_after: str | None
    ) -> Wait | None:
        """The wait before retrying a failed try, or None when the call must give up.

        ``status`` is the answer's (None for a transport failure, which is retried only when
        ``timed_out``); ``retry_after`` the answer's ``Retry-After`` header, if any.
        """
        policy = self.policy
        retryable = status in _RETRIED if status is not None else timed_out
        if self.budget is None:
            self.budget = policy.gone_retries if status == _GONE else policy.retries
        if not retryable or self.done >= self.budget:
            return None
        scheduled = policy.gone_delay if status == _GONE else policy.backoff(self.done)
        # Every retry still to come may need a full 410 wait: keep room for them.
        reserve = (self.budget - self.done - 1) * policy.gone_delay
        room = policy.max_total_wait - self._waited - reserve
        asked = _retry_after(retry_after)
        unscaled = max(scheduled, min(asked, room))
        self._waited += unscaled
        self.done += 1
        return Wait(unscaled * policy.scale, asked if unscaled > scheduled else None)


def _retry_after(value: str | None, cap: float = math.inf) -> float:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or HTTP-date), at most ``cap``;
    0 if unusable."""
    if not value:
        return 0.0
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return 0.0
        if when.tzinfo is None:
            return 0.0
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return 0.0
    return min(max(seconds, 0.0), cap)
