"""The benchmark still works: a quick run gives the table and a JSON file with every figure.

Only that it works: the quick run is seconds long on a machine running the test suite, so its
figures mean nothing and no timing or target is asserted here (benchmarks/RESULTS.md has them).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from benchmarks.configurations import CONFIGURATIONS
from benchmarks.loadgen import PATHS
from tests.e2e.harness import REPO

CONFIGS = tuple(CONFIGURATIONS)


def _numbers(value: object) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return []


def test_quick_benchmark_reports_every_figure(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    table = result.stdout
    assert "## Targets" in table
    headings = (
        "Creations per second",
        "CPU seconds",
        "Throughput ratio and monitoring CPU",
        "Events counted",
        "BPF time",
        "BPF time per fork by the memory of the forking process",
        "Scrape",
    )
    for heading in headings:
        assert heading in table, heading

    (json_file,) = tmp_path.glob("bench-*-quick.json")
    results = json.loads(json_file.read_text())
    summary = results["summary"]
    assert all(not math.isnan(n) for n in _numbers(summary)), summary
    for config in CONFIGS:
        assert set(summary["rates"][config]) == set(PATHS)
        assert all(rate > 0 for rate in summary["rates"][config].values())
    for config in ("procmond", "prototype", "watch"):
        cpu = summary["cpu_seconds_per_100k"][config]
        assert set(cpu) == {"all", "all_schedstat", "one_tick", *PATHS}
        assert set(summary["events"][config]) == set(PATHS)
        assert set(summary["probe_cost"][config]) == set(PATHS)
        assert {"ready_seconds", "rss_mib", "anon_mib"} <= set(summary["starts"][config])
    for config in ("procmond", "procmond-sys", "procmond-storm"):  # by probe, from the daemon
        newtask = summary["probe_cost"][config]["fork"]["by_probe"]["task_newtask"]
        assert newtask["runs_per_creation"] >= 1 and newtask["ns_per_creation"] > 0
    by_size = summary["probe_cost_by_size"]
    assert set(by_size) == {"procmond", "procmond-sys"} & set(CONFIGS)
    for sizes in by_size.values():
        assert set(sizes) == {"0", "16"}
        assert all(set(paths) == {"fork", "vfork"} for paths in sizes.values())
    assert set(summary["syscalls"]) == set(CONFIGS)
    assert set(summary["scrape"]["p99_ms"]) == {"plain", "prometheus"}
    assert "rss_growth_mib" in summary["soak"]
    targets = summary["targets"]
    assert len(targets) == 14
    assert all(t["met"] is not None for t in targets), targets
    for target in targets:
        assert target["name"] in table
