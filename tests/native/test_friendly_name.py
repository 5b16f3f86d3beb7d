"""The Windows store's FriendlyName grammar against MSAL.NET's (pure: runs on every platform).

Reference: AzureAD/microsoft-authentication-library-for-dotnet @ 39d200113 (2026-07-24),
src/client/Microsoft.Identity.Client/ManagedIdentity/V2/MsiCertificateFriendlyNameEncoder.cs
(grammar), ImdsV2ManagedIdentitySource.cs GetMtlsCertCacheKey (alias = Config.ClientId +
"#att=0|1"), ManagedIdentityApplicationBuilder.cs (system-assigned ClientId literal). The tag
strings below marked "FriendlyNameCodecTests.cs" are that test file's inputs, used as data.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import pytest
from native_testutil import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT))  # for tests.certgen

from cryptography import x509

from msicert import Identity
from msicert.backends.contract import CorruptEntry
from msicert.backends.windows._tags import (
    REFERENCE_SYSTEM_ALIAS,
    format_tag,
    parse_tag,
    reference_alias,
    tag_names,
)
from msicert.backends.windows._tags import metadata as _metadata
from msicert_native import KeyProvInfo
from tests.certgen import CLIENT, TENANT, make_cert

UAMI_CID = "8f123456-1f2e-4f3d-9e5b-9b9b9b9b9b9b"
ARM = ("/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/rg/providers/"
       "Microsoft.ManagedIdentity/userAssignedIdentities/UAMI-2")
KSP = "Microsoft Software Key Storage Provider"


@dataclass
class _Entry:
    der: bytes = b""
    key_pem: bytes = b""
    client_id: str = CLIENT
    tenant_id: str = TENANT
    mtls_endpoint: str = "https://mtls.login.example/"
    identity_type: str = "SystemAssigned"


def test_tag_values_are_trimmed_as_the_reference_encoder_trims_them() -> None:
    tag = format_tag(Identity(), _Entry(identity_type=" SystemAssigned "), "software-ksp")
    assert "|type=SystemAssigned|" in tag


@pytest.mark.parametrize(("identity", "alias"), [
    (Identity(), "system_assigned_managed_identity#att=0"),
    (Identity.from_selectors(client_id=UAMI_CID), f"{UAMI_CID}#att=0"),
    (Identity.from_selectors(object_id=UAMI_CID), f"{UAMI_CID}#att=0"),
    (Identity.from_selectors(resource_id=ARM), f"{ARM}#att=0"),
    (Identity.from_selectors(client_id=UAMI_CID.upper()), f"{UAMI_CID.upper()}#att=0"),
])
def test_reference_alias_for_each_kind_of_identity(identity: Identity, alias: str) -> None:
    assert reference_alias(identity, attested=False) == alias
    assert reference_alias(identity, attested=True) == alias[:-1] + "1"


def test_written_tag_is_the_reference_grammar_with_msicert_pairs_after_ep() -> None:
    tag = format_tag(Identity(), _Entry(), "software-ksp")
    assert tag == (
        f"MSAL|alias=system_assigned_managed_identity#att=0|ep=https://mtls.login.example/{TENANT}"
        f"|cid={CLIENT}|type=SystemAssigned|key=software-ksp|sel=system")
    fields = parse_tag(tag)
    assert fields is not None
    assert (fields["alias"], fields["ep"]) == (
        "system_assigned_managed_identity#att=0", f"https://mtls.login.example/{TENANT}")


@pytest.mark.parametrize("bad", ["a|b", "a\rb", "a\nb", "a\0b", " "])
def test_tag_refuses_what_the_reference_encoder_refuses(bad: str) -> None:
    from msicert import StoreError

    with pytest.raises(StoreError, match="refusing to tag"):
        format_tag(Identity(), _Entry(identity_type=bad), "software-ksp")


@pytest.mark.parametrize(("text", "expected"), [
    ("NOTMSAL|alias=a|ep=b", None),  # FriendlyNameCodecTests.cs: wrong prefix
    ("MSAL|alias=a", None),  # FriendlyNameCodecTests.cs: missing ep
    ("MSAL|alias=a|xtra=foo|ep=E", ("a", "E")),  # unknown pairs ignored
    ("MSAL|MSAL|alias=alias-double|ep=https://ep/base", ("alias-double", "https://ep/base")),
    ("MSAL|alias=a|ep=E|alias=b", ("b", "E")),  # last wins
    ("MSAL| alias = a |ep= E ||", ("a", "E")),  # trimmed, empty pieces skipped
    ("MSAL|alias=|ep=E", None),
    ("MSAL|alias=uami-ümläüt-用户-🔐|ep=https://例え.テスト/路径",
     ("uami-ümläüt-用户-🔐", "https://例え.テスト/路径")),
    (None, None),
    ("msicert something", None),
])
def test_tag_decodes_as_the_reference_decoder(
        text: str | None, expected: tuple[str, str] | None) -> None:
    fields = parse_tag(text)
    assert (None if fields is None else (fields["alias"], fields["ep"])) == expected


@pytest.mark.parametrize(("alias", "identity", "how"), [
    ("system_assigned_managed_identity#att=0", Identity(), "reference"),
    ("system_assigned_managed_identity#att=1", Identity(), None),  # the attested variant
    ("system_assigned_managed_identity", Identity(), "reference"),  # MSAL.NET before #att
    (f"{UAMI_CID.upper()}#att=0", Identity.from_selectors(client_id=UAMI_CID), "reference"),
    (f"{UAMI_CID}#att=0", Identity.from_selectors(client_id=UAMI_CID.upper()), "reference"),
    (f"{UAMI_CID}#att=0", Identity.from_selectors(object_id=UAMI_CID), "reference"),
    (f"{ARM.lower()}#att=0", Identity.from_selectors(resource_id=ARM), "reference"),
    (f"{UAMI_CID}#att=0", Identity(), None),
    ("system_assigned_managed_identity#att=0", Identity.from_selectors(client_id=CLIENT), None),
    (f"{CLIENT}#att=0", Identity.from_selectors(client_id=UAMI_CID), None),
    (f"{UAMI_CID}#att=2", Identity.from_selectors(client_id=UAMI_CID), None),
    ("system", Identity(), "legacy"),  # msicert's own tag before the reference grammar
    (f"client_id={UAMI_CID}", Identity.from_selectors(client_id=UAMI_CID), "legacy"),
    (f"client_id={UAMI_CID}", Identity.from_selectors(object_id=UAMI_CID), None),
])
def test_tag_names_the_identity_for_a_reader_without_attestation(
        alias: str, identity: Identity, how: str | None) -> None:
    extra = "|cid=c|tid=t|type=SystemAssigned" if how == "legacy" or "=" in alias else ""
    fields = parse_tag(f"MSAL|alias={alias}|ep=https://e/t{extra}")
    assert fields is not None
    assert tag_names(fields, identity, attested=False) == how


@pytest.mark.parametrize(("alias", "attested", "any_variant"), [
    # GetMtlsCertCacheKey / Go cacheKey: "#att=1" and "#att=0" are two cache keys.
    ("system_assigned_managed_identity#att=1", "reference", "reference"),
    ("system_assigned_managed_identity#att=0", None, "reference"),
    ("system_assigned_managed_identity", None, "reference"),  # never taken as attested
    ("system", None, "legacy"),  # msicert's old tag: never taken as attested
])
def test_attested_reader_takes_the_attested_variant_only_and_purge_takes_both(
        alias: str, attested: str | None, any_variant: str) -> None:
    fields = parse_tag(f"MSAL|alias={alias}|ep=https://e/t|cid=c|tid=t|type=SystemAssigned")
    assert fields is not None
    assert tag_names(fields, Identity(), attested=True) == attested
    assert tag_names(fields, Identity(), attested=None) == any_variant


BASE = "/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/rg/providers/"


@pytest.mark.parametrize(("ours", "theirs"), [
    (f"{BASE}Microsoft.ManagedIdentity/userAssignedIdentities/UAMI-2",
     f"{BASE}Microsoft.ManagedIdentity/userAssignedIdentities/UAMI-20"),
    (f"{BASE}Microsoft.Web/sites/app", f"{BASE}Microsoft.Web/sites/app-staging"),
    (f"{BASE}Microsoft.Web/sites/app", f"{BASE}Microsoft.Web/sites/app/slots/x"),
])
def test_an_alias_that_merely_starts_with_ours_is_not_ours(ours: str, theirs: str) -> None:
    """For a resource-id selector the tag is the only guard (any client id may be the CN)."""
    identity = Identity.from_selectors(resource_id=ours)
    for variant in (0, 1):
        fields = parse_tag(f"MSAL|alias={theirs}#att={variant}|ep=https://e/t")
        assert fields is not None
        for attested in (False, True, None):
            assert tag_names(fields, identity, attested=attested) is None
    fields = parse_tag(f"MSAL|alias={theirs}|ep=https://e/t")  # no variant suffix at all
    assert fields is not None and tag_names(fields, identity, attested=None) is None


def test_written_alias_keeps_the_configured_case() -> None:
    """MSAL.NET configured with an upper-case GUID looks up (ordinally) the alias written."""
    upper = Identity.from_selectors(client_id=UAMI_CID.upper())
    tag = format_tag(upper, _Entry(client_id=UAMI_CID), "software-ksp")
    fields = parse_tag(tag)
    assert fields is not None and fields["alias"] == f"{UAMI_CID.upper()}#att=0"
    assert reference_alias(Identity.from_selectors(client_id=UAMI_CID), attested=False) \
        == f"{UAMI_CID}#att=0"


def test_msicert_selector_pair_keeps_client_id_and_object_id_apart() -> None:
    by_client = Identity.from_selectors(client_id=UAMI_CID)
    by_object = Identity.from_selectors(object_id=UAMI_CID)
    fields = parse_tag(format_tag(by_client, _Entry(client_id=UAMI_CID), "software-ksp"))
    assert fields is not None
    assert tag_names(fields, by_client, attested=False) == "reference"
    assert tag_names(fields, by_object, attested=None) is None


def test_old_msicert_tag_without_its_metadata_is_not_ours() -> None:
    fields = parse_tag("MSAL|alias=system|ep=https://e")
    assert fields is not None and tag_names(fields, Identity(), attested=None) is None


def _cert(cn: str = CLIENT, dc: str = TENANT) -> x509.Certificate:
    now = time.time()
    return make_cert(cn=cn, dc=dc, not_before=now - 60, not_after=now + 3600)


def test_msal_net_tag_is_completed_from_the_certificate_and_the_key_container() -> None:
    fields = parse_tag(f"MSAL|alias=system_assigned_managed_identity#att=1"
                       f"|ep=https://mtlsauth.microsoft.com/{TENANT}")
    assert fields is not None
    info = KeyProvInfo("KeyGuardRSAKey", KSP, 0, 0, 0)
    meta = _metadata(fields, "reference", _cert(cn=CLIENT.upper()), Identity(), info)
    assert (meta.client_id, meta.tenant_id, meta.mtls_endpoint, meta.identity_type, meta.key) == (
        CLIENT, TENANT, "https://mtlsauth.microsoft.com", "SystemAssigned", "keyguard")
    other = _metadata(fields, "reference", _cert(), Identity.from_selectors(client_id=CLIENT),
                      KeyProvInfo("MSAL-MTLS-0123", KSP, 0, 0x20, 0))
    assert (other.identity_type, other.key) == ("UserAssigned", "software-ksp")


def test_msal_net_tag_without_a_tenant_in_ep_takes_the_subject_dc() -> None:
    fields = parse_tag("MSAL|alias=x|ep=https://mtls.login/")
    assert fields is not None
    meta = _metadata(fields, "reference", _cert(), Identity(), KeyProvInfo("k", KSP, 0, 0, 0))
    assert (meta.tenant_id, meta.mtls_endpoint) == (TENANT, "https://mtls.login")


@pytest.mark.parametrize(("ep", "cn", "reason"), [
    ("http://mtls.login/t", CLIENT, "not an https URL"),
    ("mtls.login/t", CLIENT, "not an https URL"),
    ("https://mtls.login/t", "system_assigned_managed_identity", "not a client id GUID"),
])
def test_msal_net_tag_that_cannot_be_completed_is_corrupt(ep: str, cn: str, reason: str) -> None:
    fields = parse_tag(f"MSAL|alias={REFERENCE_SYSTEM_ALIAS}|ep={ep}")
    assert fields is not None
    with pytest.raises(CorruptEntry, match=reason):
        _metadata(fields, "reference", _cert(cn=cn), Identity(), KeyProvInfo("k", KSP, 0, 0, 0))


def test_legacy_tag_metadata_is_read_as_written() -> None:
    fields = parse_tag(f"MSAL|alias=system|ep=https://e|cid={CLIENT}|tid={TENANT}"
                       "|type=SystemAssigned|key=keyguard")
    assert fields is not None and tag_names(fields, Identity(), attested=False) == "legacy"
    meta = _metadata(fields, "legacy", _cert(), Identity(), KeyProvInfo("k", KSP, 0, 0, 0))
    assert (meta.client_id, meta.tenant_id, meta.mtls_endpoint, meta.key) == (
        CLIENT, TENANT, "https://e", "keyguard")
