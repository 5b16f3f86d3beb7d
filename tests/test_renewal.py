"""Issue 2 point 5: proactive renewal at renew_after, expiry, failure handling."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from msicert import ImdsError
from msicert._store_file import FileStore
from msicert.emulator import Fault


class Clock:
    """Real time plus an offset the test moves (the emulator keeps real time)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def clock():
    return Clock()


def test_past_renew_after_a_new_certificate_replaces_the_old_one(make_client, emu, clock,
                                                                 store_dir):
    emu.lifetime = 1000.0
    c = make_client(clock=clock)
    old = c.get_certificate()
    emu.lifetime = 100000.0
    clock.offset = old.renew_after_ts - time.time() - 1
    assert c.get_certificate().x5t_s256 == old.x5t_s256  # 1 s before: still fresh
    assert emu.count("issuecredential") == 1
    clock.offset = old.renew_after_ts - time.time() + 1
    new = c.get_certificate()
    assert new.source == "imds" and new.x5t_s256 != old.x5t_s256
    assert emu.count("issuecredential") == 2
    store = FileStore(store_dir)
    stored = store.find(c.identity, issuer_cn=c.issuer_cn)
    assert stored.x5t_s256 == new.x5t_s256
    assert old.cert_pem not in Path(store.path_for(c.identity)).read_bytes()  # old one gone
    assert c.get_certificate().source == "memory"


def test_renewal_failure_keeps_serving_the_valid_certificate_with_a_warning(
        make_client, emu, clock, caplog):
    emu.lifetime = 1000.0
    c = make_client(clock=clock, renewal_backoff=60.0)
    old = c.get_certificate()
    clock.offset = old.renew_after_ts - time.time() + 1
    emu.reset()
    emu.inject("getplatformmetadata", Fault(status=503, times=None))
    with caplog.at_level(logging.WARNING, logger="msicert"):
        served = c.get_certificate()
    assert served.x5t_s256 == old.x5t_s256
    assert emu.count("getplatformmetadata") == 4  # 1 try + 3 retries
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "renewal of certificate" in warnings[0].getMessage()
    # back-off: the next calls do not hammer IMDS while the certificate is valid
    for _ in range(5):
        assert c.get_certificate().x5t_s256 == old.x5t_s256
    assert emu.count("getplatformmetadata") == 4
    emu.clear_faults()
    clock.offset += 61.0
    assert c.get_certificate().x5t_s256 != old.x5t_s256


def test_expired_certificate_is_never_served(make_client, emu, clock, store_dir):
    emu.lifetime = 1000.0
    c = make_client(clock=clock)
    old = c.get_certificate()
    clock.offset = old.not_after_ts - time.time() - 10  # exactly NotAfter - skew (1 % = 10 s)
    emu.lifetime = 100000.0
    emu.inject("getplatformmetadata", Fault(status=500, times=None))
    with pytest.raises(ImdsError) as info:
        c.get_certificate()
    assert info.value.status == 500 and info.value.correlation_id
    # a new process sees the expired entry too and does not serve it
    with pytest.raises(ImdsError):
        make_client(clock=clock).get_certificate()
    emu.clear_faults()
    fresh = make_client(clock=clock).get_certificate()
    assert fresh.source == "imds" and fresh.x5t_s256 != old.x5t_s256


def test_one_second_before_expiry_margin_the_certificate_is_still_served(make_client, emu,
                                                                         clock):
    emu.lifetime = 1000.0
    c = make_client(clock=clock, renewal_backoff=1000.0)
    old = c.get_certificate()
    emu.inject("getplatformmetadata", Fault(status=500, times=None))
    clock.offset = old.not_after_ts - time.time() - 11
    assert c.get_certificate().x5t_s256 == old.x5t_s256


def test_not_yet_valid_certificate_is_not_served_from_the_store(make_client, emu, clock):
    first = make_client(clock=clock).get_certificate()
    # clock jumped back to 1 s before NotBefore - skew (lifetime 3600 s: skew 36 s)
    clock.offset = first.not_before_ts - 36 - time.time() - 1
    emu.reset()
    emu.backdate = 3600.0  # so the replacement is valid at the jumped-back clock
    again = make_client(clock=clock).get_certificate()
    assert again.source == "imds" and again.x5t_s256 != first.x5t_s256
    assert emu.count("issuecredential") == 1


def test_fresh_certificate_slightly_ahead_of_a_lagging_clock_is_used_not_reminted(make_client,
                                                                                   emu):
    emu.backdate = -5.0  # NotBefore 5 s in our future; skew for 3600 s is 36 s
    c = make_client()
    first = c.get_certificate()
    assert first.source == "imds"
    for _ in range(3):
        assert c.get_certificate().x5t_s256 == first.x5t_s256
    assert make_client().get_certificate().source == "store"
    assert emu.count("issuecredential") == 1


def test_certificate_far_ahead_of_the_clock_is_a_clear_error(make_client, emu, store_dir):
    emu.backdate = -100.0
    with pytest.raises(ImdsError, match="not yet valid"):
        make_client().get_certificate()
    assert emu.count("issuecredential") == 1
