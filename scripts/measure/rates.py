"""Rates a running procmond sees while a command runs: the numbers behind the alert thresholds.

    python scripts/measure/rates.py URL [--interval S] -- COMMAND...

Scrapes URL/metrics before, every --interval seconds during, and after the command, then prints
per metric the host-wide and top per-command rates: the average over the whole run (last scrape
minus first, divided by the time between them) and the highest rate over one interval. The
measurements behind packaging/prometheus/README.md were made with this script.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

COUNTERS = (
    "procmond_forks_total",
    "procmond_threads_created_total",
    "procmond_execs_total",
    "procmond_exits_total",
    "procmond_fork_failures_total",  # summed over errors
)
LIFETIME = "procmond_process_lifetime_seconds_bucket"
# Exits of processes that lived at most this long, by bucket bound (seconds, as exposed).
SHORT_LIVED_BOUNDS = ("0.001048576", "0.004194304", "0.016777216")

Sample = dict[tuple[str, str], float]  # (series, comm) -> value


def scrape(url: str) -> tuple[float, Sample]:
    """One scrape, summed per (series, comm): parent_comm is not part of a threshold."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    now = time.monotonic()
    values: Sample = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in COUNTERS:
                values[(s.name, s.labels.get("comm", ""))] += s.value
            elif s.name == LIFETIME and s.labels["le"] in SHORT_LIVED_BOUNDS:
                values[(f"short_lived_le_{s.labels['le']}", s.labels["comm"])] += s.value
    return now, values


def rates(a: tuple[float, Sample], b: tuple[float, Sample]) -> Sample:
    dt = b[0] - a[0]
    return {k: (v - a[1].get(k, 0.0)) / dt for k, v in b[1].items()}


def per_series(r: Sample) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for (series, comm), v in r.items():
        out[series][comm] = v
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--show", action="append", default=[], help="a comm to list always")
    argv = sys.argv[1:]
    if "--" not in argv:
        parser.error("no command: give it after --")
    split = argv.index("--")
    args = parser.parse_args(argv[:split])
    command = argv[split + 1 :]

    scrapes = [scrape(args.url)]
    process = subprocess.Popen(command)
    while process.poll() is None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(args.interval)
        scrapes.append(scrape(args.url))
    whole = rates(scrapes[0], scrapes[-1])
    windows = [rates(a, b) for a, b in itertools.pairwise(scrapes)]
    peak: Sample = defaultdict(float)
    for w in windows:
        for k, v in w.items():
            peak[k] = max(peak[k], v)
    host_peak: dict[str, float] = defaultdict(float)
    for w in windows:
        for series, comms in per_series(w).items():
            host_peak[series] = max(host_peak[series], sum(comms.values()))

    elapsed = scrapes[-1][0] - scrapes[0][0]
    print(f"command exited {process.returncode}; {elapsed:.1f} s, {len(windows)} windows")
    for series, comms in sorted(per_series(whole).items()):
        print(
            f"{series}: host {sum(comms.values()):.0f}/s avg, "
            f"{host_peak[series]:.0f}/s peak over {args.interval:g} s"
        )
        top = sorted(comms, key=lambda c: peak[(series, c)], reverse=True)[: args.top]
        top += [c for c in args.show if c in comms and c not in top]
        for comm in top:
            print(f"    {comm!r:20} {comms[comm]:8.1f}/s avg  {peak[(series, comm)]:8.1f}/s peak")
    return process.returncode


if __name__ == "__main__":
    sys.exit(main())
