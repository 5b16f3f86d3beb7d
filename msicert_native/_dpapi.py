"""DPAPI (crypt32): bytes only the current user can read back (user scope, no UI).

``CryptProtectData`` encrypts with a key derived from the user's logon credentials and adds an
integrity check: ``CryptUnprotectData`` fails for another user's blob, for a blob protected
with other ``entropy`` and for a changed one. msicert keeps its Windows shared token cache in
such a blob (:mod:`msicert.backends.windows._token_file`).
"""

from __future__ import annotations

from ._backend import impl as _impl

__all__ = ["protect_data", "unprotect_data"]


def protect_data(data: bytes, *, entropy: bytes = b"") -> bytes:
    """``data`` encrypted for the current user; ``entropy`` must be given again to read it."""
    blob: bytes = _impl.crypt_protect_data(bytes(data), bytes(entropy))
    return blob


def unprotect_data(blob: bytes, *, entropy: bytes = b"") -> bytes:
    """The data of a :func:`protect_data` blob; NativeError (``CryptUnprotectData``) when this
    user did not protect it with this ``entropy``, or when it was changed."""
    data: bytes = _impl.crypt_unprotect_data(bytes(blob), bytes(entropy))
    return data
