"""msicert as MSAL.NET's and MSAL Go's neighbour in CurrentUser\\My (Wine tier, real Windows).

The store is seeded exactly as the references write it (tests/native/neighbours.py: their tag
grammar, their key container, their CERT_KEY_PROV_INFO), certificates come from the emulator
that tools/wine/run.sh starts (MSICERT_WINE_IMDS), and what the references would read is
decided by ports of their readers, rule by rule with the lines they encode.

What Wine cannot do is faked only at its boundary, and the test names say so: VBS isolation
(``fake_vbs``: is_virtual_iso answers True) and a per-boot key that died at a reboot
(``faked_dead_key``: its test signature fails).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from native_testutil import REPO_ROOT, is_windows, is_wine, needs_windows, skip_on_wine
from neighbours import (
    DAY,
    ISSUER_FRAGMENT,
    KSP,
    StoreEntry,
    ca_cert,
    control,
    decode,
    drop,
    emulator_config,
    endpoint_base,
    entries,
    expired_window,
    guid,
    held_by_another_process,
    in_store,
    issue_count,
    mint_with,
    msal_go_reads,
    msal_net_tag,
    not_after,
    reference_mutex_name,
    seed,
    spki,
    subject_cn,
)

pytestmark = needs_windows

IMDS = os.environ.get("MSICERT_WINE_IMDS", "")
FAKE_DLL = os.environ.get("MSICERT_WINE_FAKE_ATTESTATION_DLL", "")
SYSTEM = "system_assigned_managed_identity"
ARM_BASE = ("/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/RG/providers/")
UAMI_BASE = ARM_BASE + "Microsoft.ManagedIdentity/userAssignedIdentities/"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"


@pytest.fixture(autouse=True)
def _emulator() -> None:
    if is_windows() and not IMDS:
        pytest.skip("no emulator (tools/wine/run.sh starts one and sets MSICERT_WINE_IMDS)")


@pytest.fixture
def fake_vbs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys report VBS isolation (the one fact only KeyGuard hardware can give)."""
    import msicert_native

    monkeypatch.setattr(msicert_native, "is_virtual_iso", lambda key: True)


@pytest.fixture
def make_client(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Any]]:
    """Clients on CurrentUser\\My against the emulator; each identity purged before and after."""
    from msicert import Backoff, ManagedIdentityClient
    from msicert.wire._retry import RetryPolicy

    monkeypatch.delenv("MSICERT_ATTESTATION_DLL", raising=False)
    made: list[Any] = []

    def make(**selectors: str) -> Any:
        client = ManagedIdentityClient(imds_endpoint=IMDS, retry=RetryPolicy(scale=0.01),
                                       mint_backoff=Backoff(0.0, 0.0), **selectors)
        if not any(c.identity == client.identity for c in made):
            client.purge()
        made.append(client)
        return client

    yield make
    for client in made:
        client.purge()


def _binding(client: Any) -> Any:
    """The shared binding key, provisioned before the test seeds entries bound to its name."""
    return client.store.generate_key(client.identity)


def _msicert(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AZURE_POD_IDENTITY_AUTHORITY_HOST": IMDS,
           "MSICERT_IMDS_RETRY_SCALE": "0.01", "PYTHONPATH": str(REPO_ROOT)}
    env.pop("MSICERT_ATTESTATION_DLL", None)
    return subprocess.run([sys.executable, "-m", "msicert", *args], capture_output=True,
                          text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)


def _x5t(der: bytes) -> str:
    from msicert._model import x5t_s256

    return x5t_s256(der)


def _ours(cert: Any) -> StoreEntry:
    (found,) = [e for e in entries() if e.der == cert.der]
    return found


# --- store hits on MSAL.NET's entries, whatever the case of the configured id ---------------

GUID = "C0FFEE00-1111-4222-8333-44445555AAAA"
ARM = UAMI_BASE + "UAMI-Case"


@pytest.mark.parametrize(("flag", "msal_net", "msicert", "query_name"), [
    ("--client-id", GUID, GUID, "client_id"),
    ("--client-id", GUID, GUID.lower(), "client_id"),
    ("--client-id", GUID.lower(), GUID, "client_id"),
    ("--object-id", GUID, GUID.lower(), "object_id"),
    ("--resource-id", ARM, ARM.lower(), "mi_res_id"),
], ids=["upper-upper", "upper-lower", "lower-upper", "object-upper-lower", "arm-mixed-lower"])
def test_msal_net_entry_is_a_store_hit_with_zero_imds_calls_in_either_case(
        make_client: Any, flag: str, msal_net: str, msicert: str, query_name: str) -> None:
    """MSAL.NET tags with the id as ITS caller configured it; msicert, configured with another
    case of the same id, still takes the entry (a read may match without case)."""
    kind = {"--client-id": "client_id", "--object-id": "object_id",
            "--resource-id": "resource_id"}[flag]
    client = make_client(**{kind: msicert})
    key = _binding(client)
    issued = mint_with(key.handle, {query_name: msal_net})
    seed(issued["der"], msal_net_tag(f"{msal_net}#att=0", endpoint_base(issued)), key.name)
    try:
        before = control("GET", "stats")["counts"]
        out = _msicert("cert", "--json", flag, msicert)
        assert out.returncode == 0, out.stderr
        got = json.loads(out.stdout)
        assert control("GET", "stats")["counts"] == before  # zero IMDS calls of any kind
        assert (got["source"], got["x5t_s256"]) == ("store", _x5t(issued["der"]))
    finally:
        drop(issued["der"])


# --- msicert's entry, read by ports of the references' readers ------------------------------


def _container_spki(entry: StoreEntry, key: Any) -> bytes | None:
    """The public half of the key the entry names (IsCertKeyOrphaned opens it through the
    certificate). Wine's NCryptOpenKey is a stub: there the container is the one this process
    holds open as its binding key."""
    import msicert_native as native

    if is_wine():
        return native.export_public_spki(key.handle) if key.name == entry.container else None
    with native.open_provider(entry.provider or KSP) as provider, \
            native.open_key(provider, entry.container or "") as opened:
        return native.export_public_spki(opened)


def _newest_for(alias: str) -> bytes | None:
    mine = [e for e in entries() if (d := decode(e.friendly_name)) and d[0] == alias]
    return max(mine, key=lambda e: not_after(e.der)).der if mine else None


# (rule, the reference lines it encodes; paths under ManagedIdentity/ of MSAL.NET @ 39d200113)
MSAL_NET_READER: list[tuple[str, str, Callable[[StoreEntry, Any, Any, str], bool]]] = [
    ("TryDecode", "V2/WindowsPersistentCertificateCache.cs:71, "
     "V2/MsiCertificateFriendlyNameEncoder.cs:95-126",
     lambda e, cert, key, alias: decode(e.friendly_name) is not None),
    ("alias, ordinal", "V2/WindowsPersistentCertificateCache.cs:76; cache key "
     "V2/ImdsV2ManagedIdentitySource.cs:517-520",
     lambda e, cert, key, alias: (decode(e.friendly_name) or ("",))[0] == alias),
    ("24 h left", "V2/WindowsPersistentCertificateCache.cs:82, V2/CertificateCacheEntry.cs "
     "MinRemainingLifetime",
     lambda e, cert, key, alias: not_after(e.der) > time.time() + DAY),
    ("HasPrivateKey", "V2/WindowsPersistentCertificateCache.cs:88 (CERT_KEY_PROV_INFO set)",
     lambda e, cert, key, alias: bool(e.container) and bool(e.provider)),
    ("not orphaned", "V2/WindowsPersistentCertificateCache.cs:97, "
     "V2/MtlsCertificateCache.cs:196-221 and 246-262 (the container's public key is the "
     "certificate's)",
     lambda e, cert, key, alias: _container_spki(e, key) == spki(e.der)),
    ("newest NotAfter", "V2/WindowsPersistentCertificateCache.cs:105",
     lambda e, cert, key, alias: _newest_for(alias) == e.der),
    ("CN is the client id GUID", "V2/WindowsPersistentCertificateCache.cs:131-138",
     lambda e, cert, key, alias: guid(subject_cn(e.der)) == cert.client_id),
    ("ep is endpoint/tenant", "V2/WindowsPersistentCertificateCache.cs:109,145; "
     "V2/ImdsV2ManagedIdentitySource.cs endpointBase",
     lambda e, cert, key, alias: (decode(e.friendly_name) or ("", ""))[1]
     == f"{cert.mtls_endpoint}/{cert.tenant_id}"),
]


@pytest.mark.parametrize(("rule", "lines", "holds"), MSAL_NET_READER,
                         ids=[r for r, _, _ in MSAL_NET_READER])
def test_msicert_entry_passes_the_msal_net_reader_rule(
        make_client: Any, rule: str, lines: str,
        holds: Callable[[StoreEntry, Any, Any, str], bool]) -> None:
    client = make_client()
    with emulator_config(lifetime=3 * DAY):
        cert = client.get_certificate()
    assert cert.source == "imds"
    key = _binding(client)
    assert holds(_ours(cert), cert, key, f"{SYSTEM}#att=0"), f"{rule} ({lines})"


@pytest.mark.parametrize("configured", [GUID, GUID.lower()])
def test_configured_id_is_found_by_msal_net_configured_the_same_way_only(
        make_client: Any, configured: str) -> None:
    """The tag carries the id as configured; MSAL.NET compares aliases ordinally
    (WindowsPersistentCertificateCache.cs:76), so the same configuration finds it."""
    client = make_client(client_id=configured)
    cert = client.get_certificate()
    entry = _ours(cert)
    decoded = decode(entry.friendly_name)
    assert decoded is not None and decoded[0] == f"{configured}#att=0"
    same = [e.der for e in entries() if (d := decode(e.friendly_name))
            and d[0] == f"{configured}#att=0"]
    other_case = configured.lower() if configured != configured.lower() else configured.upper()
    other = [e.der for e in entries() if (d := decode(e.friendly_name))
             and d[0] == f"{other_case}#att=0"]
    assert same == [cert.der] and cert.der not in other


@pytest.mark.parametrize("vbs", [True, False], ids=["fake_vbs-KeyGuardRSAKey",
                                                     "no-vbs-HardwareRSAKey"])
def test_msal_go_reader_takes_msicert_entry_when_it_is_bound_to_keyguard_rsa_key(
        make_client: Any, monkeypatch: pytest.MonkeyPatch, vbs: bool) -> None:
    """MSAL Go accepts only entries bound to its one container, KeyGuardRSAKey, with
    CERT_NCRYPT_KEY_SPEC (usesBindingKeyContainer); it has no HardwareRSAKey fallback, so
    without VBS neither library's entry is one it would read."""
    import msicert_native

    if vbs:
        monkeypatch.setattr(msicert_native, "is_virtual_iso", lambda key: True)
    client = make_client()
    with emulator_config(lifetime=3 * DAY):
        cert = client.get_certificate()
    if vbs and cert.key != "keyguard":
        pytest.skip("KeyGuard flags refused here (real Windows without VBS)")
    rules = msal_go_reads(_ours(cert), f"{SYSTEM}#att=0", time.time())
    assert rules == {name: (name != "usesBindingKeyContainer" or vbs) for name in rules}


# --- attested and unattested stay apart -----------------------------------------------------


def test_reader_without_attestation_never_takes_an_attested_entry(make_client: Any) -> None:
    client = make_client()
    key = _binding(client)
    attested = mint_with(key.handle, {})
    seed(attested["der"], msal_net_tag(f"{SYSTEM}#att=1", endpoint_base(attested)), key.name)
    try:
        before = issue_count()
        cert = client.get_certificate()
        assert cert.source == "imds" and cert.der != attested["der"]
        assert issue_count() == before + 1
        assert decode(_ours(cert).friendly_name)[0] == f"{SYSTEM}#att=0"  # type: ignore[index]
        assert in_store(attested["der"])  # the other variant is not touched
    finally:
        drop(attested["der"])


@pytest.mark.skipif(not FAKE_DLL, reason="no stand-in AttestationClientLib.dll (run.sh builds it)")
def test_each_reader_takes_its_own_variant_only_fake_vbs(
        make_client: Any, fake_vbs: None, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = make_client()
    key = _binding(plain)
    if key.name != "KeyGuardRSAKey":
        pytest.skip("KeyGuard flags refused here (real Windows without VBS)")
    att1 = mint_with(key.handle, {})
    att0 = mint_with(key.handle, {})  # newer: the one a variant-blind reader would pick
    seed(att1["der"], msal_net_tag(f"{SYSTEM}#att=1", endpoint_base(att1)), key.name)
    seed(att0["der"], msal_net_tag(f"{SYSTEM}#att=0", endpoint_base(att0)), key.name)
    try:
        before = issue_count()
        assert plain.get_certificate().der == att0["der"]
        monkeypatch.setenv("MSICERT_ATTESTATION_DLL", FAKE_DLL)
        from msicert import ManagedIdentityClient
        from msicert.wire._retry import RetryPolicy

        attesting = ManagedIdentityClient(imds_endpoint=IMDS, retry=RetryPolicy(scale=0.01))
        found = attesting.get_certificate()
        assert (found.source, found.der) == ("store", att1["der"])
        assert issue_count() == before  # both were store hits
    finally:
        drop(att1["der"], att0["der"])


# --- a renewal prunes like the references ---------------------------------------------------


def test_renewal_keeps_valid_and_foreign_entries_and_prunes_only_expired_of_its_exact_alias(
        make_client: Any) -> None:
    from msicert._policy import DEFAULT_ISSUER_CN

    client = make_client()
    key = _binding(client)
    with emulator_config(lifetime=3600, backdate=3000):  # already past renew_after
        first = client.get_certificate()
        msal_net = mint_with(key.handle, {})  # MSAL.NET's valid entry of the same alias
    attested = mint_with(key.handle, {})  # a valid #att=1 entry
    seed(msal_net["der"], msal_net_tag(f"{SYSTEM}#att=0", endpoint_base(msal_net)), key.name)
    seed(attested["der"], msal_net_tag(f"{SYSTEM}#att=1", endpoint_base(attested)), key.name)
    cid, ep = first.client_id, f"{first.mtls_endpoint}/{first.tenant_id}"

    def expired(alias_tag: str) -> bytes:
        der = ca_cert(cid, first.tenant_id, DEFAULT_ISSUER_CN, **expired_window())
        seed(der, alias_tag, key.name)
        return der

    pruned = expired(msal_net_tag(f"{SYSTEM}#att=0", ep))
    kept = {
        "expired #att=1": expired(msal_net_tag(f"{SYSTEM}#att=1", ep)),
        "expired, alias in another case": expired(msal_net_tag(f"{SYSTEM.upper()}#att=0", ep)),
        "expired, alias that starts with ours": expired(msal_net_tag(f"{SYSTEM}#att=00", ep)),
        "expired, tag without ep": expired(f"MSAL|alias={SYSTEM}#att=0"),
        "valid, MSAL.NET's": msal_net["der"],
        "valid, #att=1": attested["der"],
    }
    try:
        before = issue_count()
        renewed = client.get_certificate()
        assert renewed.source == "imds" and renewed.x5t_s256 != first.x5t_s256
        assert issue_count() == before + 1
        assert not in_store(pruned)
        assert {name: in_store(der) for name, der in kept.items()} == dict.fromkeys(kept, True)
        assert in_store(first.der)  # msicert's own older entry is valid too: kept
        assert client.status().x5t_s256 == renewed.x5t_s256
    finally:
        drop(pruned, *kept.values())


# --- the binding key -------------------------------------------------------------------------


SOVEREIGN = "managedidentitysnissuer.login.microsoftonline.us"


def test_a_certificate_issued_under_another_issuer_name_is_stored_and_found_again(
        make_client: Any) -> None:
    """What IMDS issues under a name without the public cloud's fragment (a sovereign cloud)
    is accepted and stored; msicert's tag marks the entry as its own, so the next lookup takes
    it with zero IMDS calls. An explicit issuer= stays strict."""
    from msicert import ImdsResponseError

    with emulator_config(issuer_cn=SOVEREIGN):
        first = make_client().get_certificate()
        assert SOVEREIGN in first.issuer and first.source == "imds"
        before = issue_count()
        again = make_client().get_certificate()
        assert again.x5t_s256 == first.x5t_s256 and again.source in ("store", "memory")
        assert issue_count() == before
        strict = make_client(issuer=ISSUER_FRAGMENT)
        with pytest.raises(ImdsResponseError, match="issuer is"):
            strict.get_certificate()
        assert make_client().get_certificate().x5t_s256 == first.x5t_s256  # kept


def test_mint_binds_its_entry_to_the_shared_key_named_as_the_reference_names_it(
        make_client: Any) -> None:
    import msicert_native as native

    cert = make_client().get_certificate()
    entry = _ours(cert)
    expected = "KeyGuardRSAKey" if cert.key == "keyguard" else "HardwareRSAKey"
    if is_wine():
        expected = "HardwareRSAKey"  # no VBS under Wine: the reference's software key
    assert (entry.container, entry.provider, entry.key_spec) == (
        expected, KSP, native.constants.CERT_NCRYPT_KEY_SPEC)


@pytest.mark.parametrize("vbs", [True, False], ids=["fake_vbs-KeyGuardRSAKey",
                                                     "no-vbs-HardwareRSAKey"])
def test_dead_binding_key_is_recreated_and_what_it_bound_purged_faked_dead_key(
        make_client: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        vbs: bool) -> None:
    """The key dies as a per-boot key does at a reboot: its test signature fails (faked, as
    Wine cannot make per-boot keys). The next mint recreates it under the store-write mutex
    and purges the IMDS-issued certificates bound to it (any alias, any library, as
    WindowsCngKeyOperations.PurgeManagedIdentityCertificates does); others stay."""
    import msicert_native as native
    from msicert.backends.windows import _cert_store, _mutex
    from msicert_native import NativeError

    if vbs:
        monkeypatch.setattr(native, "is_virtual_iso", lambda key: True)
    client = make_client()
    first = client.get_certificate()
    key = _binding(client)
    name = key.name
    if vbs and name != "KeyGuardRSAKey":
        pytest.skip("KeyGuard flags refused here (real Windows without VBS)")
    assert name == ("KeyGuardRSAKey" if vbs else "HardwareRSAKey")
    other_alias = UAMI_BASE + "Neighbour"
    theirs = mint_with(key.handle, {"mi_res_id": other_alias})
    seed(theirs["der"], msal_net_tag(f"{other_alias}#att=0", endpoint_base(theirs)), name)
    tenant = first.tenant_id
    other_key = ca_cert(str(uuid.uuid4()), tenant, ISSUER_FRAGMENT, not_before=time.time() - 60,
                        not_after=time.time() + DAY)
    seed(other_key, msal_net_tag(f"{other_alias}#att=0", "https://e/t"), "SomeOtherKey")
    not_imds = ca_cert(str(uuid.uuid4()), tenant, "another-issuer.example",
                       not_before=time.time() - 60, not_after=time.time() + DAY)
    seed(not_imds, msal_net_tag(f"{other_alias}#att=0", "https://e/t"), name)
    untagged = ca_cert(str(uuid.uuid4()), tenant, ISSUER_FRAGMENT,
                       not_before=time.time() - 60, not_after=time.time() + DAY)
    seed(untagged, "somebody's certificate", name)

    # The reboot: every key of that name fails its test signature until one is created anew.
    dead = {"yes": True}
    real_sign, real_create = native.sign_pss_sha256, native.create_rsa_key
    real_alive = _cert_store.key_is_alive

    def sign(k: Any, digest: bytes, salt: int = 32) -> bytes:
        if dead["yes"] and k.name == name:
            raise NativeError("NCryptSignHash", status=0x80090016, detail="faked dead key")
        return real_sign(k, digest, salt)

    def create(provider: Any, key_name: str, **kw: Any) -> Any:
        made = real_create(provider, key_name, **kw)
        dead["yes"] = dead["yes"] and key_name != name
        return made

    def alive(container: str, **kw: Any) -> bool | None:  # the probe Wine cannot open
        return False if dead["yes"] and container == name else real_alive(container, **kw)

    held: list[str] = []
    real_hold = _mutex.SharedStoreLock.hold

    def hold(self: Any, wait: float = 0.3) -> Any:
        import contextlib

        @contextlib.contextmanager
        def tracked() -> Iterator[bool]:
            with real_hold(self, wait) as ok:
                held.append(self.name)
                try:
                    yield ok
                finally:
                    held.remove(self.name)
        return tracked()

    purged_under: list[list[str]] = []
    real_purge = _cert_store.WindowsStore.purge_bound_to

    def purge(self: Any, container: str, issuer_cn: str) -> int:
        purged_under.append(list(held))
        return real_purge(self, container, issuer_cn)

    monkeypatch.setattr(native, "sign_pss_sha256", sign)
    monkeypatch.setattr(native, "create_rsa_key", create)
    monkeypatch.setattr(_cert_store, "key_is_alive", alive)
    monkeypatch.setattr(_mutex.SharedStoreLock, "hold", hold)
    monkeypatch.setattr(_cert_store.WindowsStore, "purge_bound_to", purge)
    monkeypatch.setattr(_cert_store, "_probed", {})  # a new process after the reboot
    survivors = (other_key, not_imds, untagged)
    try:
        fresh = make_client()
        before = issue_count()
        with caplog.at_level(logging.INFO, logger="msicert"):
            new = fresh.get_certificate()
        assert new.source == "imds" and new.x5t_s256 != first.x5t_s256
        assert issue_count() == before + 1
        assert dead["yes"] is False  # the key was created anew
        assert _ours(new).container == name
        assert not in_store(theirs["der"]) and not in_store(first.der)
        assert all(in_store(der) for der in survivors)
        assert purged_under and all(reference_mutex_name(f"{SYSTEM}#att=0") in names
                                    for names in purged_under)
        assert any(f"created {name}" in r.getMessage() for r in caplog.records)
    finally:
        drop(theirs["der"], *survivors)


# --- the store-write mutex of every library ------------------------------------------------


@pytest.fixture
def system_stored(make_client: Any) -> tuple[Any, Any, Any]:
    """A system-identity client, its binding key, and a certificate it stored."""
    client = make_client()
    key = _binding(client)
    return client, key, client.get_certificate()


def test_mint_while_another_process_holds_the_store_mutex_writes_nothing_and_serves_memory(
        make_client: Any, caplog: pytest.LogCaptureFixture) -> None:
    import msicert_native as native
    from msicert._policy import DEFAULT_ISSUER_CN

    client = make_client()
    key = _binding(client)
    stale = ca_cert(str(uuid.uuid4()), TENANT, DEFAULT_ISSUER_CN, **expired_window())
    seed(stale, msal_net_tag(f"{SYSTEM}#att=0", f"https://e/{TENANT}"), key.name)
    before = [e.der for e in entries()]
    try:
        with held_by_another_process(reference_mutex_name(f"{SYSTEM}#att=0")), \
                caplog.at_level(logging.WARNING, logger="msicert"):
            cert = client.get_certificate()
            assert [e.der for e in entries()] == before  # nothing added, nothing pruned
        assert cert.source == "imds"
        assert any("not stored and serves this process from memory" in r.getMessage()
                   for r in caplog.records)
        assert client.status().source == "memory"  # this process keeps using it
        with client.store.cert_ref(cert.x5t_s256) as ref:  # what WinHTTP presents
            assert ref.der == cert.der
            assert native.get_key_prov_info(ref) == native.KeyProvInfo(
                key.name, KSP, 0, 0, native.constants.CERT_NCRYPT_KEY_SPEC)
    finally:
        drop(stale)


def test_purge_while_another_process_holds_the_store_mutex_is_an_error_and_removes_nothing(
        system_stored: tuple[Any, Any, Any]) -> None:
    from msicert import StoreError

    client, _, cert = system_stored
    name = reference_mutex_name(f"{SYSTEM}#att=0")
    with held_by_another_process(name), pytest.raises(StoreError, match="nothing was purged"):
        client.purge()
    assert in_store(cert.der)
    with held_by_another_process(reference_mutex_name(f"{SYSTEM}#att=1")), \
            pytest.raises(StoreError, match="MSAL_MI_P_"):
        client.purge()  # purge covers both variants
    assert in_store(cert.der)
    assert len(client.purge()) == 1 and not in_store(cert.der)


def test_removal_while_another_process_holds_the_store_mutex_is_skipped(
        system_stored: tuple[Any, Any, Any]) -> None:
    client, _, cert = system_stored
    with held_by_another_process(reference_mutex_name(f"{SYSTEM}#att=0")):
        assert client.store.remove(client.identity, cert.x5t_s256) is False
    assert in_store(cert.der)
    assert client.store.remove(client.identity, cert.x5t_s256) is True
    assert not in_store(cert.der)


def test_key_creation_waits_for_the_store_mutex_and_neither_creates_nor_purges_while_held(
        make_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import msicert_native as native
    from msicert import StoreError
    from msicert.backends.windows import _cert_store, _ncrypt_key

    client = make_client()
    key = _binding(client)
    bound = mint_with(key.handle, {"mi_res_id": UAMI_BASE + "Bound"})
    seed(bound["der"], msal_net_tag(f"{UAMI_BASE}Bound#att=0", endpoint_base(bound)), key.name)
    _ncrypt_key.forget_binding_keys()  # a new process: the key must be opened or created
    monkeypatch.setattr(_cert_store, "KEY_LOCK_WAIT", 0.5)
    created: list[str] = []
    real_create = native.create_rsa_key
    monkeypatch.setattr(native, "create_rsa_key", lambda p, n, **kw: (
        created.append(n), real_create(p, n, **kw))[1])
    try:
        with held_by_another_process(reference_mutex_name(f"{SYSTEM}#att=0")), \
                pytest.raises(StoreError, match="binding key was not created"):
            client.store.generate_key(client.identity)
        assert created == [] and in_store(bound["der"])
        again = client.store.generate_key(client.identity)  # free again: provisioned
        assert again.name in ("KeyGuardRSAKey", "HardwareRSAKey")
    finally:
        drop(bound["der"])


# --- an alias that merely starts with ours is another identity's ---------------------------


@pytest.mark.parametrize(("ours", "theirs"), [
    (UAMI_BASE + "UAMI-2", UAMI_BASE + "UAMI-20"),
    (ARM_BASE + "Microsoft.Web/sites/app", ARM_BASE + "Microsoft.Web/sites/app-staging"),
], ids=["UAMI-2-vs-UAMI-20", "app-vs-app-staging"])
def test_resource_id_that_merely_starts_with_ours_is_neither_hit_nor_pruned_nor_purged(
        make_client: Any, ours: str, theirs: str) -> None:
    """A resource-id selector does not fix the certificate's CN: the tag is the only guard."""
    client = make_client(resource_id=ours)
    key = _binding(client)
    valid = mint_with(key.handle, {"mi_res_id": theirs})
    seed(valid["der"], msal_net_tag(f"{theirs}#att=0", endpoint_base(valid)), key.name)
    stale = ca_cert(valid["client_id"], valid["tenant_id"], ISSUER_FRAGMENT, **expired_window())
    seed(stale, msal_net_tag(f"{theirs}#att=0", endpoint_base(valid)), key.name)
    try:
        before = issue_count()
        cert = client.get_certificate()
        assert cert.source == "imds" and issue_count() == before + 1  # not a store hit
        assert in_store(valid["der"]) and in_store(stale)  # not pruned as ours
        assert len(client.purge()) == 1
        assert in_store(valid["der"]) and in_store(stale)
    finally:
        drop(valid["der"], stale)


# --- keys of earlier msicert versions ---------------------------------------------------------


def test_purging_an_old_msicert_entry_deletes_its_own_key_and_never_a_shared_one(
        make_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import msicert_native as native
    from msicert.backends.windows import _cleanup

    client = make_client()
    name = f"msicert-system-{uuid.uuid4().hex[:12]}"  # as msicert named its keys
    with native.open_provider() as provider, \
            native.create_rsa_key(provider, name, keyguard=False) as old_key:
        issued = mint_with(old_key, {})
    seed(issued["der"], f"MSAL|alias=system|ep={issued['mtls_authentication_endpoint']}"
                        f"|cid={issued['client_id']}|tid={issued['tenant_id']}"
                        f"|type={issued['identity_type']}|key=software-ksp", name)
    deleted: list[str] = []
    real = _cleanup.delete_key
    monkeypatch.setattr(_cleanup, "delete_key",
                        lambda n, p, m: (deleted.append(n), real(n, p, m))[1])
    assert len(client.purge()) == 1 and not in_store(issued["der"])
    assert deleted == [name]


@skip_on_wine("NCryptEnumKeys and NCryptOpenKey are stubs: keys can be neither listed nor "
              "found again by name")
def test_old_msicert_keys_without_certificates_are_swept_after_a_mint(
        make_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import msicert_native as native
    from msicert.backends.windows import _cleanup

    client = make_client()
    orphan = f"msicert-system-{uuid.uuid4().hex[:12]}"
    used = f"msicert-system-{uuid.uuid4().hex[:12]}"
    with native.open_provider() as provider:
        native.create_rsa_key(provider, orphan, keyguard=False).close()
        with native.create_rsa_key(provider, used, keyguard=False) as used_key:
            issued = mint_with(used_key, {})
    seed(issued["der"], msal_net_tag(f"{UAMI_BASE}Old#att=0", endpoint_base(issued)), used)
    monkeypatch.setattr(_cleanup, "LEGACY_KEY_GRACE", 0.0)
    try:
        client.get_certificate()
        with native.open_provider() as provider:
            with pytest.raises(native.NativeError):
                native.open_key(provider, orphan)  # its certificates are gone: deleted
            native.open_key(provider, used).close()  # still used by a certificate
    finally:
        drop(issued["der"])
        with native.open_provider() as provider, native.open_key(provider, used) as k:
            native.delete_key(k)


# --- what only real Windows shows: keys that outlive the process -----------------------------


@skip_on_wine("keys do not survive the process (NCryptOpenKey/NCryptDeleteKey are stubs)")
def test_binding_key_made_by_one_process_is_reused_by_the_next_without_a_purge(
        make_client: Any) -> None:
    client = make_client()
    cert = client.get_certificate()
    entry = _ours(cert)
    out = _msicert("purge")  # a new process: removes our entry only
    assert out.returncode == 0, out.stderr
    assert not in_store(cert.der)
    key_name = entry.container
    import msicert_native as native

    with native.open_provider() as provider, native.open_key(provider, key_name or "") as key:
        before_spki = native.export_public_spki(key)
    minted = _msicert("cert", "--json")  # another new process mints with the same key
    assert minted.returncode == 0, minted.stderr
    got = json.loads(minted.stdout)
    assert got["source"] == "imds"
    with native.open_provider() as provider, native.open_key(provider, key_name or "") as key:
        assert native.export_public_spki(key) == before_spki  # opened, not created again
    (new_entry,) = [e for e in entries() if _x5t(e.der) == got["x5t_s256"]]
    assert new_entry.container == key_name and spki(new_entry.der) == before_spki


@skip_on_wine("keys do not survive the process (NCryptOpenKey/NCryptDeleteKey are stubs)")
def test_deleted_binding_key_is_recreated_by_the_next_process_and_its_entries_purged(
        make_client: Any) -> None:
    """Real Windows, nothing faked: the shared key disappears (deleted by someone), so every
    certificate bound to it is dead; the next process's mint recreates the key and purges them,
    another library's entry included."""
    import msicert_native as native

    client = make_client()
    key = _binding(client)
    if key.name != "HardwareRSAKey":
        pytest.skip("VBS here: the per-boot KeyGuardRSAKey is not deleted by this test")
    cert = client.get_certificate()
    other = UAMI_BASE + "Neighbour"
    theirs = mint_with(key.handle, {"mi_res_id": other})
    seed(theirs["der"], msal_net_tag(f"{other}#att=0", endpoint_base(theirs)), key.name)
    with native.open_provider() as provider:
        native.delete_key(native.open_key(provider, key.name))
    try:
        before = issue_count()
        out = _msicert("cert", "--json")
        assert out.returncode == 0, out.stderr
        got = json.loads(out.stdout)
        assert got["source"] == "imds" and issue_count() == before + 1
        assert not in_store(cert.der) and not in_store(theirs["der"])
        (new_entry,) = [e for e in entries() if _x5t(e.der) == got["x5t_s256"]]
        assert new_entry.container == "HardwareRSAKey"
    finally:
        drop(theirs["der"])


def test_machine_store_binds_its_entries_to_the_machine_key_of_the_same_name(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """LocalMachine\\My (services): the same names as machine keys. The references use the
    user's store and keys only."""
    import msicert_native as native
    from msicert import ManagedIdentityClient, StoreError
    from msicert.wire._retry import RetryPolicy

    monkeypatch.delenv("MSICERT_ATTESTATION_DLL", raising=False)
    client = ManagedIdentityClient(imds_endpoint=IMDS, retry=RetryPolicy(scale=0.01),
                                   store_location="local-machine")
    try:
        client.purge()
        cert = client.get_certificate()
    except StoreError as exc:
        pytest.skip(f"LocalMachine\\My is not writable by this account: {exc}")
    try:
        with native.open_system_store("local-machine", "My") as store:
            refs = native.enum_certificates(store)
            try:
                (info,) = [native.get_key_prov_info(r) for r in refs if r.der == cert.der]
            finally:
                for r in refs:
                    r.close()
        assert info is not None
        assert info.container == ("KeyGuardRSAKey" if cert.key == "keyguard"
                                  else "HardwareRSAKey")
        assert info.flags == native.constants.NCRYPT_MACHINE_KEY_FLAG
        decoded = decode(_machine_tag(cert))
        assert decoded is not None and decoded[0] == f"{SYSTEM}#att=0"
    finally:
        client.purge()


def _machine_tag(cert: Any) -> str | None:
    import msicert_native as native

    with native.open_system_store("local-machine", "My") as store:
        refs = native.enum_certificates(store)
        try:
            return next((native.get_friendly_name(r) for r in refs if r.der == cert.der), None)
        finally:
            for r in refs:
                r.close()


def test_expired_entry_in_msicerts_earlier_tag_goes_with_its_key_at_the_next_persist(
        make_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """msicert's own tag from before the reference grammar is read by no other library: once
    expired, the next persist (here a renewal's) removes it and its msicert-* key."""
    from msicert.backends.windows import _cleanup

    client = make_client()
    _binding(client)
    with emulator_config(lifetime=3600, backdate=3000):  # already past renew_after
        first = client.get_certificate()
    gone_key = f"msicert-system-{uuid.uuid4().hex[:12]}"
    expired = ca_cert(first.client_id, first.tenant_id, ISSUER_FRAGMENT, **expired_window())
    seed(expired, f"MSAL|alias=system|ep={first.mtls_endpoint}|cid={first.client_id}"
                  f"|tid={first.tenant_id}|type=SystemAssigned|key=software-ksp", gone_key)
    deleted: list[str] = []
    real = _cleanup.delete_key
    monkeypatch.setattr(_cleanup, "delete_key",
                        lambda n, p, m: (deleted.append(n), real(n, p, m))[1])
    try:
        renewed = client.get_certificate()
        assert renewed.source == "imds" and renewed.x5t_s256 != first.x5t_s256
        assert not in_store(expired) and deleted == [gone_key]
        assert in_store(first.der)  # msicert's valid older entry in the reference grammar stays
    finally:
        drop(expired)
