"""A resource's claims challenge: a fresh certificate (``bypass_cache=true``) first, then a token
requested with the claims, which replaces the cached one for every later call and process."""

from __future__ import annotations

import json
import threading
from urllib.parse import parse_qs

import pytest

from msicert import ImdsError
from msicert.emulator import Fault
from msicert.emulator._ests import CHALLENGE_CLAIMS
from msicert.emulator._token import decode_token_payload
from tests.conftest import cli_json

RESOURCE = "https://vault.azure.net"
CLAIMS = '{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}'


def _issue_queries(emu):
    return [r.query for r in emu.requests if r.endpoint == "issuecredential"]


def _token_forms(emu):
    return [{k: v[0] for k, v in parse_qs(r.body.decode()).items()}
            for r in emu.requests if r.endpoint == "token"]


def test_claims_mint_a_fresh_certificate_then_ask_with_the_claims(make_client, emu):
    c = make_client()
    old = c.acquire_token(RESOURCE)
    old_cert = c.get_certificate()
    new = c.acquire_token(RESOURCE, claims=CLAIMS)
    cert = c.get_certificate()
    assert cert.x5t_s256 != old_cert.x5t_s256 and new.x5t_s256 == cert.x5t_s256
    assert decode_token_payload(new.access_token)["cnf"]["x5t#S256"] == cert.x5t_s256
    queries = _issue_queries(emu)
    assert [q.get("bypass_cache") for q in queries] == [None, "true"]
    forms = _token_forms(emu)
    assert "claims" not in forms[0] and forms[1]["claims"] == CLAIMS
    assert new.source == "identity_provider" and new.access_token != old.access_token
    assert emu.violations == []


def test_the_claims_token_replaces_the_cached_one_with_no_ests_call(make_client, emu):
    c = make_client()
    c.acquire_token(RESOURCE)
    new = c.acquire_token(RESOURCE, claims=CLAIMS)
    assert emu.count("token") == 2
    later = c.acquire_token(RESOURCE)
    assert later.source == "cache" and later.access_token == new.access_token
    assert emu.count("token") == 2  # served from the cache, not asked again


def test_the_fresh_certificate_is_in_the_store_for_other_processes(make_client, emu, store_dir):
    c = make_client()
    c.acquire_token(RESOURCE)
    c.acquire_token(RESOURCE, claims=CLAIMS)
    mints = emu.count("issuecredential")
    out = cli_json("cert", "--store-dir", store_dir)
    assert out["x5t_s256"] == c.get_certificate().x5t_s256 and out["source"] == "store"
    assert emu.count("issuecredential") == mints


def test_a_claims_call_with_no_token_yet_still_mints_fresh(make_client, emu):
    c = make_client()
    t = c.acquire_token(RESOURCE, claims=CLAIMS)
    assert [q.get("bypass_cache") for q in _issue_queries(emu)] == [None, "true"]
    assert _token_forms(emu)[0]["claims"] == CLAIMS
    assert c.acquire_token(RESOURCE).access_token == t.access_token


def test_concurrent_calls_with_the_same_challenge_share_one_fresh_certificate(make_client,
                                                                              emu):
    c = make_client()
    c.acquire_token(RESOURCE)
    start = threading.Barrier(8)
    results, errors = [], []

    def call() -> None:
        start.wait()
        try:
            results.append(c.acquire_token(RESOURCE, claims=CLAIMS))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert errors == [] and len(results) == 8
    assert emu.count("issuecredential") == 2  # the first mint, then one fresh one
    assert emu.count("token") == 2
    assert len({t.access_token for t in results}) == 1


def test_the_claims_failure_keeps_the_certificate_and_its_cached_token(make_client, emu):
    c = make_client()
    old = c.acquire_token(RESOURCE)
    cert = c.get_certificate()
    emu.inject("issuecredential", Fault(status=403))
    with pytest.raises(ImdsError, match="issuecredential failed") as err:
        c.acquire_token(RESOURCE, claims=CLAIMS)
    assert err.value.status == 403
    assert c.get_certificate().x5t_s256 == cert.x5t_s256
    assert make_client().get_certificate().x5t_s256 == cert.x5t_s256  # still in the store
    assert c.acquire_token(RESOURCE).access_token == old.access_token


def test_cli_token_claims_mints_fresh_and_sends_the_claims(emu, store_dir):
    first = cli_json("token", "--resource", RESOURCE, "--store-dir", store_dir)
    out = cli_json("token", "--resource", RESOURCE, "--store-dir", store_dir,
                   "--claims", CLAIMS)
    assert out["x5t_s256"] != first["x5t_s256"]
    assert _issue_queries(emu)[-1].get("bypass_cache") == "true"
    assert _token_forms(emu)[-1]["claims"] == CLAIMS


@pytest.mark.parametrize("claims", ["{not json", "[]", "null", "   ", "[" * 100_000])
def test_malformed_claims_are_refused_before_any_mint_or_ests_call(make_client, emu, claims):
    c = make_client()
    token = c.acquire_token(RESOURCE)
    cert = c.get_certificate()
    calls = emu.count("issuecredential"), emu.count("token")
    with pytest.raises(ValueError, match="claims must be a JSON object"):
        c.acquire_token(RESOURCE, claims=claims)
    assert (emu.count("issuecredential"), emu.count("token")) == calls
    assert c.get_certificate().x5t_s256 == cert.x5t_s256
    assert c.acquire_token(RESOURCE).access_token == token.access_token


def test_claims_that_are_not_a_str_are_a_type_error(make_client, emu):
    with pytest.raises(TypeError, match="claims must be a str of JSON, not bytes"):
        make_client().acquire_token(RESOURCE, claims=b"{}")  # type: ignore[arg-type]
    assert emu.count("issuecredential") == 0


@pytest.mark.parametrize("claims", ["not json", "[1]", '"text"', "[" * 100_000])
def test_cli_token_claims_must_be_a_json_object(emu, store_dir, claims):
    from tests.conftest import run_cli

    proc = run_cli("token", "--resource", RESOURCE, "--store-dir", store_dir,
                   "--claims", claims)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "msicert token: invalid input: --claims must be a JSON object")
    assert emu.count("issuecredential") == 0


def test_the_azure_policy_answers_a_resources_challenge_and_later_calls_reuse_the_token(
        make_client, emu):
    """The resource challenges every token minted before its CAE event; the policy's
    challenge path re-acquires with the claims (a fresh certificate), and the next request
    reuses that token (no ESTS call) and is accepted."""
    from azure.core import PipelineClient
    from azure.core.rest import HttpRequest

    from msicert.azure import MtlsPopCredential, MtlsPopPolicy, MtlsTransport

    c = make_client()
    pipeline = PipelineClient(
        emu.ests_url, policies=[MtlsPopPolicy(MtlsPopCredential(c), RESOURCE + "/.default")],
        transport=MtlsTransport(c))
    assert pipeline.send_request(HttpRequest("GET", emu.ests_url + "/resource")).status_code == 200
    emu.inject("resource", Fault(kind="claims_challenge"))
    response = pipeline.send_request(HttpRequest("GET", emu.ests_url + "/resource"))
    assert response.status_code == 200
    forms = _token_forms(emu)
    assert json.loads(forms[-1]["claims"]) == json.loads(CHALLENGE_CLAIMS)
    assert _issue_queries(emu)[-1].get("bypass_cache") == "true"
    tokens = emu.count("token")
    again = pipeline.send_request(HttpRequest("GET", emu.ests_url + "/resource"))
    assert again.status_code == 200 and emu.count("token") == tokens
    # a new pipeline on the same client: the cached claims token, accepted by the resource
    fresh = PipelineClient(
        emu.ests_url, policies=[MtlsPopPolicy(MtlsPopCredential(c), RESOURCE + "/.default")],
        transport=MtlsTransport(c))
    assert fresh.send_request(HttpRequest("GET", emu.ests_url + "/resource")).status_code == 200
    assert emu.count("token") == tokens


@pytest.mark.parametrize("claims", ["[1]", "not json", ""])
def test_the_azure_policy_leaves_a_challenge_whose_claims_are_no_json_object_unanswered(
        make_client, emu, claims):
    """The 401 goes back to the caller: no fresh certificate, no token request."""
    from azure.core import PipelineClient
    from azure.core.rest import HttpRequest

    from msicert.azure import MtlsPopCredential, MtlsPopPolicy, MtlsTransport

    c = make_client()
    pipeline = PipelineClient(
        emu.ests_url, policies=[MtlsPopPolicy(MtlsPopCredential(c), RESOURCE + "/.default")],
        transport=MtlsTransport(c))
    assert pipeline.send_request(HttpRequest("GET", emu.ests_url + "/resource")).status_code == 200
    calls = emu.count("issuecredential"), emu.count("token")
    emu.inject("resource", Fault(kind="claims_challenge", claims=claims))
    response = pipeline.send_request(HttpRequest("GET", emu.ests_url + "/resource"))
    assert response.status_code == 401
    assert (emu.count("issuecredential"), emu.count("token")) == calls
