"""Backend choice, made once at import by plain ``try/except ImportError`` (frozen-app safe).

Default: cffi when ``cffi`` and the generated ``msicert_native._ffi`` import, else ctypes.
``MSICERT_NATIVE_BACKEND=cffi|ctypes`` forces one; forcing cffi where it cannot be imported
raises :class:`BackendUnavailableError` (an ``ImportError``) instead of falling back.

:data:`primitives` is the chosen backend module; :data:`impl` the Win32 wrappers bound to it
(``msicert_native._win32``), which every other module calls.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import TYPE_CHECKING

from ._errors import BackendUnavailableError
from ._win32 import Primitives, Win32

__all__ = ["BACKEND", "ENV_VAR", "impl", "primitives"]

ENV_VAR = "MSICERT_NATIVE_BACKEND"
_GENERATE = (
    "generate msicert_native/_ffi.py and _spec.py from cdefs/ with `python cdefs/build_ffi.py` "
    "(or `pip install .`)"
)
_choice = os.environ.get(ENV_VAR, "").strip().lower()

if _choice not in ("", "cffi", "ctypes"):
    raise BackendUnavailableError(
        f"{ENV_VAR}={_choice!r} is not a backend: use 'cffi' or 'ctypes' (or leave it unset)"
    )


def _ctypes_backend() -> ModuleType:
    try:
        from . import _ctypes_impl
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the ctypes backend cannot be imported ({exc}): {_GENERATE}"
        ) from exc
    return _ctypes_impl


# For the type checker the primitives are the ctypes ones; both modules provide the same set
# (checked here against the Primitives protocol, and by tests/native/test_backends.py).
if TYPE_CHECKING:
    from . import _cffi_impl
    from . import _ctypes_impl as primitives

    _both: tuple[Primitives, Primitives] = (_cffi_impl, primitives)
elif _choice == "ctypes":
    primitives = _ctypes_backend()
else:
    try:
        from . import _cffi_impl as primitives
    except ImportError as exc:
        if _choice == "cffi":
            raise BackendUnavailableError(
                f"{ENV_VAR}=cffi but the cffi backend cannot be imported ({exc}); install cffi "
                f"and {_GENERATE}, or unset the variable to use ctypes"
            ) from exc
        primitives = _ctypes_backend()

impl: Win32 = Win32(primitives)
"""The Win32 calls, bound to the chosen backend."""

BACKEND: str = primitives.BACKEND
"""``"cffi"`` or ``"ctypes"``: the backend every msicert_native call goes through."""
