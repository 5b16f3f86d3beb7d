"""The Windows shared token cache: one DPAPI blob per store location and identity under the
user's local application data (``%LOCALAPPDATA%\\msicert\\tokens``), and its named mutexes.

The certificate store has no directory, so the tokens live in a file of the user's profile,
encrypted by ``CryptProtectData`` for the current user with entropy naming the location and
identity: another user cannot read it, and cannot write one this user would accept (DPAPI checks
the blob's integrity; a blob of another identity's file fails too). An ``mtls_pop`` token is
useless without the binding key, which never leaves CNG. Writes go to a temp file renamed over
the cache (a crash leaves the old or the new blob). The locks are per user, as the file is:
``Global\\msicert-tokens-<user SID>-<hash>`` (``Local\\`` when ``Global\\`` is denied).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time

from ..._identity import Identity
from ..._lazylog import LazyLogger
from ..contract import MAX_TOKEN_CACHE_BYTES
from ._mutex import MutexLock

__all__ = ["ENV_LOCALAPPDATA", "lock", "read", "token_path", "write"]

log = LazyLogger("msicert")

ENV_LOCALAPPDATA = "LOCALAPPDATA"
_MAX_BLOB = MAX_TOKEN_CACHE_BYTES + 64 * 1024  # DPAPI adds a header and a MAC
_REPLACE_TRIES = 10  # a reader holding the file open makes a rename fail for a moment
_O_BINARY = getattr(os, "O_BINARY", 0)


def token_path(location: str, identity: Identity) -> str | None:
    """``%LOCALAPPDATA%\\msicert\\tokens\\<location>[.<tag>].tokens``, or None when the
    variable is unset or not an absolute path (no shared cache then)."""
    base = os.environ.get(ENV_LOCALAPPDATA) or ""
    if not os.path.isabs(base):
        return None
    tag = identity.file_tag
    name = f"{location}.{tag}.tokens" if tag else f"{location}.tokens"
    return os.path.join(base, "msicert", "tokens", name)


def _entropy(location: str, identity: Identity) -> bytes:
    return f"msicert-tokens/1\0{location}\0{identity.alias}".encode()


def read(location: str, identity: Identity) -> bytes | None:
    """The decrypted cache, or None (absent; or unreadable, too large, or not protected by
    this user for this identity: a WARNING once)."""
    import msicert_native

    path = token_path(location, identity)
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | _O_BINARY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning_once(path, "ignoring shared token cache %s: %s", path, exc.strerror or exc)
        return None
    try:
        blob = os.read(fd, _MAX_BLOB + 1)
    except OSError as exc:
        log.warning_once(path, "ignoring shared token cache %s: %s", path, exc.strerror or exc)
        return None
    finally:
        os.close(fd)
    if len(blob) > _MAX_BLOB:
        log.warning_once(path, "ignoring shared token cache %s: larger than %d bytes; it is "
                         "rebuilt at the next token", path, _MAX_BLOB)
        return None
    try:
        data = msicert_native.unprotect_data(blob, entropy=_entropy(location, identity))
    except msicert_native.NativeError as exc:
        log.warning_once(path, "ignoring shared token cache %s: this user cannot decrypt it "
                         "(%s); it is rebuilt at the next token", path, exc)
        return None
    if len(data) > MAX_TOKEN_CACHE_BYTES:
        log.warning_once(path, "ignoring shared token cache %s: larger than %d bytes; it is "
                         "rebuilt at the next token", path, MAX_TOKEN_CACHE_BYTES)
        return None
    return data


def write(location: str, identity: Identity, data: bytes | None) -> bool:
    """Encrypt and atomically replace the cache (``None`` removes it); False, with a WARNING
    once, when that fails."""
    import msicert_native

    path = token_path(location, identity)
    if path is None:
        log.warning_once(ENV_LOCALAPPDATA, "%s is not set to an absolute path: tokens stay in "
                         "this process", ENV_LOCALAPPDATA)
        return False
    try:
        directory = os.path.dirname(path)
        if data is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            _sweep(directory, os.path.basename(path))
            return True
        blob = msicert_native.protect_data(data, entropy=_entropy(location, identity))
        os.makedirs(directory, exist_ok=True)
        _sweep(directory, os.path.basename(path))
        tmp = f"{path}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o600)
        try:
            try:
                view = memoryview(blob)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            _replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return True
    except (OSError, msicert_native.NativeError) as exc:
        log.warning_once(path, "cannot write shared token cache %s (%s); tokens stay in this "
                         "process", path, exc)
        return False


def _replace(tmp: str, path: str) -> None:
    for attempt in range(_REPLACE_TRIES):
        try:
            os.replace(tmp, path)
            return
        except PermissionError:  # a reader has it open without FILE_SHARE_DELETE
            if attempt == _REPLACE_TRIES - 1:
                raise
            time.sleep(0.02)


def _sweep(directory: str, name: str) -> None:
    """Remove temp files a crashed writer left (the caller holds the cache's lock)."""
    prefix = f"{name}.tmp-"
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.startswith(prefix):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def lock(location: str, identity: Identity, scope: str | None, *, timeout: float) -> MutexLock:
    """The per-user mutex for ``scope``'s ESTS requests, or (``None``) for writes of the
    cache."""
    import msicert_native

    owner = msicert_native.current_user_sid()
    what = "\0file" if scope is None else scope
    digest = hashlib.sha256(f"{location}|{identity.alias}|{what}".encode()).hexdigest()[:32]
    name = f"msicert-tokens-{owner}-{digest}"
    return MutexLock(f"Global\\{name}", timeout=timeout, fallback=f"Local\\{name}",
                     waiting_for="another process writing the token cache" if scope is None
                     else "another process asking ESTS for the same token")
