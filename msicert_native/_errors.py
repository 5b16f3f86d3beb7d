"""Errors of the native layer and the checks that raise them.

Two error models, two checks (the Windows error is captured by the caller at once and handed
in as a callable that is invoked before anything else runs):

* crypt32 / kernel32 / winhttp return a BOOL or a handle and report through GetLastError:
  :func:`check_bool`, :func:`check_handle` give :class:`NativeError` with ``winerror``;
* NCrypt returns a SECURITY_STATUS (signed 32-bit, 0 = success): :func:`check_status` gives
  :class:`NativeError` with ``status`` (unsigned, printed ``0x%08X``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

__all__ = [
    "BackendUnavailableError",
    "NativeError",
    "NativeTimeoutError",
    "WindowsRequiredError",
    "check_bool",
    "check_handle",
    "check_status",
]

_T = TypeVar("_T")

LastError = Callable[[], "tuple[int, str]"]
"""Returns ``(code, message)`` of the calling thread's last Windows error."""


class NativeError(OSError):
    """A Win32/CNG call failed.

    ``function`` is the Win32 function that failed; ``winerror`` the GetLastError code
    (crypt32/kernel32/winhttp) or ``None``; ``status`` the NCrypt SECURITY_STATUS masked to
    unsigned 32 bits or ``None``. :attr:`code` is whichever of the two is set.
    """

    function: str
    status: int | None

    def __init__(
        self,
        function: str,
        *,
        winerror: int | None = None,
        status: int | None = None,
        detail: str = "",
    ) -> None:
        masked = None if status is None else status & 0xFFFFFFFF
        if masked is not None:
            what = f"status 0x{masked:08X}"
        elif winerror is not None:
            what = f"winerror {winerror} (0x{winerror & 0xFFFFFFFF:08X})"
        else:
            what = "no error code"
        message = f"{function} failed: {what}"
        if detail:
            message += f": {detail.strip()}"
        super().__init__(message)
        self.function = function
        # OSError.winerror exists (writable) on Windows only; set it everywhere for one API.
        self.winerror = winerror  # type: ignore[assignment, unused-ignore]
        self.status = masked

    @property
    def code(self) -> int | None:
        """The unsigned 32-bit error code (``status`` for NCrypt, else ``winerror``)."""
        if self.status is not None:
            return self.status
        return None if self.winerror is None else self.winerror & 0xFFFFFFFF


class NativeTimeoutError(NativeError, TimeoutError):
    """A bounded wait (named mutex) ran out of time."""


class WindowsRequiredError(NativeError):
    """A Windows-only native call was made on another platform."""

    def __init__(self, function: str) -> None:
        super().__init__(function)
        self.args = (
            f"{function} needs Windows (crypt32/ncrypt/winhttp/kernel32) and this platform is "
            f"{sys.platform!r}: use the file store and the ssl transport here",
        )


class BackendUnavailableError(ImportError):
    """MSICERT_NATIVE_BACKEND forced a backend that cannot be imported."""


def signed32(code: int) -> int:
    """``code`` as a signed 32-bit int (what FormatMessage wrappers take for HRESULTs)."""
    code &= 0xFFFFFFFF
    return code - 0x1_0000_0000 if code & 0x8000_0000 else code


def clean_message(message: str) -> str:
    """Drop placeholder texts some FormatMessage fallbacks return (e.g. under Wine)."""
    message = message.strip()
    if not message or "%" in message or message == "<no description>":
        return ""
    return message


def check_bool(result: int, function: str, last_error: LastError) -> None:
    """Raise :class:`NativeError` (with GetLastError) when a BOOL result is FALSE."""
    if not result:
        code, detail = last_error()
        raise NativeError(function, winerror=code, detail=detail)


def check_handle(handle: _T | None, function: str, last_error: LastError) -> _T:
    """Return ``handle``; raise :class:`NativeError` (with GetLastError) when it is NULL/0."""
    if not handle:
        code, detail = last_error()
        raise NativeError(function, winerror=code, detail=detail)
    return handle


def check_status(status: int, function: str, describe: Callable[[int], str]) -> None:
    """Raise :class:`NativeError` with ``status`` when a SECURITY_STATUS is non-zero."""
    if status != 0:
        raise NativeError(function, status=status, detail=describe(status & 0xFFFFFFFF))
