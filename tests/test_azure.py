"""msicert.azure: a real azure-core PipelineClient with MtlsPopPolicy and MtlsTransport calling
the emulator's mTLS resource, which checks that the token's cnf matches the presented cert."""

from __future__ import annotations

import json
import subprocess
import sys
from urllib.parse import parse_qs

import pytest
from azure.core import PipelineClient
from azure.core.credentials import AccessToken, AccessTokenInfo, SupportsTokenInfo, TokenCredential
from azure.core.exceptions import ClientAuthenticationError
from azure.core.pipeline.transport import HttpTransport
from azure.core.rest import HttpRequest

from msicert.azure import MtlsPopCredential, MtlsPopPolicy, MtlsTransport, resource_for_scopes
from msicert.emulator import Fault, decode_token_payload
from msicert.emulator._ests import CHALLENGE_CLAIMS
from tests.conftest import ROOT, cli_env

SCOPE = "https://vault.azure.net/.default"


def _pipeline(client, base_url: str) -> PipelineClient:
    return PipelineClient(base_url, policies=[MtlsPopPolicy(MtlsPopCredential(client), SCOPE)],
                          transport=MtlsTransport(client))


def _token_forms(emu) -> list[dict[str, list[str]]]:
    return [parse_qs(r.body.decode()) for r in emu.requests if r.endpoint == "token"]


def test_credential_implements_both_azure_core_protocols(make_client, emu):
    credential = MtlsPopCredential(make_client())
    assert isinstance(credential, TokenCredential) and isinstance(credential, SupportsTokenInfo)
    info = credential.get_token_info(SCOPE)
    assert isinstance(info, AccessTokenInfo)
    assert info.token_type == "mtls_pop"
    assert info.expires_on - 3600 <= info.refresh_on < info.expires_on
    assert "token=" not in repr(info) and info.token not in repr(info)
    cert = credential.client.get_certificate()
    assert decode_token_payload(info.token)["cnf"]["x5t#S256"] == cert.x5t_s256
    plain = credential.get_token("https://vault.azure.net")  # bare resource works too
    assert isinstance(plain, AccessToken) and plain.token == info.token  # served from cache
    assert _token_forms(emu)[0]["scope"] == [SCOPE]
    assert emu.count("token") == 1


def test_scopes_are_handled_as_azure_identity_handles_them():
    assert resource_for_scopes(("https://vault.azure.net/.default",)) == "https://vault.azure.net"
    assert resource_for_scopes(("https://vault.azure.net",)) == "https://vault.azure.net"
    with pytest.raises(ValueError, match="exactly one scope"):
        resource_for_scopes(("a/.default", "b/.default"))
    with pytest.raises(ValueError, match="exactly one scope"):
        resource_for_scopes(())


def test_credential_builds_its_own_client_from_keyword_arguments(emu, store_dir):
    with MtlsPopCredential(store_dir=store_dir, imds_endpoint=emu.imds_url) as credential:
        assert credential.get_token_info(SCOPE).token_type == "mtls_pop"
        assert credential.client.store.description == store_dir
    with pytest.raises(TypeError):
        MtlsPopCredential(credential.client, store_dir=store_dir)


def test_credential_refuses_another_tenant_and_wraps_msicert_errors(make_client, emu):
    credential = MtlsPopCredential(make_client())
    with pytest.raises(ClientAuthenticationError, match=f"tenant {emu.tenant_id}.*tenant other"):
        credential.get_token(SCOPE, tenant_id="other")
    emu.inject("token", Fault(kind="invalid_client", times=None))
    with pytest.raises(ClientAuthenticationError, match="invalid_client"):
        credential.get_token(SCOPE)


def test_pipeline_client_calls_the_mtls_resource_with_a_bound_token(make_client, emu):
    client = make_client()
    pipeline = _pipeline(client, emu.ests_url)
    assert isinstance(pipeline._pipeline._transport, HttpTransport)
    resp = pipeline.send_request(HttpRequest("GET", f"{emu.ests_url}/resource/secrets/x"))
    assert resp.status_code == 200, resp.text()
    assert resp.json()["x5t#S256"] == client.get_certificate().x5t_s256
    auth = next(r for r in emu.requests if r.endpoint == "resource").headers["Authorization"]
    assert auth.startswith("mtls_pop ")
    again = pipeline.send_request(HttpRequest("GET", f"{emu.ests_url}/resource"))
    assert again.status_code == 200
    assert emu.count("token") == 1  # the policy kept its token until refresh_on
    assert emu.violations == []


class _NoJitter:
    """azure-core adds 0-60 s of random jitter to refresh_on; pin it to 0 for an exact count."""

    @staticmethod
    def randint(low: int, high: int) -> int:
        return 0


def test_policy_re_acquires_once_its_token_reaches_refresh_on(make_client, emu, monkeypatch):
    import azure.core.pipeline.policies._authentication as auth

    monkeypatch.setattr(auth, "random", _NoJitter)
    emu.token_lifetime = 300  # refresh_on = expires_on - 300 s margin = now
    pipeline = _pipeline(make_client(), emu.ests_url)
    for _ in range(2):
        assert pipeline.send_request(HttpRequest("GET", f"{emu.ests_url}/resource")
                                     ).status_code == 200
    assert emu.count("token") == 2


def test_claims_challenge_is_answered_once_with_the_claims(make_client, emu):
    pipeline = _pipeline(make_client(), emu.ests_url)
    emu.inject("resource", Fault(kind="claims_challenge"))
    resp = pipeline.send_request(HttpRequest("GET", f"{emu.ests_url}/resource"))
    assert resp.status_code == 200, resp.text()
    assert emu.count("resource") == 2 and emu.count("token") == 2
    forms = _token_forms(emu)
    assert "claims" not in forms[0] and forms[1]["claims"] == [CHALLENGE_CLAIMS]


def test_a_second_claims_challenge_is_returned_not_retried(make_client, emu):
    pipeline = _pipeline(make_client(), emu.ests_url)
    emu.inject("resource", Fault(kind="claims_challenge", times=2))
    resp = pipeline.send_request(HttpRequest("GET", f"{emu.ests_url}/resource"))
    assert resp.status_code == 401
    assert emu.count("resource") == 2 and emu.count("token") == 2


def test_transport_and_policy_re_bind_after_a_rotation(make_client, emu):
    client = make_client()
    pipeline = _pipeline(client, emu.ests_url)
    first = pipeline.send_request(HttpRequest("GET", f"{emu.ests_url}/resource")).json()
    client.purge()  # the next use mints a new certificate (a rotation)
    second = pipeline.send_request(HttpRequest("GET", f"{emu.ests_url}/resource"))
    assert second.status_code == 200, second.text()
    assert second.json()["x5t#S256"] == client.get_certificate().x5t_s256 != first["x5t#S256"]
    assert emu.count("issuecredential") == 2 and emu.count("token") == 2
    assert emu.violations == []


def test_legacy_pipeline_requests_work_too(make_client, emu):
    pipeline = _pipeline(make_client(), emu.ests_url)
    request = pipeline.get(f"{emu.ests_url}/resource")
    resp = pipeline._pipeline.run(request).http_response
    assert resp.status_code == 200 and json.loads(resp.text())["ok"] is True


def test_import_msicert_imports_no_http_or_azure_library():
    code = ("import sys, msicert; print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'azure', 'requests', 'httpx', 'urllib3', 'ssl', 'msicert_native'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=cli_env(), cwd=str(ROOT), check=True).stdout
    assert out.strip() == "[]"
    probe = subprocess.run([sys.executable, "-c", "import msicert; msicert.probe"],
                           capture_output=True, text=True, env=cli_env(), cwd=str(ROOT))
    assert probe.returncode == 0, probe.stderr
