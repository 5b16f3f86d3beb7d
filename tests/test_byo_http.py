"""Bring your own HTTP client: client.ssl_context() with urllib3, requests and httpx, against
the emulator's mTLS resource (which checks the token's cnf against the presented certificate)."""

from __future__ import annotations

import json
import ssl

import httpx
import pytest
import requests
import urllib3
from requests.adapters import HTTPAdapter

from msicert import KeyNotExportableError, MsiCertError
from msicert.backends.posix._file_store import FileStore

RESOURCE = "https://vault.azure.net"


class SslContextAdapter(HTTPAdapter):
    """The README recipe: a requests adapter whose pools use the client's SSLContext."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self._ctx = ctx
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["ssl_context"] = self._ctx
        return super().init_poolmanager(*args, **kwargs)


def _auth(client) -> dict[str, str]:
    return {"Authorization": f"mtls_pop {client.acquire_token(RESOURCE).access_token}"}


def test_ssl_context_is_cached_until_the_certificate_rotates(make_client, emu):
    client = make_client()
    first = client.ssl_context()
    assert client.ssl_context() is first
    assert first.verify_mode is ssl.CERT_REQUIRED and first.check_hostname is True
    assert first.minimum_version >= ssl.TLSVersion.TLSv1_2
    old = client.get_certificate().x5t_s256
    client.purge()  # the next call mints a new certificate
    second = client.ssl_context()
    assert second is not first
    assert client.get_certificate().x5t_s256 != old
    assert emu.count("issuecredential") == 2


def test_urllib3_pool_manager_reaches_the_mtls_resource(make_client, emu):
    client = make_client()
    http = urllib3.PoolManager(ssl_context=client.ssl_context())
    resp = http.request("GET", f"{emu.ests_url}/resource", headers=_auth(client))
    assert resp.status == 200, resp.data
    assert json.loads(resp.data)["x5t#S256"] == client.get_certificate().x5t_s256
    assert emu.violations == []


def test_requests_adapter_reaches_the_mtls_resource(make_client, emu):
    client = make_client()
    with requests.Session() as session:
        session.mount("https://", SslContextAdapter(client.ssl_context()))
        resp = session.get(f"{emu.ests_url}/resource", headers=_auth(client), timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.json()["x5t#S256"] == client.get_certificate().x5t_s256
    assert emu.violations == []


def test_httpx_client_reaches_the_mtls_resource(make_client, emu):
    client = make_client()
    with httpx.Client(verify=client.ssl_context()) as http:
        resp = http.get(f"{emu.ests_url}/resource", headers=_auth(client))
    assert resp.status_code == 200, resp.text
    assert resp.json()["x5t#S256"] == client.get_certificate().x5t_s256
    assert emu.violations == []


def test_ssl_context_verifies_the_server_like_create_default_context(make_client, emu,
                                                                     monkeypatch):
    client = make_client()
    client.get_certificate()
    monkeypatch.delenv("MSICERT_CA_BUNDLE")  # the emulator's CA is no longer trusted
    client.close()  # drop the cached context so the next one is built without it
    http = urllib3.PoolManager(ssl_context=client.ssl_context(), retries=False)
    with pytest.raises(urllib3.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        http.request("GET", f"{emu.ests_url}/resource")


def test_a_token_from_another_certificate_is_refused_by_the_resource(make_client, emu,
                                                                     tmp_path):
    client = make_client()
    other = make_client(store_dir=str(tmp_path / "other"))
    http = urllib3.PoolManager(ssl_context=client.ssl_context())
    resp = http.request("GET", f"{emu.ests_url}/resource", headers=_auth(other))
    assert resp.status == 401
    assert "cnf.x5t#S256 mismatch" in json.loads(resp.data)["error_description"]


def _no_cert_context(x5t: str):  # pragma: no cover - ssl_context() never opens one
    raise AssertionError("ssl_context() must not reach the certificate store")


class _StoreWithWinHttpTransport(FileStore):
    """A real file store whose transport is the real WinHTTP one, as the Windows store's is
    (its context() needs no Windows: it refuses before any native call)."""

    def transport(self):
        from msicert.backends.windows._winhttp_transport import WinHttpCache

        return WinHttpCache(_no_cert_context, "CurrentUser\\My")


def test_ssl_context_refuses_a_key_behind_the_winhttp_transport(make_client, store_dir):
    client = make_client(store=_StoreWithWinHttpTransport(store_dir))
    with pytest.raises(KeyNotExportableError) as info:
        client.ssl_context()
    assert isinstance(info.value, MsiCertError)
    message = str(info.value)
    assert "non-exportable" in message and "client.request(" in message
    assert info.value.x5t_s256 == client.get_certificate().x5t_s256
