"""The ``/__emulator__/`` control API on the IMDS server, for other processes.

``GET stats`` → ``{"counts", "violations", "issued"}``; ``GET requests`` → the request log
(oldest first; ``Authorization`` redacted, bodies left out); ``POST faults`` queues a fault;
``POST reset`` clears counts, requests, violations and faults; ``POST config`` changes
``lifetime``, ``backdate`` and ``token_lifetime`` (seconds), ``require_attestation``
(boolean: issuecredential refuses a request without ``attestation_token``, as IMDS does on
hosts that issue only to attested KeyGuard keys) and ``issuer_cn`` (the issuing CA's name:
the public cloud's or a sovereign-looking one) and answers the current values.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from ._ca import ISSUER_CNS
from ._faults import Fault
from ._http import Reply, invalid_request
from ._state import MAX_AHEAD, MAX_LIFETIME

if TYPE_CHECKING:
    from ._http import Handler
    from ._state import RecordedRequest

__all__ = ["PREFIX", "fault_from_json", "handle"]

PREFIX = "/__emulator__/"
_CONFIG_FIELDS = ("lifetime", "backdate", "token_lifetime")
_CONFIG_FLAGS = ("require_attestation",)
_CONFIG_NAMES = ("issuer_cn",)  # one of _ca.ISSUER_CNS
_FAULT_FIELDS = frozenset({"endpoint", "status", "kind", "times", "delay", "retry_after", "body",
                           "error_codes", "claims"})


def _number(value: Any, name: str, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number")
    return float(value)


def _integer(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer or null")
    return value


def fault_from_json(document: Any) -> tuple[str, Fault]:
    """Endpoint and Fault from the control API's JSON (``times`` defaults to 1, null = forever)."""
    if not isinstance(document, dict):
        raise ValueError("body must be a JSON object")
    unknown = set(document) - _FAULT_FIELDS
    if unknown:
        raise ValueError(f"unknown fields: {', '.join(sorted(unknown))}")
    endpoint = document.get("endpoint")
    kind = document.get("kind", "")
    body = document.get("body")
    if not isinstance(endpoint, str) or not isinstance(kind, str):
        raise ValueError("endpoint (and kind, when given) must be strings")
    if body is not None and not isinstance(body, str):
        raise ValueError("body must be a string")
    claims = document.get("claims")
    if claims is not None and not isinstance(claims, str):
        raise ValueError("claims must be a string")
    codes = document.get("error_codes")
    if codes is not None and not isinstance(codes, list):
        raise ValueError("error_codes must be a list of integers or null")
    fault = Fault(
        status=_integer(document.get("status"), "status"),
        body=None if body is None else body.encode("utf-8"),
        retry_after=_number(document.get("retry_after"), "retry_after", optional=True),
        delay=_number(document.get("delay", 0.0), "delay") or 0.0,
        times=_integer(document.get("times", 1), "times"),
        kind=kind,
        error_codes=None if codes is None else tuple(codes),
        claims=claims,
    )
    return endpoint, fault


def _config(handler: Handler, document: Any) -> dict[str, float | bool | str]:
    state = handler.server.state
    known = _CONFIG_FIELDS + _CONFIG_FLAGS + _CONFIG_NAMES
    if not isinstance(document, dict) or set(document) - set(known):
        raise ValueError(f"body must be a JSON object with only {', '.join(known)}")
    values = {name: _number(document[name], name) for name in _CONFIG_FIELDS if name in document}
    if any(value is None or value <= 0 for n, value in values.items() if n != "backdate"):
        raise ValueError("lifetime and token_lifetime must be positive")
    if values.get("lifetime", 0) > MAX_LIFETIME:  # type: ignore[operator]
        raise ValueError(f"lifetime must be at most {MAX_LIFETIME:g} s (100 years)")
    backdate = values.get("backdate")
    if backdate is not None and not -MAX_AHEAD <= backdate <= MAX_LIFETIME:
        raise ValueError(f"backdate must be between {-MAX_AHEAD:g} and {MAX_LIFETIME:g} s")
    flags = {name: document[name] for name in _CONFIG_FLAGS if name in document}
    if any(not isinstance(value, bool) for value in flags.values()):
        raise ValueError(f"{', '.join(_CONFIG_FLAGS)} must be true or false")
    names = {name: document[name] for name in _CONFIG_NAMES if name in document}
    if any(value not in ISSUER_CNS for value in names.values()):
        raise ValueError(f"issuer_cn must be one of {', '.join(ISSUER_CNS)}")
    for name, value in {**values, **flags, **names}.items():
        setattr(state, name, value)
    answer: dict[str, float | bool | str] = {
        name: float(getattr(state, name)) for name in _CONFIG_FIELDS}
    answer.update({name: bool(getattr(state, name)) for name in _CONFIG_FLAGS})
    answer.update({name: str(getattr(state, name)) for name in _CONFIG_NAMES})
    return answer


def _logged(request: RecordedRequest) -> dict[str, Any]:
    headers = {k: ("<redacted>" if k.lower() == "authorization" else v)
               for k, v in request.headers.items()}
    return {"endpoint": request.endpoint, "method": request.method, "path": request.path,
            "query": request.query, "headers": headers, "body_bytes": len(request.body),
            "time": request.time}


def handle(handler: Handler, path: str) -> None:
    """Answer one control request."""
    state = handler.server.state
    body = handler.read_body()
    if body is None:
        return
    route = (handler.command, path[len(PREFIX) :])
    try:
        document = json.loads(body) if body else {}
        if route == ("GET", "stats"):
            payload: dict[str, Any] = {
                "counts": state.counts(),
                "violations": state.violations(),
                "issued": len(state.issued()),
            }
        elif route == ("GET", "requests"):
            payload = {"requests": [_logged(r) for r in state.requests()]}
        elif route == ("POST", "faults"):
            state.inject(*fault_from_json(document))
            payload = {"ok": True}
        elif route == ("POST", "reset"):
            state.reset()
            payload = {"ok": True}
        elif route == ("POST", "config"):
            payload = _config(handler, document)
        else:
            handler.send(Reply(404, {"error": "not_found", "error_description": path}))
            return
    except ValueError as exc:  # json.JSONDecodeError is a ValueError too
        handler.send(invalid_request(str(exc)))
        return
    handler.send(Reply(200, payload))
