"""One correlation id per operation.

MSAL.NET sends its request context's id on every request one ``AcquireToken`` call makes: both
IMDS legs of a mint and the ESTS token request. msicert does the same: the token leg sets the
operation's id here, and a mint made inside it (a first mint, a renewal, a remediation) sends
it to IMDS, so one support case traces end to end.
"""

from __future__ import annotations

import contextvars

__all__ = ["current", "operation"]

_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("msicert_correlation_id",
                                                                 default=None)


def _new() -> str:
    import uuid  # a mint or a token request: never on a store or cache hit

    return str(uuid.uuid4())


def current() -> str:
    """The running operation's id, or a new one when no operation is running."""
    return _id.get() or _new()


class operation:
    """``with operation() as cid:`` makes ``cid`` the id of every request inside (an
    operation already running keeps its own)."""

    __slots__ = ("_token", "id")

    def __init__(self) -> None:
        self.id = _id.get() or _new()
        self._token: contextvars.Token[str | None] | None = None

    def __enter__(self) -> str:
        self._token = _id.set(self.id)
        return self.id

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            _id.reset(self._token)
