"""WinHTTP mTLS against a real TLS server (Wine tier: run.sh starts tools/wine/mtls_server.py).

The client certificate's key is imported from a PFX (a CAPI container): SChannel under Wine
cannot use a CNG key for the handshake (SEC_E_UNKNOWN_CREDENTIALS), real Windows can.
"""

from __future__ import annotations

import ctypes
import json
import os
import uuid
from ctypes import POINTER, Structure, byref, c_uint32, c_void_p, c_wchar_p
from pathlib import Path
from typing import Any

import pytest
from native_testutil import is_windows, is_wine, needs_windows

pytestmark = needs_windows

# "mtls=P1 nocert=P2 anon=P3 untrusted=P4 big=P5 bigtoken=P6": one port per test
# (see tools/wine/mtls_server.py)
PORTS = dict(item.split("=", 1) for item in os.environ.get("MSICERT_WINE_TLS_PORTS", "").split())
TLS_DIR = os.environ.get("MSICERT_WINE_TLS_DIR", "")
needs_server = pytest.mark.skipif(
    is_windows() and not (PORTS and TLS_DIR),
    reason="no mTLS test server (tools/wine/run.sh starts one and sets "
    "MSICERT_WINE_TLS_PORTS / MSICERT_WINE_TLS_DIR)",
)
# WinHTTP errors for a refused handshake: CLIENT_AUTH_CERT_NEEDED, SECURE_CHANNEL_ERROR,
# SECURE_FAILURE (which one depends on the TLS stack: SChannel, or Wine's gnutls).
HANDSHAKE_REFUSED = {12044, 12157, 12175}
CRYPT_USER_KEYSET = 0x00001000


def _native() -> Any:
    import msicert_native

    return msicert_native


class _Blob(Structure):
    _fields_ = (("cbData", c_uint32), ("pbData", c_void_p))


def _import_pfx(path: Path, password: str) -> Any:
    """PFXImportCertStore (test-only helper) -> CertRef owning the PFX's first certificate."""
    native = _native()
    crypt32 = ctypes.WinDLL("crypt32", use_last_error=True)  # type: ignore[attr-defined]
    crypt32.PFXImportCertStore.restype = c_void_p
    crypt32.PFXImportCertStore.argtypes = (POINTER(_Blob), c_wchar_p, c_uint32)
    crypt32.CertEnumCertificatesInStore.restype = c_void_p
    crypt32.CertEnumCertificatesInStore.argtypes = (c_void_p, c_void_p)
    crypt32.CertCloseStore.argtypes = (c_void_p, c_uint32)
    data = path.read_bytes()
    buffer = ctypes.create_string_buffer(data, len(data))
    store = crypt32.PFXImportCertStore(
        byref(_Blob(len(data), ctypes.addressof(buffer))), password, CRYPT_USER_KEYSET
    )
    assert store, f"PFXImportCertStore failed: {ctypes.get_last_error()}"  # type: ignore[attr-defined]
    try:
        ctx = crypt32.CertEnumCertificatesInStore(store, None)
        assert ctx
        return native.CertRef(ctx)  # owns the context: enumeration stops here
    finally:
        crypt32.CertCloseStore(store, 0)


def _client_pfxs() -> list[Path]:
    """client.pfx; under Wine also the spare keys made beside it (make_tls_fixtures.py)."""
    first = Path(TLS_DIR) / "client.pfx"
    return [first, *sorted(Path(TLS_DIR).glob("client-spare-*.pfx"))] if is_wine() else [first]


def _mtls_get_through_store(user_store: Any, marker: str, pfx: Path) -> Any:
    """Import ``pfx``, add it to CurrentUser\\My the way msicert does (friendly name + key
    link) and make one mTLS GET with that store certificate."""
    native = _native()
    with _import_pfx(pfx, "msicert") as pfx_ref:
        info = native.get_key_prov_info(pfx_ref)
        assert info is not None and info.container
        der = pfx_ref.der
    with native.add_certificate(
        user_store,
        der,
        friendly_name=f"msicert mtls {marker}",
        key_name=info.container,
        provider_name=info.provider,
        prov_type=info.prov_type,
        key_flags=info.flags,
        key_spec=info.key_spec,
    ) as ref:
        try:
            return native.https_request(
                "GET",
                f"https://127.0.0.1:{PORTS['mtls']}/",
                headers={"x-ms-client-request-id": str(uuid.uuid4())},
                client_cert=ref,
                timeout_ms=20_000,
                verify_server=False,
            )
        finally:
            native.delete_certificate(user_store, ref)


@needs_server
def test_mtls_with_store_certificate(user_store: Any, marker: str) -> None:
    # Under Wine only: SChannel (GnuTLS) fails to sign with about one imported CAPI key in ten
    # ("GnuTLS error: Public key signing has failed", winerror 12157), on every try with that
    # key; the next spare key goes through. Real Windows gets client.pfx and one try.
    native = _native()
    pfxs = _client_pfxs()
    for pfx in pfxs:
        try:
            response = _mtls_get_through_store(user_store, marker, pfx)
            break
        except native.NativeError as exc:
            if not (is_wine() and exc.winerror == 12157) or pfx == pfxs[-1]:
                raise
    assert response.status == 200
    body = json.loads(response.body)
    assert body["client_cn"] == "msicert-test-client"  # the server saw our certificate
    assert body["path"] == "/"
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-msicert-test"] == "a, b"


@needs_server
def test_server_demanding_a_certificate_fails_without_one() -> None:
    native = _native()
    with pytest.raises(native.NativeError) as info:
        native.https_request(
            "GET", f"https://127.0.0.1:{PORTS['nocert']}/", timeout_ms=20_000, verify_server=False
        )
    assert info.value.winerror in HANDSHAKE_REFUSED


@needs_server
def test_no_client_certificate_is_sent_unless_given() -> None:
    native = _native()
    response = native.https_request(
        "POST",
        f"https://127.0.0.1:{PORTS['anon']}/token?x=1",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        body=b"grant_type=client_credentials",
        timeout_ms=20_000,
        verify_server=False,
    )
    body = json.loads(response.body)
    assert (response.status, body["client_cn"]) == (200, "")
    assert (body["method"], body["path"], body["body_length"]) == ("POST", "/token?x=1", 29)


@needs_server
def test_untrusted_server_is_refused_by_default() -> None:
    native = _native()
    with pytest.raises(native.NativeError) as info:
        native.https_request("GET", f"https://127.0.0.1:{PORTS['untrusted']}/", timeout_ms=20_000)
    assert info.value.winerror in HANDSHAKE_REFUSED | {12045, 12169}


def test_https_only() -> None:
    with pytest.raises(ValueError):
        _native().https_request("GET", "http://127.0.0.1/")


def test_refused_connection_is_a_native_error() -> None:
    native = _native()
    with pytest.raises(native.NativeError) as info:
        native.https_request("GET", "https://127.0.0.1:9/", timeout_ms=5_000)
    assert info.value.function in {"WinHttpSendRequest", "WinHttpReceiveResponse"}


# --- body caps: the POSIX limits while reading ------------------------------------------


@pytest.fixture
def read_spy(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Records (bytes asked, bytes got) of every real WinHttpReadData call."""
    from msicert_native import _backend

    calls: list[tuple[int, int]] = []
    real = _backend.impl.winhttp_read_data

    def spy(request: int, size: int) -> bytes:
        data: bytes = real(request, size)
        calls.append((size, len(data)))
        return data

    monkeypatch.setattr(_backend.impl, "winhttp_read_data", spy)
    return calls


@needs_server
def test_capped_request_stops_reading_an_endless_body_one_byte_past_the_cap(
        read_spy: list[tuple[int, int]]) -> None:
    native = _native()
    cap = 100_000
    with pytest.raises(native.NativeError, match=f"exceeds {cap} bytes") as info:
        native.https_request("GET", f"https://127.0.0.1:{PORTS['big']}/big", max_body=cap,
                             timeout_ms=20_000, verify_server=False)
    assert info.value.function == "WinHttpReadData"
    # The server offers 1 GiB; WinHTTP was never asked for more than cap + 1 bytes in all.
    assert sum(asked for asked, _ in read_spy) == cap + 1
    assert sum(got for _, got in read_spy) == cap + 1


@needs_server
def test_token_leg_over_winhttp_reads_at_most_the_posix_cap_of_an_endless_body(
        read_spy: list[tuple[int, int]]) -> None:
    import urllib3

    from msicert import TokenError
    from msicert.backends.windows._winhttp_transport import WinHttpPool
    from msicert.wire import _ests

    with _import_pfx(Path(TLS_DIR) / "client.pfx", "msicert") as ref:
        pool = WinHttpPool(ref.duplicate(), verify_server=False)
        try:
            with pytest.raises(TokenError, match="not a JSON object"):
                _ests.request_token(
                    pool, mtls_endpoint=f"https://127.0.0.1:{PORTS['bigtoken']}/big",
                    tenant_id="t", client_id=str(uuid.uuid4()), resource="https://vault",
                    claims=None, timeout=urllib3.Timeout(connect=20, read=20))
        finally:
            pool.clear()
    # Exactly what urllib3 reads on POSIX (msicert.wire._ests: _MAX_BODY + 1), not the 1 GiB.
    assert sum(got for _, got in read_spy) == _ests._MAX_BODY + 1
    assert sum(asked for asked, _ in read_spy) == _ests._MAX_BODY + 1


@needs_server
def test_preloaded_response_reads_the_whole_body_and_closes_its_handles() -> None:
    from msicert.backends.windows._winhttp_transport import WinHttpPool

    with _import_pfx(Path(TLS_DIR) / "client.pfx", "msicert") as ref:
        pool = WinHttpPool(ref.duplicate(), verify_server=False)
        try:
            resp = pool.request("GET", f"https://127.0.0.1:{PORTS['bigtoken']}/preload",
                                timeout=20)
        finally:
            pool.clear()
    assert resp.status == 200 and json.loads(resp.data)["path"] == "/preload"
    assert resp._stream is None  # released: no WinHTTP handle left open
