"""A small base for the immutable value types that ``import msicert`` loads.

``dataclasses`` imports ``inspect`` (about 7 ms) and builds each class's methods with ``exec``
at import time (about 0.6 ms a class): together more than half of what ``import msicert`` adds
to ``import cryptography.x509``. The few value types on the import path therefore spell out
their ``__init__`` and inherit equality, hashing, ``repr`` and immutability from here.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

__all__ = ["Frozen", "FrozenInstanceError"]

F = TypeVar("F", bound="Frozen")


class FrozenInstanceError(AttributeError):
    """Raised on an attempt to assign or delete a field of a frozen value."""


class Frozen:
    """Immutable, slotted value: subclasses list ``_fields`` (repr, eq and hash order) and set
    them in ``__init__`` through ``_set``; names in ``_hidden`` are left out of ``repr``."""

    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()
    _hidden: ClassVar[frozenset[str]] = frozenset()
    _compare: ClassVar[bool] = True

    def _set(self, **values: Any) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={getattr(self, name)!r}" for name in self._fields if name not in self._hidden
        )
        return f"{type(self).__name__}({shown})"

    def __eq__(self, other: object) -> bool:
        if not self._compare:
            return self is other
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        if not self._compare:
            return object.__hash__(self)
        return hash(self._values())

    def __reduce__(self) -> tuple[Any, ...]:
        # Slots plus a refusing __setattr__ defeat pickle's default; rebuild field by field.
        return (_rebuild, (type(self), self._values()))

    def replace(self: F, **changes: Any) -> F:
        """A copy with ``changes`` applied (through ``__init__``, so checks run again)."""
        values = {name: getattr(self, name) for name in self._fields}
        values.update(changes)
        return type(self)(**values)


def _rebuild(cls: type[F], values: tuple[Any, ...]) -> F:
    obj = object.__new__(cls)
    for name, value in zip(cls._fields, values, strict=True):
        object.__setattr__(obj, name, value)
    return obj
