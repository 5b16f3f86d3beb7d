"""Structure of .github/workflows/ci.yml (YAML via PyYAML when present, else plain text)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from native_testutil import REPO_ROOT

WORKFLOW = REPO_ROOT / ".github" / "workflows" / "ci.yml"
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]

pytestmark = pytest.mark.skipif(not WORKFLOW.exists(), reason="workflow not staged here")


def _load() -> dict[str, Any] | None:
    try:
        import yaml
    except ImportError:
        return None
    data = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _run_text(job: dict[str, Any]) -> str:
    return "\n".join(str(step.get("run", "")) for step in job["steps"])


def test_workflow_jobs_matrix_and_backends() -> None:
    data = _load()
    if data is None:
        pytest.skip("PyYAML not installed (test_workflow_text_fallback covers the basics)")
    assert data.get("on", data.get(True))  # PyYAML (YAML 1.1) reads the key `on` as True
    jobs = data["jobs"]
    assert {"linux", "windows", "wine", "benchmark"} <= set(jobs)

    linux, windows = jobs["linux"], jobs["windows"]
    assert linux["runs-on"] == "ubuntu-latest"
    assert linux["strategy"]["matrix"]["python-version"] == PYTHONS
    assert windows["runs-on"] == "windows-latest"
    assert windows["strategy"]["matrix"]["python-version"] == PYTHONS
    assert windows["strategy"]["matrix"]["backend"] == ["cffi", "ctypes"]
    assert windows["env"]["MSICERT_NATIVE_BACKEND"] == "${{ matrix.backend }}"

    for name in ("linux", "windows", "benchmark"):
        text = _run_text(jobs[name])
        assert 'pip install -e ".[test]"' in text, name
        assert "python cdefs/build_ffi.py" in text, name
        assert text.index('pip install -e ".[test]"') < text.index("python cdefs/build_ffi.py")
        uses = [step.get("uses", "") for step in jobs[name]["steps"]]
        assert any(u.startswith("actions/setup-python@") for u in uses), name
    assert "python -m pytest" in _run_text(linux)
    assert "python -m pytest" in _run_text(windows)
    assert "gcc-mingw-w64-x86-64" in _run_text(linux)

    bench = jobs["benchmark"]
    assert bench["runs-on"] == "windows-latest"
    assert "python -m pytest benchmarks --benchmark-only" in _run_text(bench)
    assert "bash tools/wine/run.sh" in _run_text(jobs["wine"])

    for job in jobs.values():
        assert isinstance(job.get("timeout-minutes"), int)
        for step in job["steps"]:
            assert ("uses" in step) != ("run" in step), step


def test_workflow_text_fallback() -> None:
    """Checks that need no YAML parser (and catch tabs, which YAML forbids)."""
    text = WORKFLOW.read_text(encoding="utf-8")
    assert "\t" not in text
    for job in ("linux", "windows", "wine", "benchmark"):
        assert re.search(rf"^  {job}:$", text, re.M), job
    assert 'python-version: ["3.10", "3.11", "3.12", "3.13"]' in text
    assert "backend: [cffi, ctypes]" in text
    assert "MSICERT_NATIVE_BACKEND: ${{ matrix.backend }}" in text
    assert "python -m pytest benchmarks --benchmark-only" in text


def test_windows_job_runs_the_native_tests_against_the_emulator() -> None:
    """The real-Windows-only tests (skipped under Wine) live in tests/native and need the
    emulator: the windows job starts it and exports its address before running them."""
    text = WORKFLOW.read_text(encoding="utf-8")
    job = text[text.index("\n  windows:\n"):text.index("\n  benchmark:\n")]
    emulator = job.index("'-m','msicert','emulator'")
    exported = job.index('"MSICERT_WINE_IMDS=')
    tests = job.index("run: python -m pytest tests/native")
    assert emulator < exported < tests
