"""The shared token cache across real processes: one ESTS call per resource for processes
started together, no wait on another process's mint, SIGKILL at any instant of a write, a full
disk and a read-only store directory (tokens stay in the process)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from msicert import Identity
from msicert._shared_tokens import decode
from msicert.backends.posix._file_store import FileStore
from msicert.emulator import Fault
from tests.conftest import ROOT, cli_env, cli_json
from tests.test_concurrency import spawn

VAULT = "https://vault.azure.net"
STORAGE = "https://storage.azure.com"
PHASES = ("temp-half-written", "temp-synced", "renamed")  # _store_write._crash_point


def _scopes(emu) -> Counter[str]:
    return Counter(parse_qs(r.body.decode())["scope"][0]
                   for r in emu.requests if r.endpoint == "token" and r.method == "POST")


def _cached_scopes(store_dir: str) -> set[str]:
    """The scopes in the token cache; fails the test when the file does not decode."""
    try:
        tokens = decode(Path(store_dir, "msal_mtls.tokens").read_bytes(), "system")
    except ValueError as exc:  # pragma: no cover - the failure being tested for
        pytest.fail(f"torn token cache after SIGKILL: {exc}")
    return {t.scope for t in tokens}


def _temps(store_dir: str) -> list[str]:
    return [n for n in os.listdir(store_dir) if n.startswith(".msal_mtls.tokens.tmp-")]


# --- single flight across processes -------------------------------------------------------------
TWO_RESOURCES = r"""
import json, os, sys, time
from msicert import ManagedIdentityClient
import msicert._shared_tokens, msicert._token_cache  # loaded before the start line
client = ManagedIdentityClient(store_dir=sys.argv[1], imds_endpoint=sys.argv[2])
while not os.path.exists(sys.argv[3]):
    time.sleep(0.001)
tokens = {r: client.acquire_token(r) for r in sys.argv[4:]}
print(json.dumps({r: [t.source, t.access_token] for r, t in tokens.items()}))
"""


@pytest.mark.slow
def test_eight_processes_started_together_make_one_ests_call_per_resource(emu, store_dir,
                                                                          tmp_path):
    emu.inject("token", Fault(delay=0.3, times=None))  # every request overlaps the others
    go = tmp_path / "go"
    procs = [subprocess.Popen(
        [sys.executable, "-c", TWO_RESOURCES, store_dir, emu.imds_url, str(go),
         *((VAULT, STORAGE) if i % 2 else (STORAGE, VAULT))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(), cwd=str(ROOT))
        for i in range(8)]
    time.sleep(1.5)  # every child imported and waits at the start line
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    emu.clear_faults()
    assert [p.returncode for p in procs] == [0] * 8, [e for _, e in outs]
    results = [json.loads(out) for out, _ in outs]
    assert _scopes(emu) == {f"{VAULT}/.default": 1, f"{STORAGE}/.default": 1}
    assert emu.count("issuecredential") == 1  # the cold store: one mint for all eight
    for resource in (VAULT, STORAGE):
        assert len({r[resource][1] for r in results}) == 1  # one token, everywhere
        assert sorted(r[resource][0] for r in results) == (
            ["identity_provider"] + ["shared_cache"] * 7)


HOLD_MINT_LOCK = r"""
import sys, time
from msicert import Identity
from msicert.backends.posix._file_store import FileStore
with FileStore(sys.argv[1]).lock(Identity(), timeout=5).hold():
    print("held", flush=True)
    time.sleep(30)
"""


def test_a_token_request_never_waits_for_another_process_holding_the_mint_lock(
        emu, store_dir, make_client):
    client = make_client()
    client.get_certificate()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_MINT_LOCK, store_dir],
                              stdout=subprocess.PIPE, text=True, env=cli_env(), cwd=str(ROOT))
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert make_client().acquire_token(VAULT).source == "identity_provider"
        assert make_client().acquire_token(VAULT).source == "shared_cache"
        assert holder.poll() is None  # the mint lock was held throughout
    finally:
        holder.kill()
        holder.wait(10)
    assert emu.count("token") == 1


# --- a crash mid-write leaves a readable cache --------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("phase", PHASES)
def test_sigkill_at_each_write_phase_of_the_token_cache_leaves_it_readable(emu, store_dir,
                                                                           phase):
    cli_json("token", "--resource", VAULT, "--store-dir", store_dir)  # the certificate too
    killed = spawn(["token", "--resource", STORAGE, "--json", "--store-dir", store_dir],
                   {"CRASH_AT": phase})
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    written = {f"{VAULT}/.default", f"{STORAGE}/.default"}
    assert _cached_scopes(store_dir) == (written if phase == "renamed"
                                         else {f"{VAULT}/.default"})
    assert bool(_temps(store_dir)) == (phase != "renamed")
    after = cli_json("token", "--resource", STORAGE, "--store-dir", store_dir)
    assert after["source"] == ("shared_cache" if phase == "renamed" else "identity_provider")
    assert _cached_scopes(store_dir) == written
    assert _temps(store_dir) == []  # the next write swept the stray temp file
    assert emu.count("token") == (2 if phase == "renamed" else 3)


@pytest.mark.slow
def test_sigkill_at_random_instants_never_tears_the_token_cache(emu, store_dir):
    cli_json("token", "--resource", VAULT, "--store-dir", store_dir)
    rng = random.Random(2020)
    kills = 0
    for i in range(20):
        p = spawn(["token", "--resource", f"https://r{i}.example", "--json", "--store-dir",
                   store_dir])
        time.sleep(rng.uniform(0.02, 0.35))  # a warm `token` process lives ~0.3 s
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.communicate(timeout=60)
        assert f"{VAULT}/.default" in _cached_scopes(store_dir)
    assert kills >= 5
    final = cli_json("token", "--resource", VAULT, "--store-dir", store_dir)
    assert final["source"] == "shared_cache"


# --- a full disk or a read-only directory: tokens stay in the process ---------------------------
DEGRADED = r"""
import errno, json, os, resource, signal, subprocess, sys
from msicert import ManagedIdentityClient
store_dir, imds, how = sys.argv[1:4]
client = ManagedIdentityClient(store_dir=store_dir, imds_endpoint=imds)
client.get_certificate()
if how == "file-size-limit":
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))
elif how == "full-filesystem":
    fd = os.open(os.path.join(store_dir, "filler"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 512)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
elif how == "read-only-mount":
    for args in (["--bind", store_dir, store_dir], ["-o", "remount,bind,ro", store_dir]):
        subprocess.run(["mount", *args], check=True)
elif how == "mode-0500":
    os.chmod(store_dir, 0o500)
first = client.acquire_token(sys.argv[4])
again = client.acquire_token(sys.argv[4])
print(json.dumps({"sources": [first.source, again.source],
                  "same": first.access_token == again.access_token,
                  "files": sorted(os.listdir(store_dir))}))
"""


def _can_mount() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False)
    return probe.returncode == 0


needs_mount = pytest.mark.skipif(
    not _can_mount(), reason="a private tmpfs or read-only bind mount needs root and unshare -m")


def _degraded(emu, store_dir: str, how: str, *, mount: str | None = None) -> dict:
    argv = [sys.executable, "-c", DEGRADED, store_dir, emu.imds_url, how, VAULT]
    if mount is not None:  # in a private mount namespace: nothing outlives the child
        os.makedirs(store_dir, mode=0o700)
        argv = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                f'mount -t tmpfs -o {mount} tmpfs "$0" && exec "$@"', store_dir, *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, env=cli_env(), cwd=str(ROOT),
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    result["stderr"] = proc.stderr
    assert result["sources"] == ["identity_provider", "cache"] and result["same"]
    assert "msal_mtls.tokens" not in result["files"]
    assert not any(n.startswith(".msal_mtls.tokens.tmp-") for n in result["files"])
    assert emu.count("token") == 1 and emu.count("issuecredential") == 1
    return result


def test_a_write_that_fails_leaves_the_token_in_the_process(emu, store_dir):
    """RLIMIT_FSIZE: every write past 64 bytes fails with EFBIG, as on a full disk."""
    result = _degraded(emu, store_dir, "file-size-limit")
    assert "cannot write shared token cache" in result["stderr"]
    assert "File too large" in result["stderr"]


@needs_mount
def test_a_full_filesystem_leaves_the_token_in_the_process(emu, store_dir):
    result = _degraded(emu, store_dir, "full-filesystem", mount="size=64k,mode=0700")
    assert "cannot write shared token cache" in result["stderr"]
    assert "No space left on device" in result["stderr"]


@needs_mount
def test_a_read_only_store_directory_leaves_the_token_in_the_process(emu, store_dir):
    result = _degraded(emu, store_dir, "read-only-mount", mount="mode=0700")
    assert "cannot use the token lock" in result["stderr"]
    assert "Read-only file system" in result["stderr"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores mode bits: covered by the "
                    "read-only mount test")
def test_a_store_directory_without_write_permission_leaves_the_token_in_the_process(emu,
                                                                                     store_dir):
    try:
        result = _degraded(emu, store_dir, "mode-0500")
    finally:
        os.chmod(store_dir, 0o700)
    assert "cannot use the token lock" in result["stderr"]


def test_the_fetch_lock_and_the_write_lock_are_files_beside_the_entry_never_the_mint_lock(
        store_dir):
    store = FileStore(store_dir)
    mint = store.lock(Identity(), timeout=1.0).lock_path
    write = store.token_lock(Identity(), None, timeout=1.0).lock_path
    fetch = {store.token_lock(Identity(), f"https://r{i}.example/.default",
                              timeout=1.0).lock_path for i in range(64)}
    assert mint == f"{store_dir}/msal_mtls.lock"
    assert write == f"{store_dir}/msal_mtls.tokens.lock"
    assert fetch == {f"{store_dir}/msal_mtls.tokens-{n}.lock" for n in range(8)}
