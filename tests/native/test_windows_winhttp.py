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
from native_testutil import is_windows, needs_windows

pytestmark = needs_windows

# "mtls=P1 nocert=P2 anon=P3 untrusted=P4": one port per test (see tools/wine/mtls_server.py)
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


@needs_server
def test_mtls_with_store_certificate(user_store: Any, marker: str) -> None:
    native = _native()
    with _import_pfx(Path(TLS_DIR) / "client.pfx", "msicert") as pfx_ref:
        info = native.get_key_prov_info(pfx_ref)
        assert info is not None and info.container
        der = pfx_ref.der
    # Put it in CurrentUser\My the way msicert does (friendly name + key link) and use that.
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
        response = native.https_request(
            "GET",
            f"https://127.0.0.1:{PORTS['mtls']}/",
            headers={"x-ms-client-request-id": str(uuid.uuid4())},
            client_cert=ref,
            timeout_ms=20_000,
            verify_server=False,
        )
        native.delete_certificate(user_store, ref)
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
