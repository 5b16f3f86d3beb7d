"""A fault storm against short-lived certificates, in-process and cross-process.

IMDS answers a seeded random mix of 5xx, 429 (+Retry-After), 410, 404, 400, read timeouts,
garbage bodies, contract breaks and wrong/expired certificates, interleaved with good answers
and short delays, while one client makes 500 sequential get_certificate calls (certificates
live 3 s, so it renews and re-mints over and over; in the second half every certificate
arrives already past renew_after) and 8 lanes of ``python -m msicert cert --json``
processes race it on the same store. Checked: nothing but documented errors, no
hang (every wait has a timeout), never an unusable certificate returned, the store valid at
the end, and the IMDS request count bounded (printed; run with ``-s`` to see it).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from msicert import Backoff, Identity, ManagedIdentityClient, MsiCertError, Timeouts
from msicert._policy import DEFAULT_ISSUER_CN, State, identity_mismatch, skew
from msicert.backends.contract import CorruptEntry
from msicert.backends.posix._file_store import FileStore
from msicert.emulator import Fault
from tests.conftest import ROOT, cli_env

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("MSICERT_STORM_SEED", "20261127"))
LIFETIME = 3.0  # seconds: renew_after ~1.4 s after NotBefore, so the storm renews constantly
BACKDATE = 0.6  # NotBefore 0.6-1.6 s back: some certificates arrive already past renew_after
DUE_BACKDATE = 1.6  # second half: every certificate arrives past renew_after (constant renewal)
CALLS = 500
CALL_GAP = 0.01  # between sequential calls: the 500 calls span several lifetimes
LANES = 8
READ_TIMEOUT = 0.25  # in-process IMDS read timeout; "timeout" faults sleep longer than this
STORM_BUDGET = 90.0  # hard bound for the whole storm (the test fails, never hangs)
SCHEDULING_SLACK = 0.25  # s between the library's last look at the clock and ours, worst case
# One IMDS step makes at most 1 + 3 (5xx/429/404/timeouts) + 7 (410) requests; a mint has
# two steps; a get_certificate call starts at most one mint.
MAX_REQUESTS_PER_MINT = 2 * (1 + 3 + 7)


def _faults(rng: random.Random, endpoint: str, n: int) -> list[Fault]:
    """A seeded sequence mixing good answers with every kind of trouble IMDS can make."""
    table: list[tuple[int, object]] = [
        (25, lambda: Fault()),  # a good answer
        (10, lambda: Fault(delay=rng.uniform(0.001, 0.03))),  # a good but slow answer
        (10, lambda: Fault(status=rng.choice([500, 502, 503, 504]))),
        (5, lambda: Fault(status=429, retry_after=rng.choice([0, 1, 2]))),
        (3, lambda: Fault(status=410)),
        (1, lambda: Fault(status=404)),
        (1, lambda: Fault(status=rng.choice([400, 401, 403]))),
        (3, lambda: Fault(delay=READ_TIMEOUT + 0.15)),  # a read timeout for the in-process client
        (3, lambda: Fault(status=200, body=rng.randbytes(rng.randrange(0, 64)))),
        (2, lambda: Fault(kind="malformed_json")),
        (1, lambda: Fault(kind="no_server_header")),
        (1, lambda: Fault(kind="missing_field:" + rng.choice(
            ["clientId", "cuId"] if endpoint == "getplatformmetadata"
            else ["certificate", "mtls_authentication_endpoint"]))),
    ]
    if endpoint == "issuecredential":
        table += [(1, lambda: Fault(kind="wrong_key")), (1, lambda: Fault(kind="expired")),
                  (1, lambda: Fault(kind="not_yet_valid"))]
    weights = [w for w, _ in table]
    makers = [m for _, m in table]
    return [rng.choices(makers, weights)[0]() for _ in range(n)]  # type: ignore[operator]


def _usable_when_returned(cert, before: float, after: float) -> str | None:
    """Why ``cert`` must not have been returned by a call that ran from ``before`` to ``after``.

    The instant of return lies in between, and on a loaded machine the caller may be
    descheduled for a while before it reads the clock: a certificate counts as expired when
    returned if it was expired ``SCHEDULING_SLACK`` before ``after`` (or at ``before``).
    """
    if cert.state(after) is State.NOT_YET_VALID:
        return f"not yet valid at {after:.3f}"
    probe = max(before, after - SCHEDULING_SLACK)
    if cert.state(probe) is State.EXPIRED:
        return f"expired at {probe:.3f} (returned by {after:.3f})"
    why = identity_mismatch(cert.certificate, Identity(), issuer_cn=DEFAULT_ISSUER_CN)
    if why:
        return why
    if not (cert.client_id and cert.tenant_id and cert.mtls_endpoint.startswith("https://")):
        return "missing token-leg metadata"
    return None


def _cli_lane(store_dir: str, stop: threading.Event, results: list, lane: int) -> None:
    """Run ``msicert cert --json`` back to back until the in-process storm is over."""
    while not stop.is_set():
        started = time.time()
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "msicert", "cert", "--json", "--store-dir", store_dir],
                capture_output=True, text=True, env=cli_env(), cwd=str(ROOT), timeout=60,
            )
        except subprocess.TimeoutExpired as exc:
            results.append(("hang", lane, str(exc)))
            return
        results.append(("done", lane, (started, time.time(), proc.returncode, proc.stdout,
                                       proc.stderr)))


def _ts(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_fault_storm_sequential_calls_and_concurrent_processes(emu, store_dir):
    rng = random.Random(SEED)
    emu.lifetime, emu.backdate = LIFETIME, BACKDATE
    for endpoint in ("getplatformmetadata", "issuecredential"):
        for fault in _faults(rng, endpoint, 4000):
            emu.inject(endpoint, fault)

    # The mint back-off scaled to 3 s certificates, as the retry waits are (the CLI lanes
    # keep the default and share their windows through the store's marker).
    client = ManagedIdentityClient(store_dir=store_dir, imds_endpoint=emu.imds_url,
                                   imds_timeouts=Timeouts(connect=0.5, read=READ_TIMEOUT),
                                   lock_timeout=30.0, mint_backoff=Backoff(0.05, 0.4))
    attempts = Counter()
    real_mint = client._mint_locked

    def counting_mint(**kw):
        attempts["mint"] += 1
        return real_mint(**kw)

    client._mint_locked = counting_mint  # type: ignore[method-assign]

    outcomes: Counter[str] = Counter()
    bad: list[str] = []
    crashes: list[str] = []

    def sequential() -> None:
        for i in range(CALLS):
            if i == CALLS // 2:
                emu.backdate = DUE_BACKDATE
            before = time.time()
            try:
                cert = client.get_certificate()
                after = time.time()
            except MsiCertError as exc:
                outcomes[type(exc).__name__] += 1
            except Exception as exc:  # anything else is a crash
                crashes.append(f"{type(exc).__name__}: {exc}")
            else:
                outcomes[cert.source] += 1
                why = _usable_when_returned(cert, before, after)
                if why:
                    bad.append(f"{cert.x5t_s256}: {why}")
            time.sleep(CALL_GAP)

    stop = threading.Event()
    lane_results: list = []
    lanes = [threading.Thread(target=_cli_lane, args=(store_dir, stop, lane_results, i),
                              daemon=True) for i in range(LANES)]
    runner = threading.Thread(target=sequential, daemon=True)
    t0 = time.monotonic()
    for lane in lanes:
        lane.start()
    runner.start()
    runner.join(STORM_BUDGET)
    stop.set()
    assert not runner.is_alive(), "sequential get_certificate calls hung"
    for lane in lanes:
        lane.join(max(1.0, STORM_BUDGET - (time.monotonic() - t0)) + 60)
        assert not lane.is_alive(), "a CLI lane hung"
    elapsed = time.monotonic() - t0

    # --- no crash, no unusable certificate -------------------------------------------------
    assert crashes == []
    assert not bad, f"{len(bad)} unusable certificate(s) returned: {bad}"
    assert sum(outcomes.values()) == CALLS
    assert outcomes["memory"] + outcomes["store"] + outcomes["imds"] >= CALLS * 0.8, outcomes
    cli = Counter()
    for kind, _lane, detail in lane_results:
        assert kind == "done", detail
        started, ended, code, out, err = detail
        assert "Traceback" not in err, err
        assert code in (0, 1), (code, err)
        if code == 1:
            # the error is the last line; wait/warning lines may precede it
            assert err.splitlines()[-1].startswith("msicert cert: "), err
            cli["error"] += 1
            continue
        cli["ok"] += 1
        printed = json.loads(out)
        nb, na = _ts(printed["not_before"]), _ts(printed["not_after"])
        # valid at some instant in [started, ended] when it was printed
        assert nb - skew(nb, na) <= ended and started < na - skew(nb, na), printed

    # --- the store is valid at the end -----------------------------------------------------
    store = FileStore(store_dir)
    try:
        final = store.find(Identity(), issuer_cn=DEFAULT_ISSUER_CN)
    except CorruptEntry as exc:
        pytest.fail(f"store left corrupt: {exc}")
    assert final is not None
    # no temp file left behind; the back-off marker may remain after a last failed mint
    assert set(os.listdir(store_dir)) - {"msal_mtls.backoff"} == {"msal_mtls.lock",
                                                                   "msal_mtls.pem"}
    assert emu.violations == []

    # --- IMDS calls bounded ----------------------------------------------------------------
    gpm, ic = emu.count("getplatformmetadata"), emu.count("issuecredential")
    cli_runs = cli["ok"] + cli["error"]
    issued = len(emu.issued)
    print(f"\nstorm seed={SEED}: {elapsed:.1f} s, {CALLS} sequential calls {dict(outcomes)}, "
          f"{cli_runs} CLI runs {dict(cli)}; in-process mint attempts {attempts['mint']}; "
          f"IMDS requests getplatformmetadata={gpm} issuecredential={ic} total={gpm + ic}; "
          f"certificates issued {issued}")
    # Structural: no call starts more than one mint, no mint exceeds the retry policy.
    assert gpm + ic <= MAX_REQUESTS_PER_MINT * (attempts["mint"] + cli_runs)
    # No renewal loop: the in-process client mints only when its certificate is due (then at
    # most once per back-off) or gone. A client without back-off would try on every one of
    # the ~250 calls of the second half, where every certificate arrives already due.
    assert attempts["mint"] <= CALLS // 5, attempts
    # Retries stay proportionate: measured 0.6-0.7 requests per mint attempt or CLI run
    # (most CLI runs find a fresh certificate in the store and make none).
    assert gpm + ic <= 4 * (attempts["mint"] + cli_runs)

    # --- quiet again: a fresh certificate is served with no IMDS call at all --------------
    emu.clear_faults()
    emu.lifetime, emu.backdate = 3600.0, 60.0
    client.purge()  # the storm's last 3 s certificate may be (about to be) due: start clean
    fresh = client.get_certificate()
    assert fresh.source == "imds" and fresh.state(time.time()) is State.FRESH
    before = emu.count("getplatformmetadata") + emu.count("issuecredential")
    for _ in range(200):
        assert client.get_certificate().x5t_s256 == fresh.x5t_s256
    assert emu.count("getplatformmetadata") + emu.count("issuecredential") == before
