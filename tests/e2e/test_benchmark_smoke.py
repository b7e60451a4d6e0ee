"""The benchmark still works: a quick run gives the table and a JSON file with every figure,
this tree's daemon beside another build's (``--baseline``: here the last commit's, extracted to
a folder of the run's that is gone at the end).

Only that it works: the quick run is seconds long on a machine running the test suite, so its
figures mean nothing and no timing or target is asserted here (benchmarks/RESULTS.md has them).
"""

from __future__ import annotations

import json
import math
import re
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
        [sys.executable, "-m", "benchmarks", "--quick", "--baseline", "HEAD", "--out", tmp_path],
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
    baseline = results["parameters"]["baseline"]["name"]
    assert re.fullmatch(r"procmond@[0-9a-f]{7,}", baseline), baseline
    assert summary["configs"] == ["none", "procmond", baseline, *CONFIGS[2:]]
    extracted = re.search(r"extracted to (\S+),", result.stderr)
    assert extracted and not Path(extracted.group(1)).exists(), result.stderr
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
    assert set(summary["syscalls"]) == {*CONFIGS, baseline}
    for scrape in (summary["scrape"], summary["scrape_baselines"][baseline]):
        assert set(scrape["p99_ms"]) == {"plain", "prometheus"}
        assert scrape["series"] == results["parameters"]["series"]
    for config in ("procmond", baseline):  # the two builds, side by side
        assert set(summary["rates"][config]) == set(PATHS)
        assert set(summary["probe_cost"][config]) == set(PATHS)
        assert {"ready_seconds", "rss_mib"} <= set(summary["starts"][config])
    compared = {row["figure"] for row in summary["builds"]}
    assert {"start → serving", "RSS after start", "RSS after the scrapes"} <= compared
    assert sum(figure.startswith("scrape p99") for figure in compared) == 2
    assert f"## This tree against HEAD ({baseline})" in table
    assert "rss_growth_mib" in summary["soak"]
    targets = summary["targets"]
    assert len(targets) == 14
    assert all(t["met"] is not None for t in targets), targets
    for target in targets:
        assert target["name"] in table
