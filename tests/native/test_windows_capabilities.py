"""The binding strength of the Windows certificate store: the kind of key it can make (Wine
tier and real Windows). Wine accepts the KeyGuard flags and ignores them, so there the key is
a software-KSP key; a real KeyGuard (VBS) host makes a KeyGuard key."""

from __future__ import annotations

import pytest
from native_testutil import is_wine, needs_windows

pytestmark = needs_windows


def test_the_certificate_store_strength_is_the_kind_of_key_it_makes() -> None:
    from msicert._capabilities import key_strength
    from msicert.backends.windows._cert_store import WindowsStore

    strength, why = key_strength(WindowsStore("current-user"))
    assert strength in ("software", "keyguard")
    assert ("KeyGuard key" in why) == (strength == "keyguard")
    if is_wine():
        assert strength == "software" and "software-ksp" in why


def test_a_keyguard_floor_on_a_software_ksp_host_fails_before_any_imds_call() -> None:
    from msicert import ManagedIdentityClient, MinStrengthNotMet
    from msicert._capabilities import key_strength
    from msicert.backends.windows._cert_store import WindowsStore

    if key_strength(WindowsStore("current-user"))[0] == "keyguard":
        pytest.skip("this host makes KeyGuard keys: the keyguard floor is met")
    with pytest.raises(MinStrengthNotMet, match="'software'"):  # nothing listens on port 9
        ManagedIdentityClient(store_location="current-user", min_strength="keyguard",
                              imds_endpoint="http://127.0.0.1:9")
