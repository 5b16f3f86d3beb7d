"""CurrentUser\\My shared with MSAL.NET, and what msicert may delete (Wine tier, real Windows).

The store is seeded exactly as MSAL.NET persists a binding certificate (reference:
AzureAD/microsoft-authentication-library-for-dotnet @ 39d200113, 2026-07-24):

* the key: ``KeyGuardRSAKey`` in the Microsoft Software KSP, user scope, created with
  OverwriteExistingKey | VirtualIsolation | PerBootKey and export policy none
  (KeyProviders/WindowsCngKeyOperations.cs CreateFresh; where VBS is missing MSAL.NET uses
  ``HardwareRSAKey`` without those flags, and so does this test);
* the certificate: what issuecredential returned for a CSR signed by that key, linked with
  CERT_KEY_PROV_INFO {container = key name, provider = the software KSP, prov type 0,
  flags 0, key spec 0} (.NET's CopyWithPrivateKey -> CopyWithPersistedCngKey / GuessKeySpec);
* the FriendlyName: ``MSAL|alias=<cache key>|ep=<mtls endpoint>/<tenant>`` and nothing else
  (V2/MsiCertificateFriendlyNameEncoder.cs, V2/WindowsPersistentCertificateCache.cs Write,
  cache key from V2/ImdsV2ManagedIdentitySource.cs GetMtlsCertCacheKey).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from native_testutil import REPO_ROOT, is_windows, needs_windows
from neighbours import mint_with, stats

pytestmark = needs_windows

IMDS = os.environ.get("MSICERT_WINE_IMDS", "")
needs_emulator = pytest.mark.skipif(
    is_windows() and not IMDS,
    reason="no emulator (tools/wine/run.sh starts one and sets MSICERT_WINE_IMDS)",
)
ARM = ("/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/RG/providers/"
       "Microsoft.ManagedIdentity/userAssignedIdentities/UAMI-Reference")
KSP = "Microsoft Software Key Storage Provider"


def _reference_key() -> tuple[Any, str]:
    """MSAL.NET's key: KeyGuardRSAKey created with the KeyGuard flags (CreateFresh), else
    HardwareRSAKey, opened if it exists, else created signing-only (TryGetOrCreateHardwareRsa).
    """
    import msicert_native as native

    with native.open_provider() as provider:
        try:
            key = native.create_rsa_key(provider, "KeyGuardRSAKey", keyguard=True)
        except native.NativeError:  # no VBS on this machine: MSAL.NET's next choice
            pass
        else:
            if native.is_virtual_iso(key):
                return key, "keyguard"
            key.close()  # Wine accepts and ignores the flags: not a KeyGuard key
        try:
            return native.open_key(provider, "HardwareRSAKey"), "software-ksp"
        except native.NativeError:
            return native.create_rsa_key(
                provider, "HardwareRSAKey", keyguard=False, overwrite=False,
                usage=native.constants.NCRYPT_ALLOW_SIGNING_FLAG), "software-ksp"


def _seed(der: bytes, friendly_name: str, container: str, flags: int = 0) -> None:
    import msicert_native as native

    with native.open_system_store("current-user", "My") as store:
        native.add_certificate(store, der, friendly_name=friendly_name, key_name=container,
                               provider_name=KSP, prov_type=0, key_flags=flags,
                               key_spec=0).close()


def _in_store(der: bytes) -> bool:
    import msicert_native as native

    with native.open_system_store("current-user", "My") as store:
        refs = native.enum_certificates(store)
        try:
            return any(ref.der == der for ref in refs)
        finally:
            for ref in refs:
                ref.close()


def _drop(der: bytes) -> None:
    import msicert_native as native

    with native.open_system_store("current-user", "My") as store:
        refs = native.enum_certificates(store)
        try:
            for ref in refs:
                if ref.der == der:
                    native.delete_certificate(store, ref)
        finally:
            for ref in refs:
                ref.close()


def _msicert(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update({"AZURE_POD_IDENTITY_AUTHORITY_HOST": IMDS, "MSICERT_IMDS_RETRY_SCALE": "0.01",
                "PYTHONPATH": str(REPO_ROOT)})
    return subprocess.run([sys.executable, "-m", "msicert", *args], capture_output=True,
                          text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)


def _x5t(der: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


@pytest.fixture
def delete_key_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the keys msicert asks NCryptDeleteKey to delete (the real call still runs)."""
    import msicert_native

    names: list[str] = []
    real = msicert_native.delete_key

    def spy(key: Any, *args: Any, **kw: Any) -> Any:
        names.append(key.name)
        return real(key, *args, **kw)

    monkeypatch.setattr(msicert_native, "delete_key", spy)
    return names


# (CLI selector, MSAL.NET's configured id = its cache key, emulator query, msicert Identity)
KINDS = {
    "system": ((), "system_assigned_managed_identity", {}, {}),
    # MSAL.NET keeps the case its caller configured; msicert matches GUIDs case-insensitively.
    "client_id": (("--client-id",), "C0FFEE00-1111-4222-8333-444455556666",
                  {"client_id": "C0FFEE00-1111-4222-8333-444455556666"},
                  {"client_id": "C0FFEE00-1111-4222-8333-444455556666"}),
    "object_id": (("--object-id",), "0b1ec700-1111-4222-8333-444455556666",
                  {"object_id": "0b1ec700-1111-4222-8333-444455556666"},
                  {"object_id": "0b1ec700-1111-4222-8333-444455556666"}),
    "resource_id": (("--resource-id",), ARM, {"mi_res_id": ARM}, {"resource_id": ARM}),
}


@needs_emulator
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_certificate_persisted_by_msal_net_is_a_store_hit_with_zero_imds_calls(
        kind: str, delete_key_calls: list[str]) -> None:
    from msicert import Identity
    from msicert.backends.windows._cert_store import WindowsStore

    flag, configured, query, selectors = KINDS[kind]
    identity = Identity.from_selectors(**selectors)
    WindowsStore().purge(identity)
    key, key_kind = _reference_key()
    with key:
        issued = mint_with(key, query)
    der = issued["der"]
    ep = f"{issued['mtls_authentication_endpoint'].rstrip('/')}/{issued['tenant_id'].strip('/')}"
    _seed(der, f"MSAL|alias={configured}#att=0|ep={ep}", key.name)
    try:
        before = stats()
        out = _msicert("cert", "--json", *((*flag, configured) if flag else ()))
        assert out.returncode == 0, out.stderr
        got = json.loads(out.stdout)
        assert stats() == before  # zero IMDS calls of any kind
        assert (got["source"], got["x5t_s256"], got["store"]) == (
            "store", _x5t(der), "CurrentUser\\My")
        assert got["client_id"] == str(uuid.UUID(issued["client_id"]))  # from the subject CN
        assert got["tenant_id"] == issued["tenant_id"]  # from ep
        assert got["mtls_endpoint"] == issued["mtls_authentication_endpoint"].rstrip("/")
        assert got["identity_type"] == ("SystemAssigned" if kind == "system" else "UserAssigned")
        assert got["key"] == key_kind  # KeyGuardRSAKey is MSAL.NET's KeyGuard key
    finally:
        # msicert may remove this identity's certificate, never MSAL.NET's shared key.
        assert len(WindowsStore().purge(identity)) == 1
        assert delete_key_calls == []
        assert not _in_store(der)


@needs_emulator
def test_old_msicert_tag_is_still_a_store_hit_with_zero_imds_calls() -> None:
    import msicert_native as native
    from msicert import Identity
    from msicert.backends.windows._cert_store import WindowsStore

    WindowsStore().purge(Identity())
    name = f"msicert-system-{uuid.uuid4().hex[:12]}"  # as msicert named its keys
    with native.open_provider() as provider, \
            native.create_rsa_key(provider, name, keyguard=False) as key:
        issued = mint_with(key, {})
    der = issued["der"]
    endpoint = issued["mtls_authentication_endpoint"].rstrip("/")
    # The tag msicert wrote up to this change (format_tag in msicert/_store_windows.py, now
    # msicert/backends/windows/_cert_store.py, at d9c11be).
    _seed(der, f"MSAL|alias=system|ep={endpoint}|cid={issued['client_id']}"
               f"|tid={issued['tenant_id']}|type={issued['identity_type']}|key=software-ksp",
          name)
    try:
        before = stats()
        out = _msicert("cert", "--json")
        assert out.returncode == 0, out.stderr
        got = json.loads(out.stdout)
        assert stats() == before
        assert (got["source"], got["x5t_s256"]) == ("store", _x5t(der))
        assert (got["client_id"], got["tenant_id"], got["mtls_endpoint"], got["key"]) == (
            issued["client_id"], issued["tenant_id"], endpoint, "software-ksp")
    finally:
        purged = _msicert("purge")
    assert purged.stdout.startswith("removed 1 entry"), purged.stdout + purged.stderr
    assert not _in_store(der)


# --- what msicert must never delete --------------------------------------------------------


@pytest.fixture
def client() -> Iterator[Any]:
    if not IMDS:
        pytest.skip("no emulator (tools/wine/run.sh starts one and sets MSICERT_WINE_IMDS)")
    from msicert import ManagedIdentityClient
    from msicert.wire._retry import RetryPolicy

    uami = "5eed0000-1111-4222-8333-444455556666"
    c = ManagedIdentityClient(client_id=uami, imds_endpoint=IMDS, retry=RetryPolicy(scale=0.01))
    c.purge()
    # The shared binding key exists before the test seeds entries bound to its name (under Wine
    # a process's first key provisioning always creates, and purges what the name bound).
    c.store.generate_key(c.identity)
    yield c
    c.purge()


def _test_ca_cert(subject_cn: str, dc: str, issuer_cn: str) -> bytes:
    from certs import issue, name
    from cryptography.hazmat.primitives.asymmetric import ec

    return issue(name(subject_cn, dc), name(issuer_cn),
                 ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1()))


def test_entries_of_other_identities_and_unreadable_tags_survive_mint_and_purge(
        client: Any, caplog: pytest.LogCaptureFixture) -> None:
    from msicert._policy import DEFAULT_ISSUER_CN

    uami = client.identity.value
    tenant = str(uuid.uuid4())
    other_cid = str(uuid.uuid4())
    # Tagged for our client id, but its subject names another identity.
    foreign = _test_ca_cert(other_cid, tenant, DEFAULT_ISSUER_CN)
    _seed(foreign, f"MSAL|alias={uami}#att=0|ep=https://mtls.example/{tenant}", "KeyGuardRSAKey")
    # The same in msicert's old tag, which the previous version reported corrupt and deleted.
    foreign_old = _test_ca_cert(other_cid, tenant, DEFAULT_ISSUER_CN)
    _seed(foreign_old, f"MSAL|alias=client_id={uami}|ep=https://mtls.example|cid={other_cid}"
                       f"|tid={tenant}|type=UserAssigned|key=software-ksp", "msicert-x")
    # Our subject, but tags no decoder can read (MSAL.NET's would refuse them too).
    garbled = _test_ca_cert(uami, tenant, DEFAULT_ISSUER_CN)
    _seed(garbled, f"MSAL|alias={uami}#att=0", "KeyGuardRSAKey")
    notours = _test_ca_cert(uami, tenant, DEFAULT_ISSUER_CN)
    _seed(notours, f"MSAL-ish|alias={uami}|ep=https://mtls.example/{tenant}", "KeyGuardRSAKey")
    seeded = (foreign, foreign_old, garbled, notours)
    try:
        with caplog.at_level(logging.WARNING, logger="msicert"):
            cert = client.get_certificate()
        assert cert.source == "imds"  # none of them was taken for ours
        assert not any("corrupt" in r.getMessage() for r in caplog.records)
        assert all(_in_store(der) for der in seeded)
        assert len(client.purge()) == 1  # only the one msicert minted
        assert all(_in_store(der) for der in seeded)
        assert not _in_store(cert.der)
    finally:
        for der in seeded:
            _drop(der)


def test_our_entry_from_an_unexpected_issuer_is_reported_but_deleted_only_by_purge(
        client: Any) -> None:
    from msicert.backends.contract import CorruptEntry

    uami = client.identity.value
    tenant = str(uuid.uuid4())
    odd = _test_ca_cert(uami, tenant, "another-issuer.example")
    _seed(odd, f"MSAL|alias={uami}#att=0|ep=https://mtls.example/{tenant}", "KeyGuardRSAKey")
    try:
        with pytest.raises(CorruptEntry, match="issuer"):
            client.status()
        cert = client.get_certificate()  # the mint removes corrupt entries it can prove ours
        assert cert.source == "imds"
        assert _in_store(odd)  # an unexpected issuer does not prove it ours: kept
        assert client.status().x5t_s256 == cert.x5t_s256  # and no longer reported
        assert len(client.purge()) == 2  # an explicit purge takes every issuer
        assert not _in_store(odd)
    finally:
        _drop(odd)


# --- a failed put never leaves a certificate without its key ----------------------------


@pytest.fixture
def discards(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the minted keys the client discards after a failed mint (real call runs)."""
    from msicert.backends.windows._ncrypt_key import NCryptRsaKey

    names: list[str] = []
    real = NCryptRsaKey.discard

    def spy(self: Any) -> None:
        names.append(self.name)
        real(self)

    monkeypatch.setattr(NCryptRsaKey, "discard", spy)
    return names


@pytest.fixture
def system_client(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    if not IMDS:
        pytest.skip("no emulator (tools/wine/run.sh starts one and sets MSICERT_WINE_IMDS)")
    from msicert import ManagedIdentityClient
    from msicert.wire._retry import RetryPolicy

    monkeypatch.delenv("MSICERT_ATTESTATION_DLL", raising=False)
    c = ManagedIdentityClient(imds_endpoint=IMDS, retry=RetryPolicy(scale=0.01))
    c.purge()
    c.store.generate_key(c.identity)
    yield c
    c.purge()


def test_failure_after_the_certificate_was_added_keeps_certificate_and_key(
        system_client: Any, monkeypatch: pytest.MonkeyPatch, discards: list[str],
        caplog: pytest.LogCaptureFixture) -> None:
    import msicert_native as native
    from msicert.backends.windows import _cert_store

    phases: list[str] = []

    def fail_after_add(phase: str) -> None:
        phases.append(phase)
        if phase == "added":
            raise OSError("injected fault after the certificate was added")

    monkeypatch.setattr(_cert_store, "_crash_point", fail_after_add)
    with caplog.at_level(logging.WARNING, logger="msicert"):
        cert = system_client.get_certificate()
    assert cert.source == "imds" and phases == ["added"]
    assert discards == []  # the new certificate's key was not discarded
    assert any("pruning expired entries" in r.getMessage() and "injected fault" in r.getMessage()
               for r in caplog.records)
    with native.open_system_store("current-user", "My") as store:
        refs = [r for r in native.enum_certificates(store) if r.der == cert.der]
        try:
            assert len(refs) == 1
            info = native.get_key_prov_info(refs[0])
            assert info is not None and info.container in ("KeyGuardRSAKey", "HardwareRSAKey")
        finally:
            for r in refs:
                r.close()
    assert system_client.status().x5t_s256 == cert.x5t_s256


def test_failed_commit_while_adding_removes_the_certificate_before_its_key_goes(
        system_client: Any, monkeypatch: pytest.MonkeyPatch, discards: list[str]) -> None:
    import msicert_native as native
    from msicert import StoreError
    from msicert_native import _certstore

    real_commit = _certstore.store_commit
    failures: list[int] = []

    def commit_then_fail_once(store: Any) -> None:
        real_commit(store)  # the add is persisted: only msicert's clean-up can undo it
        if not failures:
            failures.append(1)
            raise native.NativeError("CertControlStore", winerror=5, detail="injected")

    monkeypatch.setattr(_certstore, "store_commit", commit_then_fail_once)
    with pytest.raises(StoreError, match="cannot add the certificate"):
        system_client.get_certificate()
    assert failures == [1]
    # The mint's key is the shared binding key: "discarding" it deletes nothing.
    assert len(discards) == 1 and discards[0] in ("KeyGuardRSAKey", "HardwareRSAKey")
    monkeypatch.setattr(_certstore, "store_commit", real_commit)
    with native.open_system_store("current-user", "My") as store:
        refs = native.enum_certificates(store)
        try:
            tagged = [native.get_friendly_name(r) or "" for r in refs]
        finally:
            for r in refs:
                r.close()
    assert not [t for t in tagged if t.startswith("MSAL|alias=system_assigned_managed_identity")]


def test_msal_net_entry_msicert_cannot_complete_is_left_alone_until_purge(
        client: Any, caplog: pytest.LogCaptureFixture) -> None:
    from msicert._policy import DEFAULT_ISSUER_CN

    uami = client.identity.value
    tenant = str(uuid.uuid4())
    # Ours by tag, subject and issuer, but its ep is no https URL: msicert cannot use it.
    odd = _test_ca_cert(uami, tenant, DEFAULT_ISSUER_CN)
    _seed(odd, f"MSAL|alias={uami}#att=0|ep=http://mtls.example/{tenant}", "KeyGuardRSAKey")
    try:
        assert client.status() is None  # not reported corrupt
        with caplog.at_level(logging.WARNING, logger="msicert"):
            cert = client.get_certificate()
        assert cert.source == "imds"
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert _in_store(odd)  # neither the mint nor its clean-up touched it
        assert len(client.purge()) == 2  # an explicit purge takes it
        assert not _in_store(odd)
    finally:
        _drop(odd)
