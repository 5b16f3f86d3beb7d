"""AttestationClientLib.dll loading and marshalling (fake DLL from the Wine tier on Windows)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from native_testutil import is_windows, needs_windows

FAKE = os.environ.get("MSICERT_WINE_FAKE_ATTESTATION_DLL", "")
needs_fake = pytest.mark.skipif(
    is_windows() and not FAKE,
    reason="no stand-in AttestationClientLib.dll (tools/wine/run.sh builds one and sets "
    "MSICERT_WINE_FAKE_ATTESTATION_DLL); the real one is not redistributable",
)


def test_search_order_and_absence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import msicert_native as native

    missing = tmp_path / "nowhere" / "AttestationClientLib.dll"
    monkeypatch.setenv(native.ATTESTATION_DLL_ENV, str(missing))
    looked = native.attestation_search_paths()
    assert looked[0] == str(missing)
    assert all(p.endswith("AttestationClientLib.dll") for p in looked)
    path, looked_again = native.find_attestation_library()
    if path is not None:  # a real library installed next to python or in the package
        assert path in looked_again[1:]
    else:
        assert looked_again == looked

    present = tmp_path / "AttestationClientLib.dll"
    present.write_bytes(b"MZ")
    monkeypatch.setenv(native.ATTESTATION_DLL_ENV, str(present))
    assert native.find_attestation_library()[0] == str(present)


@pytest.mark.skipif(is_windows(), reason="checks the non-Windows stub")
def test_attest_needs_windows() -> None:
    import msicert_native as native

    with pytest.raises(native.WindowsRequiredError):
        native.attest_keyguard_key("x.dll", endpoint="https://e", client_id="c", key=1)


@pytest.fixture
def key() -> Iterator[Any]:
    import msicert_native as native

    with (
        native.open_provider() as provider,
        native.create_rsa_key(
            provider, f"msicert-test-att-{uuid.uuid4()}", keyguard=False
        ) as created,
    ):
        yield created


@needs_windows
@needs_fake
def test_fake_library_round_trip(key: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import msicert_native as native

    monkeypatch.setenv(native.ATTESTATION_DLL_ENV, FAKE)
    dll, _ = native.find_attestation_library()
    assert dll == FAKE
    client_id = str(uuid.uuid4())
    token = native.attest_keyguard_key(
        dll, endpoint="https://maa.example.invalid", client_id=client_id, key=key
    )
    assert token == f"fake-jwt.{client_id}.-.-"
    token = native.attest_keyguard_key(
        dll,
        endpoint="https://maa.example.invalid",
        client_id="c",
        key=key.handle,
        auth_token="auth",
        client_payload="{}",
    )
    assert token == "fake-jwt.c.auth.{}"


@needs_windows
@needs_fake
def test_fake_library_failure_status(key: Any) -> None:
    import msicert_native as native

    with pytest.raises(native.AttestationFailed) as info:
        native.attest_keyguard_key(FAKE, endpoint="https://fail.invalid", client_id="c", key=key)
    assert info.value.function == "AttestKeyGuardImportKey"
    assert info.value.status == 0xFFFFFFFB  # -5, as an unsigned 32-bit status
    with pytest.raises(native.AttestationFailed) as info:
        native.attest_keyguard_key(FAKE, endpoint="https://e", client_id="c", key=0)
    assert info.value.status == 0xFFFFFFFD  # -3: a NULL key handle never reaches the DLL check
