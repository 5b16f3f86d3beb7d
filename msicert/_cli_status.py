"""What ``msicert status`` and ``msicert purge`` show, and where ``status --all`` looks.

The ``status --json`` objects (one per identity, one per cached token: never the token
itself) and their terminal lines, with an 18-cell lifetime bar from issue to expiry that marks
renewal. ``status --all`` lists a store directory's entry files and reads each one's identity
from its ``identity:`` header (else from its file name). Imported by the ``status`` and
``purge`` commands only: a warm ``msicert cert`` never loads it.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

from ._errors import StoreError

__all__ = ["alias_of", "bar", "duration", "entry_names", "identity_from_alias", "status_line",
           "status_row", "store_missing", "token_line", "token_rows"]


def duration(seconds: float) -> str:
    """``2d 04h``, ``4h 05m``, ``5m 03s`` or ``42s`` (rounded to seconds)."""
    s = max(0, round(seconds))
    days, rest = divmod(s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


_BAR_WIDTH = 18


def bar(start: float, renew: float, end: float, now: float) -> str:
    """Issued -> expiry in 18 cells: elapsed █ (▌ for a half cell), left ░, renewal │."""
    span = max(end - start, 1e-9)
    done = min(max((now - start) / span, 0.0), 1.0) * _BAR_WIDTH
    full = int(done)
    cells = ["█"] * full
    if full < _BAR_WIDTH:
        cells.append("▌" if done - full >= 0.5 else "░")
    cells += ["░"] * (_BAR_WIDTH - len(cells))
    mark = int(min(max((renew - start) / span, 0.0), 1.0) * _BAR_WIDTH)
    if mark > full and mark < _BAR_WIDTH:
        cells[mark] = "│"
    return "".join(cells)


_STATE_NAMES = {"fresh": "fresh", "renew": "renewing", "expired": "expired",
                "not_yet_valid": "not yet valid"}


def _iso(ts: float) -> str:
    """UTC ISO 8601 rounded to whole seconds, ``Z`` suffix."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(round(ts)))


def store_missing(client: Any) -> bool:
    """True when a file store's directory does not exist (status must not create it)."""
    directory = client.store.directory
    return directory is not None and not os.path.isdir(directory)


def status_row(cert: Any, now: float) -> dict[str, Any]:
    """The stable ``status --json`` object of one usable-or-not (but parseable) entry."""
    state = _STATE_NAMES[cert.state(now).value]
    return {
        "identity": cert.identity.alias,
        "state": state.replace(" ", "_"),
        "reason": None,
        "x5t_s256": cert.x5t_s256,
        "not_before": _iso(cert.not_before_ts),
        "renew_after": _iso(cert.renew_after_ts),
        "not_after": _iso(cert.not_after_ts),
        "renews_in_seconds": round(cert.renew_after_ts - now),
        "expires_in_seconds": round(cert.not_after_ts - now),
        "client_id": cert.client_id,
        "store": cert.store,
    }


def token_rows(tokens: list[Any], cert: Any, now: float) -> list[dict[str, Any]]:
    """The ``status --json`` objects of the shared cache's tokens: never the token itself."""
    return [{
        "resource": t.resource,
        "x5t_s256": t.x5t_s256,
        "bound_to_stored_certificate": cert is not None and t.x5t_s256 == cert.x5t_s256,
        "expires_on": _iso(t.expires_on),
        "expires_in_seconds": round(t.expires_on - now),
        "refresh_on": _iso(t.refresh_on),
    } for t in tokens]


def token_line(row: dict[str, Any]) -> str:
    """The terminal line of one :func:`token_rows` object."""
    left = row["expires_in_seconds"]
    when = f"expires in {duration(left)}" if left > 0 else f"expired {duration(-left)} ago"
    bound = "" if row["bound_to_stored_certificate"] else ", bound to another certificate"
    return f"  token  {row['resource']}  {when}{bound}"


def status_line(row: dict[str, Any], cert: Any, now: float, width: int) -> str:
    """The terminal line of one identity: its name padded to ``width``, then the lifetime
    bar and what comes next (or why the entry cannot be used)."""
    name = row["identity"].ljust(width)
    if row["state"] in ("corrupt", "unreadable"):
        return f"{name}  {row['state']}: {row['reason']}"
    lifetime = bar(cert.not_before_ts, cert.renew_after_ts, cert.not_after_ts, now)
    left = row["expires_in_seconds"]
    due = row["renews_in_seconds"]
    if row["state"] == "expired":
        text = f"expired {duration(-left)} ago"
    elif row["state"] == "not_yet_valid":
        text = f"valid in {duration(cert.not_before_ts - now)}, check the clock"
    elif due > 0:
        text = f"renews in {duration(due)}, expires in {duration(left)}"
    else:
        text = f"renewal due {duration(-due)} ago, expires in {duration(left)}"
    return f"{name}  {lifetime}  {text}  ({row['state'].replace('_', ' ')})"


def entry_names(directory: str) -> list[str]:
    """The entry files of a store directory (none when it does not exist), sorted;
    StoreError when it cannot be listed."""
    try:
        return [] if not os.path.isdir(directory) else sorted(
            n for n in os.listdir(directory) if re.fullmatch(r"msal_mtls(\.[^.]+)?\.pem", n))
    except OSError as exc:
        raise StoreError(f"cannot list store directory {directory}: "
                         f"{exc.strerror or type(exc).__name__}") from None


def alias_of(path: str, name: str) -> str:
    """The identity of the entry file ``name`` at ``path``: its header's, else the one its
    name stands for, else the name itself."""
    return _alias_in(path) or _alias_from_name(name) or name


def _alias_in(path: str) -> str | None:
    """The ``identity:`` header of the entry at ``path``; None when it is not a readable
    regular file (a FIFO named like an entry must not hang the listing)."""
    import stat

    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        head = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    m = re.search(rb"^identity:\s*(\S+)\s*$", head, re.M)
    return m.group(1).decode("utf-8", "replace") if m else None


def _alias_from_name(name: str) -> str | None:
    """The identity a file name stands for when its header cannot tell (resource ids are
    hashed in the name, so those stay unknown)."""
    m = re.fullmatch(r"msal_mtls(?:\.(client_id|object_id)-([0-9a-fA-F-]{36}))?\.pem", name)
    if m is None:
        return None
    return f"{m.group(1)}={m.group(2)}" if m.group(1) else "system"


def identity_from_alias(alias: str, identity_cls: Any) -> Any:
    """The identity an alias names (``system``, ``client_id=...``, ...); ValueError for an
    alias no entry header can hold."""
    if alias == "system":
        return identity_cls()
    kind, sep, value = alias.partition("=")
    if not sep or kind not in ("client_id", "object_id", "resource_id"):
        raise ValueError(f"unknown identity {alias!r} in the entry header")
    return identity_cls.from_selectors(**{kind: value})
