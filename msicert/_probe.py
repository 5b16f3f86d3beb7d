"""Which managed identity does this host have? IMDS v2, IMDS v1, or none.

Follows MSAL.NET's source discovery (``ManagedIdentityClient`` /
``ImdsManagedIdentitySource.ProbeImdsEndpointAsync``): IMDS v2 first, then v1. Each probe is
one GET *without* the ``Metadata: true`` header; a host that serves the path refuses it with
400, and that refusal is the proof. Any other answer (200, 404, ...) or no answer means the
version is not there. Unlike a mint, the probe never retries: it answers within ``timeout``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

__all__ = ["HINT_NOT_ON_AZURE", "ProbeResult", "probe"]

HINT_NOT_ON_AZURE = "not on Azure? try `msicert emulator`"
_V2_PATH = "/metadata/identity/getplatformmetadata?cred-api-version=2.0"
_V1_PATH = "/metadata/identity/oauth2/token?api-version=2018-02-01"


@dataclass(frozen=True)
class ProbeResult:
    """``source`` is ``"imds_v2"``, ``"imds_v1"`` or ``"none"``; a ``*_reason`` says why that
    version is absent (None when found, or not probed because v2 was found).
    ``unreachable`` is True when no probe got an HTTP answer at all."""

    source: str
    imds_v2_reason: str | None
    imds_v1_reason: str | None
    endpoint: str
    unreachable: bool
    elapsed: float

    def to_json(self) -> dict[str, object]:
        """The ``msicert probe --json`` object (stable keys)."""
        return {
            "source": self.source,
            "imds_v2_reason": self.imds_v2_reason,
            "imds_v1_reason": self.imds_v1_reason,
            "endpoint": self.endpoint,
            "unreachable": self.unreachable,
            "elapsed_seconds": round(self.elapsed, 3),
        }


def _ask(base: str, path: str, label: str, until: float) -> tuple[bool, str | None, bool]:
    """(found, reason when not, transport failure?) for one probe GET, over by ``until``
    however slowly IMDS (or whatever answers there) trickles its answer."""
    import urllib3

    from .wire._http import get_within

    if until - time.monotonic() <= 0:
        return False, f"{label} not probed: the timeout was spent", True
    try:
        status = get_within(base + path, {"x-ms-client-request-id": str(uuid.uuid4())}, until)
    except TimeoutError:
        return False, f"{label} probe: IMDS at {base} did not answer in time (timed out)", True
    except urllib3.exceptions.HTTPError as exc:
        # NewConnectionError subclasses ConnectTimeoutError in urllib3 2: test it first.
        if isinstance(exc, urllib3.exceptions.NewConnectionError):
            why = "connection failed"
        elif isinstance(exc, urllib3.exceptions.TimeoutError):
            why = "timed out"
        else:
            why = "connection failed"
        return False, f"{label} probe: IMDS at {base} unreachable ({why}: " \
                      f"{type(exc).__name__})", True
    if status == 400:
        return True, None, False
    return False, f"{label} probe: HTTP {status} (a host serving it answers 400)", False


def probe(imds_endpoint: str | None = None, timeout: float = 2.0) -> ProbeResult:
    """Find this host's managed identity source within ``timeout`` seconds (no retries).

    ``imds_endpoint`` defaults to ``$AZURE_POD_IDENTITY_AUTHORITY_HOST``, then
    ``http://169.254.169.254``. ``timeout`` must be a finite number of seconds > 0
    (ValueError otherwise).
    """
    from ._timeouts import check_seconds
    from .wire._imds import imds_base_from_env

    check_seconds("timeout", timeout)
    base = (imds_endpoint or imds_base_from_env()).rstrip("/")
    started = time.monotonic()
    until = started + timeout
    v2_found, v2_reason, v2_down = _ask(base, _V2_PATH, "IMDSv2", until)
    if v2_found:
        return ProbeResult("imds_v2", None, None, base, False, time.monotonic() - started)
    v1_found, v1_reason, v1_down = _ask(base, _V1_PATH, "IMDSv1", until)
    return ProbeResult("imds_v1" if v1_found else "none", v2_reason, v1_reason, base,
                       v2_down and v1_down, time.monotonic() - started)
