"""Who this process runs as (advapi32): names per-user kernel objects such as the mutex."""

from __future__ import annotations

import functools

from ._backend import impl as _impl

__all__ = ["current_user_sid"]


@functools.cache
def current_user_sid() -> str:
    """The process token's user SID, e.g. ``S-1-5-21-...-1001`` (read once per process)."""
    sid: str = _impl.current_user_sid()
    return sid
