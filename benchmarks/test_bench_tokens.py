"""The shared token cache: a token in a new client or a new process with zero ESTS calls.

* shared hit in a new client: ``ManagedIdentityClient(store_dir=...).acquire_token(R)`` served
  from the shared token cache, against the store lookup (``get_certificate()`` of a new client
  on the same store) measured right before it; target 2x;
* warm ``python -m msicert token --resource R --json``: served from the shared cache (0 ESTS
  calls, asserted), against a warm ``python -m msicert cert --json`` on the same store
  (interleaved); target 1.2x;
* eight ``msicert token`` processes started together on an empty token cache, four per
  resource: exactly one ESTS call per resource in every round (the target, asserted and
  judged); their wall time against eight warm ``msicert cert`` processes started together is
  recorded as INFO.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _benchutil import (
    ROOT,
    describe,
    describe_floor,
    interleaved_processes,
    python_argv,
    subprocess_env,
)

VAULT = "https://vault.azure.net"
STORAGE = "https://storage.azure.com"
LOOKUP = pytest.mark.benchmark(group="shared token cache", min_time=2e-4, max_time=2.0,
                               warmup=True)
PROCESS = pytest.mark.benchmark(group="shared token cache")
CLI_ROUNDS = 20
TOGETHER_ROUNDS = 10
WARMUP = 3


@pytest.fixture(scope="module")
def token_store(tmp_path_factory: pytest.TempPathFactory, minted_entry: Any) -> str:
    """A 0700 store of its own holding the minted entry (its token cache starts empty)."""
    directory = tmp_path_factory.mktemp("tokens") / "certs"
    directory.mkdir(mode=0o700)
    fd = os.open(directory / "msal_mtls.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, minted_entry.data)
    finally:
        os.close(fd)
    return str(directory)


def _warm_token(make_client: Callable[[str], Any], store_dir: str) -> None:
    token = make_client(store_dir).acquire_token(VAULT)
    assert token.source in ("identity_provider", "shared_cache")
    assert Path(store_dir, "msal_mtls.tokens").is_file()


@LOOKUP
def test_floor_shared_token_hit(benchmark: Any, make_client: Callable[[str], Any],
                                token_store: str) -> None:
    """The floor: the store lookup of a new client on the same store."""
    def lookup() -> Any:
        return make_client(token_store).get_certificate()

    assert lookup().source == "store"
    describe_floor(benchmark, "store lookup, new client (get_certificate)")
    benchmark(lookup)


@LOOKUP
def test_shared_token_hit(benchmark: Any, emulator: Any, make_client: Callable[[str], Any],
                          token_store: str) -> None:
    """A new client's first ``acquire_token``, served from the shared token cache."""
    _warm_token(make_client, token_store)

    def shared_hit() -> Any:
        return make_client(token_store).acquire_token(VAULT)

    assert shared_hit().source == "shared_cache"
    calls = emulator.count("token")
    describe(benchmark, "shared token cache hit, new client", floor="test_floor_shared_token_hit",
             max_ratio=2.0)
    assert benchmark(shared_hit).source == "shared_cache"
    assert emulator.count("token") == calls  # really no ESTS call while measuring


@PROCESS
def test_cli_token_json_warm(benchmark: Any, emulator: Any, make_client: Callable[[str], Any],
                             token_store: str) -> None:
    """``python -m msicert token --resource R --json`` from the shared cache, versus a warm
    ``python -m msicert cert --json`` (the store hit)."""
    _warm_token(make_client, token_store)
    env = subprocess_env()
    target = python_argv("-m", "msicert", "token", "--resource", VAULT, "--json",
                         "--store-dir", token_store)
    floor = python_argv("-m", "msicert", "cert", "--json", "--store-dir", token_store)
    out = subprocess.run(target, env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["source"] == "shared_cache"
    calls = emulator.count("token"), emulator.count("issuecredential")
    floor_samples, cpu = interleaved_processes(benchmark, target, floor, env, rounds=CLI_ROUNDS,
                                               warmup=WARMUP)
    assert (emulator.count("token"), emulator.count("issuecredential")) == calls
    describe(benchmark, "warm `python -m msicert token --json` process (shared cache)",
             max_ratio=1.2, floor_label="warm `python -m msicert cert --json` process",
             floor_samples_s=floor_samples, cpu_diagnostic_s=cpu)


def _together(argvs: list[list[str]], env: dict[str, str]) -> float:
    """Start every process at once; wall-clock seconds until the last one exits."""
    start = time.perf_counter()
    procs = [subprocess.Popen(argv, env=env, cwd=str(ROOT), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE) for argv in argvs]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    elapsed = time.perf_counter() - start
    failed = [(p.returncode, e.decode(errors="replace")[-500:]) for p, e in
              zip(procs, errors, strict=True) if p.returncode != 0]
    assert not failed, failed
    return elapsed


@PROCESS
def test_eight_token_processes_started_together(benchmark: Any, emulator: Any,
                                                token_store: str) -> None:
    """Eight ``msicert token`` processes (four per resource) on an empty token cache: one ESTS
    call per resource in every round."""
    env = subprocess_env()
    tokens = Path(token_store, "msal_mtls.tokens")
    target = [python_argv("-m", "msicert", "token", "--resource", (VAULT, STORAGE)[i % 2],
                          "--json", "--store-dir", token_store) for i in range(8)]
    floor = [python_argv("-m", "msicert", "cert", "--json", "--store-dir", token_store)] * 8
    floor_samples: list[float] = []
    per_round: list[int] = []
    before = [0]

    def setup() -> None:
        floor_samples.append(_together(floor, env))
        tokens.unlink(missing_ok=True)  # every round starts with no token cached
        before[0] = emulator.count("token")

    def run() -> None:
        _together(target, env)
        per_round.append(emulator.count("token") - before[0])

    for _ in range(WARMUP - 1):
        setup()
        run()
    per_round.clear()
    floor_samples.clear()
    benchmark.pedantic(run, setup=setup, rounds=TOGETHER_ROUNDS)
    assert per_round == [2] * TOGETHER_ROUNDS, per_round
    describe(benchmark, "8 `msicert token` processes started together, 2 resources",
             floor_label="8 warm `msicert cert` processes started together",
             floor_samples_s=floor_samples,
             counts={"label": "ESTS token calls per round (2 resources)",
                     "observed": per_round, "expected": 2})
