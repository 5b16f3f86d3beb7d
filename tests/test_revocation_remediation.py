"""ESTS refusing the certificate with a revocation signal (``invalid_client`` with AADSTS
1000610-1000614, or with no ``error_codes``): a fresh certificate (``bypass_cache=true``)
and another try, round after round with growing, jittered pauses, within the caller's
``remediation_timeout``. Any other refusal surfaces at once, with no mint."""

from __future__ import annotations

import time

import pytest

from msicert import ImdsError, TokenError
from msicert.emulator import Fault
from msicert.emulator._token import decode_token_payload
from msicert.wire._ests import EstsRejected

RESOURCE = "https://vault.azure.net"


class Sleeps(list):
    """Records the pauses the client asks for, and returns at once."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def _queries(emu):
    return [r.query.get("bypass_cache") for r in emu.requests if r.endpoint == "issuecredential"]


@pytest.mark.parametrize("codes", [(1000610,), (1000611,), (1000612,), (1000613,), (1000614,),
                                   ()])
def test_a_revocation_signal_remints_with_bypass_cache_until_ests_accepts(make_client, emu,
                                                                           codes):
    sleeps = Sleeps()
    c = make_client(sleep=sleeps)
    first = c.get_certificate()
    emu.inject("token", Fault(kind="invalid_client", error_codes=codes, times=3))
    token = c.acquire_token(RESOURCE)
    cert = c.get_certificate()
    assert cert.x5t_s256 != first.x5t_s256 and token.x5t_s256 == cert.x5t_s256
    assert decode_token_payload(token.access_token)["cnf"]["x5t#S256"] == cert.x5t_s256
    assert emu.count("token") == 4 and emu.count("issuecredential") == 4
    assert _queries(emu) == [None, "true", "true", "true"]
    assert len(sleeps) == 2  # none before the first round; one before each later one
    assert make_client().get_certificate().x5t_s256 == cert.x5t_s256  # the store holds it
    assert emu.violations == []


def test_the_pauses_between_rounds_grow_with_jitter_and_a_cap(make_client, emu):
    sleeps = Sleeps()
    c = make_client(sleep=sleeps, remediation_timeout=3600.0)
    c.get_certificate()
    emu.inject("token", Fault(kind="invalid_client", times=9))
    c.acquire_token(RESOURCE)
    assert len(sleeps) == 8
    bounds = [min(30.0, 2.0 ** n) for n in range(8)]  # 1, 2, 4, ... capped at 30 s
    for pause, upper in zip(sleeps, bounds, strict=True):
        assert upper / 2 <= pause <= upper, sleeps


def test_at_the_deadline_the_error_names_invalid_client_the_code_and_the_rounds(make_client,
                                                                                 emu):
    c = make_client(remediation_timeout=1.0, sleep=time.sleep)
    c.get_certificate()
    emu.inject("token", Fault(kind="invalid_client", times=None))
    started = time.monotonic()
    with pytest.raises(TokenError) as err:
        c.acquire_token(RESOURCE)
    elapsed = time.monotonic() - started
    text = str(err.value)
    assert "invalid_client (AADSTS1000613)" in text
    rounds = emu.count("token") - 1
    assert f"{rounds} remediation round(s)" in text and rounds >= 1
    assert "remediation_timeout (1 s)" in text
    assert err.value.error == "invalid_client" and err.value.status == 401
    assert elapsed < 1.0 + 1.0  # bounded by the deadline (+ one token request's slack)
    assert emu.count("issuecredential") == 1 + rounds


@pytest.mark.parametrize(("fault", "error"), [
    (Fault(kind="invalid_client", error_codes=(7000215,)), "invalid_client"),
    (Fault(kind="invalid_client", error_codes=(0, 1000613)), "invalid_client"),
    (Fault(status=400, body=b'{"error":"invalid_scope","error_description":"AADSTS70011"}'),
     "invalid_scope"),
    (Fault(status=400, body=b'{"error":"invalid_request"}'), "invalid_request"),
])
def test_any_other_refusal_surfaces_at_once_with_no_mint(make_client, emu, fault, error):
    c = make_client()
    c.get_certificate()
    emu.inject("token", fault)
    with pytest.raises(EstsRejected) as err:
        c.acquire_token(RESOURCE)
    assert err.value.error == error and not err.value.remediable
    assert emu.count("token") == 1 and emu.count("issuecredential") == 1


def test_a_5xx_after_its_retry_surfaces_with_no_mint(make_client, emu):
    sleeps = Sleeps()
    c = make_client(sleep=sleeps)
    c.get_certificate()
    emu.inject("token", Fault(status=503, times=2))
    with pytest.raises(EstsRejected) as err:
        c.acquire_token(RESOURCE)
    assert err.value.status == 503
    assert emu.count("token") == 2 and emu.count("issuecredential") == 1
    assert sleeps == [1.0]


def test_a_5xx_with_retry_after_is_not_retried(make_client, emu):
    """MSAL.NET's HttpRetryConditions.Sts: ESTS asked to back off."""
    sleeps = Sleeps()
    c = make_client(sleep=sleeps)
    c.get_certificate()
    emu.inject("token", Fault(status=503, retry_after=5))
    with pytest.raises(EstsRejected) as err:
        c.acquire_token(RESOURCE)
    assert err.value.status == 503 and err.value.retry_after
    assert emu.count("token") == 1 and sleeps == []


def test_a_tls_alert_about_our_certificate_evicts_mints_fresh_and_retries_once(make_client,
                                                                               emu):
    c = make_client()
    old = c.get_certificate()
    emu.inject("token", Fault(kind="reject_certificate", times=1))
    token = c.acquire_token(RESOURCE)
    assert token.x5t_s256 != old.x5t_s256
    assert _queries(emu) == [None, "true"]
    assert make_client().get_certificate().x5t_s256 == token.x5t_s256


def test_a_mint_failing_inside_remediation_surfaces_at_once(make_client, emu):
    c = make_client()
    first = c.get_certificate()
    emu.inject("token", Fault(kind="invalid_client", times=None))
    emu.inject("issuecredential", Fault(status=403))
    with pytest.raises(ImdsError, match="issuecredential failed") as err:
        c.acquire_token(RESOURCE)
    assert err.value.status == 403
    assert emu.count("token") == 1 and emu.count("issuecredential") == 2
    assert make_client().get_certificate().x5t_s256 == first.x5t_s256  # nothing lost


def test_other_resources_tokens_of_the_refused_certificate_are_dropped(make_client, emu):
    c = make_client()
    other = c.acquire_token("https://storage.azure.com")
    emu.inject("token", Fault(kind="invalid_client", times=1))
    token = c.acquire_token(RESOURCE)
    assert token.x5t_s256 != other.x5t_s256
    again = c.acquire_token("https://storage.azure.com")
    assert again.source == "identity_provider" and again.x5t_s256 == token.x5t_s256


def test_a_refresh_that_meets_a_revocation_serves_the_cached_token(make_client, emu):
    now = [time.time()]
    c = make_client(clock=lambda: now[0], sleep=time.sleep, remediation_timeout=1.0)
    emu.lifetime = 86400.0
    cached = c.acquire_token(RESOURCE)
    now[0] = cached.refresh_on + 1  # past refresh_on, still servable
    emu.inject("token", Fault(kind="invalid_client", times=None))
    started = time.monotonic()
    served = c.acquire_token(RESOURCE)
    assert served.access_token == cached.access_token
    assert time.monotonic() - started < 1.0 + 1.0
    assert emu.count("token") >= 2 and emu.count("issuecredential") >= 2
