"""No mint storms: after a failed mint (or a fresh certificate that ESTS refused), one
identity's mints wait out a back-off that every thread and, through a marker in the store
directory, every process of the user shares.

A call inside the window fails fast with the error that started it (a new exception of the
same type and text, caused by :class:`BackoffActive`). The window never hides a usable
certificate: callers consult the gate only when they are about to mint.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from . import _errors, _fork
from ._errors import MsiCertError
from ._frozen import Frozen
from ._timeouts import check_seconds

__all__ = ["MARKER_MAX_SECONDS", "Backoff", "BackoffActive", "MintGate", "gate_for"]

_MARKER_VERSION = 1
_MAX_MARKER = 4096
MARKER_MAX_SECONDS = 3600.0
"""The longest a marker can pause other processes, whatever it says (a clock far ahead, or a
marker written with a longer window, must not stop mints for longer)."""


class Backoff(Frozen):
    """How long mints of one identity pause after the n-th failure in a row:
    ``initial`` doubling up to ``maximum`` seconds, each wait drawn at random from its upper
    half (jitter, so a fleet that failed together does not retry together).

    ``Backoff(initial=0, maximum=0)`` turns it off.
    """

    _fields = ("initial", "maximum")
    __slots__ = _fields
    initial: float
    maximum: float

    def __init__(self, initial: float = 1.0, maximum: float = 300.0) -> None:
        check_seconds("Backoff.initial", initial, zero_ok=True)
        check_seconds("Backoff.maximum", maximum, zero_ok=True)
        if maximum < initial:
            raise ValueError(f"Backoff.maximum ({maximum!r}) is below Backoff.initial "
                             f"({initial!r})")
        self._set(initial=initial, maximum=maximum)

    def delay(self, failures: int, draw: float | None = None) -> float:
        """The wait after ``failures`` (>= 1) failures in a row; ``draw`` in [0, 1) picks the
        point in the jitter range (random when None)."""
        step = min(self.maximum, self.initial * 2.0 ** min(max(failures, 1) - 1, 62))
        if draw is None:
            import random  # first failure only: never on a store hit

            draw = random.random()
        return step * (0.5 + 0.5 * draw)


DEFAULT_BACKOFF = Backoff()


class BackoffActive(MsiCertError):
    """The cause attached to an error re-raised inside a back-off window: says how long
    mints of the identity still pause, and why."""


def _clone(exc: BaseException) -> BaseException:
    """A new exception of ``exc``'s type and text with its attributes (no traceback)."""
    cls = type(exc)
    try:
        if issubclass(cls, MsiCertError):
            twin = cls.__new__(cls)
            Exception.__init__(twin, *exc.args)
            twin.__dict__.update(vars(exc))
            return twin
        import copy

        return copy.copy(exc)
    except Exception:  # an exotic exception type: say what it was
        return MsiCertError(f"{cls.__name__}: {exc}")


def _to_record(exc: BaseException) -> dict[str, Any]:
    attrs = {k: v for k, v in vars(exc).items()
             if isinstance(v, (str, int, float, bool)) or v is None}
    return {"type": type(exc).__name__, "message": str(exc), "attrs": attrs}


def _from_record(record: Any) -> BaseException | None:
    """The error a marker describes, rebuilt as the msicert type it names (another type, or
    an unknown one, comes back as :class:`MsiCertError` with its name in the text)."""
    if not isinstance(record, dict):
        return None
    name, message, attrs = record.get("type"), record.get("message"), record.get("attrs")
    if not (isinstance(name, str) and isinstance(message, str) and isinstance(attrs, dict)):
        return None
    cls = getattr(_errors, name, None) if name in _errors.__all__ else None
    if cls is None:
        cls = _errors.TokenError if name == "EstsRejected" else None
    if cls is None or not (isinstance(cls, type) and issubclass(cls, MsiCertError)):
        return MsiCertError(f"{name}: {message}"[:1000])
    exc = cls.__new__(cls)
    Exception.__init__(exc, message[:1000])
    exc.__dict__.update({k: v for k, v in attrs.items() if isinstance(k, str) and
                         (isinstance(v, (str, int, float, bool)) or v is None)})
    return exc


class _Unread:
    """The marker was not read for this check (in-memory windows only)."""


UNREAD = _Unread()


class MintGate:
    """One identity's back-off in this process, shared by every client of it.

    ``kind`` of a failure: ``"mint"`` (the mint itself failed) or ``"rejected"`` (ESTS
    refused a certificate minted for it). A success clears only what it proves wrong: a
    mint clears a mint failure; only a token clears a rejection (a mint that ESTS then
    refuses again would otherwise reset the doubling every round).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.failures = 0
        self.since = 0.0  # when the window opened (a clock that jumps back before it ends it)
        self.until = 0.0  # wall-clock seconds (the client's clock); inf: for this process
        self.kind = ""
        self.rejected = ""  # thumbprint ESTS refused, when kind == "rejected"
        self.error: BaseException | None = None
        self._adopted_error: BaseException | None = None  # another process's window
        self._adopted_since = self._adopted_until = 0.0
        self._adopted_kind = ""
        self._published = False  # this process's window is in the store's marker

    def window(self, now: float, marker: bytes | _Unread | None = UNREAD
               ) -> tuple[BaseException, float] | None:
        """(error, until) while ``now`` is inside a window: this process's, or the one
        ``marker`` (another process's) describes, which is then adopted so that later checks
        need not read it again. None outside every window.

        A marker read as gone after this process published its window means someone removed
        it (``msicert purge`` in another process, or a mint that worked there): every window
        here ends with it.
        """
        with self.lock:
            if marker is None and self._published:
                self._end_all()
                return None
            for error, since, until in (
                    (self.error, self.since, self.until),
                    (self._adopted_error, self._adopted_since, self._adopted_until)):
                if error is not None and since <= now < until:
                    return error, until  # a clock that jumped back before ``since`` ends it
        if isinstance(marker, _Unread):
            return None
        error, since, until, kind = _read_marker(marker, now)
        if error is None or not since <= now < until:
            return None
        with self.lock:
            self._adopted_error, self._adopted_since, self._adopted_until = error, since, until
            self._adopted_kind = kind
        return error, until

    def active(self, now: float, marker: bytes | _Unread | None = UNREAD) -> bool:
        """True inside a window (see :meth:`window`)."""
        return self.window(now, marker) is not None

    def check(self, now: float, marker: bytes | _Unread | None = UNREAD) -> None:
        """Raise the error that started the window when ``now`` is inside it (this process's,
        or the one ``marker`` from another process describes); else return."""
        found = self.window(now, marker)
        if found is None:
            return
        error, until = found
        wait = "for the life of this process" if math.isinf(until) else \
            f"for {until - now:.1f} s more"
        raised = _clone(error)
        raised.__cause__ = BackoffActive(
            f"no new mint {wait}: the last one failed ({type(error).__name__})")
        raise raised

    def refuses(self, x5t_s256: str, now: float) -> bool:
        """True while ESTS's refusal of certificate ``x5t_s256`` is inside its window."""
        with self.lock:
            return (self.kind == "rejected" and self.rejected == x5t_s256
                    and self.error is not None and now < self.until)

    def failed(
        self, exc: BaseException, now: float, backoff: Backoff, *, kind: str = "mint",
        rejected: str = "", cap: float | None = None, for_process: bool = False,
        marker_for: float | None = None,
    ) -> bytes:
        """Open (or extend) the window after ``exc``; returns the marker to store.

        ``cap`` bounds the wait (a renewal while a certificate is valid retries before it
        expires); ``for_process`` keeps the window for the life of this process, while the
        marker lasts ``marker_for`` seconds (a host that never issues to this key kind).
        """
        with self.lock:
            self.failures = self.failures + 1 if self.kind in ("", kind) else 1
            wait = backoff.delay(self.failures)
            if cap is not None:
                wait = min(wait, max(0.0, cap))
            self.since = now
            self.until = math.inf if for_process else now + wait
            self.kind, self.rejected, self.error = kind, rejected, exc
            self._published = False  # until the caller says the marker was written
            shared_until = now + (marker_for if marker_for is not None else wait)
            import json

            doc = {"v": _MARKER_VERSION, "since": now, "until": shared_until, "kind": kind,
                   "rejected": rejected, "error": _to_record(exc)}
        return json.dumps(doc, separators=(",", ":")).encode("utf-8")

    def published(self) -> None:
        """The marker :meth:`failed` returned is now in the store."""
        with self.lock:
            self._published = self.error is not None

    def succeeded(self, kind: str) -> bool:
        """A mint (``"mint"``) or a token (``"token"``) worked: close the window it disproves
        (a mint disproves a failed mint, a token a refused certificate). True when a window
        was closed (the caller then removes the marker)."""
        disproves = {"mint": "mint", "token": "rejected"}[kind]
        with self.lock:
            adopted = self._adopted_error is not None and self._adopted_kind == disproves
            if adopted:
                self._adopted_error = None
            if self.error is None or self.kind != disproves:
                return adopted
            self.failures, self.until, self.kind, self.rejected = 0, 0.0, "", ""
            self.error, self._published = None, False
            return True

    def clear(self) -> None:
        """Close every window (an explicit purge starts afresh)."""
        with self.lock:
            self._end_all()

    def _end_all(self) -> None:
        self.failures, self.until, self.kind, self.rejected = 0, 0.0, "", ""
        self.error = self._adopted_error = None
        self._published = False

    def reset_after_fork(self) -> None:
        """In a child process: a lock a parent thread held stays free."""
        self.lock = threading.Lock()


def _read_marker(data: bytes | None, now: float
                 ) -> tuple[BaseException | None, float, float, str]:
    """(error, since, until, kind) from another process's marker; no error for none, or one
    that does not parse (a marker is advice: it can never cost a certificate)."""
    none: tuple[BaseException | None, float, float, str] = (None, 0.0, 0.0, "")
    if not data or len(data) > _MAX_MARKER:
        return none
    import json

    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return none
    if not isinstance(doc, dict) or doc.get("v") != _MARKER_VERSION:
        return none
    since, until = doc.get("since"), doc.get("until")
    if not (isinstance(since, (int, float)) and isinstance(until, (int, float))
            and _finite(since) and _finite(until)):
        return none
    until = min(float(until), float(since) + MARKER_MAX_SECONDS)
    kind = doc.get("kind") if doc.get("kind") in ("mint", "rejected") else "mint"
    return _from_record(doc.get("error")), float(since), until, str(kind)


def _finite(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


# A forked child keeps the windows (they describe IMDS, not this process), with free locks.
_gates: _fork.Registry[str, MintGate] = _fork.Registry(
    lambda key: MintGate(), after_fork=MintGate.reset_after_fork)


def gate_for(key: str) -> MintGate:
    """The process's gate for ``key`` (a store location and an identity)."""
    return _gates.get(key)
