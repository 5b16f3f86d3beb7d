"""A token never claims to outlive its certificate, and a certificate with less than a day left
is renewed before a new token is bound to it when a mint is possible."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from msicert import Backoff, ImdsError
from msicert.emulator import Fault
from tests.conftest import ROOT, cli_env

RESOURCE = "https://vault.azure.net"
HOUR = 3600.0


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def test_expires_on_and_refresh_on_are_capped_at_not_after(make_client, emu):
    emu.lifetime, emu.backdate, emu.token_lifetime = 1000.0, 0.0, 86400.0
    c = make_client()
    token = c.acquire_token(RESOURCE)
    cert = c.get_certificate()
    assert token.expires_on == int(cert.not_after_ts)
    # Due for refresh no later than the certificate's retirement, NotAfter - skew (1 % of the
    # 1000 s lifetime): the token is never served from the cache past it.
    assert time.time() < token.refresh_on <= cert.not_after_ts - 10


def test_while_renewal_fails_the_token_is_served_but_never_past_the_certificate(make_client,
                                                                               emu):
    emu.lifetime, emu.token_lifetime = 2000.0, 86400.0
    clock = Clock()
    c = make_client(clock=clock, mint_backoff=Backoff(5.0, 5.0))
    token = c.acquire_token(RESOURCE)
    cert = c.get_certificate()
    emu.inject("getplatformmetadata", Fault(status=503, times=None))
    clock.offset = cert.renew_after_ts - time.time() + 10  # renewal due, and failing
    again = c.acquire_token(RESOURCE)
    assert again.access_token == token.access_token and again.expires_on <= cert.not_after_ts
    clock.offset = cert.not_after_ts - time.time() - 310  # inside the 5 min expiry margin
    served = c.acquire_token(RESOURCE)
    assert served.expires_on <= cert.not_after_ts
    clock.offset = cert.not_after_ts - time.time()  # the certificate is gone: so is the token
    with pytest.raises(ImdsError):
        c.acquire_token(RESOURCE)


def test_a_token_bound_in_the_certificates_last_minutes_is_cached_until_it_is_retired(
        make_client, emu):
    emu.lifetime, emu.token_lifetime = 2000.0, 86400.0  # skew: 1 % of the lifetime, 20 s
    clock = Clock()
    c = make_client(clock=clock, mint_backoff=Backoff(600.0, 600.0))
    cert = c.get_certificate()
    emu.inject("getplatformmetadata", Fault(status=503, times=None))
    clock.offset = cert.not_after_ts - time.time() - 200  # renewal failing, 200 s left
    tokens = [c.acquire_token(RESOURCE) for _ in range(5)]
    assert emu.count("token") == 1  # one ESTS call, then the cache
    assert [t.source for t in tokens] == ["identity_provider"] + ["cache"] * 4
    assert all(t.x5t_s256 == cert.x5t_s256 for t in tokens)
    assert tokens[0].refresh_on >= clock() and tokens[0].expires_on == int(cert.not_after_ts)
    clock.offset = cert.not_after_ts - time.time() - 10  # retired (NotAfter - skew): not served
    with pytest.raises(ImdsError):
        c.acquire_token(RESOURCE)
    assert emu.count("token") == 1


_HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _hold_lock(store_dir: str, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK,
                             os.path.join(store_dir, "msal_mtls.lock"), str(seconds)],
                            stdout=subprocess.PIPE, text=True, env=cli_env(), cwd=str(ROOT))
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_less_than_a_day_left_renews_before_binding_even_while_another_process_holds_the_lock(
        make_client, emu, store_dir):
    emu.lifetime = 30 * HOUR
    clock = Clock()
    c = make_client(clock=clock)
    old = c.get_certificate()
    clock.offset = old.not_before_ts + 20 * HOUR - time.time()  # renewal due, 10 h left
    emu.lifetime = 100 * HOUR  # the renewed certificate is fresh at that clock
    holder = _hold_lock(store_dir, 1.0)
    try:
        token = c.acquire_token(RESOURCE)
    finally:
        holder.wait(30)
    new = c.get_certificate()
    assert new.x5t_s256 != old.x5t_s256 and token.x5t_s256 == new.x5t_s256
    assert emu.count("issuecredential") == 2


def test_more_than_a_day_left_binds_to_the_valid_certificate_while_another_renews(
        make_client, emu, store_dir):
    emu.lifetime = 100 * HOUR
    clock = Clock()
    c = make_client(clock=clock)
    old = c.get_certificate()
    clock.offset = old.renew_after_ts - time.time() + 60  # renewal due, ~50 h left
    holder = _hold_lock(store_dir, 1.0)
    try:
        token = c.acquire_token(RESOURCE)
    finally:
        holder.wait(30)
    assert token.x5t_s256 == old.x5t_s256  # the busy lock means someone else is renewing
    assert emu.count("issuecredential") == 1


def test_less_than_a_day_left_and_mints_paused_binds_to_the_valid_certificate(make_client,
                                                                             emu):
    emu.lifetime = 30 * HOUR
    clock = Clock()
    c = make_client(clock=clock, mint_backoff=Backoff(600.0, 600.0))
    old = c.get_certificate()
    clock.offset = old.not_before_ts + 20 * HOUR - time.time()
    emu.inject("getplatformmetadata", Fault(status=403, times=None))
    first = c.acquire_token(RESOURCE)  # the renewal fails: the pause opens
    assert first.x5t_s256 == old.x5t_s256 and first.expires_on <= old.not_after_ts
    asked = emu.count("getplatformmetadata")
    second = c.acquire_token("https://storage.azure.com")
    assert second.x5t_s256 == old.x5t_s256
    assert emu.count("getplatformmetadata") == asked  # no mint inside the pause
