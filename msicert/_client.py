"""ManagedIdentityClient: memory -> store -> IMDS, single flight, proactive renewal."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import _policy
from ._errors import ImdsResponseError, MsiCertError
from ._identity import Identity
from ._model import AccessToken, BindingCertificate
from ._policy import State
from ._store import CorruptEntry, Store, default_store

if TYPE_CHECKING:
    import ssl

    import urllib3

    from ._imds import ImdsClient, PlatformMetadata, RetryPolicy
    from ._store import KeyMaterial
    from ._tokens import TokenManager

# Minting needs more than the store-first hot path: _imds (json, uuid, urllib3), _csr and
# cryptography's serialization are imported on the first mint, keeping `import msicert` cheap.

__all__ = ["ManagedIdentityClient"]

log = logging.getLogger("msicert")

ENV_ISSUER = "MSICERT_ISSUER"


@dataclass(frozen=True)
class _Minted:
    der: bytes
    key_pem: bytes = field(repr=False)  # never in a repr: tracebacks with locals print reprs
    client_id: str
    tenant_id: str
    mtls_endpoint: str
    identity_type: str
    key_name: str
    key_kind: str


class ManagedIdentityClient:
    """Gives one managed identity its binding certificate, calling IMDS as rarely as possible.

    With no selector it speaks for the system-assigned identity; ``client_id``, ``object_id``
    or ``resource_id`` (one at most) pick a user-assigned one. ``store_dir`` overrides the
    store directory; ``store_location`` picks the Windows store (``"current-user"``, the
    default, or ``"local-machine"`` for services). ``imds_endpoint`` is the IMDS base
    (default: the environment, then ``http://169.254.169.254``); ``issuer`` the expected
    issuer CN (default: ``$MSICERT_ISSUER``, then
    ``managedidentitysnissuer.login.microsoft.com``). ``clock`` returns POSIX seconds.
    ``connect_timeout``/``read_timeout`` bound each IMDS request; ``deadline`` (seconds, default
    none) bounds all the IMDS work of one call, retries included. A proactive renewal, made
    while the caller still holds a valid certificate, is bounded by ``renewal_deadline``
    (default 10 s, or ``deadline`` when that is shorter): a hung IMDS never holds such a caller
    longer. ``ests_connect_timeout``/``ests_read_timeout`` bound each ESTS request.
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
        connect_timeout: float = 2.0,
        read_timeout: float = 10.0,
        lock_timeout: float = 120.0,
        renewal_backoff: float = 30.0,
        deadline: float | None = None,
        renewal_deadline: float = 10.0,
        ests_connect_timeout: float = 5.0,
        ests_read_timeout: float = 30.0,
    ) -> None:
        self.identity = Identity.from_selectors(
            client_id=client_id, object_id=object_id, resource_id=resource_id
        )
        self.issuer_cn = issuer or os.environ.get(ENV_ISSUER) or _policy.DEFAULT_ISSUER_CN
        self._store = store if store is not None else default_store(store_dir, store_location)
        self._imds_endpoint = imds_endpoint
        self._imds_options = (connect_timeout, read_timeout, retry, sleep)
        self._imds_client: ImdsClient | None = None
        self._clock = clock
        self._lock_timeout = lock_timeout
        self._renewal_backoff = renewal_backoff
        self._deadline = deadline
        self._renewal_deadline = renewal_deadline
        self._ests_timeouts = (ests_connect_timeout, ests_read_timeout)
        self._cert: BindingCertificate | None = None
        self._memory_view: BindingCertificate | None = None
        self._renew_not_before = 0.0
        self._sleep = sleep
        self._token_manager: TokenManager | None = None

    @property
    def store(self) -> Store:
        """The store this client reads and writes."""
        return self._store

    # --- the hot path ------------------------------------------------------------------------
    def get_certificate(self) -> BindingCertificate:
        """A usable binding certificate: from memory, else the store, else a new one from IMDS.

        Raises ImdsError (and subclasses) when no usable certificate exists and IMDS fails,
        StoreError when the store cannot be used.
        """
        view = self._memory_view
        if view is not None and view.not_before_ts <= self._clock() < view.renew_after_ts:
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

    def forget(self) -> None:
        """Drop the in-memory certificate (the store keeps it); the next call re-reads."""
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
        st = entry.state(now)
        if st in (State.FRESH, State.RENEW):
            log.debug("using stored certificate %s for %s", entry.x5t_s256, self.identity.alias)
            return entry
        log.info("stored certificate %s for %s is %s", entry.x5t_s256, self.identity.alias,
                 st.value)
        return None

    # --- minting -----------------------------------------------------------------------------
    def _mint_blocking(self) -> BindingCertificate:
        """No usable certificate: wait for the identity lock, re-check, mint if still needed."""
        with self._store.lock(self.identity, timeout=self._lock_timeout).hold():
            now = self._clock()
            cur = self._cert
            if cur is not None and cur.state(now) in (State.FRESH, State.RENEW):
                return self._memory_view or cur  # another thread of this client minted it
            try:
                entry = self._store.find(self.identity, issuer_cn=self.issuer_cn)
            except CorruptEntry as exc:
                entry = None
                if exc.reason.startswith("issuer CN is "):
                    # Our expectation may be what is wrong: keep the entry; a new certificate
                    # replaces it only if it passes the same check.
                    log.warning("keeping store entry for %s: %s", self.identity.alias, exc.reason)
                else:
                    log.warning("removing corrupt store entry for %s: %s", self.identity.alias,
                                exc.reason)
                    self._store.remove(self.identity)
            if entry is not None:
                st = entry.state(now)
                if st in (State.FRESH, State.RENEW):
                    self._remember(entry)  # another process minted while we waited
                    return entry
                if st is State.EXPIRED:
                    log.info("removing expired certificate %s", entry.x5t_s256)
                    self._store.remove(self.identity, entry.x5t_s256)
            return self._mint_locked()

    def _renew(self, cur: BindingCertificate, serve: BindingCertificate) -> BindingCertificate:
        """Past renew_after but usable: renew now unless someone else is; never fail the caller."""
        now = self._clock()
        if now < self._renew_not_before:
            return serve
        with self._store.lock(self.identity, timeout=self._lock_timeout).hold(
            blocking=False
        ) as held:
            if not held:
                return serve  # another thread or process is renewing; keep the valid one
            try:
                entry = self._store.find(self.identity, issuer_cn=self.issuer_cn)
            except CorruptEntry:
                entry = None
            if (entry is not None and entry.x5t_s256 != cur.x5t_s256
                    and entry.state(now) is State.FRESH):
                self._remember(entry)
                return entry
            try:
                log.info("renewing certificate %s for %s (renew_after %s)", cur.x5t_s256,
                         self.identity.alias, cur.renew_after.isoformat())
                return self._mint_locked(renewal=True)
            except MsiCertError as exc:
                later = self._clock()
                if cur.state(later) not in (State.FRESH, State.RENEW):
                    raise  # it expired while the renewal was failing: nothing usable is left
                self._back_off(cur, later)
                log.warning(
                    "renewal of certificate %s failed; keeping it (valid until %s): %s",
                    cur.x5t_s256, cur.not_after.isoformat(), exc,
                )
                return serve

    def _back_off(self, cert: BindingCertificate, now: float) -> None:
        """No renewal attempt before min(renewal_backoff, an eighth of what is left)."""
        self._renew_not_before = now + min(
            self._renewal_backoff, max(0.0, (cert.not_after_ts - now) / 8)
        )

    def _imds(self) -> ImdsClient:
        if self._imds_client is None:
            from ._imds import ImdsClient

            connect, read, retry, sleep = self._imds_options
            self._imds_client = ImdsClient(
                self._imds_endpoint, connect_timeout=connect, read_timeout=read,
                retry=retry, sleep=sleep,
            )
        return self._imds_client

    def _mint_locked(self, *, renewal: bool = False) -> BindingCertificate:
        """getplatformmetadata, key, CSR, issuecredential, checks, atomic store write."""
        imds = self._imds()
        budget = self._deadline
        if renewal:
            budget = self._renewal_deadline if budget is None else min(budget,
                                                                       self._renewal_deadline)
        until = None if budget is None else time.monotonic() + budget
        meta = imds.get_platform_metadata(self.identity, deadline=until)
        key = self._store.generate_key(self.identity)
        try:
            minted, probe = self._issue(imds, meta, key, until)
            stored = self._store.put(self.identity, minted, issuer_cn=self.issuer_cn)
        except BaseException:
            key.discard()
            raise
        key.close()
        result = stored.with_source("imds")
        self._remember(result)
        now = self._clock()
        if probe.state(now) is State.RENEW:
            # Already past renew_after when issued: use it, but do not loop on renewals.
            self._back_off(probe, now)
        log.info("minted certificate %s for %s (not_after %s)", result.x5t_s256,
                 self.identity.alias, result.not_after.isoformat())
        return result

    # --- tokens ------------------------------------------------------------------------------
    def _tokens(self) -> TokenManager:
        if self._token_manager is None:
            from ._tokens import TokenManager

            connect, read = self._ests_timeouts
            self._token_manager = TokenManager(
                self, clock=self._clock, sleep=self._sleep, connect_timeout=connect,
                read_timeout=read,
            )
        return self._token_manager

    def acquire_token(self, resource: str, *, claims: str | None = None) -> AccessToken:
        """An ``mtls_pop`` access token for ``resource`` bound to the binding certificate.

        Served from the in-memory cache while valid (never past the certificate's NotAfter,
        never for a rotated certificate). Raises TokenError when ESTS refuses.
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
        Returns the (preloaded) urllib3 response.
        """
        return self._tokens().request(
            method, url, resource=resource, body=body, headers=headers, timeout=timeout
        )

    def _issue(
        self, imds: ImdsClient, meta: PlatformMetadata, key: KeyMaterial, until: float | None
    ) -> tuple[_Minted, BindingCertificate]:
        """CSR over ``key``, issuecredential, and every check on what came back."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        from ._attestation import attestation_token
        from ._csr import build_csr, csr_to_wire

        csr = build_csr(
            spki_der=key.spki_der, sign=key.sign, client_id=meta.client_id,
            tenant_id=meta.tenant_id, cuid=meta.cuid,
        )
        token = attestation_token(key, meta, self.identity)
        issued = imds.issue_credential(self.identity, csr_to_wire(csr), token, deadline=until)
        step = "issuecredential"
        try:
            cert = x509.load_der_x509_certificate(issued.certificate_der)
        except ValueError as exc:
            raise ImdsResponseError("issued certificate is not DER X.509", step=step) from exc
        spki = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if not key.matches(spki):
            raise ImdsResponseError("issued certificate does not carry our public key", step=step)
        why = _policy.identity_mismatch(
            cert, self.identity, issuer_cn=self.issuer_cn,
            client_id=meta.client_id, tenant_id=meta.tenant_id,
        )
        if why:
            raise ImdsResponseError(f"issued certificate rejected: {why}", step=step)
        probe = BindingCertificate.from_der(
            issued.certificate_der, cert, identity=self.identity, client_id=issued.client_id,
            tenant_id=issued.tenant_id, mtls_endpoint=issued.mtls_endpoint,
            identity_type=issued.identity_type, source="imds", key=key.kind, store="",
        )
        st = probe.state(self._clock())  # judged when it arrives, not when the mint began
        if st in (State.EXPIRED, State.NOT_YET_VALID):
            raise ImdsResponseError(
                f"issued certificate is {st.value.replace('_', ' ')} "
                f"(valid {probe.not_before.isoformat()} to {probe.not_after.isoformat()}); "
                "check the system clock", step=step,
            )
        minted = _Minted(
            der=issued.certificate_der, key_pem=key.key_pem, client_id=issued.client_id,
            tenant_id=issued.tenant_id, mtls_endpoint=issued.mtls_endpoint,
            identity_type=issued.identity_type, key_name=getattr(key, "name", ""),
            key_kind=key.kind,
        )
        return minted, probe

    # --- maintenance -------------------------------------------------------------------------
    def status(self) -> BindingCertificate | None:
        """The stored entry as it is now, without any network call (CorruptEntry if bad)."""
        return self._store.find(self.identity, issuer_cn=self.issuer_cn)

    def invalidate(self, x5t_s256: str) -> None:
        """Forget a certificate that the token leg proved unusable, in memory and store."""
        if self._cert is not None and self._cert.x5t_s256 == x5t_s256:
            self.forget()
        with self._store.lock(self.identity, timeout=self._lock_timeout).hold():
            if self._store.remove(self.identity, x5t_s256):
                log.info("evicted certificate %s for %s", x5t_s256, self.identity.alias)

    def purge(self) -> int:
        """Remove this identity's certificates from memory and store; return how many went."""
        self.forget()
        with self._store.lock(self.identity, timeout=self._lock_timeout).hold():
            return self._store.purge(self.identity)

    # --- bring your own HTTP client, lifecycle (kept at the end: others edit the paths above) -
    def ssl_context(self) -> ssl.SSLContext:
        """An ``ssl.SSLContext`` presenting the current binding certificate.

        Servers are verified as ``ssl.create_default_context()`` verifies them (system trust,
        host names, TLS >= 1.2), plus ``$MSICERT_CA_BUNDLE`` when set. Repeated calls return
        the same object until the certificate rotates; call it again per connection pool (or
        compare ``get_certificate().x5t_s256``) to follow a rotation. Raises
        :class:`~msicert.KeyNotExportableError` when the key cannot leave the Windows
        certificate store: use :meth:`request` (WinHTTP) there.
        """
        from ._tls import TlsCache

        cert = self.get_certificate()
        tls = self._tokens().tls
        if not isinstance(tls, TlsCache):
            from ._mtls import KeyNotExportableError

            raise KeyNotExportableError(cert.x5t_s256, cert.key, cert.store)
        return tls.context(cert)

    def _mtls_pool(self) -> tuple[BindingCertificate, Any]:
        """The current certificate and the pool presenting it (urllib3 or WinHTTP)."""
        cert = self.get_certificate()
        return cert, self._tokens().tls.pool(cert)

    def close(self) -> None:
        """Close the IMDS and mTLS connection pools and drop the cached TLS contexts.

        The certificate stays in memory and in the store; a later call reopens what it needs.
        """
        from ._mtls import close_client_resources

        tokens, imds = self._token_manager, self._imds_client
        self._token_manager = None
        self._imds_client = None
        close_client_resources(tokens, imds)

    def __enter__(self) -> ManagedIdentityClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
