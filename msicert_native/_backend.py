"""Backend choice, made once at import by plain ``try/except ImportError`` (frozen-app safe).

Default: cffi when ``cffi`` and the generated ``msicert_native._ffi`` import, else ctypes.
``MSICERT_NATIVE_BACKEND=cffi|ctypes`` forces one; forcing cffi where it cannot be imported
raises :class:`BackendUnavailableError` (an ``ImportError``) instead of falling back.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ._errors import BackendUnavailableError

__all__ = ["BACKEND", "ENV_VAR", "impl"]

ENV_VAR = "MSICERT_NATIVE_BACKEND"
_choice = os.environ.get(ENV_VAR, "").strip().lower()

# For the type checker both backends are the ctypes one: they expose the same functions
# (tests/native/test_backends.py compares their signatures).
if TYPE_CHECKING or _choice == "ctypes":
    from . import _ctypes_impl as impl
elif _choice in ("", "cffi"):
    try:
        from . import _cffi_impl as impl
    except ImportError as exc:
        if _choice == "cffi":
            raise BackendUnavailableError(
                f"{ENV_VAR}=cffi but the cffi backend cannot be imported ({exc}); install "
                "cffi and generate msicert_native/_ffi.py with `python cdefs/build_ffi.py` "
                "(or `pip install .`), or unset the variable to use ctypes"
            ) from exc
        from . import _ctypes_impl as impl
else:
    raise BackendUnavailableError(
        f"{ENV_VAR}={_choice!r} is not a backend: use 'cffi' or 'ctypes' (or leave it unset)"
    )

BACKEND: str = impl.BACKEND
"""``"cffi"`` or ``"ctypes"``: the backend every msicert_native call goes through."""
