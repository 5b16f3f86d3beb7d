"""Clock jumps, certificates outside their window, and timeouts.

The client's clock is injected (real time plus an offset the test moves; the emulator keeps
real time), so forward and backward jumps are instant. Timeouts are measured with real
sleeps, kept short.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time

import pytest

from msicert import Backoff, Identity, ImdsError, ImdsResponseError, Timeouts, TokenError
from msicert._policy import State
from msicert._token_cache import TokenManager
from msicert.backends.posix._file_store import FileStore
from msicert.emulator import Fault
from msicert.wire._imds import ImdsClient
from msicert.wire._retry import RetryPolicy
from tests.trickler import Trickler

RESOURCE = "https://vault.azure.net"
SLACK = 1.5  # s added to every measured upper bound: generous, speed targets live in benchmarks


class Clock:
    """Real time plus an offset the test moves; ``sleep`` moves it too (instant retries)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def sleep(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def clock():
    return Clock()


def jump_to(clock: Clock, instant: float) -> None:
    clock.offset = instant - time.time()


def usable(cert, now: float) -> bool:
    return cert.state(now) in (State.FRESH, State.RENEW)


# --- jumps ------------------------------------------------------------------------------------


def test_forward_jump_into_the_renewal_window_renews_exactly_once(make_client, emu, clock,
                                                                 store_dir):
    emu.lifetime = 1000.0
    c = make_client(clock=clock, mint_backoff=Backoff(30.0, 30.0))
    old = c.get_certificate()
    emu.lifetime = 100_000.0
    jump_to(clock, old.renew_after_ts - 0.5)
    assert c.get_certificate().source == "memory"  # just before: the memory fast path
    jump_to(clock, old.renew_after_ts + 0.5)
    new = c.get_certificate()
    assert new.source == "imds" and new.x5t_s256 != old.x5t_s256
    for _ in range(20):
        assert c.get_certificate().x5t_s256 == new.x5t_s256
    assert emu.count("issuecredential") == 2
    stored = FileStore(store_dir).find(c.identity, issuer_cn=c.issuer_cn)
    assert stored is not None and stored.x5t_s256 == new.x5t_s256


def test_backward_jump_out_of_the_renewal_window_stops_renewing_until_due_again(
        make_client, emu, clock):
    emu.lifetime = 1000.0
    c = make_client(clock=clock, mint_backoff=Backoff(30.0, 30.0))
    cert = c.get_certificate()
    emu.inject("getplatformmetadata", Fault(status=503, times=None))
    jump_to(clock, cert.renew_after_ts + 1)
    assert c.get_certificate().x5t_s256 == cert.x5t_s256  # renewal failed, kept
    assert emu.count("getplatformmetadata") == 1 + 4  # the mint, then one renewal attempt
    jump_to(clock, cert.renew_after_ts - 100)  # back into the fresh window
    for _ in range(10):
        got = c.get_certificate()
        assert got.x5t_s256 == cert.x5t_s256 and got.source == "memory"
    assert emu.count("getplatformmetadata") == 5
    jump_to(clock, cert.renew_after_ts + 40)  # due again and past the 30 s back-off
    assert c.get_certificate().x5t_s256 == cert.x5t_s256
    assert emu.count("getplatformmetadata") == 9  # exactly one more attempt


def test_forward_jump_past_expiry_is_never_served_from_memory_or_the_store(make_client, emu,
                                                                          clock):
    emu.lifetime = 1000.0
    c = make_client(clock=clock)
    cert = c.get_certificate()
    assert c.get_certificate().source == "memory"
    emu.inject("getplatformmetadata", Fault(status=500, times=None))
    jump_to(clock, cert.not_after_ts + 3600)  # straight from fresh to long expired
    with pytest.raises(ImdsError):
        c.get_certificate()
    with pytest.raises(ImdsError):
        make_client(clock=clock).get_certificate()  # a new process: the store is not served
    emu.clear_faults()
    emu.lifetime, emu.backdate = 100_000.0, 7200.0  # valid at the jumped clock
    fresh = c.get_certificate()
    assert fresh.x5t_s256 != cert.x5t_s256 and usable(fresh, clock())


def test_backward_jump_before_not_before_is_never_served_from_memory(make_client, emu, clock):
    c = make_client(clock=clock)
    cert = c.get_certificate()
    emu.inject("getplatformmetadata", Fault(status=500, times=None))
    jump_to(clock, cert.not_before_ts - 3600)
    with pytest.raises(ImdsError):
        c.get_certificate()
    emu.clear_faults()
    emu.backdate = 7200.0
    again = c.get_certificate()
    assert again.x5t_s256 != cert.x5t_s256 and usable(again, clock())
    assert emu.count("issuecredential") == 2


# --- certificates outside their window from IMDS ---------------------------------------------


def test_a_not_yet_valid_certificate_from_imds_is_rejected_and_not_stored(make_client, emu,
                                                                         store_dir):
    emu.inject("issuecredential", Fault(kind="not_yet_valid"))
    with pytest.raises(ImdsResponseError, match="not yet valid"):
        make_client().get_certificate()
    assert not os.path.exists(os.path.join(store_dir, "msal_mtls.pem"))


def test_an_already_expired_certificate_from_imds_raises_and_nothing_is_stored(make_client,
                                                                              emu, store_dir):
    emu.inject("issuecredential", Fault(kind="expired"))
    with pytest.raises(ImdsResponseError, match="expired"):
        make_client().get_certificate()
    assert not os.path.exists(os.path.join(store_dir, "msal_mtls.pem"))


def test_a_renewal_that_brings_an_expired_certificate_keeps_the_stored_one(make_client, emu,
                                                                           clock, store_dir):
    emu.lifetime = 100_000.0
    good = make_client().get_certificate()
    path = os.path.join(store_dir, "msal_mtls.pem")
    with open(path, "rb") as f:
        before = f.read()
    jump_to(clock, good.renew_after_ts + 1)  # the client's clock runs ~13 h ahead of IMDS's
    emu.lifetime = 1000.0  # so what IMDS issues now is expired by the client's clock
    c = make_client(clock=clock)
    assert c.get_certificate().x5t_s256 == good.x5t_s256  # renewal failed; the valid one stays
    assert emu.count("issuecredential") == 2
    with open(path, "rb") as f:
        assert f.read() == before


def test_a_certificate_already_past_renew_after_is_used_and_not_looped_on(make_client, emu,
                                                                          clock):
    emu.lifetime, emu.backdate = 1000.0, 600.0  # renew_after ~ NotBefore + 475: already due
    c = make_client(clock=clock, mint_backoff=Backoff(30.0, 30.0))
    first = c.get_certificate()
    assert first.state(clock()) is State.RENEW
    for _ in range(50):  # 25 s of calls, inside the 30 s back-off
        clock.offset += 0.5
        assert c.get_certificate().x5t_s256 == first.x5t_s256
    assert emu.count("issuecredential") == 1
    clock.offset += 6  # back-off over: one renewal, whose result is again already due
    second = c.get_certificate()
    assert second.x5t_s256 != first.x5t_s256
    for _ in range(20):
        clock.offset += 0.5
        assert c.get_certificate().x5t_s256 == second.x5t_s256
    assert emu.count("issuecredential") == 2


# --- former holes, fixed in _client.py (renewal re-check, judging on arrival) ---------------


def test_a_slow_failed_renewal_never_returns_a_certificate_that_expired_meanwhile(
        make_client, emu, clock):
    emu.lifetime = 1000.0  # skew 10 s
    c = make_client(clock=clock, sleep=clock.sleep, retry=RetryPolicy())  # waits 1+2+4 s
    cert = c.get_certificate()
    jump_to(clock, cert.not_after_ts - 10 - 5)  # usable for 5 more seconds, due for renewal
    emu.inject("getplatformmetadata", Fault(status=503, times=None))
    try:
        got = c.get_certificate()  # the retries take 7 s (of the injected clock)
    except ImdsError:
        return  # no usable certificate and IMDS failed: the error is the right answer
    assert usable(got, clock()), f"returned a certificate that is {got.state(clock()).value}"


def test_a_certificate_issued_during_a_slow_mint_is_judged_when_it_arrives(make_client, emu):
    emu.lifetime, emu.backdate = 10.0, 0.0  # skew 0.1 s; NotBefore = second of issue
    emu.inject("issuecredential", Fault(delay=1.3))
    cert = make_client().get_certificate()
    assert usable(cert, time.time())


# --- timeouts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("read_timeout", [0.2, 0.4])
def test_imds_read_timeout_is_configurable_and_bounds_every_attempt(emu, read_timeout):
    imds = ImdsClient(emu.imds_url, read_timeout=read_timeout, retry=RetryPolicy(scale=0.001))
    emu.inject("getplatformmetadata", Fault(delay=3.0, times=None))
    t0 = time.monotonic()
    with pytest.raises(ImdsError, match="ReadTimeoutError") as info:
        imds.get_platform_metadata(Identity())
    elapsed = time.monotonic() - t0
    assert info.value.status is None and emu.count("getplatformmetadata") == 4
    assert 4 * read_timeout <= elapsed < 4 * read_timeout + SLACK, elapsed


def test_imds_connect_timeout_is_configurable(emu):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)  # never accepted: once the backlog is full, SYNs go unanswered
    port = server.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            fillers.append(s)
        time.sleep(0.1)
        imds = ImdsClient(f"http://127.0.0.1:{port}", connect_timeout=0.25, read_timeout=30,
                          retry=RetryPolicy(scale=0.001))
        t0 = time.monotonic()
        with pytest.raises(ImdsError, match="ConnectTimeoutError"):
            imds.get_platform_metadata(Identity())
        elapsed = time.monotonic() - t0
        assert 4 * 0.25 <= elapsed < 4 * 0.25 + SLACK, elapsed
    finally:
        for s in fillers:
            s.close()
        server.close()


def test_ests_timeouts_of_the_token_manager_are_honoured(make_client, emu):
    c = make_client()
    c.get_certificate()
    defaults = TokenManager(c, c.store.transport(), clock=time.time)
    assert defaults._timeouts == Timeouts(connect=5.0, read=30.0, total=60.0)
    c._token_manager = TokenManager(c, c.store.transport(), clock=time.time,
                                    timeouts=Timeouts(connect=0.5, read=0.3, total=60.0))
    emu.inject("token", Fault(delay=3.0))
    t0 = time.monotonic()
    with pytest.raises(TokenError, match="ReadTimeoutError"):
        c.acquire_token(RESOURCE)
    assert time.monotonic() - t0 < 0.3 + SLACK


def test_a_hung_imds_delays_a_renewing_caller_only_by_the_retry_budget(make_client, emu, clock):
    """Measured bound today: (1 + 3 retries) x read_timeout + scaled waits, per IMDS step."""
    emu.lifetime = 1000.0
    read_timeout = 0.5
    c = make_client(clock=clock, imds_timeouts=Timeouts(connect=2.0, read=read_timeout),
                    mint_backoff=Backoff(60.0, 60.0))
    cert = c.get_certificate()
    jump_to(clock, cert.renew_after_ts + 1)
    emu.inject("getplatformmetadata", Fault(delay=5.0, times=None))
    held: list[float] = []

    def renewing_caller() -> None:
        t0 = time.monotonic()
        assert c.get_certificate().x5t_s256 == cert.x5t_s256
        held.append(time.monotonic() - t0)

    first = threading.Thread(target=renewing_caller)
    first.start()
    time.sleep(0.1)  # the first caller is now inside the renewal, holding the identity lock
    t0 = time.monotonic()
    assert c.get_certificate().x5t_s256 == cert.x5t_s256
    other = time.monotonic() - t0
    first.join(10)
    assert not first.is_alive() and len(held) == 1
    print(f"\nhung IMDS, read_timeout={read_timeout}: renewing caller held {held[0]:.2f} s; "
          f"a concurrent caller {other * 1000:.1f} ms")
    assert other < read_timeout  # others keep the valid certificate without waiting
    assert 4 * read_timeout <= held[0] < 4 * read_timeout + SLACK  # the whole retry budget
    # With the defaults (read 10 s, waits 1+2+4 s) the same hang holds a caller ~47 s per
    # step, ~94 s if getplatformmetadata answers and issuecredential hangs: see below.


def test_with_a_deadline_a_renewing_caller_is_served_within_it(make_client, emu, clock):
    emu.lifetime = 1000.0
    c = make_client(clock=clock, imds_timeouts=Timeouts(connect=2.0, read=2.0, total=0.5))
    cert = c.get_certificate()
    jump_to(clock, cert.renew_after_ts + 1)
    emu.inject("getplatformmetadata", Fault(delay=5.0, times=None))
    t0 = time.monotonic()
    assert c.get_certificate().x5t_s256 == cert.x5t_s256
    assert time.monotonic() - t0 < 0.5 + SLACK


def test_with_a_deadline_a_caller_without_a_certificate_gets_the_error_within_it(make_client,
                                                                                emu):
    c = make_client(imds_timeouts=Timeouts(connect=2.0, read=2.0, total=0.5))
    emu.inject("getplatformmetadata", Fault(delay=5.0, times=None))
    t0 = time.monotonic()
    with pytest.raises(ImdsError):
        c.get_certificate()
    assert time.monotonic() - t0 < 0.5 + SLACK


def _call_with_deadline(url: str, deadline: float) -> tuple[float, BaseException | None]:
    imds = ImdsClient(url, read_timeout=2.0, retry=RetryPolicy(scale=0.001))
    out: list = []

    def run() -> None:
        t0 = time.monotonic()
        try:
            imds.get_platform_metadata(Identity(), deadline=time.monotonic() + deadline)
            out.append((time.monotonic() - t0, None))
        except Exception as exc:
            out.append((time.monotonic() - t0, exc))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(deadline + SLACK + 1)
    assert out, f"the call was still running {deadline + SLACK + 1} s into a {deadline} s deadline"
    return out[0]


def test_the_deadline_holds_against_an_imds_that_trickles_its_body():
    server = Trickler("body", status=b"HTTP/1.1 200 OK")
    try:
        elapsed, error = _call_with_deadline(server.url, 0.5)
    finally:
        server.close()
    assert isinstance(error, ImdsError) and "deadline" in str(error)
    assert elapsed < 0.5 + SLACK


def test_the_deadline_holds_against_an_imds_that_trickles_its_headers():
    server = Trickler("headers", status=b"HTTP/1.1 200 OK")
    try:
        elapsed, error = _call_with_deadline(server.url, 0.5)
    finally:
        server.close()
    assert isinstance(error, ImdsError) and elapsed < 0.5 + SLACK
    assert "deadline" in str(error)  # the watchdog shut the socket down at the deadline

