"""Judge a pytest-benchmark JSON file against msicert's performance targets.

Usage: ``python3 benchmarks/check.py benchmarks/results.json [--markdown]``

Every measured benchmark carries its targets in ``extra_info`` (see ``_benchutil.describe``):
a floor (another benchmark of the same run, or interleaved floor-process samples), a maximum
ratio to that floor, an absolute maximum in microseconds, and/or a sibling it must stay within
a ratio of. Medians are compared. Prints one line per target, then exits 1 if any target was
missed (or a required benchmark is absent from the file), 2 if the file is unusable, else 0.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from typing import Any

# Benchmarks that must be present in a full run on Linux/macOS (a missing one is a miss);
# on Windows the POSIX ones skip, so the list is not enforced for a Windows results file.
REQUIRED = (
    "test_memory_hit",
    "test_store_lookup[1]",
    "test_store_lookup[1000]",
    "test_store_lookup_first_in_process[1]",
    "test_store_lookup_first_in_process[1000]",
    "test_build_context[emulator-ca]",
    "test_build_context[system-ca]",
    "test_tls_cache_hit",
    "test_cold_mint",
    "test_token_cache_hit",
    "test_import_msicert",
    "test_cli_cert_json_warm",
    "test_shared_token_hit",
    "test_cli_token_json_warm",
    "test_eight_token_processes_started_together",
)


@dataclass(frozen=True)
class Row:
    """One judged target."""

    name: str
    label: str
    median_us: float
    floor_label: str | None
    floor_us: float | None
    ratio: float | None
    target: str
    verdict: str  # OK, MISS or INFO
    sibling: bool = False  # compared with another measurement rather than a floor
    shown: str = ""  # what was observed, when it is not a time (a count)

    def line(self) -> str:
        """``name: median X µs, floor Y µs, ratio R (target ≤ T) OK/MISS``."""
        seen = self.shown or f"median {_us(self.median_us)}"
        text = f"{self.name} [{self.label}]: {seen}"
        if self.floor_us is not None:
            text += (f", vs {self.floor_label} {_us(self.floor_us)}" if self.sibling
                     else f", floor {_us(self.floor_us)}")
        if self.ratio is not None:
            text += f", ratio {self.ratio:.2f}"
        return f"{text} ({self.target}) {self.verdict}"


def _load(values: Any) -> str:
    return "/".join(f"{v:.2f}" for v in values) if values else "?"


def _us(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f} µs"
    if abs(value) >= 10:
        return f"{value:.1f} µs"
    return f"{value:.3f} µs"


def _value_us(bench: dict[str, Any]) -> float:
    """The benchmark's median in µs, minus the median of its baseline samples if any."""
    info = bench.get("extra_info", {})
    value = float(bench["stats"]["median"])
    if info.get("baseline_samples_s"):
        value -= statistics.median(info["baseline_samples_s"])
    return value * 1e6


def _floor_us(bench: dict[str, Any], by_name: dict[str, dict[str, Any]]) -> tuple[str, float]:
    """(floor label, floor median in µs) or KeyError when the floor was not measured."""
    info = bench.get("extra_info", {})
    if info.get("floor"):
        floor = by_name[info["floor"]]
        return floor.get("extra_info", {}).get("label", info["floor"]), _value_us(floor)
    samples = info.get("floor_samples_s")
    if not samples:
        raise KeyError("no floor")
    value = statistics.median(samples)
    if info.get("baseline_samples_s"):
        value -= statistics.median(info["baseline_samples_s"])
    return str(info.get("floor_label", "floor")), value * 1e6


def judge(benchmarks: list[dict[str, Any]]) -> list[Row]:
    """Every target of every measured benchmark, in file order."""
    by_name = {b["name"]: b for b in benchmarks}
    rows: list[Row] = []
    for bench in benchmarks:
        info = bench.get("extra_info", {})
        if info.get("role") != "measure":
            continue
        name, label = bench["name"], info.get("label", bench["name"])
        value = _value_us(bench)
        has_floor = bool(info.get("floor") or info.get("floor_samples_s"))
        floor_label: str | None = None
        floor_value: float | None = None
        if has_floor:
            try:
                floor_label, floor_value = _floor_us(bench, by_name)
            except KeyError:
                rows.append(Row(name, label, value, None, None, None,
                                f"floor {info.get('floor')!r} not measured", "MISS"))
        if floor_value is not None:
            ratio = value / floor_value if floor_value > 0 else float("inf")
            limit = info.get("max_ratio")
            target = f"target ≤ {limit:g}" if limit is not None else "no target"
            verdict = "INFO" if limit is None else ("OK" if ratio <= limit else "MISS")
            rows.append(Row(name, label, value, floor_label, floor_value, ratio, target, verdict))
        for diag in info.get("interleaved") or []:
            # noise diagnostic: a comparison timed right before each measured round
            if diag.get("samples_s"):
                inter = statistics.median(diag["samples_s"]) * 1e6
                rows.append(Row(name, label, value, diag["label"], inter, value / inter,
                                "no target", "INFO", sibling=True))
        cpu = info.get("cpu_diagnostic_s")
        if cpu and cpu.get("target") and cpu.get("floor"):
            # child CPU time (user+sys): less disturbed by other load than wall-clock time
            base = statistics.median(cpu["baseline"]) if cpu.get("baseline") else 0.0
            t_cpu = (statistics.median(cpu["target"]) - base) * 1e6
            f_cpu = (statistics.median(cpu["floor"]) - base) * 1e6
            rows.append(Row(name, label + ", CPU time", t_cpu, "floor CPU time (diagnostic)",
                            f_cpu, t_cpu / f_cpu if f_cpu > 0 else float("inf"),
                            "no target", "INFO", sibling=True))
        if info.get("max_us") is not None:
            limit = float(info["max_us"])
            rows.append(Row(name, label, value, None, None, None, f"target ≤ {limit:g} µs",
                            "OK" if value <= limit else "MISS"))
        if info.get("compare_to"):
            other = by_name.get(info["compare_to"])
            limit = float(info.get("max_compare_ratio") or 1.0)
            if other is None:
                rows.append(Row(name, label, value, None, None, None,
                                f"sibling {info['compare_to']!r} not measured", "MISS"))
            else:
                other_value = _value_us(other)
                ratio = max(value / other_value, other_value / value)
                rows.append(Row(name, label, value, info["compare_to"], other_value, ratio,
                                f"target ≤ {limit:g}x either way",
                                "OK" if ratio <= limit else "MISS", sibling=True))
        for sibling in info.get("info_compare_to") or []:
            other = by_name.get(sibling)
            if other is not None:
                other_value = _value_us(other)
                rows.append(Row(name, label, value, sibling, other_value, value / other_value,
                                "no target", "INFO", sibling=True))
        counts = info.get("counts")
        if counts:  # a count every round must equal (e.g. ESTS calls), not a time
            observed = list(counts.get("observed") or [])
            expected = counts.get("expected")
            ok = bool(observed) and all(n == expected for n in observed)
            rows.append(Row(name, f"{label}: {counts.get('label', 'count')}", float("nan"),
                            None, None, None, f"target = {expected} in every round",
                            "OK" if ok else "MISS",
                            shown=f"{len(observed)} rounds, observed {observed}"))
        if not (has_floor or info.get("max_us") is not None or info.get("compare_to")
                or info.get("info_compare_to") or counts):
            rows.append(Row(name, label, value, None, None, None, "no target", "INFO"))
    return rows


def markdown(rows: list[Row]) -> str:
    """The rows as a Markdown table (for benchmarks/README.md)."""
    out = ["| benchmark | median | compared with | its median | ratio | target | result |",
           "|---|---:|---|---:|---:|---|---|"]
    for r in rows:
        out.append(
            f"| `{r.name}` {r.label} | {r.shown or _us(r.median_us)} | {r.floor_label or ''} | "
            f"{_us(r.floor_us) if r.floor_us is not None else ''} | "
            f"{f'{r.ratio:.2f}' if r.ratio is not None else ''} | {r.target} | {r.verdict} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Print every ratio; 1 if a target is missed, 2 if the file is unusable."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="pytest-benchmark --benchmark-json output")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    args = parser.parse_args(argv)
    try:
        with open(args.results, encoding="utf-8") as f:
            data = json.load(f)
        benchmarks = data["benchmarks"]
    except (OSError, ValueError, KeyError) as exc:
        print(f"check: cannot read {args.results}: {exc}", file=sys.stderr)
        return 2
    machine = data.get("machine_info", {})
    commit = data.get("commit_info", {})
    cpu = machine.get("cpu", {}).get("brand_raw", "?")
    dirty = " (dirty tree)" if commit.get("dirty") else ""
    commit_id = str(commit.get("id", "?"))[:12]
    print(f"machine: {machine.get('nproc', '?')} CPUs, {cpu}, "
          f"Python {machine.get('python_version', '?')}; load average at start "
          f"{_load(machine.get('loadavg_at_start'))}, at end "
          f"{_load(machine.get('loadavg_at_end'))}; commit {commit_id}{dirty}")
    rows = judge(benchmarks)
    present = {b["name"] for b in benchmarks}
    if machine.get("system", "") != "Windows":  # where the run happened, not where we check
        for name in REQUIRED:
            if name not in present:
                rows.append(Row(name, "required benchmark", float("nan"), None, None, None,
                                "not in the results file", "MISS"))
    if not rows:
        print("check: no measured benchmarks in the file", file=sys.stderr)
        return 2
    for row in rows:
        print(row.line())
    if args.markdown:
        print()
        print(markdown(rows))
    missed = [r for r in rows if r.verdict == "MISS"]
    ok = sum(r.verdict == "OK" for r in rows)
    print(f"\n{ok} target(s) met, {len(missed)} missed, "
          f"{sum(r.verdict == 'INFO' for r in rows)} info")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
