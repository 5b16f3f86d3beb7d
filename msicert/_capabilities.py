"""What binding strength can this host give a token? ``capabilities()`` and the strength floor.

After Microsoft's proposal for MSAL.NET (``GetManagedIdentityCapabilitiesAsync``,
``PoPOptions.MinStrength``): the strengths are ordered ``none < bearer < software <
keyguard``. IMDS v2 found: the strength of the key the store makes (a KeyGuard key isolated
by VBS: ``keyguard``; a software-KSP key or a key in a file: ``software``); only IMDS v1:
``bearer``; no IMDS: ``none``. A floor (``ManagedIdentityClient(min_strength=...)``) is an
assertion, never a downgrade: msicert always uses the strongest key it can make.

Cheap and bounded: the probe is two GETs within ``timeout`` (never a mint, never a retry),
the key is judged from the store's kind (a file store: no key is made) or, for the Windows
certificate store, by making one key and deleting it; the answer is kept for the process.
Importing this module imports neither urllib3 nor ssl.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import _fork
from ._errors import MinStrengthNotMet, MsiCertError
from ._identity import Identity

if TYPE_CHECKING:
    from ._probe import ProbeResult
    from .backends.contract import Store

__all__ = [
    "STRENGTHS",
    "Capabilities",
    "MinStrengthNotMet",
    "below_floor",
    "capabilities",
    "check_min_strength",
    "key_strength",
]

STRENGTHS = ("none", "bearer", "software", "keyguard")
"""Binding strengths, weakest first."""


def _rank(strength: str) -> int:
    return STRENGTHS.index(strength)


def below_floor(key_kind: str, floor: str | None) -> bool:
    """True when a certificate whose key is ``key_kind`` (``keyguard``, ``software-ksp``,
    ``file``) binds less strongly than ``floor`` (None: no floor)."""
    if floor is None:
        return False
    return _rank("keyguard" if key_kind == "keyguard" else "software") < _rank(floor)


@dataclass(frozen=True)
class Capabilities:
    """What :func:`capabilities` found.

    ``source`` is ``"imds"`` (v1 and v2 alike, as in MSAL.NET) or ``"none"``;
    ``max_binding_strength`` one of :data:`STRENGTHS`; ``reasons`` says how each part was
    decided; ``error_reason`` is None when a source was found, else why none was;
    ``probe`` is the underlying :class:`~msicert._probe.ProbeResult`.
    """

    source: str
    max_binding_strength: str
    reasons: tuple[str, ...]
    error_reason: str | None
    probe: ProbeResult

    @property
    def mtls_pop_supported(self) -> bool:
        """True when a token can be bound to a key (``software`` or ``keyguard``); it does not
        mean attested: only ``keyguard`` is."""
        return _rank(self.max_binding_strength) > _rank("bearer")

    def to_json(self) -> dict[str, object]:
        """The probe's JSON plus ``max_binding_strength`` and ``binding_strength_reasons``."""
        return {**self.probe.to_json(), "max_binding_strength": self.max_binding_strength,
                "binding_strength_reasons": list(self.reasons)}


_lock = threading.Lock()


@_fork.in_child
def _fresh_lock() -> None:
    global _lock
    _lock = threading.Lock()


_keys: dict[tuple[str, str], tuple[str, str]] = {}
_hosts: dict[tuple[str, str, str], Capabilities] = {}


def _store_key(store: Store) -> tuple[str, str]:
    return type(store).__name__, store.description


def key_strength(store: Store) -> tuple[str, str]:
    """(strength, why) of the key ``store`` makes; kept for the process.

    A store with a directory keeps its key in a file: ``software``, no key made. Any other
    (the Windows certificate store) makes one key, reads its kind and deletes it. A store
    that cannot make a key at all is reported ``software``, as MSAL.NET reports a v2 host
    whose key probe failed (a mint would then fail on its own).
    """
    if store.directory is not None:
        return "software", f"the file store {store.directory} keeps a software key in a file"
    key = _store_key(store)
    with _lock:
        known = _keys.get(key)
        if known is None:
            known = _keys[key] = _make_probe_key(store)
        return known


def _make_probe_key(store: Store) -> tuple[str, str]:
    try:
        made = store.generate_key(Identity())
    except (MsiCertError, OSError) as exc:
        return "software", (f"{store.description} could not make a key "
                            f"({type(exc).__name__}: {exc}); reported as software")
    try:
        kind = made.kind
    finally:
        made.discard()
    if kind == "keyguard":
        return "keyguard", f"{store.description} made a KeyGuard key (VBS-isolated)"
    return "software", (f"{store.description} made a {kind} key (KeyGuard unavailable or "
                        "not VBS-isolated here)")


def capabilities(imds_endpoint: str | None = None, *, timeout: float = 2.0,
                 store_dir: str | None = None, store_location: str | None = None,
                 refresh: bool = False) -> Capabilities:
    """This host's managed identity source and maximum binding strength, with reasons.

    ``imds_endpoint`` as for :func:`msicert.probe`; ``store_dir`` / ``store_location`` pick
    the store whose key is judged (default: the one ``ManagedIdentityClient()`` uses). The
    result is kept for the process, per endpoint and store (``refresh=True`` asks again).
    Costs at most two IMDS GETs within ``timeout`` and, with the Windows certificate store on
    an IMDS v2 host, making and deleting one key; never a mint.
    """
    from ._probe import probe
    from .backends import default_store
    from .wire._imds import imds_base_from_env

    base = (imds_endpoint or imds_base_from_env()).rstrip("/")
    store = default_store(store_dir, store_location)
    key = (base, *_store_key(store))
    if not refresh:
        with _lock:
            hit = _hosts.get(key)
        if hit is not None:
            return hit
    found = probe(base, timeout=timeout)
    if found.source == "imds_v2":
        strength, why = key_strength(store)
        reasons: tuple[str, ...] = (
            f"IMDS v2 answered at {base}: the host issues binding certificates", why)
    elif found.source == "imds_v1":
        strength = "bearer"
        reasons = (f"no IMDS v2: {found.imds_v2_reason}",
                   "IMDS v1 answered: bearer tokens only, no key binding")
    else:
        strength = "none"
        reasons = (f"no IMDS v2: {found.imds_v2_reason}", f"no IMDS v1: {found.imds_v1_reason}")
    result = Capabilities(
        source="none" if found.source == "none" else "imds", max_binding_strength=strength,
        reasons=reasons, error_reason="; ".join(reasons) if found.source == "none" else None,
        probe=found)
    with _lock:
        _hosts[key] = result
    return result


def check_min_strength(store: Store, min_strength: str, imds_endpoint: str | None) -> str:
    """The floor's canonical name, after checking that the host can meet it (no IMDS call).

    ``"bearer"`` is no floor. Otherwise the host's strength is what :func:`capabilities`
    found for this endpoint and store earlier in the process, else the strength of the key
    the store makes (:func:`key_strength`). Raises :class:`MinStrengthNotMet` naming it when
    it is below the floor, ValueError for an unknown name.
    """
    floor = min_strength.strip().lower() if isinstance(min_strength, str) else ""
    if floor not in STRENGTHS[1:]:
        raise ValueError(f"min_strength must be one of 'bearer', 'software', 'keyguard', not "
                         f"{min_strength!r}")
    if floor == "bearer":
        return floor
    known = None
    with _lock:
        if _hosts:
            from .wire._imds import imds_base_from_env

            base = (imds_endpoint or imds_base_from_env()).rstrip("/")
            known = _hosts.get((base, *_store_key(store)))
    if known is not None:
        actual, why = known.max_binding_strength, "; ".join(known.reasons)
    else:
        actual, why = key_strength(store)
    if _rank(actual) < _rank(floor):
        raise MinStrengthNotMet(actual, floor, why)
    return floor
