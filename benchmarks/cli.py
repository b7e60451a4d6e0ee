"""``python -m benchmarks``: run every phase, print the markdown report, write the JSON.

Needs root (BPF). ``--quick`` is a smoke run of a few seconds that proves the benchmark still
works; its figures mean nothing. ``--baseline GIT_REF`` runs that commit's daemon beside this
tree's, from a temporary extract of it that is removed at the end.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import phases, report
from benchmarks.configurations import (
    CONFIGURATIONS,
    baseline_configuration,
    baseline_name,
    extract,
    scratch_dir,
)
from benchmarks.loadgen import LoadGenerator

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="procmond's overhead, against its targets."
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5)")
    parser.add_argument("--seconds", type=float, help="load per path per round (default 3)")
    parser.add_argument(
        "--syscall-seconds", type=float, help="getppid() load per round (default 1)"
    )
    parser.add_argument(
        "--cost-seconds", type=float, help="load per path for the BPF timing (default 1)"
    )
    parser.add_argument("--workers", type=int, help="load processes (default: one per core)")
    parser.add_argument("--series", type=int, help="series for the scrape test (default 10000)")
    parser.add_argument("--scrapes", type=int, help="scrapes timed (default 200)")
    parser.add_argument(
        "--idle", type=float, help="seconds the idle daemon's CPU is measured (default 60)"
    )
    parser.add_argument("--soak", type=float, help="soak length in seconds (default 600)")
    parser.add_argument("--soak-rate", type=float, help="creations/s in the soak (default 1000)")
    parser.add_argument(
        "--configs",
        default=",".join(CONFIGURATIONS),
        help=f"comma-separated subset of {','.join(CONFIGURATIONS)}",
    )
    parser.add_argument("--skip", default="", help="phases to skip: throughput,cost,scrape,soak")
    parser.add_argument(
        "--baseline",
        metavar="GIT_REF",
        help="also run the daemon of this commit (extracted to a temporary folder) as the "
        "configuration procmond@<commit>, beside this tree's, in the throughput, cost and "
        "scrape phases, and compare the two",
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        help="only render the report again from a JSON file a run wrote (no root needed)",
    )
    parser.add_argument("--out", type=Path, default=HERE / "out", help="where the JSON goes")
    parser.add_argument(
        "--results",
        type=Path,
        help="also write the markdown report here (default for full runs, every phase of "
        "every configuration: benchmarks/RESULTS.md; quick and partial runs write none)",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "rounds": 1 if quick else 5,
        "seconds": 0.3 if quick else 3.0,
        "cost_seconds": 0.2 if quick else 1.0,
        "syscall_seconds": 0.2 if quick else 1.0,
        "workers": os.cpu_count() or 1,
        "series": 500 if quick else 10_000,
        "scrapes": 10 if quick else 200,
        "idle": 1.0 if quick else 60.0,
        "soak": 4.0 if quick else 600.0,
        "soak_rate": 200.0 if quick else 1000.0,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    configs = [c for c in args.configs.split(",") if c]
    unknown = set(configs) - set(CONFIGURATIONS)
    if unknown:
        parser.error(f"unknown configurations: {', '.join(sorted(unknown))}")
    # RESULTS.md is the record of one whole run: a run of some phases or configurations (a
    # look at one figure) must not replace it with a report of not-measured rows.
    # A comparison with another build is not that record either.
    whole = not args.skip.strip(",") and set(configs) | {"none"} == set(CONFIGURATIONS)
    whole = whole and not args.baseline
    if args.results is None and whole and not quick and not args.from_json:
        args.results = HERE / "RESULTS.md"
    if "none" not in configs:
        configs.insert(0, "none")  # every ratio is to it
    args.baseline_name = None
    if args.baseline and not args.from_json:
        args.baseline_name = baseline_name(args.baseline)
        # right after this tree's daemon, so that the two run as close in time as can be
        at = configs.index("procmond") + 1 if "procmond" in configs else len(configs)
        configs.insert(at, args.baseline_name)
    args.config_list = configs
    return args


def environment() -> dict[str, Any]:
    """The host, for the report: figures mean little without it."""
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    bcc = subprocess.run(
        [sys.executable, "-c", "import bcc; print(bcc.__version__)"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    from procmond import __version__

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "kernel": platform.release(),
        "cores": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": mem_kib / 1024 / 1024,
        "python": platform.python_version(),
        "bcc": bcc or "unknown",
        "libc": " ".join(platform.libc_ver()),
        "procmond": __version__,
        "commit": commit,
        "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
    }


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def render(results: dict[str, Any], results_path: Path | None) -> str:
    """Figures and report from the raw results; the report also goes to ``results_path``."""
    summary = report.summarize(results)
    results["summary"] = summary
    text = report.markdown(results, summary)
    if results_path:
        results_path.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        results = json.loads(args.from_json.read_text())
        print(render(results, args.results))
        return 0
    if os.geteuid() != 0:
        print("bench: needs root (it loads BPF programs)", file=sys.stderr)
        return 1
    # SIGTERM unwinds like Ctrl-C, so that every probe the benchmark started is stopped.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    skip = set(args.skip.split(",")) - {""}
    settle = 0.2 if args.quick else 1.0
    command = "./scripts/dev.sh bench" + (
        " " + shlex.join(argv if argv is not None else sys.argv[1:])
        if (argv if argv is not None else sys.argv[1:])
        else ""
    )
    results: dict[str, Any] = {
        "environment": environment(),
        "parameters": {
            "command": command,
            "quick": args.quick,
            "rounds": args.rounds,
            "seconds": args.seconds,
            "workers": args.workers,
            "configs": args.config_list,
            "series": args.series,
            "scrapes": args.scrapes,
            "idle": args.idle,
            "soak": args.soak,
            "soak_rate": args.soak_rate,
        },
    }
    if args.baseline_name:
        results["parameters"]["baseline"] = {"ref": args.baseline, "name": args.baseline_name}
    workdir = Path(tempfile.mkdtemp(prefix="procmond-bench-", dir=scratch_dir()))
    try:
        gen = LoadGenerator(workdir)
        available: dict[str, Any] = dict(CONFIGURATIONS)
        baselines = {}
        if args.baseline_name:
            # the commit resolved at the start (not the ref, which could move meanwhile)
            commit = args.baseline_name.removeprefix("procmond@")
            tree = extract(commit, workdir / "baseline")
            log(f"baseline: {args.baseline} extracted to {tree}, run as {args.baseline_name}")
            baselines[args.baseline_name] = baseline_configuration(args.baseline_name, tree)
            available.update(baselines)
        if "throughput" not in skip:
            log(f"throughput: {args.rounds} rounds of {', '.join(args.config_list)}")
            results["throughput"] = phases.throughput(
                gen,
                workdir,
                args.config_list,
                args.rounds,
                args.seconds,
                args.syscall_seconds,
                args.workers,
                settle,
                log,
                available,
                # a smoke run need not wait as long for each configuration to be idle again
                0.1 if args.quick else 0.3,
            )
        if "cost" not in skip:
            log("probe cost: BPF run time per creation")
            results["probe_cost"], results["probe_cost_by_size"] = phases.probe_cost(
                gen,
                workdir,
                args.config_list,
                args.cost_seconds,
                args.workers,
                log,
                (0, 16) if args.quick else phases.FORK_SIZES_MIB,
                available,
            )
        if "scrape" not in skip:
            log(f"scrape: {args.series:,} series, {args.scrapes} scrapes")
            results["scrape"] = phases.scrape_latency(
                gen, workdir, args.series, args.scrapes, settle, log, args.idle, baselines
            )
        if "soak" not in skip:
            log(f"soak: {args.soak:g} s at {args.soak_rate:g} creations/s")
            results["soak"] = phases.soak(
                gen,
                workdir,
                args.soak,
                args.soak_rate,
                samples=10 if args.quick else 60,
                scrape_interval=1.0 if args.quick else 15.0,
                settle=settle,
                log=log,
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["environment"]["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    text = render(results, args.results)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path = args.out / f"bench-{stamp}{'-quick' if args.quick else ''}.json"
    json_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    (args.out / "latest.json").write_text(json_path.read_text())
    print(text)
    log(f"JSON: {json_path}" + (f"; report: {args.results}" if args.results else ""))
    return 0
