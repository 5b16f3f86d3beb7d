"""The IMDS retry schedule is MSAL.NET's ImdsRetryPolicy, answer for answer.

Reference: MSAL.NET ``Http/Retry/ImdsRetryPolicy.cs`` (budget fixed by the first answer: 7
retries after a 410, else 3; a 410 waits 10 s, anything else 1, 2, 4, 4... s by retry number,
from ``ExponentialRetryStrategy``), ``Http/Retry/HttpRetryConditions.cs`` (``Imds``: 404, 408,
410, 429, 5xx, and a timeout). Every sequence runs against the real emulator's fault queues;
the waits are recorded through the client's injected ``sleep``, never slept.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import time

import pytest

from msicert import Identity, ImdsError, MsiV2UnavailableError
from msicert.emulator import Fault
from msicert.wire._imds import ImdsClient
from msicert.wire._retry import RetryPolicy, _retry_after


def _client(emu, waits: list[float], **policy: float) -> ImdsClient:
    return ImdsClient(emu.imds_url, retry=RetryPolicy(**policy), sleep=waits.append,
                      read_timeout=0.5)


# (name, step, faults in queue order, attempts, waits, outcome: None = success, else status)
TABLE = [
    ("410 then 500s", "issuecredential", [Fault(status=410), Fault(status=500, times=None)],
     8, [10.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0], 500),
    ("500 then 410s", "issuecredential", [Fault(status=500), Fault(status=410, times=None)],
     4, [1.0, 10.0, 10.0], 410),
    ("404 x4", "issuecredential", [Fault(status=404, times=4)], 4, [1.0, 2.0, 4.0], 404),
    ("404 x3 then 200", "getplatformmetadata", [Fault(status=404, times=3)], 4, [1.0, 2.0, 4.0],
     None),
    ("429 with Retry-After 30", "getplatformmetadata", [Fault(status=429, retry_after=30)], 2,
     [30.0], None),
    ("429 with a shorter Retry-After", "getplatformmetadata",
     [Fault(status=429, retry_after=0.2, times=2)], 3, [1.0, 2.0], None),
    ("410 x8", "issuecredential", [Fault(status=410, times=None)], 8, [10.0] * 7, 410),
    ("503 then 410s then 200", "getplatformmetadata",
     [Fault(status=503), Fault(status=410, times=2)], 4, [1.0, 10.0, 10.0], None),
    ("400 never retried", "issuecredential", [Fault(status=400, times=None)], 1, [], 400),
    ("418 never retried", "issuecredential", [Fault(status=418, times=None)], 1, [], 418),
]


@pytest.mark.parametrize(("name", "step", "faults", "attempts", "expected_waits", "outcome"),
                         TABLE, ids=[row[0] for row in TABLE])
def test_schedule_follows_imds_retry_policy(emu, name, step, faults, attempts, expected_waits,
                                            outcome):
    waits: list[float] = []
    imds = _client(emu, waits)
    for fault in faults:
        emu.inject(step, fault)
    if outcome is None:
        assert imds.get_platform_metadata(Identity()).client_id == emu.client_id_for({})
    else:
        with pytest.raises(ImdsError) as info:
            imds.issue_credential(Identity(), "AAAA")
        assert info.value.status == outcome
    assert emu.count(step) == attempts
    assert waits == expected_waits


def test_404_x4_on_getplatformmetadata_is_msi_v2_unavailable_after_three_retries(emu):
    waits: list[float] = []
    emu.inject("getplatformmetadata", Fault(status=404, times=4))
    with pytest.raises(MsiV2UnavailableError):
        _client(emu, waits).get_platform_metadata(Identity())
    assert emu.count("getplatformmetadata") == 4
    assert waits == [1.0, 2.0, 4.0]


def test_retry_after_never_makes_a_call_wait_longer_than_the_reference_worst_case(emu):
    # The reference's worst case is 7 retries x 10 s = 70 s of waiting. A huge Retry-After
    # stretches the first wait, but leaves room for a 10 s wait before every later retry.
    waits: list[float] = []
    emu.inject("issuecredential", Fault(status=429, retry_after=500, times=None))
    with pytest.raises(ImdsError):
        _client(emu, waits).issue_credential(Identity(), "AAAA")
    assert waits == [50.0, 10.0, 10.0]
    assert sum(waits) == RetryPolicy().max_total_wait == 70.0
    assert emu.count("issuecredential") == 4


def test_retry_after_cannot_stretch_the_410_budget_past_the_worst_case(emu):
    waits: list[float] = []
    emu.inject("issuecredential", Fault(status=410, retry_after=60, times=None))
    with pytest.raises(ImdsError):
        _client(emu, waits).issue_credential(Identity(), "AAAA")
    assert waits == [10.0] * 7


def test_scale_applies_to_every_wait_including_a_stretched_one(emu):
    waits: list[float] = []
    emu.inject("getplatformmetadata", Fault(status=429, retry_after=30))
    emu.inject("getplatformmetadata", Fault(status=503, times=2))
    _client(emu, waits, scale=0.001).get_platform_metadata(Identity())
    assert waits == pytest.approx([0.030, 0.002, 0.004])


def test_a_timeout_is_retried_a_refused_connection_is_not(emu):
    waits: list[float] = []
    emu.inject("getplatformmetadata", Fault(delay=1.0, times=1))
    _client(emu, waits).get_platform_metadata(Identity())
    assert waits == [1.0] and emu.count("getplatformmetadata") == 2

    refused: list[float] = []
    imds = ImdsClient("http://127.0.0.1:9", retry=RetryPolicy(), sleep=refused.append)
    with pytest.raises(ImdsError, match="NewConnectionError"):
        imds.get_platform_metadata(Identity())
    assert refused == []  # HttpRetryConditions.Imds retries only a timeout


def test_every_retry_is_logged_at_info_with_what_and_how_long(emu, caplog):
    waits: list[float] = []
    emu.inject("getplatformmetadata", Fault(status=503, times=2))
    emu.inject("getplatformmetadata", Fault(status=429, retry_after=9))
    with caplog.at_level(logging.INFO, logger="msicert"):
        _client(emu, waits).get_platform_metadata(Identity())
    lines = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert [r.levelno for r in caplog.records if "retry" in r.getMessage()] == [logging.INFO] * 3
    assert lines[0].startswith("IMDS getplatformmetadata answered 503; retry 1/3 in 1.0 s")
    assert lines[1].startswith("IMDS getplatformmetadata answered 503; retry 2/3 in 2.0 s")
    assert lines[2].startswith("IMDS getplatformmetadata answered 429; retry 3/3 in 9.0 s "
                               "(Retry-After 9 s)")
    assert all("correlation_id=" in line for line in lines)


def test_retry_after_accepts_delta_seconds_and_http_dates():
    assert _retry_after("12") == 12.0
    assert _retry_after(" 1.5 ") == 1.5
    when = email.utils.format_datetime(
        dt.datetime.fromtimestamp(time.time() + 40, dt.timezone.utc), usegmt=True)
    assert 38.0 < _retry_after(when) <= 40.0
    for junk in (None, "", "soon", "nan", "inf", "-5"):
        assert _retry_after(junk) == 0.0


@pytest.mark.parametrize("raw", ["-1", "nan", "inf", "-inf", "fast"])
def test_a_bad_retry_scale_in_the_environment_is_ignored_with_a_warning(monkeypatch, caplog,
                                                                        raw):
    monkeypatch.setenv("MSICERT_IMDS_RETRY_SCALE", raw)
    with caplog.at_level(logging.WARNING, logger="msicert"):
        assert RetryPolicy.from_env().scale == 1.0
    assert "MSICERT_IMDS_RETRY_SCALE" in caplog.text


def test_a_bad_retry_scale_in_code_is_refused():
    with pytest.raises(ValueError, match="finite number >= 0"):
        RetryPolicy(scale=float("nan"))
