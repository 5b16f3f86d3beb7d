"""msicert itself on Windows: the store contract on CurrentUser\\My, cold then warm `msicert
cert` against the emulator, WinHTTP mTLS to the emulator's ESTS.

The Wine tier (tools/wine/run.sh) starts the emulator on the Linux side and passes its IMDS
address in MSICERT_WINE_IMDS; the same tests run on windows-latest when that is set.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from native_testutil import (
    REPO_ROOT,
    is_windows,
    is_wine,
    needs_windows,
    skip_on_wine,
)

sys.path.insert(0, str(REPO_ROOT))  # for tests.store_contract / tests.certgen

from tests.store_contract import UAMI, StoreContract

pytestmark = needs_windows

IMDS = os.environ.get("MSICERT_WINE_IMDS", "")
needs_emulator = pytest.mark.skipif(
    is_windows() and not IMDS,
    reason="no emulator (tools/wine/run.sh starts one and sets MSICERT_WINE_IMDS)",
)
IDENTITIES_USED = ("system", UAMI)


def _identities() -> list[Any]:
    from msicert import Identity

    return [Identity(), UAMI, Identity.from_selectors(object_id=UAMI.value)]


class TestWindowsStoreContract(StoreContract):
    """The same contract the file store meets, on CurrentUser\\My through msicert_native:
    the store itself, no wrapper (its own generate_key makes the CNG key each entry carries)."""

    @pytest.fixture
    def store(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
        from msicert.backends.windows._cert_store import WindowsStore

        monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "LocalAppData"))  # token caches
        ws = WindowsStore("current-user")
        for identity in _identities():
            ws.purge(identity)
        yield ws
        for identity in _identities():
            ws.purge(identity)


def _stats() -> dict[str, int]:
    with urllib.request.urlopen(f"{IMDS}/__emulator__/stats", timeout=10) as resp:
        counts: dict[str, int] = json.loads(resp.read())["counts"]
        return counts


def _msicert(*args: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update({"AZURE_POD_IDENTITY_AUTHORITY_HOST": IMDS, "MSICERT_IMDS_RETRY_SCALE": "0.01",
                "PYTHONPATH": str(REPO_ROOT)})
    env.update(extra or {})
    return subprocess.run([sys.executable, "-m", "msicert", *args], capture_output=True,
                          text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)


@needs_emulator
def test_cold_then_warm_cert_from_current_user_my_with_zero_imds_calls() -> None:
    assert _msicert("purge").returncode == 0
    before = _stats()
    cold = _msicert("cert", "--json")
    assert cold.returncode == 0, cold.stderr
    first = json.loads(cold.stdout)
    assert first["source"] == "imds" and first["store"] == "CurrentUser\\My"
    assert first["key"] in ("keyguard", "software-ksp")
    after_cold = _stats()
    assert after_cold["issuecredential"] == before["issuecredential"] + 1
    warm = _msicert("cert", "--json")
    assert warm.returncode == 0, warm.stderr
    second = json.loads(warm.stdout)
    assert second["source"] == "store" and second["x5t_s256"] == first["x5t_s256"]
    assert second["mtls_endpoint"] == first["mtls_endpoint"]
    after_warm = _stats()
    assert after_warm["getplatformmetadata"] == after_cold["getplatformmetadata"]
    assert after_warm["issuecredential"] == after_cold["issuecredential"]

    import msicert_native as native

    with native.open_system_store("current-user", "My") as store:
        mine = [r for r in native.enum_certificates(store)
                if (native.get_friendly_name(r) or "").startswith(
                    "MSAL|alias=system_assigned_managed_identity#")]
        try:
            assert len(mine) == 1
            # MSAL.NET's grammar (MsiCertificateFriendlyNameEncoder), msicert's pairs after ep.
            assert native.get_friendly_name(mine[0]) == (
                "MSAL|alias=system_assigned_managed_identity#att=0"
                f"|ep={first['mtls_endpoint']}/{first['tenant_id']}|cid={first['client_id']}"
                f"|type=SystemAssigned|key={first['key']}|sel=system")
            # Linked as MSAL Go's usesBindingKeyContainer expects: the shared key's container in
            # the software KSP, CERT_NCRYPT_KEY_SPEC (KeyGuardRSAKey, or HardwareRSAKey without
            # VBS, as MSAL.NET's WindowsCngKeyOperations names them).
            info = native.get_key_prov_info(mine[0])
            expected = "KeyGuardRSAKey" if first["key"] == "keyguard" else "HardwareRSAKey"
            assert info == native.KeyProvInfo(expected, native.MS_KEY_STORAGE_PROVIDER, 0, 0,
                                              native.constants.CERT_NCRYPT_KEY_SPEC)
        finally:
            for r in mine:
                r.close()
    assert _msicert("purge").stdout.startswith("removed 1 entry")


@needs_emulator
@skip_on_wine("SChannel cannot present a CNG key in the client handshake "
              "(SEC_E_UNKNOWN_CREDENTIALS); real Windows can")
def test_token_over_winhttp_with_the_store_certificate() -> None:
    out = _msicert("token", "--resource", "https://vault.azure.net", "--json",
                   extra={"MSICERT_EMULATOR_INSECURE_TLS": "1"})
    assert out.returncode == 0, out.stderr
    token = json.loads(out.stdout)
    assert token["token_type"] == "mtls_pop"
    payload = token["access_token"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["cnf"]["x5t#S256"] == token["x5t_s256"]
    _msicert("purge")


@needs_emulator
def test_winhttp_mtls_to_the_emulator_ests_with_a_pfx_imported_capi_key() -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    from cryptography.hazmat.primitives.serialization import pkcs12
    from test_windows_winhttp import _import_pfx

    import msicert_native as native
    from msicert.wire._csr import build_csr, csr_to_wire

    def imds(path: str, body: bytes | None = None) -> dict[str, Any]:
        req = urllib.request.Request(
            f"{IMDS}/metadata/identity/{path}?cred-api-version=2.0", data=body,
            headers={"Metadata": "true", "x-ms-client-request-id": str(uuid.uuid4()),
                     **({"Content-Type": "application/json"} if body else {})})
        with urllib.request.urlopen(req, timeout=30) as resp:
            doc: dict[str, Any] = json.loads(resp.read())
            return doc

    meta = imds("getplatformmetadata")

    def mint_and_call() -> tuple[Any, bytes]:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        csr = build_csr(
            spki_der=key.public_key().public_bytes(serialization.Encoding.DER,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo),
            sign=lambda tbs: key.sign(tbs, padding.PSS(padding.MGF1(hashes.SHA256()), 32),
                                      hashes.SHA256()),
            client_id=meta["clientId"], tenant_id=meta["tenantId"], cuid=meta["cuId"])
        issued = imds("issuecredential", json.dumps({"csr": csr_to_wire(csr)}).encode())
        der = base64.b64decode(issued["certificate"])
        cert = x509.load_der_x509_certificate(der)
        encryption = (serialization.PrivateFormat.PKCS12.encryption_builder()
                      .kdf_rounds(2048)
                      .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
                      .hmac_hash(hashes.SHA1()).build(b"msicert"))
        pfx = pkcs12.serialize_key_and_certificates(b"emu", key, cert, None, encryption)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "emu.pfx"
            path.write_bytes(pfx)
            with _import_pfx(path, "msicert") as ref:
                form = urllib.parse.urlencode({
                    "grant_type": "client_credentials", "client_id": issued["client_id"],
                    "scope": "https://vault.azure.net/.default", "token_type": "mtls_pop"}).encode()
                resp = native.https_request(
                    "POST",
                    f"{issued['mtls_authentication_endpoint']}/{issued['tenant_id']}"
                    "/oauth2/v2.0/token",
                    headers={"Content-Type": "application/x-www-form-urlencoded"}, body=form,
                    client_cert=ref, timeout_ms=30_000, verify_server=False)
        return resp, der

    # Under Wine only: SChannel (GnuTLS) sporadically fails to sign with a given imported CAPI
    # key ("GnuTLS error: Public key signing has failed", winerror 12157), again on every
    # retry with that key; a fresh key goes through. Real Windows gets one try.
    tries = 3 if is_wine() else 1
    for attempt in range(tries):
        try:
            resp, der = mint_and_call()
            break
        except native.NativeError as exc:
            if exc.winerror != 12157 or attempt == tries - 1:
                raise
    assert resp.status == 200, resp.body[:300]
    doc = json.loads(resp.body)
    assert doc["token_type"] == "mtls_pop"
    payload = doc["access_token"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    expected = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    assert claims["cnf"]["x5t#S256"] == expected


# --- KeyGuard boundary: real VBS hardware cannot run here (nor under Wine) -----------------

FAKE_DLL = os.environ.get("MSICERT_WINE_FAKE_ATTESTATION_DLL", "")


@pytest.fixture
def win_client(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A client on CurrentUser\\My against the emulator, system identity purged before/after."""
    if not IMDS:
        pytest.skip("no emulator (tools/wine/run.sh starts one and sets MSICERT_WINE_IMDS)")
    from msicert import ManagedIdentityClient
    from msicert.wire._retry import RetryPolicy

    monkeypatch.delenv("MSICERT_ATTESTATION_DLL", raising=False)
    client = ManagedIdentityClient(imds_endpoint=IMDS, retry=RetryPolicy(scale=0.01))
    client.purge()
    yield client
    client.purge()


@pytest.fixture
def fake_keyguard(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend keys are VBS-isolated (the one fact only KeyGuard hardware can give)."""
    import msicert_native

    monkeypatch.setattr(msicert_native, "is_virtual_iso", lambda key: True)


@pytest.fixture
def sent_attestation(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """Records the attestation_token handed to the real issuecredential call."""
    from msicert.wire._imds import ImdsClient

    seen: list[str | None] = []
    real = ImdsClient.issue_credential

    def spy(self: Any, identity: Any, csr: str, token: str | None = None, **kw: Any) -> Any:
        seen.append(token)
        return real(self, identity, csr, token, **kw)

    monkeypatch.setattr(ImdsClient, "issue_credential", spy)
    return seen


def _system_tags() -> list[str]:
    """The alias of every system-identity entry in CurrentUser\\My."""
    import msicert_native as native
    from msicert.backends.windows._cert_store import parse_tag

    with native.open_system_store("current-user", "My") as store:
        refs = native.enum_certificates(store)
        try:
            tags = [parse_tag(native.get_friendly_name(r)) for r in refs]
        finally:
            for r in refs:
                r.close()
    return [t["alias"] for t in tags
            if t is not None and t["alias"].startswith("system_assigned_managed_identity")]


@pytest.mark.skipif(not FAKE_DLL, reason="no stand-in AttestationClientLib.dll (run.sh builds it)")
def test_fake_keyguard_key_is_attested_with_the_dll_and_token_sent(
        win_client: Any, fake_keyguard: None, sent_attestation: list[str | None],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSICERT_ATTESTATION_DLL", FAKE_DLL)
    cert = win_client.get_certificate()
    assert cert.key == "keyguard" and cert.source == "imds"
    (token,) = sent_attestation
    assert token is not None and token.startswith(f"fake-jwt.{cert.client_id}.")
    assert _system_tags() == ["system_assigned_managed_identity#att=1"]  # MSAL.NET's attested alias


@pytest.mark.skipif(not FAKE_DLL, reason="no stand-in AttestationClientLib.dll (run.sh builds it)")
def test_fake_keyguard_key_with_failing_dll_raises_attestation_error_with_status(
        win_client: Any, fake_keyguard: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from msicert import AttestationError
    from msicert.wire._imds import ImdsClient

    monkeypatch.setenv("MSICERT_ATTESTATION_DLL", FAKE_DLL)
    real = ImdsClient.get_platform_metadata
    monkeypatch.setattr(  # the stand-in DLL fails for this endpoint with status -5
        ImdsClient, "get_platform_metadata",
        lambda self, identity, **kw: dataclasses.replace(
            real(self, identity, **kw), attestation_endpoint="https://fail.invalid"))
    with pytest.raises(AttestationError, match="status=-5"):
        win_client.get_certificate()
    assert win_client.status() is None  # nothing stored


def test_fake_keyguard_key_without_dll_uses_the_non_attested_flow_and_says_so(
        win_client: Any, fake_keyguard: None, sent_attestation: list[str | None],
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    monkeypatch.setenv("MSICERT_ATTESTATION_DLL", "C:\\nowhere\\AttestationClientLib.dll")
    with caplog.at_level(logging.INFO, logger="msicert"):
        cert = win_client.get_certificate()
    assert cert.key == "keyguard" and sent_attestation == [None]
    assert _system_tags() == ["system_assigned_managed_identity#att=0"]
    assert any("non-attested flow" in r.getMessage() and "nowhere" in r.getMessage()
               for r in caplog.records)


def test_software_ksp_fallback_is_reported_when_vbs_is_absent(win_client: Any) -> None:
    import msicert_native

    cert = win_client.get_certificate()
    if msicert_native.is_virtual_iso.__module__ and cert.key == "keyguard":
        pytest.skip("this machine has VBS KeyGuard: the fallback is not taken")
    assert cert.key == "software-ksp"


def test_demo_runs_on_windows_python_with_the_file_store() -> None:
    """`msicert demo` (emulator in-process, file store, msvcrt lock, Python ssl) on Windows."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT)
    out = subprocess.run([sys.executable, "-m", "msicert", "demo"], capture_output=True,
                         text=True, env=env, timeout=300, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "all checks held" in out.stdout
    assert "0 IMDS calls" in out.stdout
