"""Which managed identity a client speaks for, and how that shows on the wire and in stores."""

from __future__ import annotations

import hashlib
import re

from ._frozen import Frozen

__all__ = ["Identity"]

_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class Identity(Frozen):
    """A system-assigned identity (``kind == "system"``) or one user-assigned selector.

    ``kind`` is ``"system"``, ``"client_id"``, ``"object_id"`` or ``"resource_id"``; the
    three user-assigned kinds never share a store entry, even for the same identity.
    ``value`` is the selector as msicert keys its own files and locks by (GUIDs lower-cased);
    ``configured`` is the selector exactly as the caller gave it (surrounding blanks removed),
    which is what goes on the wire to IMDS and into the Windows store's tag, as the
    reference clients send and write it.
    """

    _fields = ("kind", "value", "configured")
    __slots__ = _fields
    kind: str
    value: str
    configured: str

    def __init__(self, kind: str = "system", value: str = "",
                 configured: str | None = None) -> None:
        self._set(kind=kind, value=value, configured=value if configured is None else configured)

    def __eq__(self, other: object) -> bool:
        """One identity however its id was spelled: ``configured`` is not compared."""
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Identity)
        return (self.kind, self.value) == (other.kind, other.value)

    def __hash__(self) -> int:
        return hash((self.kind, self.value))

    @classmethod
    def from_selectors(
        cls,
        *,
        client_id: str | None = None,
        object_id: str | None = None,
        resource_id: str | None = None,
    ) -> Identity:
        """Build from at most one selector; none means the system-assigned identity."""
        if client_id is None and object_id is None and resource_id is None:
            return cls()
        given = [
            (kind, value)
            for kind, value in (
                ("client_id", client_id),
                ("object_id", object_id),
                ("resource_id", resource_id),
            )
            if value is not None
        ]
        if len(given) > 1:
            raise ValueError("give at most one of client_id, object_id, resource_id")
        if not given:
            return cls()
        kind, value = given[0]
        configured = value = value.strip()
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{kind} is not valid text (undecodable bytes?)") from None
        if kind in ("client_id", "object_id"):
            if not _GUID.match(value):
                raise ValueError(f"{kind} must be a GUID, got {value!r}")
            value = value.lower()
        elif not value.startswith("/") or "/providers/" not in value.lower():
            raise ValueError("resource_id must be an ARM resource id (/subscriptions/...)")
        return cls(kind, value, configured)

    @property
    def query(self) -> dict[str, str]:
        """The IMDS v2 selector parameter (``mi_res_id`` for resource ids), empty if system.

        The value as configured: both reference clients send it unchanged (MSAL.NET
        ``ImdsQueryParamsHelper``, MSAL Go's IMDSv2 ``endpoint``).
        """
        if self.kind == "system":
            return {}
        name = "mi_res_id" if self.kind == "resource_id" else self.kind
        return {name: self.configured}

    @property
    def alias(self) -> str:
        """Stable human-readable tag, e.g. ``system`` or ``client_id=<guid>``.

        ARM resource ids are case-insensitive: two spellings of one id are one identity.
        """
        if self.kind == "system":
            return "system"
        value = self.value.lower() if self.kind == "resource_id" else self.value
        return f"{self.kind}={value}"

    @property
    def file_tag(self) -> str:
        """File-name-safe tag; empty for the system-assigned identity."""
        if self.kind == "system":
            return ""
        if self.kind == "resource_id":
            digest = hashlib.sha256(self.value.lower().encode("utf-8")).hexdigest()[:20]
            return f"mi_res_id-{digest}"
        return f"{self.kind}-{self.value}"

    def expects_client_id(self) -> str | None:
        """The certificate CN this identity must carry, when the selector fixes it."""
        return self.value if self.kind == "client_id" else None


def is_guid(text: str) -> bool:
    """True for a GUID in its 8-4-4-4-12 form."""
    return bool(_GUID.match(text))
