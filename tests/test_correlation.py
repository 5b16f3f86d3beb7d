"""One correlation id per operation: both IMDS legs of a mint, and the ESTS request of the
token call that needed the mint, carry the same id, and the log names it with ESTS's request
id, so one support case can be traced end to end."""

from __future__ import annotations

import logging
import re
import uuid

from msicert.emulator import Fault

RESOURCE = "https://vault.azure.net"


def _ids(emu, endpoint: str, header: str) -> list[str]:
    return [r.headers[header] for r in emu.requests if r.endpoint == endpoint]


def test_both_imds_legs_of_a_mint_send_one_id(make_client, emu):
    make_client().get_certificate()
    legs = _ids(emu, "getplatformmetadata", "x-ms-client-request-id") + \
        _ids(emu, "issuecredential", "x-ms-client-request-id")
    assert len(legs) == 2 and legs[0] == legs[1]
    uuid.UUID(legs[0])


def test_a_token_call_that_mints_sends_one_id_to_imds_and_ests(make_client, emu, caplog):
    with caplog.at_level(logging.DEBUG, logger="msicert"):
        make_client().acquire_token(RESOURCE)
    imds = set(_ids(emu, "getplatformmetadata", "x-ms-client-request-id")
               + _ids(emu, "issuecredential", "x-ms-client-request-id"))
    ests = _ids(emu, "token", "client-request-id")
    assert len(imds) == 1 and ests == list(imds)
    (cid,) = imds
    lines = [r.getMessage() for r in caplog.records]
    assert any("minted certificate" in line and f"correlation_id={cid}" in line
               for line in lines)
    assert any(line.startswith("acquired mtls_pop token") and f"correlation_id={cid}" in line
               for line in lines)
    answered = [line for line in lines if line.startswith("ESTS answered 200")]
    assert answered and f"correlation_id={cid}" in answered[0]
    assert re.search(r"x-ms-request-id=[0-9a-f-]{36}", answered[0])


def test_retries_and_remediation_rounds_keep_the_operations_id(make_client, emu):
    c = make_client()
    c.get_certificate()
    emu.reset()
    emu.inject("issuecredential", Fault(status=503, times=1))  # one IMDS retry inside
    emu.inject("token", Fault(kind="invalid_client", times=2))
    c.acquire_token(RESOURCE)
    ids = {r.headers.get("x-ms-client-request-id") or r.headers.get("client-request-id")
           for r in emu.requests if r.endpoint in ("getplatformmetadata", "issuecredential",
                                                   "token")}
    assert len(ids) == 1 and emu.count("token") == 3 and emu.count("issuecredential") == 3


def test_two_operations_have_two_ids(make_client, emu):
    c = make_client()
    c.acquire_token(RESOURCE)
    c.acquire_token("https://storage.azure.com")
    ests = _ids(emu, "token", "client-request-id")
    assert len(ests) == 2 and ests[0] != ests[1]


def test_a_failed_token_call_reports_the_operations_id(make_client, emu):
    import pytest

    from msicert import TokenError

    c = make_client()
    c.get_certificate()
    emu.inject("token", Fault(status=400, body=b'{"error":"invalid_scope"}'))
    with pytest.raises(TokenError) as err:
        c.acquire_token(RESOURCE)
    assert err.value.correlation_id == _ids(emu, "token", "client-request-id")[0]
