"""Fresh-process costs: ``import msicert`` and a warm ``python -m msicert cert --json``.

Each round runs the floor (and baseline) process(es) in the untimed ``setup`` of a pedantic
benchmark, timed by hand, and then the measured process: the samples are interleaved, so drift
on the machine hits both sides alike. The floor samples travel in ``extra_info`` and
``check.py`` compares medians of wall-clock time (the target). The children's CPU time
(user + system, from ``getrusage``) is recorded too and reported as an INFO diagnostic.

* import: (``python -c "import msicert"`` - ``python -c pass``) versus
  (``python -c "import cryptography.x509"`` - ``python -c pass``);
* warm CLI: ``python -m msicert cert --json`` with a valid stored entry (no IMDS call) versus a
  process that imports cryptography.x509 and reads the store file.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from _benchutil import describe, interleaved_processes, python_argv, run_timed, subprocess_env

IMPORT_ROUNDS = 30
CLI_ROUNDS = 20
WARMUP = 3
PROCESS = pytest.mark.benchmark(group="process")


@PROCESS
def test_import_msicert(benchmark: Any) -> None:
    """Fresh-interpreter cost of ``import msicert`` versus ``import cryptography.x509``."""
    env = subprocess_env()
    target = python_argv("-c", "import msicert")
    floor = python_argv("-c", "import cryptography.x509")
    baseline = python_argv("-c", "pass")
    for _ in range(WARMUP):  # compile caches, page cache
        for argv in (target, floor, baseline):
            run_timed(argv, env)
    floor_samples: list[float] = []
    baseline_samples: list[float] = []
    cpu: dict[str, list[float]] = {"target": [], "floor": [], "baseline": []}

    def setup() -> None:
        floor_samples.append(run_timed(floor, env, cpu["floor"]))
        baseline_samples.append(run_timed(baseline, env, cpu["baseline"]))

    def run() -> None:
        run_timed(target, env, cpu["target"])

    benchmark.pedantic(run, setup=setup, rounds=IMPORT_ROUNDS)
    describe(
        benchmark, "import msicert (minus python -c pass)", max_ratio=1.2,
        floor_label="import cryptography.x509 (minus python -c pass)",
        floor_samples_s=floor_samples, baseline_samples_s=baseline_samples,
        cpu_diagnostic_s=cpu,
    )


@PROCESS
def test_cli_cert_json_warm(
    benchmark: Any, emulator: Any, populated_store: Callable[[int], str]
) -> None:
    """``python -m msicert cert --json`` served from the store, versus import + read."""
    store_dir = populated_store(1)
    entry = f"{store_dir}/msal_mtls.pem"
    env = subprocess_env()
    target = python_argv("-m", "msicert", "cert", "--json", "--store-dir", store_dir)
    floor = python_argv(
        "-c", f"import cryptography.x509\nwith open({entry!r}, 'rb') as f: f.read()"
    )
    calls = emulator.count("getplatformmetadata"), emulator.count("issuecredential")
    out = subprocess.run(target, env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["source"] == "store"
    floor_samples, cpu = interleaved_processes(benchmark, target, floor, env, rounds=CLI_ROUNDS,
                                               warmup=WARMUP)
    assert (emulator.count("getplatformmetadata"), emulator.count("issuecredential")) == calls
    describe(
        benchmark, "warm `python -m msicert cert --json` process", max_ratio=1.3,
        floor_label="process: import cryptography.x509 + read the store file",
        floor_samples_s=floor_samples, cpu_diagnostic_s=cpu,
    )
