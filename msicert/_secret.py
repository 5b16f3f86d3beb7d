"""A holder for secret values (private keys, access and attestation tokens).

Error reporters that capture local variables (Sentry and its kin) call ``repr`` on every local
of every frame of a traceback. A secret held in a plain ``bytes`` or ``str`` local ends up in
such a report. ``Secret`` shows ``<redacted>`` to ``repr``, ``str`` and ``format``; the value is
only reachable through :meth:`Secret.reveal`, which call sites use at the last moment (the
write, the header) and never keep in a local of their own.
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["Secret"]

T = TypeVar("T", str, bytes)


class Secret(Generic[T]):
    """A value whose ``repr``/``str`` never show it; ``reveal()`` returns it."""

    __slots__ = ("_value",)
    _value: T

    def __init__(self, value: T) -> None:
        self._value = value

    def reveal(self) -> T:
        """The secret value itself: pass it straight to the call that needs it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret(<redacted>)"

    def __str__(self) -> str:
        return "<redacted>"

    def __format__(self, spec: str) -> str:
        return "<redacted>"

    def __len__(self) -> int:
        return len(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Secret):
            return bool(self._value == other._value)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        # Pickling would copy the value into places (multiprocessing queues, caches) that were
        # never meant to hold it.
        raise TypeError("a Secret cannot be pickled")
