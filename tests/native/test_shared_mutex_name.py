"""The store-write mutex name msicert shares with MSAL.NET and MSAL Go (pure: every platform).

Recipe (AzureAD/microsoft-authentication-library-for-dotnet @ 39d200113,
src/client/Microsoft.Identity.Client/ManagedIdentity/V2/InterprocessLock.cs
``GetMutexNameForAlias``/``Canonicalize``/``HashAlias`` and
PlatformsCommon/Shared/CommonCryptographyManager.cs ``CreateSha256HashHex``)::

    ("Global\\" | "Local\\") + "MSAL_MI_P_" + first 32 of lowercase-hex(SHA-256(UTF-8(
        (alias ?? "").Trim().ToUpperInvariant())))        # "0" when the hash is null (empty)

MSAL Go's IMDSv2 ``aliasLockSuffix`` computes the same (strings.ToUpper(strings.TrimSpace)).
The expected suffixes below were computed once with ``hashlib`` over the canonical strings
written out by hand in ``CANONICAL`` (not by msicert's code), and are checked again here.
"""

from __future__ import annotations

import hashlib

import pytest

from msicert.backends.windows._mutex import shared_mutex_name

ARM = ("/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/RG/providers/"
       "Microsoft.ManagedIdentity/userAssignedIdentities/UAMI-2")

# alias as a library passes it -> (canonical text by the recipe, its suffix)
CANONICAL = [
    ("system_assigned_managed_identity#att=0",
     "SYSTEM_ASSIGNED_MANAGED_IDENTITY#ATT=0", "a924deea403135e335f427bfd477aae8"),
    ("system_assigned_managed_identity#att=1",
     "SYSTEM_ASSIGNED_MANAGED_IDENTITY#ATT=1", "5bc545fe3a0881304f0474bba856bb06"),
    # InterprocessLockTests.GetMutexName_Format_And_Canonicalization: both give one suffix.
    ("  my-alias  ", "MY-ALIAS", "f68317b9e06159009c81037da7661f0a"),
    ("MY-ALIAS", "MY-ALIAS", "f68317b9e06159009c81037da7661f0a"),
    # A GUID configured in either case: one mutex (the tags differ, the lock does not).
    ("c0ffee00-1111-4222-8333-444455556666#att=0",
     "C0FFEE00-1111-4222-8333-444455556666#ATT=0", "89ea773def22ed0d1466c337aebc5e6e"),
    ("C0FFEE00-1111-4222-8333-444455556666#att=0",
     "C0FFEE00-1111-4222-8333-444455556666#ATT=0", "89ea773def22ed0d1466c337aebc5e6e"),
    (f"{ARM}#att=0", f"{ARM.upper()}#ATT=0", "d2c2346cb9748fdb44d92cbab5084d51"),
    # Tab/newline/NBSP are .NET white space; ToUpperInvariant maps one code point to one.
    ("\t\u00a0straße#att=0\n", "STRAßE#ATT=0", "0dcd92bcc90ab447100060bde8001ac3"),
    ("\u1f80#att=0", "\u1f88#ATT=0", "aec0e53e15b9e578202bce93013e80b4"),
    # InterprocessLockTests.TryWithAliasLock_VeryLongAlias_DoesNotThrow: 10 000 characters.
    ("a" * 10_000, "A" * 10_000, "85757d9ef5868bb53472a6be8d81d1e3"),
]


@pytest.mark.parametrize(("alias", "canonical", "suffix"), CANONICAL)
def test_store_mutex_name_is_the_references_for_each_alias(
        alias: str, canonical: str, suffix: str) -> None:
    assert hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32] == suffix
    assert shared_mutex_name(alias) == f"Global\\MSAL_MI_P_{suffix}"
    assert shared_mutex_name(alias, prefer_global=False) == f"Local\\MSAL_MI_P_{suffix}"


@pytest.mark.parametrize("alias", [None, "", "   ", "\r\n\u3000"])
def test_empty_alias_hashes_to_zero_as_the_reference_does(alias: str | None) -> None:
    """CreateSha256HashHex returns null for an empty string; HashAlias then uses "0"
    (InterprocessLockTests.TryWithAliasLock_NullAndEmptyAlias_DoNotThrow)."""
    assert shared_mutex_name(alias) == "Global\\MSAL_MI_P_0"


def test_attested_and_unattested_aliases_take_different_mutexes() -> None:
    base = "system_assigned_managed_identity"
    assert shared_mutex_name(f"{base}#att=0") != shared_mutex_name(f"{base}#att=1")


def test_characters_python_strips_but_dotnet_keeps_change_the_name() -> None:
    """U+001F is not .NET white space (Char.IsWhiteSpace), though Python's str.strip drops
    it: the reference hashes it, so msicert must too."""
    kept = "\x1fX"
    assert shared_mutex_name(kept) == (
        "Global\\MSAL_MI_P_" + hashlib.sha256(kept.encode()).hexdigest()[:32])
