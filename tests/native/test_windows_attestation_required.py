"""An attestation-only IMDS host seen from Windows: the real key kind in the error, one call.

The emulator that tools/wine/run.sh starts (MSICERT_WINE_IMDS) is switched into
``require_attestation`` through its control API for each test and back afterwards. IMDS does
not yet issue binding certificates for software keys (MSAL cross-SDK mTLS PoP standard); such
a host answers 400 "Attestation Token is missing / empty in the issue credential request".
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from native_testutil import needs_windows
from neighbours import control, issue_count

pytestmark = needs_windows

IMDS = os.environ.get("MSICERT_WINE_IMDS", "")
FAKE_DLL = os.environ.get("MSICERT_WINE_FAKE_ATTESTATION_DLL", "")


@pytest.fixture
def attesting_client(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A Windows-store client against the emulator switched to require attestation."""
    if not IMDS:
        pytest.skip("no emulator (tools/wine/run.sh starts one and sets MSICERT_WINE_IMDS)")
    from msicert import ManagedIdentityClient
    from msicert.wire._retry import RetryPolicy

    monkeypatch.delenv("MSICERT_ATTESTATION_DLL", raising=False)
    assert control("POST", "config", {"require_attestation": True})["require_attestation"]
    client = ManagedIdentityClient(imds_endpoint=IMDS, retry=RetryPolicy(scale=0.01))
    client.purge()
    try:
        yield client
    finally:
        client.purge()
        control("POST", "config", {"require_attestation": False})


def test_software_ksp_key_is_named_in_the_attestation_error(attesting_client: Any) -> None:
    from msicert import AttestationRequiredError

    before = issue_count()
    with pytest.raises(AttestationRequiredError) as info:
        attesting_client.get_certificate()
    err = info.value
    assert err.key_kind == "software-ksp" and err.attested is False and err.status == 400
    assert "this host's IMDS requires a KeyGuard key with attestation" in str(err)
    assert "a software-KSP key" in str(err)
    assert issue_count() == before + 1  # never retried
    assert attesting_client.status() is None


def test_keyguard_without_the_dll_is_named_fake_vbs_boundary(
        attesting_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Only KeyGuard hardware can say a key is VBS-isolated; that one fact is faked here.
    import msicert_native
    from msicert import AttestationRequiredError

    monkeypatch.setattr(msicert_native, "is_virtual_iso", lambda key: True)
    monkeypatch.setenv("MSICERT_ATTESTATION_DLL", "Z:\\nonexistent\\AttestationClientLib.dll")
    before = issue_count()
    with pytest.raises(AttestationRequiredError) as info:
        attesting_client.get_certificate()
    assert info.value.key_kind == "keyguard" and info.value.attested is False
    assert "a KeyGuard key without an attestation token" in str(info.value)
    assert issue_count() == before + 1


@pytest.mark.skipif(not FAKE_DLL, reason="no stand-in AttestationClientLib.dll (run.sh builds it)")
def test_attested_keyguard_key_is_issued_fake_vbs_boundary(
        attesting_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import msicert_native

    monkeypatch.setattr(msicert_native, "is_virtual_iso", lambda key: True)
    monkeypatch.setenv("MSICERT_ATTESTATION_DLL", FAKE_DLL)
    before = issue_count()
    cert = attesting_client.get_certificate()
    assert cert.key == "keyguard" and cert.source == "imds"
    assert issue_count() == before + 1
