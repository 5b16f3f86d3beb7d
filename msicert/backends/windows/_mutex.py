"""Named mutexes of the Windows backend: msicert's single flight, and the store-write mutex that
msicert shares with MSAL.NET and MSAL Go.

* :class:`MutexLock` - one mint per identity: a thread lock in the process and a named mutex
  across processes (``Global\\msicert-<user SID>-<hash>`` so every logon session of the user
  meets on it, ``Local\\`` when ``Global\\`` is denied). Held for a whole mint.
* :class:`SharedStoreLock` - ``Global\\MSAL_MI_P_<hash of the alias>``, the mutex the reference
  clients take around every write of their certificate store (MSAL.NET
  ``InterprocessLock.TryWithAliasLock``, MSAL Go ``withAliasLock``). Held only for the write,
  never through a mint: the references wait 300 ms for it and then skip their write.

Both count an abandoned mutex as acquired, so a crashed holder never blocks the others.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

from ..._errors import StoreError
from ..._identity import Identity
from ..._lazylog import LazyLogger
from ..contract import thread_lock

__all__ = ["PERSIST_WAIT", "MutexLock", "SharedStoreLock", "mutex_names", "shared_mutex_name"]

log = LazyLogger("msicert")

_ERROR_ACCESS_DENIED = 5
_warned_fallback: set[str] = set()

PERSIST_WAIT = 0.3
"""Seconds a store write waits for the shared mutex: the references' 300 ms (MSAL.NET
``WindowsPersistentCertificateCache``, MSAL Go ``persistLockTimeout``)."""

# .NET String.Trim / Go strings.TrimSpace: Char.IsWhiteSpace (Zs, Zl, Zp, U+0009-U+000D,
# U+0085), which Python's str.strip does not match exactly (it also strips U+001C-U+001F).
_DOTNET_WHITESPACE = "".join(map(chr, (
    *range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029,
    0x202F, 0x205F, 0x3000)))


def _upper_invariant(text: str) -> str:
    """``String.ToUpperInvariant``: each code point by its simple (one-to-one) upper-case
    mapping. Python's ``str.upper`` applies the full mappings (``ß`` -> ``SS``); where a full
    mapping has several code points the simple one is the title-case letter when that is a
    single code point (``ᾀ`` -> ``ᾈ``), else the letter itself (``ß``, ``ﬁ``, ``ŉ``)."""
    if text.isascii():
        return text.upper()
    out = []
    for char in text:
        upper = char.upper()
        if len(upper) != 1:
            title = char.title()
            upper = title if len(title) == 1 else char
        out.append(upper)
    return "".join(out)


def shared_mutex_name(alias: str | None, *, prefer_global: bool = True) -> str:
    """``InterprocessLock.GetMutexNameForAlias``: ``Global\\`` (or ``Local\\``) ``MSAL_MI_P_``
    + the first 32 lower-case hex digits of SHA-256 over the UTF-8 of UPPER(TRIM(alias));
    ``0`` instead of the digits for an empty alias (the reference hashes nothing then)."""
    canonical = _upper_invariant((alias or "").strip(_DOTNET_WHITESPACE))
    # .NET's UTF-8 encoder writes U+FFFD for a lone surrogate.
    data = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in canonical)
    suffix = hashlib.sha256(data.encode("utf-8")).hexdigest()[:32] if data else "0"
    return ("Global\\" if prefer_global else "Local\\") + "MSAL_MI_P_" + suffix


def _enter(stack: contextlib.ExitStack, name: str, fallback: str | None, wait_ms: int) -> str:
    """Hold ``name`` (or ``fallback`` when ``name`` is denied); return the one held.

    NativeTimeoutError when the mutex stays busy for ``wait_ms``; StoreError when it cannot be
    created. Only ERROR_ACCESS_DENIED on ``name`` moves to ``fallback`` (as the references
    do: a busy ``Global\\`` mutex is busy, not a reason to take another one).
    """
    import msicert_native

    try:
        stack.enter_context(msicert_native.named_mutex(name, wait_ms))
        return name
    except msicert_native.NativeTimeoutError:
        raise
    except msicert_native.NativeError as exc:
        if fallback is None or exc.winerror != _ERROR_ACCESS_DENIED:
            raise StoreError(f"cannot create the mutex {name}: {exc}") from exc
        if name not in _warned_fallback:
            _warned_fallback.add(name)
            log.warning(
                "access to %s denied (%s); using %s: other logon sessions of this user "
                "are not excluded and may write at the same time", name, exc, fallback)
    try:
        stack.enter_context(msicert_native.named_mutex(fallback, wait_ms))
    except msicert_native.NativeTimeoutError:
        raise
    except msicert_native.NativeError as exc:
        raise StoreError(f"cannot create the mutex {fallback}: {exc}") from exc
    return fallback


class MutexLock:
    """Thread lock + a Windows named mutex, ``Global\\`` first (see :func:`mutex_names` for
    the namespace decision).

    ``fallback`` (a ``Local\\`` name) is used only when creating or opening ``name`` is
    denied (ERROR_ACCESS_DENIED); a warning (once per name and process) says that exclusion
    is then limited to this logon session.
    """

    def __init__(self, name: str, *, timeout: float = 120.0, fallback: str | None = None,
                 waiting_for: str = "another process to finish minting") -> None:
        self.name = name
        self.fallback = fallback
        self.timeout = timeout
        self.waiting_for = waiting_for  # what the one line per wait says
        self._thread = thread_lock("mutex:" + name)

    @contextlib.contextmanager
    def hold(self, *, blocking: bool = True) -> Iterator[bool]:
        """Same contract as :meth:`msicert.backends.contract.Lock.hold`."""
        import msicert_native

        if not self._thread.acquire(blocking, self.timeout if blocking else -1):
            if blocking:
                raise StoreError(f"timed out after {self.timeout:.0f} s waiting for {self.name}")
            yield False
            return
        try:
            with contextlib.ExitStack() as stack:
                try:
                    _enter(stack, self.name, self.fallback, 0)  # free: no wait, nothing to say
                except msicert_native.NativeTimeoutError:
                    if not blocking:
                        yield False
                        return
                    # One line per wait: the CLI shows it on stderr (as the POSIX flock does).
                    log.info("waiting for %s (mutex %s, up to %.0f s)", self.waiting_for,
                             self.name, self.timeout, extra={"wait": True})
                    try:
                        _enter(stack, self.name, self.fallback, int(self.timeout * 1000))
                    except msicert_native.NativeTimeoutError as exc:
                        raise StoreError(
                            f"timed out after {self.timeout:.0f} s waiting for another process "
                            f"holding {self.name}"
                        ) from exc
                yield True
        finally:
            self._thread.release()


class SharedStoreLock:
    """The store-write mutex of every library writing MSI binding certificates:
    ``Global\\MSAL_MI_P_<...>`` for one alias (:func:`shared_mutex_name`), ``Local\\`` only
    when ``Global\\`` is denied.

    ``hold(wait)`` yields True while held and False when another thread or process still held
    it after ``wait`` seconds: the caller then skips its write (or reports it), as the
    references do after their 300 ms.
    """

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.name = shared_mutex_name(alias)
        self.fallback = shared_mutex_name(alias, prefer_global=False)
        self._thread = thread_lock("mutex:" + self.name)

    @contextlib.contextmanager
    def hold(self, wait: float = PERSIST_WAIT) -> Iterator[bool]:
        """Hold the mutex for the ``with`` body, waiting at most ``wait`` seconds."""
        import msicert_native

        if not self._thread.acquire(True, max(wait, 0.0)):
            yield False
            return
        try:
            with contextlib.ExitStack() as stack:
                try:
                    _enter(stack, self.name, self.fallback, max(0, int(wait * 1000)))
                except msicert_native.NativeTimeoutError:
                    log.debug("store mutex %s (%s) still held after %.0f ms", self.name,
                              self.alias, wait * 1000)
                    yield False
                    return
                yield True
        finally:
            self._thread.release()


def mutex_names(location: str, identity: Identity, *, machine: bool) -> tuple[str, str]:
    """``(Global\\msicert-<owner>-<hash>, Local\\msicert-<owner>-<hash>)`` for one identity:
    msicert's single flight for a whole mint (the store-write mutex is the references', see
    :class:`SharedStoreLock`).

    ``CurrentUser\\My`` is per user, shared by every logon session of that user (a service in
    session 0 and an interactive session), so the single-flight mutex lives in ``Global\\``
    with the user's SID in its name: all sessions of one user meet on it, and other users never
    collide with (or wait on) it. ``LocalMachine\\My`` is one store for everybody: its mutex
    is ``Global\\msicert-machine-<hash>``. When the ``Global\\`` name cannot be created or
    opened (ERROR_ACCESS_DENIED: a hardened object-namespace DACL, a low-integrity or
    AppContainer process, or a same-named object made by someone whose DACL excludes us),
    :class:`MutexLock` falls back to ``Local\\`` (this logon session only) and logs a warning,
    since two sessions of the user may then mint at once.
    """
    import msicert_native

    owner = "machine" if machine else msicert_native.current_user_sid()
    digest = hashlib.sha256(f"{location}|{identity.alias}".encode()).hexdigest()[:32]
    return f"Global\\msicert-{owner}-{digest}", f"Local\\msicert-{owner}-{digest}"
