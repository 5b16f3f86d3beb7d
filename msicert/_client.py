"""ManagedIdentityClient: memory -> store -> IMDS, single flight, proactive renewal."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ._backoff import DEFAULT_BACKOFF, Backoff, MintGate
from ._identity import Identity
from ._lazylog import LazyLogger
from ._lifecycle import CertificateLifecycle
from ._mint import MINT_OVERHEAD
from ._model import AccessToken, BindingCertificate
from ._timeouts import DEFAULT_ESTS_TIMEOUTS, DEFAULT_IMDS_TIMEOUTS, Timeouts, check_seconds
from .backends import default_store
from .backends.contract import Store

if TYPE_CHECKING:
    import ssl

    import urllib3

    from ._shared_tokens import CachedToken, SharedTokens
    from ._token_cache import TokenManager
    from .wire._imds import ImdsClient
    from .wire._retry import RetryPolicy

# Minting needs more than the store-first hot path: _imds (json, uuid, urllib3), _csr and
# cryptography's serialization are imported on the first mint, keeping `import msicert` cheap.

__all__ = ["ManagedIdentityClient"]

log = LazyLogger("msicert")

ENV_ISSUER = "MSICERT_ISSUER"
ENV_TOKEN_CACHE = "MSICERT_TOKEN_CACHE"
TOKEN_CACHE_MODES = ("shared", "process")


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


class ManagedIdentityClient(CertificateLifecycle):
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
        the server answers: when it runs out, the built-in TimeoutError naming the URL. A
        resource that cannot be reached (refused, unresolvable, reset, a TLS failure): the
        built-in ConnectionError naming the URL and the reason.
        """
        return self._tokens().request(
            method, url, resource=resource, body=body, headers=headers, timeout=timeout
        )

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

    def _after_fork_in_child(self) -> None:
        """In a forked child: no connection of the parent's is ever used, no lock is held."""
        super()._after_fork_in_child()
        self._token_manager_lock = threading.Lock()
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
