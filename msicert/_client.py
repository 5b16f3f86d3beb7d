"""ManagedIdentityClient: memory -> store -> IMDS, single flight, proactive renewal."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from . import _correlation, _fork, _policy
from ._backoff import DEFAULT_BACKOFF, Backoff, MintGate, gate_for
from ._errors import (
    AttestationRequiredError,
    ImdsError,
    ImdsResponseError,
    MinStrengthNotMet,
    MsiCertError,
    StoreError,
)
from ._frozen import Frozen
from ._identity import Identity
from ._lazylog import LazyLogger
from ._model import AccessToken, BindingCertificate
from ._policy import State
from ._timeouts import DEFAULT_ESTS_TIMEOUTS, DEFAULT_IMDS_TIMEOUTS, Timeouts, check_seconds
from .backends import default_store
from .backends.contract import CorruptEntry, Store

if TYPE_CHECKING:
    import ssl
    import weakref

    import urllib3

    from ._shared_tokens import CachedToken, SharedTokens
    from ._token_cache import TokenManager
    from .backends.contract import KeyMaterial
    from .wire._imds import ImdsClient
    from .wire._imds_answers import PlatformMetadata
    from .wire._retry import RetryPolicy

# Minting needs more than the store-first hot path: _imds (json, uuid, urllib3), _csr and
# cryptography's serialization are imported on the first mint, keeping `import msicert` cheap.

__all__ = ["ManagedIdentityClient"]

log = LazyLogger("msicert")

ENV_ISSUER = "MSICERT_ISSUER"
ENV_TOKEN_CACHE = "MSICERT_TOKEN_CACHE"
TOKEN_CACHE_MODES = ("shared", "process")
ATTESTATION_MARKER_SECONDS = 3600.0
"""How long other processes skip minting after IMDS said this host issues only to attested
keys (this process: for its whole life)."""
_USABLE = (State.FRESH, State.RENEW)
MINT_OVERHEAD = 30.0
"""Seconds a mint may spend outside IMDS (key generation, CSR, attestation, store write): a
lock waiter allows the holder its IMDS budget plus this."""


def imds_worst_case(policy: RetryPolicy, connect_timeout: float, read_timeout: float) -> float:
    """The longest the two IMDS calls of one mint can take under ``policy``.

    Per call: every try the larger budget allows (1 + the retries after a 410) waits at most
    connect + read timeout, and all retry waits together are capped at ``max_total_wait``
    (Retry-After included), times ``scale``. Two calls (getplatformmetadata, issuecredential).
    With the defaults: 2 x (8 x 12 s + 70 s) = 332 s.
    """
    tries = 1 + max(policy.retries, policy.gone_retries)
    waits = policy.max_total_wait
    return 2 * (tries * (connect_timeout + read_timeout) + waits * policy.scale)


_live: weakref.WeakSet[ManagedIdentityClient] | None = None  # clients with pools (fork)
_token_classes: tuple[type[TokenManager], type[SharedTokens]] | None = None


def _token_types() -> tuple[type[TokenManager], type[SharedTokens]]:
    """The token leg's classes, imported at the first token (an import statement in a
    function costs about 2 us a call: a new client's first token pays it otherwise)."""
    global _token_classes
    if _token_classes is None:
        from ._shared_tokens import SharedTokens
        from ._token_cache import TokenManager

        _token_classes = (TokenManager, SharedTokens)
    return _token_classes


@_fork.in_child
def _reset_clients() -> None:
    for client in list(_live or ()):
        client._after_fork_in_child()


def _describe(exc: Exception) -> str:
    """Type and, for errors whose text we control or know to be plain, the message.

    An arbitrary exception's text may echo data we cannot vouch for (a library could quote
    its input): only its type is shown.
    """
    name = type(exc).__name__
    if isinstance(exc, (MsiCertError, OSError, UnicodeError)):
        return f"{name}: {exc}"
    return name


class _Minted(Frozen):
    """A :class:`~msicert.backends.contract.NewEntry`: what the store links and persists."""

    _fields = ("der", "key", "client_id", "tenant_id", "mtls_endpoint", "identity_type")
    __slots__ = _fields
    _hidden = frozenset({"key"})

    der: bytes
    # The key generate_key returned; its PEM (where exportable) is a Secret inside it.
    key: KeyMaterial
    client_id: str
    tenant_id: str
    mtls_endpoint: str
    identity_type: str

    def __init__(self, der: bytes, key: KeyMaterial, client_id: str, tenant_id: str,
                 mtls_endpoint: str, identity_type: str) -> None:
        self._set(der=der, key=key, client_id=client_id, tenant_id=tenant_id,
                  mtls_endpoint=mtls_endpoint, identity_type=identity_type)


class ManagedIdentityClient:
    """Gives one managed identity its binding certificate, calling IMDS as rarely as possible.

    With no selector it speaks for the system-assigned identity; ``client_id``, ``object_id``
    or ``resource_id`` (one at most) pick a user-assigned one. ``store_dir`` overrides the
    store directory; ``store_location`` picks the Windows store (``"current-user"``, the
    default, or ``"local-machine"`` for services); ``store`` is a ready
    :class:`~msicert.backends.contract.Store` instead (one of the three at most: two of them
    is a ValueError naming both). ``imds_endpoint`` is the IMDS base
    (default: the environment, then ``http://169.254.169.254``). ``issuer`` (default:
    ``$MSICERT_ISSUER``) is a fragment the certificate's issuer must contain, checked at mint
    and at every lookup; without it msicert accepts the issuer IMDS issued under and later
    matches lookups against the one it recorded (an entry another library wrote, which
    records none, must carry ``managedidentitysnissuer.login.microsoft.com``). ``clock``
    returns POSIX seconds.
    ``imds_timeouts`` (a :class:`~msicert.Timeouts`, default ``Timeouts(connect=2, read=10,
    total=None)``): ``connect``/``read`` bound each IMDS request; ``total`` bounds all the IMDS
    work of one call, retries included. Without ``total`` the IMDS work of a mint is bounded by
    its worst case under the retry policy (:func:`imds_worst_case`, 332 s with the defaults).
    A proactive renewal, made while the caller still holds a valid certificate, is bounded by
    ``renewal_deadline`` (default 10 s, or ``imds_timeouts.total`` when that is shorter): a
    hung IMDS never holds such a caller longer. ``ests_timeouts`` (default
    ``Timeouts(connect=5, read=30, total=60)``): ``connect``/``read`` bound each connect and
    each wait for bytes of an ESTS request; ``total`` (``None`` = no bound) bounds each ESTS
    request as a whole, however slowly ESTS trickles its answer.

    ``mint_backoff`` (a :class:`~msicert.Backoff`, default 1 s doubling to 5 min, jittered):
    after a failed mint, or a new certificate that ESTS refused, the identity's mints pause;
    a call that would mint inside the pause fails at once with the error that started it. All
    clients of the identity in this process share the pause, and so do other processes,
    through a marker beside the store's lock (POSIX stores). A valid certificate is served
    throughout. ``remediation_timeout`` (default 120 s) bounds one token call that ESTS keeps
    answering ``invalid_client`` (revocation): msicert mints with ``bypass_cache=true`` and
    retries, with growing pauses, until ESTS accepts or the time is up.

    ``token_cache``: ``"shared"`` (the default, else ``$MSICERT_TOKEN_CACHE``) keeps each
    ``mtls_pop`` token ESTS issues in the store too (a 0600 file beside the certificate; on
    Windows a DPAPI-encrypted file under the user's local application data), so other
    processes of the user find it instead of asking ESTS; ``"process"`` keeps tokens in this
    client's memory only. Memory is always looked at first.

    ``min_strength`` (``"bearer"``, ``"software"`` or ``"keyguard"``) is a floor on the
    binding strength: when this host cannot meet it, :class:`~msicert.MinStrengthNotMet`
    (naming the host's strength) is raised here, before any IMDS call; never a downgrade.

    Waiting for another thread or process that holds the identity's lock lasts
    :attr:`lock_wait`: that IMDS budget plus ``MINT_OVERHEAD`` (30 s), or ``lock_timeout``
    when that is longer. A waiter therefore never gives up on a holder (with the same settings)
    that can still succeed; a dead holder releases the lock at once.
    """

    def __init__(
        self,
        *,
        client_id: str | None = None,
        object_id: str | None = None,
        resource_id: str | None = None,
        store_dir: str | None = None,
        store_location: str | None = None,
        imds_endpoint: str | None = None,
        issuer: str | None = None,
        store: Store | None = None,
        clock: Callable[[], float] = time.time,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        imds_timeouts: Timeouts | None = None,
        ests_timeouts: Timeouts | None = None,
        lock_timeout: float | None = None,
        mint_backoff: Backoff = DEFAULT_BACKOFF,
        renewal_deadline: float = 10.0,
        remediation_timeout: float = 120.0,
        min_strength: str | None = None,
        token_cache: str | None = None,
    ) -> None:
        self.identity = Identity.from_selectors(
            client_id=client_id, object_id=object_id, resource_id=resource_id
        )
        self._imds_timeouts = DEFAULT_IMDS_TIMEOUTS if imds_timeouts is None else imds_timeouts
        self._ests_timeouts = DEFAULT_ESTS_TIMEOUTS if ests_timeouts is None else ests_timeouts
        check_seconds("lock_timeout", lock_timeout)
        check_seconds("renewal_deadline", renewal_deadline)
        check_seconds("remediation_timeout", remediation_timeout)
        if not isinstance(mint_backoff, Backoff):
            raise TypeError("mint_backoff must be a msicert.Backoff")
        if store is not None and (store_dir is not None or store_location is not None):
            other = "store_dir" if store_dir is not None else "store_location"
            raise ValueError(f"give store= or {other}=, not both: a Store object already "
                             "knows where its entries live")
        #: The issuer fragment every certificate must carry, or None: what IMDS issued.
        self.issuer_cn: str | None = issuer or os.environ.get(ENV_ISSUER) or None
        self._store = store if store is not None else default_store(store_dir, store_location)
        # A floor, checked here before any IMDS call (msicert._capabilities.check_min_strength)
        self.min_strength: str | None = None
        if min_strength is not None:
            from ._capabilities import check_min_strength

            self.min_strength = check_min_strength(self._store, min_strength, imds_endpoint)
        self._imds_endpoint = imds_endpoint
        self._retry = retry
        self._imds_client: ImdsClient | None = None
        self._clock = clock
        self._lock_timeout = lock_timeout
        self._retry_policy: RetryPolicy | None = None
        self._busy_since: float | None = None  # when renewal first found the lock busy
        self._backoff = mint_backoff
        self._renewal_deadline = renewal_deadline
        # (since, until): no renewal attempt, after a mint that arrived past renew_after
        self._renew_pause = (0.0, 0.0)
        self.remediation_timeout = remediation_timeout
        self._cert: BindingCertificate | None = None
        self._memory_view: BindingCertificate | None = None
        self._sleep = sleep
        self._token_manager: TokenManager | None = None
        self._token_manager_lock = threading.Lock()  # one manager (one token cache) per client
        #: ``"shared"`` or ``"process"``: where tokens are cached besides memory.
        self.token_cache = _token_cache_mode(token_cache)
        self._gate_cache: MintGate | None = None

    @property
    def _gate(self) -> MintGate:
        """The identity's back-off, shared by every client of it in this process (looked up
        on first use: a store hit never needs it)."""
        gate = self._gate_cache
        if gate is None:
            gate = self._gate_cache = gate_for(
                f"{self._store.description}\0{self.identity.alias}")
        return gate

    def _too_weak(self, key_kind: str) -> bool:
        """True when a key of ``key_kind`` binds less strongly than ``min_strength``."""
        if self.min_strength is None:
            return False
        from ._capabilities import below_floor

        return below_floor(key_kind, self.min_strength)

    @property
    def store(self) -> Store:
        """The store this client reads and writes."""
        return self._store

    @property
    def imds_timeouts(self) -> Timeouts:
        """The IMDS timeouts in effect."""
        return self._imds_timeouts

    @property
    def ests_timeouts(self) -> Timeouts:
        """The ESTS timeouts in effect."""
        return self._ests_timeouts

    # --- the hot path ------------------------------------------------------------------------
    def get_certificate(self) -> BindingCertificate:
        """A usable binding certificate: from memory, else the store, else a new one from IMDS.

        Raises ImdsError (and subclasses) when no usable certificate exists and IMDS fails,
        StoreError when the store cannot be used.
        """
        view = self._memory_view
        if view is not None and view.not_before_ts - _policy.CLOCK_LAG <= self._clock() \
                < view.renew_after_ts:
            return view
        return self._get_slow()

    def _get_slow(self) -> BindingCertificate:
        now = self._clock()
        cur = self._cert
        if cur is not None:
            st = cur.state(now)
            if st is State.FRESH and self._memory_view is not None:
                return self._memory_view
            if st is State.RENEW:
                return self._renew(cur, self._memory_view or cur)
            log.info("in-memory certificate %s is %s; looking again", cur.x5t_s256, st.value)
            self.forget()
        entry = self._from_store(now)
        if entry is not None:
            self._remember(entry)
            if entry.state(now) is State.RENEW:
                return self._renew(entry, entry)
            return entry
        return self._mint_blocking()

    # --- store and memory --------------------------------------------------------------------
    def _remember(self, cert: BindingCertificate) -> None:
        self._cert = cert
        self._memory_view = cert.with_source("memory")

    def forget(self, x5t_s256: str | None = None) -> None:
        """Drop the in-memory certificate (the store keeps it); the next call re-reads.

        With ``x5t_s256``, only while memory still holds that certificate (another thread
        may have moved on to a newer one meanwhile).
        """
        if x5t_s256 is not None and (self._cert is None or self._cert.x5t_s256 != x5t_s256):
            return
        self._memory_view = None
        self._cert = None

    def _from_store(self, now: float) -> BindingCertificate | None:
        try:
            entry = self._store.find(self.identity, issuer_cn=self.issuer_cn)
        except CorruptEntry as exc:
            log.warning("store entry for %s is unusable (%s); a new certificate will be minted",
                        self.identity.alias, exc.reason)
            return None
        if entry is None:
            log.debug("no stored certificate for %s", self.identity.alias)
            return None
        if self._too_weak(entry.key):
            log.info("stored certificate %s has a %s key, below min_strength %s; a new one "
                     "will be minted", entry.x5t_s256, entry.key, self.min_strength)
            return None
        st = entry.state(now)
        if st in _USABLE:
            log.debug("using stored certificate %s for %s", entry.x5t_s256, self.identity.alias)
            return entry
        log.info("stored certificate %s for %s is %s", entry.x5t_s256, self.identity.alias,
                 st.value)
        return None

    def _find_locked(self, now: float) -> BindingCertificate | None:
        """With the lock held: the stored entry if usable. A corrupt entry is removed (one the
        caller's issuer expectation refuses is kept), an expired one too."""
        try:
            entry = self._store.find(self.identity, issuer_cn=self.issuer_cn)
        except CorruptEntry as exc:
            if exc.keep:
                # Our expectation may be what is wrong: keep the entry; a new certificate
                # replaces it only if it passes the same check.
                log.warning("keeping store entry for %s: %s", self.identity.alias, exc.reason)
            else:
                log.warning("removing corrupt store entry for %s: %s", self.identity.alias,
                            exc.reason)
                self._store.remove(self.identity)
            return None
        if entry is None or self._too_weak(entry.key):
            return None  # a weaker key than the floor is never used (nor deleted)
        st = entry.state(now)
        if st in _USABLE:
            return entry
        if st is State.EXPIRED:
            log.info("removing expired certificate %s", entry.x5t_s256)
            self._store.remove(self.identity, entry.x5t_s256)
        return None

    # --- minting -----------------------------------------------------------------------------
    def _mint_blocking(self) -> BindingCertificate:
        """No usable certificate: wait for the identity lock, re-check, mint if still needed."""
        with self._store.lock(self.identity, timeout=self.lock_wait).hold():
            now = self._clock()
            cur = self._cert
            if cur is not None and cur.state(now) in _USABLE:
                return self._memory_view or cur  # another thread of this client minted it
            entry = self._find_locked(now)
            if entry is not None:
                self._remember(entry)  # another process minted while we waited
                return entry
            self._gate_check(now)
            return self._mint_locked()

    def _replace(
        self, rejected: str, *, why: str, deadline: float | None = None, gated: bool = True
    ) -> BindingCertificate:
        """A usable certificate other than ``rejected`` (which ESTS or a resource refused):
        one another thread or process put in place meanwhile, else a new mint that asks IMDS
        for a fresh certificate (``bypass_cache=true``). ``rejected`` stays until the new one
        is stored (a failed mint loses nothing). ``gated``: a back-off window fails the call
        instead of minting (the remediation loop's later rounds have their own spacing)."""
        with self._store.lock(self.identity, timeout=self.lock_wait).hold():
            now = self._clock()
            cur = self._cert
            if cur is not None and cur.x5t_s256 != rejected and cur.state(now) in _USABLE:
                return self._memory_view or cur
            entry = self._find_locked(now)
            if entry is not None and entry.x5t_s256 != rejected:
                self._remember(entry)
                return entry
            if gated:
                self._gate_check(now)
            log.info("minting a new certificate for %s: %s", self.identity.alias, why)
            new = self._mint_locked(bypass_cache=True, deadline=deadline)
            if rejected and self._store.remove(self.identity, rejected):
                log.info("removed refused certificate %s", rejected)
            return new

    def _renew(self, cur: BindingCertificate, serve: BindingCertificate, *,
               wait: bool = False) -> BindingCertificate:
        """Past renew_after but usable: renew now unless someone else is; never fail the caller.

        While ``cur`` is usable, no Exception from the renewal reaches the caller, whatever
        raised it (lock, store, IMDS, key generation, CSR encoding, CNG): it is logged at
        WARNING with its type and the back-off applies. KeyboardInterrupt and SystemExit are
        not Exceptions and still propagate. ``wait``: wait for the lock (a renewal another
        thread or process is making) instead of serving ``serve`` at once.
        """
        now = self._clock()
        paused = self._renew_pause
        if self._gate.active(now) or paused[0] <= now < paused[1]:
            return serve
        try:
            return self._try_renew(cur, serve, now, wait=wait)
        except Exception as exc:
            later = self._clock()
            if cur.state(later) not in _USABLE:
                raise  # it expired while the renewal was failing: nothing usable is left
            self._mint_failed(exc, later, cap=max(0.0, (cur.not_after_ts - later) / 8))
            log.warning(
                "renewal of certificate %s failed; keeping it (valid until %s): %s",
                cur.x5t_s256, cur.not_after.isoformat(), _describe(exc),
            )
            return serve

    def _try_renew(
        self, cur: BindingCertificate, serve: BindingCertificate, now: float, *, wait: bool
    ) -> BindingCertificate:
        with self._store.lock(self.identity, timeout=self.lock_wait).hold(
            blocking=wait
        ) as held:
            if not held:
                self._lock_busy(now)
                return serve  # another thread or process is renewing; keep the valid one
            self._busy_since = None
            try:
                entry = self._store.find(self.identity, issuer_cn=self.issuer_cn)
            except CorruptEntry:
                entry = None
            if (entry is not None and entry.x5t_s256 != cur.x5t_s256
                    and entry.state(now) is State.FRESH):
                self._remember(entry)
                return entry
            if self._gate.active(now, self._store.read_note(self.identity, "backoff")):
                return serve  # another process's mint failed a moment ago
            log.info("renewing certificate %s for %s (renew_after %s)", cur.x5t_s256,
                     self.identity.alias, cur.renew_after.isoformat())
            return self._mint_locked(renewal=True)

    def _binding_certificate(self) -> BindingCertificate:
        """The certificate to bind a new token to. One with less than a day left whose
        renewal is due is renewed first, waiting for a renewal in progress elsewhere, unless
        the back-off holds (then the valid one is used: a token never outlives it anyway)."""
        cert = self.get_certificate()
        now = self._clock()
        if (cert.not_after_ts - now >= _policy.MIN_BINDING_LIFETIME
                or cert.state(now) is not State.RENEW):
            return cert
        log.info("certificate %s has less than a day left; renewing it before binding a "
                 "token", cert.x5t_s256)
        return self._renew(self._cert or cert, cert, wait=True)

    def _lock_busy(self, now: float) -> None:
        """Someone else holds the lock: normal while they renew, an error once that has lasted
        longer than any mint can (the holder is hung, not dead: a dead one frees the lock)."""
        if self._busy_since is None or now < self._busy_since:
            self._busy_since = now
            return
        if now - self._busy_since > self.lock_wait:
            self._busy_since = now
            raise StoreError(
                f"the lock for {self.identity.alias} has been held by another thread or process "
                f"for more than {self.lock_wait:.0f} s, longer than any mint can take"
            )

    # --- back-off ----------------------------------------------------------------------------
    def _gate_check(self, now: float) -> None:
        """Raise the error that opened the identity's back-off window, if one is open here or
        in another process (the store's marker)."""
        self._gate.check(now, self._store.read_note(self.identity, "backoff"))

    def _refused_recently(self, x5t_s256: str) -> bool:
        """True while ESTS's refusal of certificate ``x5t_s256`` keeps mints paused."""
        return self._gate.refuses(x5t_s256, self._clock())

    def _mint_failed(self, exc: BaseException, now: float, *, cap: float | None = None) -> None:
        """Open the back-off window after a failed mint (and tell other processes)."""
        sticky = isinstance(exc, AttestationRequiredError)
        marker = self._gate.failed(
            exc, now, self._backoff, kind="mint", cap=cap, for_process=sticky,
            marker_for=ATTESTATION_MARKER_SECONDS if sticky else None)
        self._store.write_note(self.identity, "backoff", marker)

    def _certificate_refused(self, cert: BindingCertificate, exc: BaseException) -> None:
        """ESTS keeps refusing ``cert``, a fresh one: the next calls fail fast, no mint."""
        now = self._clock()
        marker = self._gate.failed(exc, now, self._backoff, kind="rejected",
                                   rejected=cert.x5t_s256)
        self._store.write_note(self.identity, "backoff", marker)

    def _token_succeeded(self) -> None:
        if self._gate.succeeded("token"):
            self._store.write_note(self.identity, "backoff", None)

    def _imds(self) -> ImdsClient:
        if self._imds_client is None:
            from .wire._imds import ImdsClient

            self._imds_client = ImdsClient(
                self._imds_endpoint, connect_timeout=self._imds_timeouts.connect,
                read_timeout=self._imds_timeouts.read, retry=self._policy(), sleep=self._sleep,
            )
            self._track_for_fork()
        return self._imds_client

    def _policy(self) -> RetryPolicy:
        if self._retry_policy is None:
            from .wire._retry import RetryPolicy

            self._retry_policy = self._retry or RetryPolicy.from_env()
        return self._retry_policy

    @property
    def mint_budget(self) -> float:
        """Seconds the IMDS work of one blocking mint may take: ``imds_timeouts.total``, or else
        the worst case of the retry policy and timeouts (:func:`imds_worst_case`)."""
        t = self._imds_timeouts
        if t.total is not None:
            return t.total
        return imds_worst_case(self._policy(), t.connect, t.read)

    @property
    def lock_wait(self) -> float:
        """Seconds a caller waits for the identity's lock before StoreError:
        ``mint_budget + MINT_OVERHEAD``, or ``lock_timeout`` when that is longer, so a waiter
        outlasts any holder with the same settings."""
        derived = self.mint_budget + MINT_OVERHEAD
        return derived if self._lock_timeout is None else max(derived, self._lock_timeout)

    def _mint_locked(
        self, *, renewal: bool = False, bypass_cache: bool = False, deadline: float | None = None
    ) -> BindingCertificate:
        """getplatformmetadata, key, CSR, issuecredential, checks, atomic store write.

        A failure opens the back-off window (a renewal's caller does that, with its cap).
        ``deadline`` (``time.monotonic()``) bounds the IMDS work further.
        """
        imds = self._imds()
        # Always bounded, so that lock waiters (who allow mint_budget + MINT_OVERHEAD) never
        # give up on a holder that could still succeed.
        budget = self.mint_budget
        if renewal:
            budget = min(budget, self._renewal_deadline)
        until = time.monotonic() + budget
        if deadline is not None:
            until = min(until, deadline)
        cid = _correlation.current()
        try:
            meta = imds.get_platform_metadata(self.identity, deadline=until, correlation_id=cid)
            key = self._store.generate_key(self.identity)
            if self._too_weak(key.kind):
                key.discard()
                raise MinStrengthNotMet(
                    "keyguard" if key.kind == "keyguard" else "software",
                    str(self.min_strength), f"the store made a {key.kind} key")
            try:
                minted, probe = self._issue(imds, meta, key, until, bypass_cache, cid)
                stored = self._store.put(self.identity, minted, issuer_cn=self.issuer_cn)
            except BaseException:
                key.discard()
                raise
        except Exception as exc:
            if not renewal:
                self._mint_failed(exc, self._clock())
            raise
        key.close()
        if self._gate.succeeded("mint"):
            self._store.write_note(self.identity, "backoff", None)
        result = stored.with_source("imds")
        self._remember(result)
        now = self._clock()
        if probe.state(now) is State.RENEW:
            # Already past renew_after when issued: use it, but do not loop on renewals.
            self._renew_pause = (now, now + min(self._backoff.maximum, 30.0,
                                                max(0.0, (probe.not_after_ts - now) / 8)))
        log.info("minted certificate %s for %s (not_after %s, correlation_id=%s%s)",
                 result.x5t_s256, self.identity.alias, result.not_after.isoformat(), cid,
                 ", bypass_cache" if bypass_cache else "")
        return result

    # --- tokens ------------------------------------------------------------------------------
    def _tokens(self) -> TokenManager:
        manager = self._token_manager
        if manager is not None:
            return manager
        with self._token_manager_lock:
            if self._token_manager is None:
                TokenManager = _token_types()[0]
                self._token_manager = TokenManager(
                    self, None, make_transport=self._store.transport, clock=self._clock,
                    sleep=self._sleep, timeouts=self._ests_timeouts,
                    shared=self._shared_tokens() if self.token_cache == "shared" else None,
                )
                self._track_for_fork()
            return self._token_manager

    def _shared_tokens(self) -> SharedTokens:
        return _token_types()[1](self._store, self.identity, fetch_wait=self._token_fetch_wait)

    def _token_fetch_wait(self) -> float:
        """How long a token request waits for another process's request for the same
        resource: that process may mint (:attr:`lock_wait`), remediate
        (``remediation_timeout``) and ask ESTS twice."""
        per_request = self._ests_timeouts.total or 60.0
        return self.lock_wait + self.remediation_timeout + 2 * per_request + MINT_OVERHEAD

    def cached_tokens(self) -> list[CachedToken]:
        """The identity's tokens in the shared token cache, oldest first, whatever
        ``token_cache`` says (no network call; ``repr`` never shows a token's text)."""
        from ._shared_tokens import entries

        return entries(self._store, self.identity)

    def acquire_token(self, resource: str, *, claims: str | None = None) -> AccessToken:
        """An ``mtls_pop`` access token for ``resource`` bound to the binding certificate.

        Served from the in-memory cache while valid (never past the certificate's NotAfter,
        never for a rotated certificate), else (``token_cache="shared"``) from the shared
        token cache, where another process may have left one (``source`` says
        ``"shared_cache"`` then). ``claims`` (a resource's claims challenge, JSON)
        first replaces the certificate with a fresh one (``bypass_cache=true``), then asks
        ESTS with the claims; the new token replaces the cached one. ESTS answering
        ``invalid_client`` for a revoked certificate is remediated the same way, within
        ``remediation_timeout``. Raises TokenError when ESTS refuses.
        """
        return self._tokens().acquire(resource, claims)

    def request(
        self,
        method: str,
        url: str,
        *,
        resource: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> urllib3.BaseHTTPResponse:
        """Call a resource over mTLS with ``Authorization: mtls_pop <token>``.

        The same certificate is presented in the TLS handshake and bound in the token.
        Returns the (preloaded) urllib3 response. ``url`` must be https (ValueError otherwise,
        raised before any connection). ``timeout`` bounds the whole request, however slowly
        the server answers: when it runs out, the built-in TimeoutError naming the URL.
        """
        return self._tokens().request(
            method, url, resource=resource, body=body, headers=headers, timeout=timeout
        )

    def _issue(
        self, imds: ImdsClient, meta: PlatformMetadata, key: KeyMaterial, until: float | None,
        bypass_cache: bool, cid: str,
    ) -> tuple[_Minted, BindingCertificate]:
        """CSR over ``key``, issuecredential, and every check on what came back."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        from .wire._csr import build_csr, csr_to_wire

        csr = build_csr(
            spki_der=key.spki_der, sign=key.sign, client_id=meta.client_id,
            tenant_id=meta.tenant_id, cuid=meta.cuid,
        )
        token = key.attestation_token(meta)
        try:
            issued = imds.issue_credential(self.identity, csr_to_wire(csr), token, deadline=until,
                                           bypass_cache=bypass_cache, correlation_id=cid)
        except ImdsError as exc:
            from .wire._imds_answers import is_attestation_refusal

            if is_attestation_refusal(exc):
                raise AttestationRequiredError.from_refusal(
                    exc, key_kind=key.kind, attested=token is not None
                ) from exc
            raise
        step = "issuecredential"
        try:
            cert = x509.load_der_x509_certificate(issued.certificate_der)
        except ValueError as exc:
            raise ImdsResponseError("issued certificate is not DER X.509", step=step,
                                    correlation_id=cid) from exc
        spki = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if not key.matches(spki):
            raise ImdsResponseError("issued certificate does not carry our public key",
                                    step=step, correlation_id=cid)
        why = _policy.identity_mismatch(
            cert, self.identity, issuer_cn=self.issuer_cn,
            client_id=(meta.client_id, issued.client_id),
            tenant_id=(meta.tenant_id, issued.tenant_id),
        )
        if why:
            raise ImdsResponseError(f"issued certificate rejected: {why}", step=step,
                                    correlation_id=cid)
        probe = BindingCertificate.from_der(
            issued.certificate_der, cert, identity=self.identity, client_id=issued.client_id,
            tenant_id=issued.tenant_id, mtls_endpoint=issued.mtls_endpoint,
            identity_type=issued.identity_type, source="imds", key=key.kind, store="",
        )
        _check_validity(probe, self._clock(), cid)  # judged when it arrives
        minted = _Minted(
            der=issued.certificate_der, key=key, client_id=issued.client_id,
            tenant_id=issued.tenant_id, mtls_endpoint=issued.mtls_endpoint,
            identity_type=issued.identity_type,
        )
        return minted, probe

    # --- maintenance -------------------------------------------------------------------------
    def status(self) -> BindingCertificate | None:
        """The stored entry as it is now, without any network call (CorruptEntry if bad)."""
        return self._store.find(self.identity, issuer_cn=self.issuer_cn)

    def invalidate(self, x5t_s256: str) -> None:
        """Forget a certificate that proved unusable, in memory and store."""
        self.forget(x5t_s256)
        with self._store.lock(self.identity, timeout=self.lock_wait).hold():
            if self._store.remove(self.identity, x5t_s256):
                log.info("evicted certificate %s for %s", x5t_s256, self.identity.alias)

    def purge(self) -> list[str]:
        """Remove this identity's certificates from memory and store, its shared tokens
        (whatever ``token_cache`` says), and end any back-off; return the thumbprints
        (x5t#S256) of the certificate entries that went."""
        from ._shared_tokens import clear

        self.forget()
        with self._store.lock(self.identity, timeout=self.lock_wait).hold():
            self._gate.clear()
            removed = self._store.purge(self.identity)
        clear(self._store, self.identity)
        return removed

    # --- bring your own HTTP client, lifecycle ---------------------------------------------
    def ssl_context(self) -> ssl.SSLContext:
        """An ``ssl.SSLContext`` presenting the current binding certificate.

        Servers are verified as ``ssl.create_default_context()`` verifies them (system trust,
        host names, TLS >= 1.2), plus ``$MSICERT_CA_BUNDLE`` when set. It is the caller's own:
        msicert's connections to ESTS never use it, so trusting another CA in it does not
        change whom msicert trusts. Repeated calls return the same object until the
        certificate rotates; a rotation another process made (or a store entry it removed) is
        followed within the call. Raises :class:`~msicert.KeyNotExportableError` when the key
        cannot leave the Windows certificate store: use :meth:`request` (WinHTTP) there.
        """
        tokens = self._tokens()
        return tokens.current(tokens.tls.context)[1]

    def _mtls_pool(self) -> tuple[BindingCertificate, Any]:
        """The current certificate and the pool presenting it (urllib3 or WinHTTP)."""
        tokens = self._tokens()
        return tokens.current(tokens.tls.pool)

    def _track_for_fork(self) -> None:
        global _live
        if _live is None:
            import weakref

            _live = weakref.WeakSet()
        _live.add(self)

    def _after_fork_in_child(self) -> None:
        """In a forked child: no connection of the parent's is ever used, no lock is held."""
        self._token_manager_lock = threading.Lock()
        self._imds_client = None  # its sockets are the parent's: dropped, never closed here
        manager = self._token_manager
        if manager is not None:
            manager.after_fork_in_child(None)

    def close(self) -> None:
        """Close the IMDS and mTLS connection pools and drop the cached TLS contexts.

        The certificate stays in memory and in the store; a later call reopens what it needs.
        """
        tokens, imds = self._token_manager, self._imds_client
        self._token_manager = None
        self._imds_client = None
        if tokens is not None:
            tokens.close()
        if imds is not None:
            imds.close()

    def __enter__(self) -> ManagedIdentityClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _token_cache_mode(given: str | None) -> str:
    """``given`` (ValueError unless one of :data:`TOKEN_CACHE_MODES`), else
    ``$MSICERT_TOKEN_CACHE`` (another value is ignored with a WARNING), else ``"shared"``."""
    if given is not None:
        if given not in TOKEN_CACHE_MODES:
            raise ValueError(f"token_cache must be 'shared' or 'process', not {given!r}")
        return given
    value = (os.environ.get(ENV_TOKEN_CACHE) or "").strip().lower()
    if value and value not in TOKEN_CACHE_MODES:
        log.warning_once(ENV_TOKEN_CACHE, "ignoring %s=%r: not 'shared' or 'process'; using "
                         "'shared'", ENV_TOKEN_CACHE, value)
        return "shared"
    return value or "shared"


def _check_validity(probe: BindingCertificate, now: float, cid: str) -> None:
    """Refuse an issued certificate this host cannot use; accept (with one WARNING) one whose
    NotBefore is ahead of this host's clock by at most :data:`~msicert._policy.CLOCK_LAG`."""
    st = probe.state(now)
    ahead = probe.not_before_ts - now
    if st is State.NOT_YET_VALID:
        raise ImdsResponseError(
            f"issued certificate is not yet valid: its NotBefore "
            f"({probe.not_before.isoformat()}) is {_span(ahead)} ahead of this host's clock, "
            f"more than the {_span(_policy.CLOCK_LAG)} tolerated; fix the system clock (NTP)",
            step="issuecredential", correlation_id=cid)
    if st is State.EXPIRED:
        raise ImdsResponseError(
            f"issued certificate is expired by this host's clock (valid "
            f"{probe.not_before.isoformat()} to {probe.not_after.isoformat()}); this host's "
            "clock is probably ahead: fix the system clock (NTP)",
            step="issuecredential", correlation_id=cid)
    if ahead > 0:
        log.warning("clock skew: the new certificate's NotBefore is %s ahead of this host's "
                    "clock; accepted (up to %s is), but fix the system clock (NTP)",
                    _span(ahead), _span(_policy.CLOCK_LAG))


def _span(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"
