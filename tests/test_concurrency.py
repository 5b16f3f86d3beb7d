"""One mint per identity across threads and processes, and a killed holder never blocks the
others: real threads and real processes (SIGKILL included)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from msicert import Identity, Timeouts
from msicert.backends.contract import CorruptEntry
from msicert.backends.posix._file_store import FileStore
from msicert.emulator import Fault
from tests.conftest import ROOT, cli_env

ISSUER = "managedidentitysnissuer.login.microsoft.com"

# A child that imports everything first, waits for the go-file, then runs the CLI: so N
# processes really race for the store instead of being staggered by their import time.
RACER = r"""
import os, sys, time
import msicert._cli as cli
import msicert.backends.posix._store_write as sw
crash = os.environ.get("CRASH_AT")
if crash:
    def die(phase):
        if phase == crash:
            os.kill(os.getpid(), 9)
    sw._crash_point = die
go = os.environ.get("GO_FILE")
while go and not os.path.exists(go):
    time.sleep(0.001)
sys.exit(cli.main(sys.argv[1:]))
"""


def spawn(args, env=None):
    return subprocess.Popen([sys.executable, "-c", RACER, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli_env(env), cwd=str(ROOT))


def test_threads_of_one_client_share_one_mint(make_client, emu):
    c = make_client()
    emu.inject("issuecredential", Fault(delay=0.3))
    results, barrier = [], threading.Barrier(16)

    def work():
        barrier.wait()
        results.append(c.get_certificate().x5t_s256)

    threads = [threading.Thread(target=work) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 16 and len(set(results)) == 1
    assert emu.count("issuecredential") == 1


def test_threads_with_separate_clients_share_one_mint(make_client, emu):
    emu.inject("issuecredential", Fault(delay=0.3))
    clients = [make_client() for _ in range(8)]
    results, barrier = [], threading.Barrier(8)

    def work(c):
        barrier.wait()
        results.append(c.get_certificate().x5t_s256)

    threads = [threading.Thread(target=work, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(set(results)) == 1 and len(results) == 8
    assert emu.count("issuecredential") == 1


@pytest.mark.slow
def test_sixteen_cold_processes_make_exactly_one_issuecredential(emu, store_dir, tmp_path):
    go = tmp_path / "go"
    procs = [spawn(["cert", "--json", "--store-dir", store_dir], {"GO_FILE": str(go)})
             for _ in range(16)]
    time.sleep(1.5)  # let every child finish importing and wait at the line
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 16, [e for _, e in outs]
    prints = [json.loads(o) for o, _ in outs]
    assert len({p["x5t_s256"] for p in prints}) == 1
    assert sorted(p["source"] for p in prints) == ["imds"] + ["store"] * 15
    assert emu.count("issuecredential") == 1
    assert emu.count("getplatformmetadata") == 1


@pytest.mark.slow
def test_lock_holder_killed_with_sigkill_never_blocks_the_others(emu, store_dir):
    emu.inject("issuecredential", Fault(delay=30.0))
    holder = spawn(["cert", "--json", "--store-dir", store_dir])
    deadline = time.time() + 20
    while emu.count("issuecredential") < 1 and time.time() < deadline:
        time.sleep(0.02)
    assert emu.count("issuecredential") == 1  # the holder is inside its mint, lock held
    waiter = spawn(["cert", "--json", "--store-dir", store_dir])
    with pytest.raises(subprocess.TimeoutExpired):
        waiter.wait(timeout=1.0)  # blocked on the lock
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    out, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 0, err
    assert json.loads(out)["source"] == "imds"
    assert emu.count("issuecredential") == 2


def _assert_store_usable(store_dir):
    store = FileStore(store_dir)
    try:
        entry = store.find(Identity(), issuer_cn=ISSUER)
    except CorruptEntry as exc:  # pragma: no cover - this is the failure being tested for
        pytest.fail(f"torn store entry after SIGKILL: {exc}")
    return entry


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["temp-half-written", "temp-synced", "renamed"])
def test_sigkill_at_each_write_phase_leaves_old_or_new_entry(emu, store_dir, phase):
    emu.lifetime, emu.backdate = 3600.0, 3000.0  # every certificate is already due
    seed = subprocess.run([sys.executable, "-m", "msicert", "cert", "--json", "--store-dir",
                           store_dir], capture_output=True, text=True, env=cli_env(),
                          cwd=str(ROOT), timeout=60)
    assert seed.returncode == 0, seed.stderr
    old = json.loads(seed.stdout)["x5t_s256"]
    killed = spawn(["cert", "--json", "--store-dir", store_dir], {"CRASH_AT": phase})
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    entry = _assert_store_usable(store_dir)
    assert entry is not None
    if phase == "renamed":
        assert entry.x5t_s256 != old
    else:
        assert entry.x5t_s256 == old
    assert any(n.startswith(".msal_mtls.pem.tmp-") for n in os.listdir(store_dir)) == (
        phase != "renamed")
    after = subprocess.run([sys.executable, "-m", "msicert", "cert", "--json", "--store-dir",
                            store_dir], capture_output=True, text=True, env=cli_env(),
                           cwd=str(ROOT), timeout=60)
    assert after.returncode == 0, after.stderr
    assert not any(n.startswith(".msal_mtls.pem.tmp-") for n in os.listdir(store_dir))


@pytest.mark.slow
def test_sigkill_at_random_instants_never_tears_the_store(emu, store_dir):
    emu.lifetime, emu.backdate = 3600.0, 3000.0  # every certificate is due: each run renews
    rng = random.Random(1234)
    kills = 0
    for _ in range(20):
        p = spawn(["cert", "--json", "--store-dir", store_dir])
        time.sleep(rng.uniform(0.05, 0.6))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.communicate(timeout=60)
        _assert_store_usable(store_dir)
    assert kills >= 5
    final = subprocess.run([sys.executable, "-m", "msicert", "cert", "--json", "--store-dir",
                            store_dir], capture_output=True, text=True, env=cli_env(),
                           cwd=str(ROOT), timeout=60)
    assert final.returncode == 0, final.stderr
    assert _assert_store_usable(store_dir) is not None


# --- the lock wait outlasts any holder with the same settings ------------------------------

TIMED_CLIENT = r"""
import json, sys, time
from msicert import ManagedIdentityClient, Timeouts
c = ManagedIdentityClient(store_dir=sys.argv[1], imds_endpoint=sys.argv[2],
                          imds_timeouts=Timeouts(connect=1.0, read=4.0), lock_timeout=0.5)
print("ready", flush=True)
start = time.monotonic()
cert = c.get_certificate()
print(json.dumps({"x5t": cert.x5t_s256, "source": cert.source,
                  "took": time.monotonic() - start,
                  "lock_wait": getattr(c, "lock_wait", None)}), flush=True)
"""


def _timed_client(store_dir, emu):
    return subprocess.Popen([sys.executable, "-c", TIMED_CLIENT, store_dir, emu.imds_url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env(), cwd=str(ROOT))


def test_waiter_outlasts_a_stalled_holder_past_a_short_lock_timeout_and_uses_its_certificate(
        emu, store_dir):
    emu.inject("issuecredential", Fault(delay=2.5))  # the holder stalls inside its mint
    holder = _timed_client(store_dir, emu)
    deadline = time.time() + 30
    while emu.count("issuecredential") < 1 and time.time() < deadline:
        time.sleep(0.02)
    assert emu.count("issuecredential") == 1  # lock held, mint under way
    waiter = _timed_client(store_dir, emu)
    assert waiter.stdout.readline().strip() == "ready"
    h_out, h_err = holder.communicate(timeout=60)
    w_out, w_err = waiter.communicate(timeout=60)
    assert holder.returncode == 0, h_err
    assert waiter.returncode == 0, w_err  # before: StoreError after lock_timeout=0.5 s
    held = json.loads(h_out.splitlines()[-1])
    waited = json.loads(w_out.splitlines()[-1])
    assert held["source"] == "imds" and waited["source"] == "store"
    assert waited["x5t"] == held["x5t"]
    assert waited["took"] > 1.0  # it waited past twice the lock_timeout it was given
    assert waited["lock_wait"] == pytest.approx(2 * (8 * 5.0 + 70 * 0.001) + 30.0)
    assert emu.count("issuecredential") == 1 and emu.count("getplatformmetadata") == 1


def test_lock_wait_is_the_worst_case_mint_plus_overhead(make_client, monkeypatch, store_dir):
    from msicert import ManagedIdentityClient
    from msicert._mint import MINT_OVERHEAD, imds_worst_case
    from msicert.wire._retry import RetryPolicy

    assert MINT_OVERHEAD == 30.0
    # 2 calls x (8 tries x (2 + 10 s) + the reference's 70 s of waits)
    assert imds_worst_case(RetryPolicy(), 2.0, 10.0) == 332.0
    assert imds_worst_case(RetryPolicy(retries=0, gone_retries=0), 1.0, 2.0) == 6.0
    assert imds_worst_case(RetryPolicy(scale=0), 1.0, 2.0) == 2 * 8 * 3.0
    monkeypatch.delenv("MSICERT_IMDS_RETRY_SCALE")
    default = ManagedIdentityClient(store_dir=store_dir)
    assert (default.mint_budget, default.lock_wait) == (332.0, 362.0)
    monkeypatch.setenv("MSICERT_IMDS_RETRY_SCALE", "0.001")
    scaled = make_client(imds_timeouts=Timeouts(connect=1.0, read=4.0), lock_timeout=0.5)
    assert scaled.mint_budget == pytest.approx(2 * (8 * 5.0 + 70 * 0.001))
    assert scaled.lock_wait == pytest.approx(scaled.mint_budget + MINT_OVERHEAD)
    bounded = make_client(imds_timeouts=Timeouts(connect=2.0, read=10.0, total=20.0))
    assert (bounded.mint_budget, bounded.lock_wait) == (20.0, 50.0)
    patient = make_client(imds_timeouts=Timeouts(connect=2.0, read=10.0, total=20.0),
                          lock_timeout=600.0)
    assert patient.lock_wait == 600.0  # lock_timeout only ever lengthens the wait
    assert make_client(retry=RetryPolicy(scale=0.0),
                       imds_timeouts=Timeouts(connect=1.0, read=1.0)).mint_budget == 2 * 8 * 2.0
