"""Proactive renewal at renew_after, expiry, failure handling."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from msicert import Backoff, ImdsError, Timeouts
from msicert.backends.posix._file_store import FileStore
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
    c = make_client(clock=clock, mint_backoff=Backoff(60.0, 60.0))
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
    c = make_client(clock=clock, mint_backoff=Backoff(1000.0, 1000.0))
    old = c.get_certificate()
    emu.inject("getplatformmetadata", Fault(status=500, times=None))
    clock.offset = old.not_after_ts - time.time() - 11
    assert c.get_certificate().x5t_s256 == old.x5t_s256


def test_not_yet_valid_certificate_is_not_served_from_the_store(make_client, emu, clock):
    first = make_client(clock=clock).get_certificate()
    # clock jumped back to 1 s before NotBefore - 15 min (the lag a lookup tolerates)
    clock.offset = first.not_before_ts - 900 - time.time() - 1
    emu.reset()
    emu.lifetime, emu.backdate = 7200.0, 3600.0  # the replacement is valid at that clock
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
    emu.backdate = -1000.0  # NotBefore 16 min 40 s ahead: beyond the 15 min tolerated
    with pytest.raises(ImdsError, match=r"not yet valid: its NotBefore .* is 16 min (39|40) s "
                                        r"ahead of this host's clock, more than the 15 min "
                                        r"00 s tolerated; fix the system clock") as err:
        make_client().get_certificate()
    assert err.value.step == "issuecredential" and err.value.correlation_id
    assert emu.count("issuecredential") == 1


# --- no Exception from a renewal reaches a caller holding a valid certificate ---------------

IMDS_CALLS = ("getplatformmetadata", "issuecredential")


def _imds_calls(emu) -> int:
    """IMDS requests in the emulator's request log (faulted ones included)."""
    return sum(1 for r in emu.requests if r.endpoint in IMDS_CALLS)


def _due_for_renewal(make_client, emu, clock, **kw):
    """A client holding a certificate that is 1 s past renew_after (back-off 60 s)."""
    emu.lifetime = 1000.0
    c = make_client(clock=clock, mint_backoff=Backoff(60.0, 60.0), **kw)
    old = c.get_certificate()
    clock.offset = old.renew_after_ts - time.time() + 1
    emu.reset()
    return c, old


def _failed_renewal_keeps_it(c, old, caplog, *type_names: str) -> str:
    """One call: the old certificate comes back and exactly one WARNING names the type."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="msicert"):
        served = c.get_certificate()
    assert served.x5t_s256 == old.x5t_s256
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "renewal of certificate" in warnings[0]
    assert any(f"): {name}" in warnings[0] for name in type_names), warnings[0]
    return warnings[0]


def _backs_off_then_renews(c, old, emu, clock, caplog) -> None:
    """Within the back-off: no IMDS call and no warning; after it: one renewal."""
    before = _imds_calls(emu)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="msicert"):
        for _ in range(3):
            assert c.get_certificate().x5t_s256 == old.x5t_s256
    assert _imds_calls(emu) == before
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    clock.offset += 61.0
    new = c.get_certificate()
    assert new.x5t_s256 != old.x5t_s256 and new.source == "imds"
    assert _imds_calls(emu) == before + 2  # exactly one renewal after the back-off


def _replace_by_file(store_dir: str) -> None:
    os.rename(store_dir, store_dir + ".moved")
    Path(store_dir).write_bytes(b"not a directory")


def _restore_from_file(store_dir: str) -> None:
    os.unlink(store_dir)
    os.rename(store_dir + ".moved", store_dir)


def _make_0500(store_dir: str) -> None:
    os.chmod(store_dir, 0o500)


def _restore_0700(store_dir: str) -> None:
    os.chmod(store_dir, 0o700)


@pytest.mark.parametrize(("fault", "restore", "words"), [
    (_replace_by_file, _restore_from_file, "not a directory"),
    (_make_0500, _restore_0700, "mode 0500"),
], ids=["replaced-by-a-file", "made-0500"])
def test_store_directory_broken_during_renewal_keeps_the_valid_certificate_and_backs_off(
        make_client, emu, clock, store_dir, caplog, fault, restore, words):
    c, old = _due_for_renewal(make_client, emu, clock)
    emu.inject("issuecredential", Fault(delay=0.5))

    def break_it_while_issuing():
        deadline = time.monotonic() + 10
        while emu.count("issuecredential") < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        fault(store_dir)

    t = threading.Thread(target=break_it_while_issuing)
    t.start()
    try:
        message = _failed_renewal_keeps_it(c, old, caplog, "StoreError")
    finally:
        t.join(15)
    assert words in message
    assert emu.count("issuecredential") == 1  # it failed at the write, after IMDS answered
    restore(store_dir)  # a renewal would now succeed: only the back-off stops it
    _backs_off_then_renews(c, old, emu, clock, caplog)
    assert emu.count("issuecredential") == 2


HOLD_LOCK = r"""
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(120)
"""


def test_lock_held_by_another_process_longer_than_the_lock_wait_warns_once_and_backs_off(
        make_client, emu, clock, store_dir, caplog):
    c, old = _due_for_renewal(make_client, emu, clock,
                              imds_timeouts=Timeouts(connect=2.0, read=10.0, total=5.0))
    assert c.lock_wait == 35.0  # deadline + MINT_OVERHEAD: the longest a holder can take
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK,
                               os.path.join(store_dir, "msal_mtls.lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="msicert"):
            assert c.get_certificate().x5t_s256 == old.x5t_s256  # busy: someone renews
            clock.offset += 30.0
            assert c.get_certificate().x5t_s256 == old.x5t_s256  # busy 30 s: still normal
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        clock.offset += 6.0  # busy for 36 s > lock_wait: that holder is hung
        message = _failed_renewal_keeps_it(c, old, caplog, "StoreError")
        assert "held by another thread or process for more than 35 s" in message
    finally:
        holder.kill()
        holder.wait(10)
    assert _imds_calls(emu) == 0
    _backs_off_then_renews(c, old, emu, clock, caplog)  # lock free now: only the back-off
    assert emu.count("issuecredential") == 1


def test_non_ascii_tenant_id_from_imds_during_renewal_keeps_the_valid_certificate(
        make_client, emu, clock, caplog):
    c, old = _due_for_renewal(make_client, emu, clock)
    body = json.dumps({
        "clientId": old.client_id, "tenantId": "72f988bf-86f1-41af-91ab-2d7cd011db4\u00e4",
        "cuId": {"vmId": "5a1b2c3d-0000-4000-8000-000000000001"},
        "attestationEndpoint": "https://maa.msicert-emulator.invalid",
    }).encode()
    emu.inject("getplatformmetadata", Fault(status=200, body=body))
    # Without validation of identity fields the CSR's IA5String encoder raises
    # UnicodeEncodeError or the CSR encoder's ValueError; with it, ImdsResponseError. Either way
    # nothing may escape.
    _failed_renewal_keeps_it(
        c, old, caplog, "UnicodeEncodeError", "ValueError", "ImdsResponseError"
    )
    assert emu.count("getplatformmetadata") == 1 and emu.count("issuecredential") == 0
    _backs_off_then_renews(c, old, emu, clock, caplog)
    assert emu.count("issuecredential") == 1


class _InjectedCngFailure(Exception):
    """Stands in for what a key provider raises (CNG here cannot run on Linux)."""


def test_fake_key_generator_failure_during_renewal_keeps_the_valid_certificate(
        make_client, emu, clock, caplog, monkeypatch):
    # Key generation is the injection boundary: a NativeError from CNG, or anything else a
    # provider raises, must not reach a caller that holds a usable certificate.
    import msicert_native
    from msicert.backends.posix._software_key import SoftwareKey

    c, old = _due_for_renewal(make_client, emu, clock)
    real = SoftwareKey.generate
    raised = [msicert_native.NativeError("NCryptFinalizeKey", status=0x80090016),
              _InjectedCngFailure("injected")]

    def failing_generate():
        if raised:
            raise raised.pop(0)
        return real()

    monkeypatch.setattr(SoftwareKey, "generate", staticmethod(failing_generate))
    message = _failed_renewal_keeps_it(c, old, caplog, "NativeError")
    assert "NCryptFinalizeKey failed" in message
    assert emu.count("getplatformmetadata") == 1 and emu.count("issuecredential") == 0
    clock.offset += 61.0
    message = _failed_renewal_keeps_it(c, old, caplog, "_InjectedCngFailure")
    assert "injected" not in message  # a foreign exception's text is not logged
    assert emu.count("getplatformmetadata") == 2
    _backs_off_then_renews(c, old, emu, clock, caplog)
    assert emu.count("issuecredential") == 1


def test_keyboard_interrupt_during_renewal_still_propagates(make_client, emu, clock,
                                                            monkeypatch, caplog):
    from msicert.backends.posix._software_key import SoftwareKey

    c, old = _due_for_renewal(make_client, emu, clock)

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(SoftwareKey, "generate", staticmethod(interrupted))
    with caplog.at_level(logging.WARNING, logger="msicert"), pytest.raises(KeyboardInterrupt):
        c.get_certificate()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    monkeypatch.undo()
    new = c.get_certificate()  # no back-off was recorded, and the lock was released
    assert new.x5t_s256 != old.x5t_s256 and emu.count("issuecredential") == 1
