"""Policy table tests: pure functions of (certificate times, now), each boundary +-1 s."""

from __future__ import annotations

import hashlib

import pytest

from msicert import Identity
from msicert._policy import (
    State,
    identity_mismatch,
    pick_best,
    renew_after,
    renew_fraction,
    skew,
    state,
)
from tests.certgen import CLIENT, TENANT, make_cert

DAY = 86400.0
NB = 1_800_000_000.0
WEEK = 7 * DAY


def test_renew_fraction_stays_in_045_050_and_is_deterministic():
    fs = [renew_fraction(hashlib.sha256(bytes([i, j])).digest())
          for i in range(64) for j in range(16)]
    assert min(fs) >= 0.45 and max(fs) <= 0.50
    assert max(fs) - min(fs) > 0.04  # spread over the whole band, not lock-step
    tp = hashlib.sha256(b"x").digest()
    assert renew_fraction(tp) == renew_fraction(tp)


def test_renew_fraction_extremes():
    assert renew_fraction(b"\x00" * 32) == 0.45
    assert 0.4999 < renew_fraction(b"\xff" * 32) <= 0.50


@pytest.mark.parametrize("lifetime,expected", [(WEEK, 300.0), (DAY, 300.0), (3600.0, 36.0),
                                                (100.0, 1.0), (0.0, 0.0)])
def test_skew_is_min_of_five_minutes_and_one_percent(lifetime, expected):
    assert skew(NB, NB + lifetime) == pytest.approx(expected)


def test_seven_day_certificate_renews_between_3_15_and_3_5_days():
    for seed in range(50):
        ra = renew_after(NB, NB + WEEK, hashlib.sha256(bytes([seed])).digest())
        assert NB + 3.15 * DAY <= ra < NB + 3.5 * DAY


TP = b"\x80" + b"\x00" * 31  # f = 0.475 exactly
RA = NB + WEEK * 0.475
NA = NB + WEEK


@pytest.mark.parametrize(
    "now,expected",
    [
        (NB - 900 - 1, State.NOT_YET_VALID),
        (NB - 900, State.FRESH),  # a host clock up to 15 min behind the service's is admitted
        (NB - 300, State.FRESH),
        (NB, State.FRESH),
        (RA - 1, State.FRESH),
        (RA, State.RENEW),
        (RA + 1, State.RENEW),
        (NA - 300 - 1, State.RENEW),
        (NA - 300, State.EXPIRED),
        (NA - 300 + 1, State.EXPIRED),
        (NA, State.EXPIRED),
        (NA + DAY, State.EXPIRED),
    ],
)
def test_state_table_seven_day_certificate(now, expected):
    assert renew_after(NB, NA, TP) == RA
    assert state(NB, NA, RA, now) is expected


@pytest.mark.parametrize(
    "now,expected",
    [
        (NB - 900 - 1, State.NOT_YET_VALID),
        (NB - 900, State.FRESH),  # the 15 min clock lag does not shrink with the lifetime
        (NB - 10, State.FRESH),
        (NB + 474, State.FRESH),
        (NB + 475, State.RENEW),
        (NB + 990 - 1, State.RENEW),   # skew = 1 % of 1000 s = 10 s
        (NB + 990, State.EXPIRED),
        (NB + 991, State.EXPIRED),
    ],
)
def test_state_table_short_certificate_retires_at_one_percent_skew(now, expected):
    assert state(NB, NB + 1000, renew_after(NB, NB + 1000, TP), now) is expected


class _E:
    def __init__(self, na: float) -> None:
        self.not_after_ts = na


def test_pick_best_newest_not_after_wins():
    a, b, c = _E(10), _E(30), _E(20)
    assert pick_best([a, b, c]) is b
    assert pick_best([]) is None


@pytest.fixture(scope="module")
def good_times():
    return {"not_before": NB, "not_after": NA}


def test_identity_match_by_subject_and_issuer_cn(good_times):
    cert = make_cert(**good_times)
    assert identity_mismatch(cert, Identity()) is None
    assert identity_mismatch(cert, Identity.from_selectors(client_id=CLIENT)) is None
    assert identity_mismatch(cert, Identity.from_selectors(client_id=CLIENT.upper())) is None


def test_issuer_cn_compared_case_insensitively_and_configurable(good_times):
    cert = make_cert(issuer_cn="ManagedIdentitySNIssuer.login.microsoft.com", **good_times)
    assert identity_mismatch(cert, Identity()) is None
    other = make_cert(issuer_cn="other.example", **good_times)
    assert "issuer" in identity_mismatch(other, Identity())
    assert identity_mismatch(other, Identity(), issuer_cn="OTHER.example") is None


def test_wrong_client_id_or_subject_is_a_mismatch(good_times):
    cert = make_cert(**good_times)
    uami = Identity.from_selectors(client_id="99999999-2222-3333-4444-555555555555")
    assert "another client id" in identity_mismatch(cert, uami)
    assert "GUID" in identity_mismatch(make_cert(cn="not-a-guid", **good_times), Identity())
    other_tenant = "ffffffff-0000-0000-0000-000000000000"
    assert "tenant" in identity_mismatch(cert, Identity(), tenant_id=other_tenant)
    assert identity_mismatch(cert, Identity(), tenant_id=TENANT.upper()) is None
