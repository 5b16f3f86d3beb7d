"""KeyGuard key attestation through the optional ``AttestationClientLib.dll`` (Windows).

The DLL is not redistributable and has no public header, so it is not part of the cdefs (the
static tier has nothing to check it against): it is loaded with ctypes from an explicit path,
only when present. Its C API (cdecl, ANSI strings, 0 = success)::

    struct AttestationLogInfo { void (*Log)(void *ctx, const char *tag, int level,
                                            const char *func, int line, const char *msg);
                                void *Ctx; };
    int  InitAttestationLib(AttestationLogInfo *info);          // Log must not be NULL
    int  AttestKeyGuardImportKey(const char *endpoint, const char *auth_token,
                                 const char *client_payload, NCRYPT_KEY_HANDLE key,
                                 char **token, const char *client_id);
    void FreeAttestationToken(char *token);
    void UninitAttestationLib(void);

The library's log callback is a no-op on purpose: its messages are not ours to vet for
secrets, and no token may reach a log line.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import threading
from ctypes import CFUNCTYPE, POINTER, Structure, byref, c_char_p, c_int, c_int32, c_size_t
from ctypes import c_void_p as _ptr
from typing import Any, Final

from ._errors import NativeError, WindowsRequiredError
from ._handles import NCryptKey

__all__ = [
    "ATTESTATION_DLL",
    "ATTESTATION_DLL_ENV",
    "AttestationFailed",
    "attest_keyguard_key",
    "attestation_search_paths",
    "find_attestation_library",
]

ATTESTATION_DLL: Final = "AttestationClientLib.dll"
ATTESTATION_DLL_ENV: Final = "MSICERT_ATTESTATION_DLL"
"""Environment variable: full path of the DLL (tried first)."""

_LogFunc = CFUNCTYPE(None, _ptr, _ptr, c_int, _ptr, c_int, _ptr)
# Pointer-only arguments: the callback never dereferences what the library passes.
_NOOP_LOG = _LogFunc(lambda *_args: None)
_LOCK = threading.Lock()  # Init/Uninit are process-global in the library


class _AttestationLogInfo(Structure):
    _fields_ = (("Log", _LogFunc), ("Ctx", _ptr))


class AttestationFailed(NativeError):
    """The attestation library returned non-zero (``status``) or no token."""


def attestation_search_paths() -> list[str]:
    """Where :func:`find_attestation_library` looks, in order (never the current directory)."""
    candidates: list[str] = []
    explicit = os.environ.get(ATTESTATION_DLL_ENV, "").strip()
    if explicit:
        candidates.append(explicit)
    dirs = [os.path.dirname(os.path.abspath(sys.executable))]
    frozen_dir = getattr(sys, "_MEIPASS", None)
    if isinstance(frozen_dir, str):
        dirs.append(frozen_dir)
    dirs.append(os.path.dirname(os.path.abspath(__file__)))
    for directory in dirs:
        path = os.path.join(directory, ATTESTATION_DLL)
        if path not in candidates:
            candidates.append(path)
    return candidates


def find_attestation_library() -> tuple[str | None, list[str]]:
    """``(path or None, places looked in)``: the first existing candidate wins."""
    looked = attestation_search_paths()
    return next((path for path in looked if os.path.isfile(path)), None), looked


@functools.cache
def _load(path: str) -> Any:
    if sys.platform != "win32":
        raise WindowsRequiredError("InitAttestationLib")
    lib: Any = ctypes.CDLL(path)  # cdecl; a full path, so no search-order surprises
    lib.InitAttestationLib.restype = c_int32
    lib.InitAttestationLib.argtypes = (POINTER(_AttestationLogInfo),)
    lib.AttestKeyGuardImportKey.restype = c_int32
    lib.AttestKeyGuardImportKey.argtypes = (
        c_char_p, c_char_p, c_char_p, c_size_t, POINTER(_ptr), c_char_p
    )
    lib.FreeAttestationToken.restype = None
    lib.FreeAttestationToken.argtypes = (_ptr,)
    lib.UninitAttestationLib.restype = None
    lib.UninitAttestationLib.argtypes = ()
    return lib


def _ansi(text: str | None) -> bytes | None:
    return None if text is None else text.encode("ascii")


def attest_keyguard_key(
    dll: str,
    *,
    endpoint: str,
    client_id: str,
    key: NCryptKey | int,
    auth_token: str | None = None,
    client_payload: str | None = None,
) -> str:
    """Attest a KeyGuard key with the library at ``dll``; return the MAA token (a JWT).

    ``endpoint`` is the attestation endpoint from getplatformmetadata; ``key`` an open
    NCrypt key (or its raw handle). Non-zero results raise :class:`AttestationFailed` with
    ``status``; a missing library file raises ``OSError`` from the loader.
    """
    handle = key.handle if isinstance(key, NCryptKey) else key
    lib = _load(dll)
    with _LOCK:
        info = _AttestationLogInfo(_NOOP_LOG, None)
        status = int(lib.InitAttestationLib(byref(info)))
        if status != 0:
            raise AttestationFailed("InitAttestationLib", status=status)
        try:
            token = _ptr()
            status = int(
                lib.AttestKeyGuardImportKey(
                    _ansi(endpoint), _ansi(auth_token), _ansi(client_payload), handle,
                    byref(token), _ansi(client_id),
                )
            )
            if status != 0:
                raise AttestationFailed("AttestKeyGuardImportKey", status=status)
            if not token.value:
                raise AttestationFailed("AttestKeyGuardImportKey", detail="returned no token")
            try:
                return ctypes.string_at(token.value).decode("ascii")
            finally:
                lib.FreeAttestationToken(token)
        finally:
            lib.UninitAttestationLib()
