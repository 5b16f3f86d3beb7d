"""One contract every store meets (file store here; the Windows store subclasses it too)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import pytest

from msicert import Identity
from msicert._model import x5t_s256
from msicert.backends.contract import MAX_TOKEN_CACHE_BYTES, CorruptEntry, KeyMaterial
from msicert.backends.posix._software_key import SoftwareKey
from tests.certgen import CLIENT, ISSUER_CN, der, make_cert, rsa_key

UAMI = Identity.from_selectors(client_id="22222222-2222-3333-4444-555555555555")


@dataclass(frozen=True)
class PemKey:
    """Key material given as PEM bytes, for file-store tests that write chosen (even broken)
    keys; ``key_pem`` is all the file store reads of a key."""

    key_pem: bytes
    name: str = ""
    kind: str = "file"


@dataclass
class Entry:
    """A :class:`~msicert.backends.contract.NewEntry`, as the client builds one after a mint."""

    der: bytes
    key: KeyMaterial | PemKey
    client_id: str = CLIENT
    tenant_id: str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
    mtls_endpoint: str = "https://127.0.0.1:1"
    identity_type: str = "SystemAssigned"


def entry(
    *, cn: str = CLIENT, key_no: int = 0, lifetime: float = 3600.0, age: float = 60.0,
    key: KeyMaterial | None = None,
) -> Entry:
    """An entry for ``key``, or for the cached test key ``key_no`` (a SoftwareKey)."""
    now = time.time()
    if key is None:
        key = SoftwareKey(rsa_key(key_no))
    cert = make_cert(spki_der=key.spki_der, cn=cn, not_before=now - age,
                     not_after=now - age + lifetime)
    return Entry(der=der(cert), key=key, client_id=cn)


def pem_of(e: Entry) -> bytes:
    """The entry's private key as PEM bytes (the file store's on-disk form)."""
    pem = e.key.key_pem
    return pem if isinstance(pem, bytes) else pem.reveal()


class StoreContract:
    """Subclass and provide a ``store`` fixture; nothing else (no wrapper around the store).

    Every entry is issued for a key that the store under test made (``generate_key``), and
    goes back to ``put`` with that key, exactly as a mint does.
    """

    @staticmethod
    def new_entry(store, **kw) -> Entry:
        """An entry whose certificate carries a fresh key from ``store.generate_key``."""
        kw.pop("key_no", None)  # every generated key is distinct already
        return entry(key=store.generate_key(Identity()), **kw)

    def test_find_on_empty_store_is_none(self, store):
        assert store.find(Identity(), issuer_cn=ISSUER_CN) is None

    def test_put_then_find_returns_same_certificate_and_metadata(self, store):
        e = self.new_entry(store)
        put = store.put(Identity(), e, issuer_cn=ISSUER_CN)
        got = store.find(Identity(), issuer_cn=ISSUER_CN)
        assert got is not None
        assert got.der == e.der == put.der
        assert got.x5t_s256 == put.x5t_s256
        assert (got.client_id, got.tenant_id, got.mtls_endpoint, got.identity_type) == (
            e.client_id, e.tenant_id, e.mtls_endpoint, e.identity_type)
        assert got.source == "store"

    def test_put_of_a_renewal_is_what_find_returns_next(self, store):
        """A renewal expires later than what it renews; the older entry may stay until it
        expires (the Windows store prunes only expired entries, as its neighbours do)."""
        store.put(Identity(), self.new_entry(store, key_no=0), issuer_cn=ISSUER_CN)
        second = store.put(Identity(), self.new_entry(store, key_no=1, lifetime=3660.0),
                           issuer_cn=ISSUER_CN)
        assert store.find(Identity(), issuer_cn=ISSUER_CN).x5t_s256 == second.x5t_s256

    def test_identities_never_share_an_entry(self, store):
        sys_e = store.put(Identity(), self.new_entry(store), issuer_cn=ISSUER_CN)
        assert store.find(UAMI, issuer_cn=ISSUER_CN) is None
        u = store.put(UAMI, self.new_entry(store, cn=UAMI.value, key_no=1), issuer_cn=ISSUER_CN)
        assert store.find(Identity(), issuer_cn=ISSUER_CN).x5t_s256 == sys_e.x5t_s256
        assert store.find(UAMI, issuer_cn=ISSUER_CN).x5t_s256 == u.x5t_s256
        by_object = Identity.from_selectors(object_id=UAMI.value)
        assert store.find(by_object, issuer_cn=ISSUER_CN) is None

    def test_remove_with_thumbprint_only_removes_that_certificate(self, store):
        stored = store.put(Identity(), self.new_entry(store), issuer_cn=ISSUER_CN)
        other = self.new_entry(store, key_no=1)  # never stored
        assert store.remove(Identity(), x5t_s256(other.der)) is False
        assert store.find(Identity(), issuer_cn=ISSUER_CN).x5t_s256 == stored.x5t_s256
        assert store.remove(Identity(), stored.x5t_s256) is True
        assert store.find(Identity(), issuer_cn=ISSUER_CN) is None
        assert store.remove(Identity(), stored.x5t_s256) is False

    def test_purge_removes_only_that_identity_and_names_what_went(self, store):
        store.put(Identity(), self.new_entry(store), issuer_cn=ISSUER_CN)
        uami = store.put(UAMI, self.new_entry(store, cn=UAMI.value, key_no=1),
                         issuer_cn=ISSUER_CN)
        assert store.purge(UAMI) == [uami.x5t_s256]
        assert store.purge(UAMI) == []
        assert store.find(UAMI, issuer_cn=ISSUER_CN) is None
        assert store.find(Identity(), issuer_cn=ISSUER_CN) is not None

    def test_wrong_issuer_is_reported_corrupt_not_absent_and_marked_keep(self, store):
        store.put(Identity(), self.new_entry(store), issuer_cn=ISSUER_CN)
        with pytest.raises(CorruptEntry, match=r"issuer is .*expected 'someone-else\.example'") \
                as refused:
            store.find(Identity(), issuer_cn="someone-else.example")
        assert refused.value.keep is True  # only the caller's expectation refuses it

    def test_put_refuses_certificate_of_another_client_id_and_keeps_old_entry(self, store):
        good = store.put(UAMI, self.new_entry(store, cn=UAMI.value), issuer_cn=ISSUER_CN)
        with pytest.raises(CorruptEntry, match="another client id") as refused:
            store.put(UAMI, self.new_entry(store, cn=CLIENT, key_no=1), issuer_cn=ISSUER_CN)
        assert refused.value.keep is False
        assert store.find(UAMI, issuer_cn=ISSUER_CN).x5t_s256 == good.x5t_s256

    # --- the shared token cache: bytes the core encodes (msicert._shared_tokens) -------------
    def test_token_caches_are_read_back_as_written_one_per_identity_and_none_removes(self, store):
        assert store.read_tokens(Identity()) is None
        assert store.write_tokens(Identity(), b'{"system":1}') is True
        assert store.write_tokens(UAMI, b'{"uami":1}') is True
        assert store.read_tokens(Identity()) == b'{"system":1}'
        assert store.read_tokens(UAMI) == b'{"uami":1}'
        assert store.write_tokens(Identity(), b'{"system":2}') is True  # replaced whole
        assert store.read_tokens(Identity()) == b'{"system":2}'
        assert store.write_tokens(Identity(), None) is True
        assert store.read_tokens(Identity()) is None
        assert store.read_tokens(UAMI) == b'{"uami":1}'  # another identity's stays
        assert store.write_tokens(Identity(), None) is True  # nothing to remove is no error
        assert store.find(Identity(), issuer_cn=ISSUER_CN) is None  # no certificate entry

    def test_a_token_cache_over_the_bound_is_ignored_with_one_warning(self, store, caplog):
        assert store.write_tokens(UAMI, b"x" * (MAX_TOKEN_CACHE_BYTES + 1)) is True
        with caplog.at_level(logging.WARNING, logger="msicert"):
            assert store.read_tokens(UAMI) is None
            assert store.read_tokens(UAMI) is None
        warnings = [r for r in caplog.records if "shared token cache" in r.getMessage()]
        assert len(warnings) == 1 and "larger than" in warnings[0].getMessage()
        assert store.write_tokens(UAMI, b"{}") is True  # rebuilt by the next write
        assert store.read_tokens(UAMI) == b"{}"

    def test_a_scope_lock_excludes_other_holders_and_is_not_the_mint_lock(self, store):
        scope = "https://vault.azure.net/.default"
        seen: list[bool] = []

        def try_hold(lock) -> None:
            with lock.hold(blocking=False) as held:
                seen.append(held)

        def in_thread(lock) -> None:
            t = threading.Thread(target=try_hold, args=(lock,))
            t.start()
            t.join(10)

        with store.token_lock(Identity(), scope, timeout=5.0).hold() as held:
            assert held is True
            in_thread(store.token_lock(Identity(), scope, timeout=5.0))  # busy
            in_thread(store.lock(Identity(), timeout=5.0))  # a mint may start meanwhile
            in_thread(store.token_lock(Identity(), None, timeout=5.0))  # and a write
        with store.lock(Identity(), timeout=5.0).hold():
            in_thread(store.token_lock(Identity(), scope, timeout=5.0))  # a fetch during a mint
        in_thread(store.token_lock(Identity(), scope, timeout=5.0))  # released
        assert seen == [False, True, True, True, True]
