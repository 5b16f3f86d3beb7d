"""IMDS retries (MSAL.NET ImdsRetryPolicy) and request headers against the emulator, with
recorded waits. The full schedule table is in test_imds_retry_policy.py."""

from __future__ import annotations

import uuid

import pytest

from msicert import Identity, ImdsError, MsiV2UnavailableError
from msicert.emulator import Fault
from msicert.wire._imds import ImdsClient
from msicert.wire._retry import RetryPolicy


@pytest.fixture
def waits():
    return []


@pytest.fixture
def imds(emu, waits):
    return ImdsClient(emu.imds_url, retry=RetryPolicy(), sleep=waits.append, read_timeout=0.5)


@pytest.mark.parametrize("status", [404, 408, 429, 500, 502, 503, 504])
def test_retried_statuses_wait_1_2_4_seconds_then_succeed(imds, emu, waits, status):
    emu.inject("getplatformmetadata", Fault(status=status, times=3))
    meta = imds.get_platform_metadata(Identity())
    assert meta.client_id == emu.client_id_for({})
    assert waits == [1.0, 2.0, 4.0]
    assert emu.count("getplatformmetadata") == 4


@pytest.mark.parametrize("status", [500, 429])
def test_after_three_retries_the_error_carries_status_body_and_correlation(imds, emu, waits,
                                                                          status):
    emu.inject("issuecredential", Fault(status=status, times=None))
    with pytest.raises(ImdsError) as info:
        imds.issue_credential(Identity(), "AAAA")
    err = info.value
    assert type(err) is ImdsError
    assert err.status == status and err.step == "issuecredential"
    assert waits == [1.0, 2.0, 4.0]
    assert emu.count("issuecredential") == 4
    sent_ids = {r.headers.get("x-ms-client-request-id") for r in emu.requests}
    assert sent_ids == {err.correlation_id}
    assert err.body_excerpt and f"status={status}" in str(err)


@pytest.mark.parametrize("status", [400, 401, 403, 409])
def test_client_errors_are_never_retried(imds, emu, waits, status):
    emu.inject("issuecredential", Fault(status=status, times=None))
    with pytest.raises(ImdsError) as info:
        imds.issue_credential(Identity(), "AAAA")
    assert info.value.status == status
    assert waits == []
    assert emu.count("issuecredential") == 1


def test_410_first_is_retried_seven_times_ten_seconds_apart(imds, emu, waits):
    emu.inject("getplatformmetadata", Fault(status=410, times=None))
    with pytest.raises(ImdsError) as info:
        imds.get_platform_metadata(Identity())
    assert info.value.status == 410
    assert waits == [10.0] * 7
    assert emu.count("getplatformmetadata") == 8


def test_longer_retry_after_is_honoured_shorter_is_not(imds, emu, waits):
    emu.inject("getplatformmetadata", Fault(status=429, retry_after=7, times=1))
    emu.inject("getplatformmetadata", Fault(status=429, retry_after=0.5, times=1))
    imds.get_platform_metadata(Identity())
    assert waits == [7.0, 2.0]


def test_timeouts_are_retried(imds, emu, waits):
    emu.inject("getplatformmetadata", Fault(delay=1.5, times=2))
    imds.get_platform_metadata(Identity())
    assert waits == [1.0, 2.0]


def test_404_on_getplatformmetadata_means_msi_v2_unavailable(imds, emu, waits):
    emu.inject("getplatformmetadata", Fault(status=404, times=None))
    with pytest.raises(MsiV2UnavailableError, match="MSI v2 not available"):
        imds.get_platform_metadata(Identity())
    assert waits == [1.0, 2.0, 4.0]


def test_scale_shrinks_every_wait(emu, waits):
    fast = ImdsClient(emu.imds_url, retry=RetryPolicy(scale=0.001), sleep=waits.append)
    emu.inject("getplatformmetadata", Fault(status=503, times=3))
    fast.get_platform_metadata(Identity())
    assert waits == pytest.approx([0.001, 0.002, 0.004])


def test_getplatformmetadata_sends_exactly_the_reference_headers(imds, emu):
    imds.get_platform_metadata(Identity())
    (req,) = emu.requests
    sent = {k.lower(): v for k, v in req.headers.items()}
    assert set(sent) == {"host", "accept-encoding", "user-agent", "accept", "metadata",
                         "x-ms-client-request-id"}
    assert sent["accept"] == "application/json"
    assert sent["metadata"] == "true"
    assert str(uuid.UUID(sent["x-ms-client-request-id"])) == sent["x-ms-client-request-id"]
    assert req.query == {"cred-api-version": "2.0"}
    assert emu.violations == []


def test_issuecredential_sends_exactly_the_reference_headers(imds, emu):
    uami = Identity.from_selectors(client_id="0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9")
    with pytest.raises(ImdsError):  # "AAAA" is no CSR: the emulator refuses it after recording
        imds.issue_credential(uami, "AAAA")
    (req,) = emu.requests
    sent = {k.lower(): v for k, v in req.headers.items()}
    assert set(sent) == {"host", "accept-encoding", "user-agent", "accept", "metadata",
                         "x-ms-client-request-id", "content-type", "content-length"}
    assert sent["accept"] == "application/json"
    assert sent["content-type"] == "application/json; charset=utf-8"
    assert sent["metadata"] == "true"
    assert uuid.UUID(sent["x-ms-client-request-id"])
    assert req.query == {"cred-api-version": "2.0",
                         "client_id": "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"}
    assert req.body == b'{"csr":"AAAA"}'


def test_one_correlation_id_for_every_attempt_of_a_call_and_a_new_one_per_call(imds, emu):
    emu.inject("getplatformmetadata", Fault(status=503, times=1))
    imds.get_platform_metadata(Identity())
    imds.get_platform_metadata(Identity())
    ids = [r.headers["x-ms-client-request-id"] for r in emu.requests]
    assert len(ids) == 3 and ids[0] == ids[1] != ids[2]
