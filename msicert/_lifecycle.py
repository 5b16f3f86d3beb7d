"""When to mint, and when not: a certificate in memory or the store, a mint under the
identity's lock, proactive renewal that never fails a caller holding a valid certificate, a
fresh certificate in place of a refused one, and the back-off after a failed mint.

A mixin of :class:`~msicert.ManagedIdentityClient` (the state it reads is set by the client's
constructor); one mint's own steps and checks are :mod:`._mint`'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import _correlation, _fork, _policy
from ._backoff import Backoff, MintGate, gate_for
from ._errors import AttestationRequiredError, MinStrengthNotMet, MsiCertError, StoreError
from ._identity import Identity
from ._lazylog import LazyLogger
from ._mint import MINT_OVERHEAD, imds_worst_case, issue_certificate
from ._model import BindingCertificate
from ._policy import State
from ._timeouts import Timeouts
from .backends.contract import CorruptEntry, Store

if TYPE_CHECKING:
    import weakref

    from .wire._imds import ImdsClient
    from .wire._retry import RetryPolicy

__all__ = ["ATTESTATION_MARKER_SECONDS", "CertificateLifecycle"]

log = LazyLogger("msicert")

ATTESTATION_MARKER_SECONDS = 3600.0
"""How long other processes skip minting after IMDS said this host issues only to attested
keys (this process: for its whole life)."""
_USABLE = (State.FRESH, State.RENEW)

_live: weakref.WeakSet[CertificateLifecycle] | None = None  # clients with pools (fork)


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


class CertificateLifecycle:
    """The binding certificate's lifecycle for one identity: memory, store, mint, renewal,
    replacement and back-off."""

    # Set by ManagedIdentityClient.__init__.
    identity: Identity
    issuer_cn: str | None
    min_strength: str | None
    _store: Store
    _clock: Callable[[], float]
    _sleep: Callable[[float], None]
    _backoff: Backoff
    _imds_endpoint: str | None
    _imds_timeouts: Timeouts
    _imds_client: ImdsClient | None
    _retry: RetryPolicy | None
    _retry_policy: RetryPolicy | None
    _lock_timeout: float | None
    _renewal_deadline: float
    _renew_pause: tuple[float, float]
    _busy_since: float | None
    _gate_cache: MintGate | None
    _cert: BindingCertificate | None
    _memory_view: BindingCertificate | None

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
        if self._store.write_note(self.identity, "backoff", marker):
            self._gate.published()

    def _certificate_refused(self, cert: BindingCertificate, exc: BaseException) -> None:
        """ESTS keeps refusing ``cert``, a fresh one: the next calls fail fast, no mint."""
        now = self._clock()
        marker = self._gate.failed(exc, now, self._backoff, kind="rejected",
                                   rejected=cert.x5t_s256)
        if self._store.write_note(self.identity, "backoff", marker):
            self._gate.published()

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
                minted, probe = issue_certificate(
                    imds, meta, key, identity=self.identity, issuer_cn=self.issuer_cn,
                    clock=self._clock, until=until, bypass_cache=bypass_cache, cid=cid)
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

    def _track_for_fork(self) -> None:
        """Reset this client in a child forked from now on (it has pools to drop)."""
        global _live
        if _live is None:
            import weakref

            _live = weakref.WeakSet()
        _live.add(self)

    def _after_fork_in_child(self) -> None:
        """In a forked child: the IMDS pool's sockets are the parent's: dropped, never
        closed here."""
        self._imds_client = None
