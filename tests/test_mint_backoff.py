"""No mint storms: after a failed mint (or a fresh certificate ESTS keeps refusing), the
identity's mints pause, doubling with jitter; calls inside the pause fail at once with the
error that started it. Threads share the pause, and so do processes, through a marker beside
the store's lock; the marker never costs a valid certificate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from msicert import (
    AttestationRequiredError,
    Backoff,
    BackoffActive,
    ImdsError,
    ImdsResponseError,
    TokenError,
)
from msicert.emulator import Fault
from tests.conftest import ROOT, cli_env, run_cli

RESOURCE = "https://vault.azure.net"


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def _marker(store_dir: str) -> dict:
    with open(os.path.join(store_dir, "msal_mtls.backoff"), "rb") as f:
        return json.loads(f.read())


def test_calls_inside_the_pause_fail_fast_with_the_same_error(make_client, emu):
    clock = Clock()
    c = make_client(clock=clock, mint_backoff=Backoff(10.0, 100.0))
    emu.inject("issuecredential", Fault(status=403, times=None))
    with pytest.raises(ImdsError) as first:
        c.get_certificate()
    assert emu.count("issuecredential") == 1
    for _ in range(5):
        with pytest.raises(ImdsError) as again:
            c.get_certificate()
        assert type(again.value) is type(first.value) and str(again.value) == str(first.value)
        assert again.value.status == 403
        assert isinstance(again.value.__cause__, BackoffActive)
        assert "no new mint for" in str(again.value.__cause__)
    assert emu.count("issuecredential") == 1 and emu.count("getplatformmetadata") == 1
    clock.offset += 10.0  # past any window the first failure opens (5-10 s)
    emu.clear_faults()
    assert c.get_certificate().source == "imds"


def test_the_pause_doubles_with_jitter_and_is_capped(make_client, emu):
    clock = Clock()
    c = make_client(clock=clock, mint_backoff=Backoff(10.0, 30.0))
    emu.inject("getplatformmetadata", Fault(status=403, times=None))
    windows = []
    for _ in range(4):
        with pytest.raises(ImdsError):
            c.get_certificate()
        gate = c._gate
        windows.append(gate.until - gate.since)
        clock.offset += windows[-1]  # to the end of the window
    assert 5.0 <= windows[0] <= 10.0 and 10.0 <= windows[1] <= 20.0
    assert 15.0 <= windows[2] <= 30.0 and 15.0 <= windows[3] <= 30.0  # capped at 30 s
    assert emu.count("getplatformmetadata") == 4


def test_threads_share_the_pause(make_client, emu):
    c = make_client(mint_backoff=Backoff(30.0, 30.0))
    emu.inject("getplatformmetadata", Fault(status=403, times=None))
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def call() -> None:
        start.wait()
        try:
            c.get_certificate()
        except ImdsError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert len(errors) == 8 and {e.status for e in errors} == {403}
    assert emu.count("getplatformmetadata") == 1


def test_other_clients_of_the_identity_in_the_process_share_the_pause(make_client, emu):
    emu.inject("getplatformmetadata", Fault(status=403, times=None))
    with pytest.raises(ImdsError):
        make_client(mint_backoff=Backoff(30.0, 30.0)).get_certificate()
    with pytest.raises(ImdsError):
        make_client(mint_backoff=Backoff(30.0, 30.0)).get_certificate()
    assert emu.count("getplatformmetadata") == 1


def test_the_marker_records_the_pause_beside_the_lock(make_client, emu, store_dir):
    c = make_client(mint_backoff=Backoff(30.0, 30.0))
    emu.inject("getplatformmetadata", Fault(status=403, times=None))
    with pytest.raises(ImdsError):
        c.get_certificate()
    path = os.path.join(store_dir, "msal_mtls.backoff")
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    doc = _marker(store_dir)
    assert doc["kind"] == "mint" and doc["error"]["type"] == "ImdsError"
    assert doc["error"]["attrs"]["status"] == 403
    assert 15.0 <= doc["until"] - doc["since"] <= 30.0


_CERT_IN_NEW_PROCESS = """
import json, sys
from msicert import ManagedIdentityClient, MsiCertError
client = ManagedIdentityClient(store_dir=sys.argv[1], imds_endpoint=sys.argv[2])
try:
    cert = client.get_certificate()
    print(json.dumps({"source": cert.source}))
except MsiCertError as exc:
    print(json.dumps({"error": type(exc).__name__, "text": str(exc),
                      "backoff": type(exc.__cause__).__name__}))
"""


def test_processes_started_together_make_one_mint_and_share_its_error(emu, store_dir):
    """IMDS's clock is 20 min ahead of this host's: the new certificate is refused (beyond the
    15 min tolerated) and five processes started together make one mint, not five."""
    emu.backdate = -1200.0
    procs = [subprocess.Popen([sys.executable, "-c", _CERT_IN_NEW_PROCESS, store_dir,
                               emu.imds_url], stdout=subprocess.PIPE, text=True,
                              env=cli_env(), cwd=str(ROOT)) for _ in range(5)]
    results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert emu.count("issuecredential") == 1
    assert [r["error"] for r in results] == ["ImdsResponseError"] * 5
    assert len({r["text"] for r in results}) == 1
    assert "20 min 00 s ahead of this host's clock" in results[0]["text"] or \
        "19 min 59 s ahead" in results[0]["text"]
    assert sorted(r["backoff"] for r in results) == ["BackoffActive"] * 4 + ["NoneType"]


def test_a_marker_never_costs_a_valid_certificate(make_client, emu, store_dir):
    good = make_client().get_certificate()
    with open(os.path.join(store_dir, "msal_mtls.backoff"), "w") as f:
        json.dump({"v": 1, "since": time.time(), "until": time.time() + 600, "kind": "mint",
                   "rejected": "", "error": {"type": "ImdsError", "message": "x",
                                             "attrs": {}}}, f)
    os.chmod(os.path.join(store_dir, "msal_mtls.backoff"), 0o600)
    fresh = make_client(mint_backoff=Backoff(30.0, 30.0)).get_certificate()
    assert fresh.x5t_s256 == good.x5t_s256 and fresh.source == "store"


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'{"v": 1}', b'{"v":1,"since":"x"}',
                                     b"\xff" * 5000])
def test_a_marker_that_does_not_parse_is_ignored(make_client, emu, store_dir, content):
    os.makedirs(store_dir, mode=0o700, exist_ok=True)
    with open(os.path.join(store_dir, "msal_mtls.backoff"), "wb") as f:
        f.write(content)
    os.chmod(os.path.join(store_dir, "msal_mtls.backoff"), 0o600)
    assert make_client(mint_backoff=Backoff(30.0, 30.0)).get_certificate().source == "imds"


def test_a_marker_others_could_write_is_ignored(make_client, emu, store_dir):
    os.makedirs(store_dir, mode=0o700, exist_ok=True)
    path = os.path.join(store_dir, "msal_mtls.backoff")
    with open(path, "w") as f:
        json.dump({"v": 1, "since": time.time(), "until": time.time() + 600, "kind": "mint",
                   "rejected": "", "error": {"type": "ImdsError", "message": "planted",
                                             "attrs": {}}}, f)
    os.chmod(path, 0o666)
    assert make_client(mint_backoff=Backoff(30.0, 30.0)).get_certificate().source == "imds"


def test_a_marker_from_another_process_pauses_this_one(make_client, emu, store_dir):
    emu.inject("getplatformmetadata", Fault(status=403, times=1))
    proc = run_cli("cert", "--store-dir", store_dir)
    assert proc.returncode == 1
    assert emu.count("getplatformmetadata") == 1
    with pytest.raises(ImdsError) as err:
        make_client(mint_backoff=Backoff(30.0, 30.0)).get_certificate()
    assert err.value.status == 403 and isinstance(err.value.__cause__, BackoffActive)
    assert emu.count("getplatformmetadata") == 1


def test_purge_ends_the_pause(make_client, emu, store_dir):
    c = make_client(mint_backoff=Backoff(30.0, 30.0))
    emu.inject("getplatformmetadata", Fault(status=403, times=1))
    with pytest.raises(ImdsError):
        c.get_certificate()
    assert os.path.exists(os.path.join(store_dir, "msal_mtls.backoff"))
    c.purge()
    assert not os.path.exists(os.path.join(store_dir, "msal_mtls.backoff"))
    assert c.get_certificate().source == "imds"


def test_purge_in_another_process_ends_this_processs_pause(make_client, emu, store_dir):
    c = make_client(mint_backoff=Backoff(300.0, 300.0))
    emu.inject("getplatformmetadata", Fault(status=403, times=1))
    with pytest.raises(ImdsError):
        c.get_certificate()
    with pytest.raises(ImdsError) as inside:
        c.get_certificate()
    assert isinstance(inside.value.__cause__, BackoffActive)
    proc = run_cli("purge", "--store-dir", store_dir)
    assert proc.returncode == 0, proc.stderr
    assert not os.path.exists(os.path.join(store_dir, "msal_mtls.backoff"))
    assert c.get_certificate().source == "imds"  # the operator's purge ended the pause here
    assert emu.count("getplatformmetadata") == 2


def test_a_mint_that_works_in_another_process_ends_this_processs_pause(make_client, emu,
                                                                       store_dir):
    c = make_client(mint_backoff=Backoff(300.0, 300.0))
    emu.inject("getplatformmetadata", Fault(status=403, times=1))
    with pytest.raises(ImdsError):
        c.get_certificate()
    os.unlink(os.path.join(store_dir, "msal_mtls.backoff"))  # what another process's
    proc = run_cli("cert", "--store-dir", store_dir)  # mint would find: no pause, so it mints
    assert proc.returncode == 0, proc.stderr
    assert c.get_certificate().source == "store"  # picked up, not refused by the stale pause
    assert emu.count("issuecredential") == 1


def test_with_no_marker_written_the_pause_holds_in_the_process(make_client, emu, store_dir):
    """A store where the marker cannot be written (here: a directory in its place) keeps
    the pause in memory; the marker's absence then says nothing."""
    c = make_client(mint_backoff=Backoff(300.0, 300.0))
    os.makedirs(os.path.join(store_dir, "msal_mtls.backoff"))
    emu.inject("getplatformmetadata", Fault(status=403, times=1))
    with pytest.raises(ImdsError):
        c.get_certificate()
    for _ in range(3):
        with pytest.raises(ImdsError) as inside:
            c.get_certificate()
        assert isinstance(inside.value.__cause__, BackoffActive)
    assert emu.count("getplatformmetadata") == 1


def test_a_persistent_invalid_client_costs_no_mint_and_no_ests_call_inside_the_pause(
        make_client, emu):
    c = make_client(mint_backoff=Backoff(60.0, 60.0), remediation_timeout=0.5,
                    sleep=time.sleep)
    c.get_certificate()
    emu.inject("token", Fault(kind="invalid_client", times=None))
    with pytest.raises(TokenError, match="kept answering invalid_client"):
        c.acquire_token(RESOURCE)
    mints, asks = emu.count("issuecredential"), emu.count("token")
    for _ in range(3):
        with pytest.raises(TokenError, match="kept answering invalid_client") as err:
            c.acquire_token(RESOURCE)
        assert isinstance(err.value.__cause__, BackoffActive)
    assert emu.count("issuecredential") == mints and emu.count("token") == asks


def test_attestation_required_is_remembered_for_the_process_and_for_an_hour_in_the_store(
        make_client, emu, store_dir):
    emu.require_attestation = True
    try:
        with pytest.raises(AttestationRequiredError):
            make_client(mint_backoff=Backoff(0.0, 0.0)).get_certificate()
        assert emu.count("issuecredential") == 1
        clock = Clock()
        clock.offset = 7 * 86400  # a week later, in this process: still remembered
        with pytest.raises(AttestationRequiredError) as err:
            make_client(clock=clock, mint_backoff=Backoff(0.0, 0.0)).get_certificate()
        assert isinstance(err.value.__cause__, BackoffActive)
        assert "for the life of this process" in str(err.value.__cause__)
        doc = _marker(store_dir)
        assert doc["error"]["type"] == "AttestationRequiredError"
        assert doc["until"] - doc["since"] == pytest.approx(3600.0)
        proc = run_cli("cert", "--store-dir", store_dir, "--json")  # another process
        assert proc.returncode == 1
        assert json.loads(proc.stdout)["type"] == "AttestationRequiredError"
        assert emu.count("issuecredential") == 1 and emu.count("getplatformmetadata") == 1
    finally:
        emu.require_attestation = False


def test_a_renewal_failure_opens_the_pause_but_the_valid_certificate_keeps_serving(
        make_client, emu):
    clock = Clock()
    emu.lifetime = 1000.0
    c = make_client(clock=clock, mint_backoff=Backoff(60.0, 60.0))
    cert = c.get_certificate()
    clock.offset = cert.renew_after_ts - time.time() + 1
    emu.inject("getplatformmetadata", Fault(status=403, times=None))
    for _ in range(5):
        assert c.get_certificate().x5t_s256 == cert.x5t_s256
    assert emu.count("getplatformmetadata") == 2  # the first mint, one failed renewal


def test_a_clock_that_jumps_back_ends_the_pause(make_client, emu):
    clock = Clock()
    c = make_client(clock=clock, mint_backoff=Backoff(300.0, 300.0))
    emu.inject("getplatformmetadata", Fault(status=403, times=1))
    with pytest.raises(ImdsError):
        c.get_certificate()
    clock.offset -= 120  # a clock set back (before the failure) must not stretch the pause
    assert c.get_certificate().source == "imds"


def test_an_unusable_answer_is_refused_with_the_step_and_pauses_too(make_client, emu):
    emu.inject("issuecredential", Fault(kind="wrong_key", times=1))
    c = make_client(mint_backoff=Backoff(30.0, 30.0))
    with pytest.raises(ImdsResponseError, match="does not carry our public key"):
        c.get_certificate()
    with pytest.raises(ImdsResponseError, match="does not carry our public key"):
        c.get_certificate()
    assert emu.count("issuecredential") == 1
