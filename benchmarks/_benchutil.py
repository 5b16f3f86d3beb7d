"""Helpers shared by the benchmark files: target bookkeeping and subprocess timing.

Every measured benchmark records in ``benchmark.extra_info`` what ``check.py`` needs to judge
it: the floor it is compared with (the name of another benchmark of the same run, or timing
samples of an interleaved floor process), the ratio and/or absolute targets, and a label.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

try:
    import resource
except ImportError:  # Windows: no getrusage, so no CPU-time diagnostic
    resource = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parent.parent


def _children_cpu() -> float:
    if resource is None:
        return 0.0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def describe(
    benchmark: Any,
    label: str,
    *,
    floor: str | None = None,
    max_ratio: float | None = None,
    max_us: float | None = None,
    compare_to: str | None = None,
    max_compare_ratio: float | None = None,
    **info: Any,
) -> None:
    """Record a measured benchmark's label, floor and targets for ``check.py``.

    ``floor`` names the floor benchmark (its pytest-benchmark ``name``); ``compare_to`` names
    a sibling measurement the median must stay within ``max_compare_ratio`` of (either way).
    A benchmark with no target at all is reported as INFO.
    """
    benchmark.extra_info.update(
        {
            "role": "measure",
            "label": label,
            "floor": floor,
            "max_ratio": max_ratio,
            "max_us": max_us,
            "compare_to": compare_to,
            "max_compare_ratio": max_compare_ratio,
            **info,
        }
    )


def describe_floor(benchmark: Any, label: str, **info: Any) -> None:
    """Mark a benchmark as the floor (minimal work) that others are compared with."""
    benchmark.extra_info.update({"role": "floor", "label": label, **info})


def subprocess_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment with the repository first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    env.update(extra or {})
    return env


def run_timed(
    argv: Sequence[str], env: Mapping[str, str], cpu: list[float] | None = None
) -> float:
    """Wall-clock seconds of one child process (fails loudly if the child fails).

    When ``cpu`` is given, the child's user+system CPU seconds are appended to it: a
    diagnostic that a busy shared machine disturbs less than wall-clock time.
    """
    before = _children_cpu()
    start = time.perf_counter()
    proc = subprocess.run(
        list(argv), env=dict(env), cwd=str(ROOT), capture_output=True, check=False,
    )
    elapsed = time.perf_counter() - start
    after = _children_cpu()
    if proc.returncode != 0:
        raise AssertionError(
            f"{argv!r} exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-2000:]}"
        )
    if cpu is not None and resource is not None:
        cpu.append(after - before)
    return elapsed


def interleaved_processes(
    benchmark: Any, target: Sequence[str], floor: Sequence[str], env: Mapping[str, str], *,
    rounds: int, warmup: int = 3,
) -> tuple[list[float], dict[str, list[float]]]:
    """Time ``target`` as ``rounds`` pedantic rounds, each preceded by one ``floor`` run.

    Both warm up ``warmup`` times first (compiled ``.pyc`` files, a warm page cache). Returns
    the floor's wall-clock samples and both sides' child CPU seconds, for ``describe``.
    """
    for _ in range(warmup):
        run_timed(target, env)
        run_timed(floor, env)
    floor_samples: list[float] = []
    cpu: dict[str, list[float]] = {"target": [], "floor": []}

    def setup() -> None:
        floor_samples.append(run_timed(floor, env, cpu["floor"]))

    def run() -> None:
        run_timed(target, env, cpu["target"])

    benchmark.pedantic(run, setup=setup, rounds=rounds)
    return floor_samples, cpu


def python_argv(*args: str) -> list[str]:
    """``[sys.executable, *args]``: the interpreter running the benchmarks."""
    return [sys.executable, *args]


def median(samples: Sequence[float]) -> float:
    """The median of ``samples``."""
    return statistics.median(samples)
