"""From the phases' raw data to figures (medians, ratios, per-path counts), the targets met or
missed, and the markdown report; the raw data goes into the JSON file alongside, so any figure
can be recomputed differently later."""

from __future__ import annotations

import itertools
import math
import operator
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from benchmarks.loadgen import PATHS
from benchmarks.measures import CLOCK_TICKS, median

LABELS = {
    "none": "no probe",
    "procmond": "procmond daemon (defaults, outside storms)",
    "procmond-sys": "procmond daemon, syscall_probes: true (opt-in, outside storms)",
    "procmond-storm": "procmond daemon, counting per process (storm_threshold: 1)",
    "prototype": "prototype (perf buffer → Python)",
    "watch": "procmond watch",
}


def label(config: str) -> str:
    """What the report calls a configuration; ``procmond@<commit>`` is another build's daemon
    (``--baseline``), with the config of the ``procmond`` row."""
    if config in LABELS:
        return LABELS[config]
    if config.startswith("procmond@"):
        return f"procmond daemon at {config.removeprefix('procmond@')} (same config)"
    return config


# What the prototype can see: clone() only. glibc's fork() is clone(); vfork() is its own
# syscall; glibc 2.34+ makes threads and posix_spawn() children with clone3().
PROTOTYPE_SEES = ("fork",)


# The sign that starts a target's goal, and the check it stands for.
GOAL_CHECKS = {"≤": operator.le, "<": operator.lt, "≥": operator.ge}


@dataclass(frozen=True)
class Target:
    name: str
    goal: str
    measured: str
    met: bool | None  # None: not measured in this run


def _by(rows: Iterable[dict[str, Any]], *keys: str) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    out: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        out[tuple(row[k] for k in keys)].append(row)
    return out


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """The figures, each the median over rounds (counts: the sum over rounds)."""
    summary: dict[str, Any] = {"workers": results["parameters"]["workers"]}
    if "throughput" in results:
        summary.update(_throughput(results["throughput"]))
    if "probe_cost" in results:
        summary["probe_cost"] = _probe_cost(
            results["probe_cost"], summary.get("rates", {}).get("none", {}), results
        )
    if results.get("probe_cost_by_size"):
        summary["probe_cost_by_size"] = {
            config: {
                mib: {
                    path: {
                        "ns_per_creation": c["bpf_ns_per_creation"],
                        "creation_us": c["creation_us"],
                        "share": c["bpf_ns_per_creation"] / (c["creation_us"] * 1000),
                    }
                    for path, c in paths.items()
                }
                for mib, paths in sizes.items()
            }
            for config, sizes in results["probe_cost_by_size"].items()
        }
    if "scrape" in results:
        summary["scrape"] = _scrape(results["scrape"])
        baselines = results["scrape"].get("baselines", {})
        if baselines:
            summary["scrape_baselines"] = {name: _scrape(s) for name, s in baselines.items()}
    if "soak" in results:
        summary["soak"] = _soak(results["soak"])
    summary["targets"] = [t.__dict__ for t in targets(summary)]
    baseline = results["parameters"].get("baseline")
    if baseline:
        summary["builds"] = builds(results, summary, baseline["name"])
    return summary


def builds(results: dict[str, Any], summary: dict[str, Any], other: str) -> list[dict[str, Any]]:
    """This tree's daemon (``procmond``) against another build's (``other``), figure by
    figure: each side's figure (a median of the rounds, or of the scrapes for percentiles)
    and this / other. Start → serving, measured in the same rounds, gets the median of the
    per-round ratios: a round the machine was slow in slows both."""
    rows: list[dict[str, Any]] = []

    def add(figure: str, unit: str, this: Any, base: Any, ratio: float | None = None) -> None:
        if this is None or base is None:
            return
        if ratio is None:
            ratio = this / base if base else None
        rows.append({"figure": figure, "unit": unit, "this": this, "other": base, "ratio": ratio})

    starts = summary.get("starts", {})
    mine, theirs = starts.get("procmond"), starts.get(other)
    if mine and theirs:
        ready = _by(results["throughput"]["starts"], "round", "config")
        per_round = [
            ready[(n, "procmond")][0]["ready_seconds"] / ready[(n, other)][0]["ready_seconds"]
            for n in range(summary["rounds"])
            if (n, "procmond") in ready and (n, other) in ready
        ]
        add(
            "start → serving",
            "s",
            mine["ready_seconds"],
            theirs["ready_seconds"],
            median(per_round),
        )
        add("RSS after start", "MiB", mine["rss_mib"], theirs["rss_mib"])
        add("anonymous RSS after start", "MiB", mine["anon_mib"], theirs["anon_mib"])
    ratios = summary.get("ratios", {})
    for path in PATHS:
        add(
            f"{path} creations/s, ratio to no probe",
            "",
            ratios.get("procmond", {}).get(path),
            ratios.get(other, {}).get(path),
        )
    cpu = summary.get("cpu_seconds_per_100k", {})
    add(
        "daemon CPU per 100,000 creations",
        "s",
        cpu.get("procmond", {}).get("all"),
        cpu.get(other, {}).get("all"),
    )
    cost = summary.get("probe_cost", {})
    for path in ("fork", "thread"):
        add(
            f"BPF time per {path}",
            "ns",
            cost.get("procmond", {}).get(path, {}).get("ns_per_creation"),
            cost.get(other, {}).get(path, {}).get("ns_per_creation"),
        )
    scrape, theirs_scrape = summary.get("scrape"), summary.get("scrape_baselines", {}).get(other)
    if scrape and theirs_scrape:
        for kind, what in (("plain", "plain"), ("prometheus", "Prometheus' request")):
            for p in ("p50", "p99"):
                add(
                    f"scrape {p} at {scrape['series']:,} series, {what}",
                    "ms",
                    scrape[f"{p}_ms"][kind],
                    theirs_scrape[f"{p}_ms"][kind],
                )
        for key, figure, unit in (
            ("cpu_ms_per_scrape", "daemon CPU per scrape", "ms"),
            ("rss_mib_after", "RSS after the scrapes", "MiB"),
            ("idle_cpu_ms_per_s", "daemon CPU when idle", "ms/s"),
        ):
            add(figure, unit, scrape.get(key), theirs_scrape.get(key))
    return rows


def _scrape(scrape: dict[str, Any]) -> dict[str, Any]:
    return {
        "series": scrape["forks_series"],
        "exposition_samples": scrape["exposition_samples"],
        "p50_ms": {k: v * 1000 for k, v in scrape["p50_seconds"].items()},
        "p99_ms": {k: v * 1000 for k, v in scrape["p99_seconds"].items()},
        "bytes": scrape["exposition_bytes"],
        "cpu_ms_per_scrape": scrape["daemon_cpu_seconds_per_scrape"] * 1000,
        "rss_mib_after": scrape["memory_after_scrapes"]["rss_kib"] / 1024,
        "idle_seconds": scrape.get("idle_seconds"),
        "idle_cpu_ms_per_s": scrape.get("idle_cpu_ms_per_second"),
    }


def _throughput(data: dict[str, Any]) -> dict[str, Any]:
    runs = data["runs"]
    configs = data.get("configs") or list(dict.fromkeys(r["config"] for r in runs))
    by_run = {(r["round"], r["config"], r["path"]): r for r in runs}
    # Full rounds only: the closing no-probe run (round == rounds) is a baseline, not a round.
    rounds = sorted({r["round"] for r in runs if r["config"] != "none"} or {0})
    rates: dict[str, dict[str, float]] = {}
    ratios: dict[str, dict[str, float]] = {}
    cpu: dict[str, dict[str, float]] = {}
    events: dict[str, dict[str, dict[str, int]]] = {}
    for config in configs:
        rates[config] = {}
        ratios[config] = {}
        for path in PATHS:
            mine = [r["rate"] for r in runs if r["config"] == config and r["path"] == path]
            rates[config][path] = median(mine)
            ratios[config][path] = median(
                [
                    by_run[(n, config, path)]["rate"] / base
                    for n in rounds
                    if (base := _baseline(by_run, configs, n, config, path))
                ]
            )
        if runs and by_run[(rounds[0], config, PATHS[0])]["cpu_seconds"] is not None:
            per_round, per_round_ns, tick = [], [], []
            for n in rounds:
                mine = [by_run[(n, config, p)] for p in PATHS]
                created = sum(r["created"] for r in mine)
                per_round.append(sum(r["cpu_seconds"] for r in mine) / created * 1e5)
                per_round_ns.append(sum(r["cpu_ns"] for r in mine) / 1e9 / created * 1e5)
                tick.append(1 / CLOCK_TICKS / created * 1e5)
            cpu[config] = {
                "all": median(per_round),
                "all_schedstat": median(per_round_ns),
                "one_tick": median(tick),
            }
            for path in PATHS:
                cpu[config][path] = median(
                    [
                        by_run[(n, config, path)]["cpu_seconds"]
                        / by_run[(n, config, path)]["created"]
                        * 1e5
                        for n in rounds
                    ]
                )
        if runs and by_run[(rounds[0], config, PATHS[0])]["counted"] is not None:
            events[config] = {
                path: _events([by_run[(n, config, path)] for n in rounds]) for path in PATHS
            }
    syscall_runs = data.get("syscall_runs", [])
    by_syscall = {(r["round"], r["config"], r["path"]): r for r in syscall_runs}
    syscalls = {
        config: {
            "rate": median([r["rate"] for r in syscall_runs if r["config"] == config]),
            "ratio": median(
                [
                    by_syscall[(n, config, "getppid")]["rate"] / base
                    for n in rounds
                    if (n, config, "getppid") in by_syscall
                    and (base := _baseline(by_syscall, configs, n, config, "getppid"))
                ]
            ),
        }
        for config in configs
        if any(r["config"] == config for r in syscall_runs)
    }
    starts: dict[str, dict[str, float]] = {}
    for (config,), rows in _by(data["starts"], "config").items():
        starts[config] = {
            "ready_seconds": median([r["ready_seconds"] for r in rows]),
            "rss_mib": median([r["rss_kib"] / 1024 for r in rows]),
            "anon_mib": median([r["anon_kib"] / 1024 for r in rows]),
            "file_mib": median([r["file_kib"] / 1024 for r in rows]),
            "pss_mib": median([r["pss_kib"] / 1024 for r in rows]),
            "loader_file_mib": median([r["loader_file_kib"] / 1024 for r in rows]),
        }
    lost = {
        config: sum(r["lost"] for r in rows)
        for (config,), rows in _by(data["lost"], "config").items()
    }
    return {
        "configs": configs,
        "rounds": len(rounds),
        "rates": rates,
        "ratios": ratios,
        "cpu_seconds_per_100k": cpu,
        "events": events,
        "lost_reported": lost,
        "syscalls": syscalls,
        "starts": starts,
    }


def _probe_cost(
    data: dict[str, Any], none_rates: dict[str, float], results: dict[str, Any]
) -> dict[str, Any]:
    """BPF time per creation, and the throughput ratio it implies: each of the W workers
    spends W / rate seconds per creation without a probe, and the probe adds its time."""
    workers = results["parameters"]["workers"]
    out: dict[str, Any] = {}
    for config, paths in data.items():
        out[config] = {}
        for path, cost in paths.items():
            ns = cost["bpf_ns_per_creation"]
            base = none_rates.get(path)
            out[config][path] = {
                "ns_per_creation": ns,
                "runs_per_creation": cost["bpf_runs_per_creation"],
                "by_probe": cost.get("by_probe", {}),
                "implied_ratio": 1 / (1 + ns * base / (workers * 1e9)) if base else None,
            }
    return out


def _baseline(
    by_run: dict[tuple[Any, ...], dict[str, Any]],
    configs: list[str],
    round_: int,
    config: str,
    path: str,
) -> float | None:
    """The no-probe rate at the time ``config`` ran in ``round_``: interpolated between the
    no-probe runs that open this round and the next, by the configuration's slot, so that a
    machine slowly getting busier or quieter does not show up as a probe's cost."""
    before = by_run.get((round_, "none", path))
    after = by_run.get((round_ + 1, "none", path))
    if before is None or before["rate"] <= 0:
        return None
    if after is None or after["rate"] <= 0:
        return float(before["rate"])
    weight = configs.index(config) / len(configs)
    return float(before["rate"] * (1 - weight) + after["rate"] * weight)


def _events(runs: list[dict[str, Any]]) -> dict[str, int]:
    """Created, counted and missed over the rounds. Events that procmond counted under
    ``__overflow__`` because the host's other commands had filled its map are not missed
    (its totals stay exact by design): a run's shortfall up to the overflow counter's
    increase during it is put there instead."""
    created = counted = overflow = 0
    for run in runs:
        created += run["created"]
        counted += run["counted"]
        short = run["created"] - run["counted"]
        if short > 0 and run.get("overflowed"):
            overflow += min(short, run["overflowed"])
    return {
        "created": created,
        "counted": counted,
        "overflow": overflow,
        "missed": created - counted - overflow,
    }


def _slope_per_hour(points: list[dict[str, float]], key: str) -> float:
    """Least-squares slope of ``key`` (KiB) over time, in MiB an hour."""
    n = len(points)
    if n < 2:
        return 0.0
    mean_t = sum(p["t"] for p in points) / n
    mean_v = sum(p[key] for p in points) / n
    var = sum((p["t"] - mean_t) ** 2 for p in points)
    cov = sum((p["t"] - mean_t) * (p[key] - mean_v) for p in points)
    return cov / var * 3600 / 1024 if var else 0.0


def _cpu_percent(points: list[dict[str, float]]) -> list[float]:
    return [
        100 * (b["cpu_seconds"] - a["cpu_seconds"]) / (b["t"] - a["t"])
        for a, b in itertools.pairwise(points)
        if b["t"] > a["t"]
    ]


def _soak(data: dict[str, Any]) -> dict[str, Any]:
    points = data["points"]
    first, last = points[0], points[-1]
    cpu = _cpu_percent(points)
    quarter = max(1, len(cpu) // 4)
    span = last["t"] - first["t"]
    achieved_rate = data["created"] / data["load_seconds"] if data["load_seconds"] else 0.0
    return {
        "seconds": data["seconds"],
        "rate": achieved_rate,
        "scrapes": data["scrapes"],
        "rss_mib_start": first["rss_kib"] / 1024,
        "rss_mib_end": last["rss_kib"] / 1024,
        "rss_growth_mib": (last["rss_kib"] - first["rss_kib"]) / 1024,
        "rss_max_growth_mib": (max(p["rss_kib"] for p in points) - first["rss_kib"]) / 1024,
        "anon_growth_mib": (last["anon_kib"] - first["anon_kib"]) / 1024,
        "map_entries_start": first.get("map_entries"),
        "map_entries_end": last.get("map_entries"),
        "rss_slope_mib_per_hour": _slope_per_hour(points, "rss_kib"),
        "cpu_percent_first_quarter": sum(cpu[:quarter]) / quarter if cpu else 0.0,
        "cpu_percent_last_quarter": sum(cpu[-quarter:]) / quarter if cpu else 0.0,
        "cpu_seconds_per_100k": (
            (last["cpu_seconds"] - first["cpu_seconds"]) / (achieved_rate * span) * 1e5
            if achieved_rate and span
            else float("nan")
        ),
    }


def targets(summary: dict[str, Any]) -> list[Target]:
    out = []

    def add(name: str, goal: str, value: float | None, fmt: str) -> None:
        """One target; the goal's text ("≤ 600 ns") is also its check."""
        if value is None:
            out.append(Target(name, goal, "not measured", None))
            return
        sign, limit = goal.split()[:2]
        ok = GOAL_CHECKS[sign](value, float(limit.replace(",", "")))
        out.append(Target(name, goal, fmt.format(value), ok))

    ratio = summary.get("ratios", {}).get("procmond", {}).get("fork")
    implied = summary.get("probe_cost", {}).get("procmond", {}).get("fork", {})
    implied_ratio = implied.get("implied_ratio")
    add(
        "fork throughput with procmond, ratio to no probe"
        + (f" (median of {summary['rounds']} rounds)" if summary.get("rounds") else ""),
        "≥ 0.99",
        ratio,
        "{:.3f}"
        + (
            f" (floor from BPF time, if all on the critical path: {implied_ratio:.3f})"
            if implied_ratio
            else ""
        ),
    )
    getppid = summary.get("syscalls", {}).get("procmond", {}).get("ratio")
    add(
        "getppid() calls per second with procmond, ratio to no probe (any syscall's cost)",
        "≥ 0.99",
        getppid,
        "{:.3f}",
    )
    for config, goal in (("procmond", 600), ("procmond-sys", 1000)):
        ns = summary.get("probe_cost", {}).get(config, {}).get("fork", {}).get("ns_per_creation")
        add(
            f"BPF time per fork, {label(config)}",
            f"≤ {goal} ns",
            ns,
            "{:,.0f} ns",
        )
    cpu = summary.get("cpu_seconds_per_100k", {}).get("procmond", {}).get("all")
    add(
        "daemon CPU per 100,000 creations",
        "≤ 0.020 s",
        cpu,
        "{:.4f} s",
    )
    for config in ("procmond", "watch"):
        events = summary.get("events", {}).get(config)
        if events is None:
            add(f"events missed, {label(config)}, every path", "0", None, "")
            continue
        missed = {p: e["missed"] for p, e in events.items()}
        created = sum(e["created"] for e in events.values())
        worst = ", ".join(f"{p} {m:,}" for p, m in missed.items() if m)
        measured = f"0 of {created:,}" if not worst else f"{worst} (of {created:,})"
        out.append(
            Target(
                f"events missed, {label(config)}, every path at the maximum rate",
                "0",
                measured,
                all(m == 0 for m in missed.values()),
            )
        )
    scrape = summary.get("scrape")
    p99 = max(scrape["p99_ms"].values()) if scrape else None
    add(
        f"scrape p99 at {scrape['series']:,} series (worse of plain and Prometheus' request)"
        if scrape
        else "scrape p99 at 10,000 series",
        "≤ 20 ms",
        p99,
        "{:.1f} ms",
    )
    rss = scrape and scrape.get("rss_mib_after")
    add(
        "RSS after the scrapes at 10,000 series",
        "≤ 30 MiB",
        rss,
        "{:.1f} MiB",
    )
    idle = scrape and scrape.get("idle_cpu_ms_per_s")
    add(
        "daemon CPU when idle (no connection)",
        "≤ 0.2 ms/s",
        idle,
        "{:.3f} ms/s",
    )
    start = summary.get("starts", {}).get("procmond")
    add(
        "start → serving /metrics",
        "≤ 1 s",
        start and start["ready_seconds"],
        "{:.2f} s",
    )
    add(
        "RSS after start",
        "≤ 40 MiB",
        start and start["rss_mib"],
        "{:.1f} MiB",
    )
    add(
        "anonymous RSS after start",
        "≤ 25 MiB",
        start and start["anon_mib"],
        "{:.1f} MiB",
    )
    soak = summary.get("soak")
    add(
        f"RSS growth over the soak ({_duration(soak['seconds'])})" if soak else "RSS growth",
        "< 1 MiB",
        soak and soak["rss_growth_mib"],
        "{:+.2f} MiB",
    )
    return out


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def _met(ok: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "not measured"}[ok]


def _num(value: float, digits: int = 0) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def markdown(results: dict[str, Any], summary: dict[str, Any]) -> str:
    env = results["environment"]
    params = results["parameters"]
    out = [
        f"# procmond benchmark, {env['date']}",
        "",
        f"Host: kernel {env['kernel']}, {env['cores']} cores ({env['cpu_model']}), "
        f"{env['memory_gib']:.0f} GiB, Python {env['python']}, BCC {env['bcc']}, "
        f"{env['libc']}, procmond {env['procmond']}"
        + (f" at {env['commit']}" if env.get("commit") else "")
        + ".",
        "",
        f"Run: `{params['command']}`: {params['rounds']} rounds of every configuration in "
        f"turn, in the same order every round, each {params['seconds']:g} s of back-to-back "
        f"creations per path by {params['workers']} worker processes; scrape latency over "
        f"{params['scrapes']} scrapes at {params['series']:,} series; soak "
        f"{_duration(params['soak'])}"
        + (" (shorter than the default 10 min)" if params["soak"] < 600 else "")
        + f" at {params['soak_rate']:g} creations/s"
        + (" (**quick run**: too short for real figures)" if params["quick"] else "")
        + f". Load average before the run {' '.join(env['loadavg_before'])}, after "
        f"{' '.join(env['loadavg_after'])} (the benchmark's own load included).",
        "",
        "How each figure is made, and what was found on the way to the targets: "
        "[README.md](README.md).",
        "",
        "## Targets",
        "",
    ]
    out += _table(
        ["target", "goal", "measured", ""],
        [[t["name"], t["goal"], t["measured"], _met(t["met"])] for t in summary["targets"]],
    )
    if "rates" in summary:
        out += _throughput_tables(summary)
    if "probe_cost" in summary:
        out += _probe_cost_table(summary)
    if "probe_cost_by_size" in summary:
        out += _probe_cost_by_size_table(summary["probe_cost_by_size"])
    if "scrape" in summary:
        s = summary["scrape"]
        out += [
            "",
            f"## Scrape latency, {s['series']:,} procmond_forks_total series "
            f"({s['exposition_samples']:,} samples in all)",
            "",
        ]
        out += _table(
            ["request", "body", "p50", "p99"],
            [
                [
                    {"plain": "text/plain", "prometheus": "Prometheus' Accept, gzip"}[k],
                    f"{s['bytes'][k]:,} B",
                    f"{s['p50_ms'][k]:.1f} ms",
                    f"{s['p99_ms'][k]:.1f} ms",
                ]
                for k in s["p50_ms"]
            ],
        )
        out += [
            "",
            f"Daemon CPU per scrape: {s['cpu_ms_per_scrape']:.1f} ms; its RSS after the "
            f"scrapes: {s['rss_mib_after']:.1f} MiB.",
        ]
        if s.get("idle_cpu_ms_per_s") is not None:
            out[-1] += (
                f" Idle (no connection, {s['idle_seconds']:g} s): "
                f"{s['idle_cpu_ms_per_s']:.3f} ms of CPU per second."
            )
    if "soak" in summary:
        out += _soak_section(results["soak"], summary["soak"])
    if summary.get("builds"):
        out += _builds_section(params["baseline"], summary["builds"], results)
    mappings = results.get("throughput", {}).get("memory_by_mapping", {}).get("procmond")
    if mappings:
        out += ["", "## Where the daemon's memory is after start (largest mappings)", ""]
        out += _table(
            ["mapping", "RSS KiB", "of which anonymous KiB"],
            [[str(m["mapping"]), f"{m['rss_kib']:,}", f"{m['anon_kib']:,}"] for m in mappings],
        )
    return "\n".join(out) + "\n"


def _builds_section(
    baseline: dict[str, str], rows: list[dict[str, Any]], results: dict[str, Any]
) -> list[str]:
    name = baseline["name"]
    how = []
    if "throughput" in results:
        how.append(
            f"{name} ran right after this tree's daemon in every round; start → serving is "
            "the median of the rounds, its ratio the median of the per-round ratios"
        )
    if "scrape" in results:
        how.append(
            "in the scrape phase both ran at once with the same series and were scraped in "
            "turn (percentiles over each build's scrapes)"
        )
    out = [
        "",
        f"## This tree against {baseline['ref']} ({name})",
        "",
        f"The same daemon config; {'; '.join(how) or 'no phase compared them'}. "
        f"Ratio: this tree / {name} (below 1: this tree takes less; for a ratio to no probe, "
        "above 1 is better).",
        "",
    ]
    out += _table(
        ["figure", "this tree", name, "ratio"],
        [
            [
                r["figure"],
                f"{_figure(r['this'])} {r['unit']}".rstrip(),
                f"{_figure(r['other'])} {r['unit']}".rstrip(),
                "n/a" if r["ratio"] is None else f"{r['ratio']:.3f}",
            ]
            for r in rows
        ],
    )
    return out


def _figure(value: float) -> str:
    """Three significant digits or so, whatever the unit."""
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.4g}" if value else "0"


def _throughput_tables(summary: dict[str, Any]) -> list[str]:
    configs = summary["configs"]
    out = [
        "",
        f"## Creations per second (median of {summary['rounds']} rounds; in brackets the ratio "
        "to no probe, median of the per-round ratios)",
        "",
    ]
    rows = []
    for config in configs:
        row = [label(config)]
        for path in PATHS:
            rate = _num(summary["rates"][config][path])
            row.append(
                rate if config == "none" else f"{rate} ({summary['ratios'][config][path]:.3f})"
            )
        rows.append(row)
    out += _table(["configuration", *PATHS], rows)
    syscalls = summary.get("syscalls")
    if syscalls:
        workers = summary.get("workers", 1)
        out += [
            "",
            "## Any syscall: getppid() calls per second (median; ratio to no probe), and the "
            "time each takes",
            "",
            "A probe on a syscall tracepoint puts every task of the host on the kernel's "
            "syscall-tracing path, so every syscall pays, not only the traced ones.",
            "",
        ]
        out += _table(
            ["configuration", "calls/s", "ratio", "ns per call"],
            [
                [
                    label(c),
                    _num(s["rate"]),
                    f"{s['ratio']:.3f}",
                    f"{workers * 1e9 / s['rate']:.0f}" if s["rate"] else "n/a",
                ]
                for c, s in syscalls.items()
            ],
        )
    cpu = summary["cpu_seconds_per_100k"]
    if cpu:
        out += [
            "",
            "## CPU seconds of the monitoring process per 100,000 creations (utime+stime, "
            "during the load and until idle again; median of the rounds)",
            "",
            "utime+stime come in clock ticks: one tick over a round's creations is "
            + ", ".join(f"{cpu[c]['one_tick']:.4f} s ({label(c)})" for c in configs if c in cpu)
            + ". The schedstat column has nanoseconds, for the threads alive at the end.",
            "",
        ]
        out += _table(
            ["configuration", "all paths", "all paths, schedstat", *PATHS],
            [
                [label(c), *(_num(cpu[c][k], 4) for k in ("all", "all_schedstat", *PATHS))]
                for c in configs
                if c in cpu
            ],
        )
    out += ratio_and_cpu_chart(summary)
    events = summary["events"]
    if events:
        out += ["", "## Events counted / created, all rounds", ""]
        rows = []
        for config in configs:
            if config not in events:
                continue
            row = [label(config)]
            for path in PATHS:
                e = events[config][path]
                cell = f"{e['counted']:,} / {e['created']:,}"
                if config == "prototype" and path not in PROTOTYPE_SEES:
                    cell += " (blind)"
                elif e["missed"]:
                    cell += f" (**{e['missed']:,} missed**)"
                if e["overflow"]:
                    cell += f" ({e['overflow']:,} under `__overflow__`: map full)"
                row.append(cell)
            row.append(_num(summary["lost_reported"].get(config, math.nan)))
            rows.append(row)
        out += _table(["configuration", *PATHS, "lost, self-reported"], rows)
        out += [
            "",
            "The prototype sees clone() only: glibc's fork() is clone(), but vfork() is its own "
            "syscall and glibc makes threads and posix_spawn() children with clone3().",
        ]
    starts = summary["starts"]
    out += [
        "",
        "## Start and memory (median of the rounds' starts; memory once ready)",
        "",
    ]
    out += _table(
        [
            "configuration",
            "start → ready",
            "RSS",
            "anonymous",
            "file-backed",
            "of which compiler libraries",
            "PSS",
        ],
        [
            [
                label(c),
                f"{s['ready_seconds']:.2f} s",
                f"{s['rss_mib']:.1f} MiB",
                f"{s['anon_mib']:.1f} MiB",
                f"{s['file_mib']:.1f} MiB",
                f"{s['loader_file_mib']:.1f} MiB",
                f"{s['pss_mib']:.1f} MiB",
            ]
            for c, s in starts.items()
        ],
    )
    daemon = starts.get("procmond")
    if daemon and daemon["loader_file_mib"] > 5:
        out += [
            "",
            f"**The daemon held {daemon['loader_file_mib']:.0f} MiB of BCC's and the "
            "compiler's pages after start**: it should never load them (procmond/kernel/handoff.py "
            "leaves them to the loader child).",
        ]
    return out


def _probe_cost_table(summary: dict[str, Any]) -> list[str]:
    cost = summary["probe_cost"]
    out = [
        "",
        "## BPF time per creation, as the kernel times it (BPF_ENABLE_STATS), and the "
        "throughput ratio it would give if all of it slowed the creating worker (in brackets)",
        "",
        "All programs of the configuration, divided by the load's creations; other processes' "
        "creations meanwhile add to it, and so does the timing itself (two clock reads a run). "
        "So the bracket is a floor for the ratio from the programs, not a prediction. Costs "
        "outside the programs (the syscall-tracing path, waking a reader, the reader's CPU) "
        "are not in it.",
        "",
    ]
    rows = []
    for config, paths in cost.items():
        row = [label(config)]
        for path in PATHS:
            c = paths[path]
            ratio = "" if c["implied_ratio"] is None else f" ({c['implied_ratio']:.3f})"
            row.append(f"{c['ns_per_creation']:,.0f} ns, {c['runs_per_creation']:.1f} runs{ratio}")
        rows.append(row)
    out += _table(["configuration", *PATHS], rows)
    by_probe = [
        [f"{label(config)}, {path}", _probe_shares(paths[path]["by_probe"])]
        for config, paths in cost.items()
        for path in PATHS
        if paths[path].get("by_probe")
    ]
    if by_probe:
        out += [
            "",
            "The daemon's rows by probe, from its own `procmond_bpf_program_run_seconds_total` "
            "and `procmond_bpf_program_runs_total` (ns per creation, and runs of it per creation):",
            "",
        ]
        out += _table(["configuration, path", "by probe"], by_probe)
    return out


def _probe_shares(by_probe: dict[str, dict[str, float]]) -> str:
    """`task_newtask 260 ns (1.00 runs), ...` for the probes that ran, costliest first."""
    ran = [(p, c) for p, c in by_probe.items() if c["runs_per_creation"] >= 0.005]
    ran.sort(key=lambda pc: -pc[1]["ns_per_creation"])
    return ", ".join(
        f"{p} {c['ns_per_creation']:,.0f} ns ({c['runs_per_creation']:.2f} runs)" for p, c in ran
    )


def _probe_cost_by_size_table(by_size: dict[str, Any]) -> list[str]:
    out = [
        "",
        "## BPF time per fork by the memory of the forking process",
        "",
        "The same programs, timed as above, while each worker has written the given memory "
        "before it forks: a fork copies that memory's page tables, which evicts the programs' "
        "code and data from the caches; vfork copies nothing and is the control. Each cell: "
        "BPF time per creation, one worker's time per creation, and the first as a share of "
        "the second.",
        "",
    ]
    sizes = sorted({int(mib) for sizes in by_size.values() for mib in sizes})
    rows = []
    for config, by_mib in by_size.items():
        for path in sorted({p for paths in by_mib.values() for p in paths}, key=PATHS.index):
            row = [f"{label(config)}, {path}"]
            for mib in sizes:
                c = by_mib.get(str(mib), {}).get(path)
                row.append(
                    "n/a"
                    if c is None
                    else f"{c['ns_per_creation']:,.0f} ns of {c['creation_us']:,.1f} µs "
                    f"({c['share']:.2%})"
                )
            rows.append(row)
    out += _table(["configuration, path", *(f"{mib} MiB" for mib in sizes)], rows)
    return out


def _soak_section(data: dict[str, Any], soak: dict[str, Any]) -> list[str]:
    out = [
        "",
        f"## Soak: {_duration(soak['seconds'])}, {soak['rate']:,.0f} creations/s, "
        f"{soak['scrapes']} scrapes",
        "",
        f"RSS {soak['rss_mib_start']:.2f} → {soak['rss_mib_end']:.2f} MiB "
        f"(growth {soak['rss_growth_mib']:+.2f} MiB, at most {soak['rss_max_growth_mib']:+.2f}; "
        f"anonymous {soak['anon_growth_mib']:+.2f}; trend {soak['rss_slope_mib_per_hour']:+.2f} "
        f"MiB/h). CPU {soak['cpu_percent_first_quarter']:.2f} % of a core in the first quarter, "
        f"{soak['cpu_percent_last_quarter']:.2f} % in the last; "
        f"{_num(soak['cpu_seconds_per_100k'], 4)} s per 100,000 creations, scrapes included. "
        f"Label sets in the daemon's maps (the host's own commands included): "
        f"{soak['map_entries_start']:,} at the start, {soak['map_entries_end']:,} at the end.",
        "",
        "```",
        *text_chart(data["points"]),
        "```",
    ]
    return out


def ratio_and_cpu_chart(summary: dict[str, Any], width: int = 40) -> list[str]:
    """The fork throughput ratio and the CPU per 100,000 creations of every configuration as
    text bars (no plotting library needed): the two figures that separate the designs."""
    configs = [c for c in summary["configs"] if c != "none"]
    cpu = summary["cpu_seconds_per_100k"]
    if not configs or not cpu:
        return []
    name_width = max(len(label(c)) for c in configs)
    lines = ["fork throughput, ratio to no probe (bar: 0 to 1.1; | is the 0.99 target)"]
    for c in configs:
        ratio = summary["ratios"][c]["fork"]
        bar = list("█" * round(width * min(ratio, 1.1) / 1.1) + " " * width)[:width]
        target = int(width * 0.99 / 1.1)
        bar[target] = "|" if bar[target] == " " else bar[target]
        lines.append(f"{label(c):<{name_width}}  {ratio:6.3f}  {''.join(bar).rstrip()}")
    top = max(cpu[c]["all"] for c in configs if c in cpu) or 1.0
    lines += ["", f"CPU seconds per 100,000 creations, all paths (bar: 0 to {top:.3f})"]
    for c in configs:
        if c in cpu:
            value = cpu[c]["all"]
            bar = "█" * round(width * value / top)
            lines.append(f"{label(c):<{name_width}}  {value:6.3f}  {bar}".rstrip())
    return [
        "",
        "## Throughput ratio and monitoring CPU per configuration",
        "",
        "```",
        *lines,
        "```",
    ]


def text_chart(points: list[dict[str, float]], rows: int = 20, width: int = 40) -> list[str]:
    """RSS over time as bars (scaled from the lowest to the highest sample, so that any growth
    shows), with anonymous RSS and CPU beside it."""
    step = max(1, math.ceil((len(points) - 1) / rows))
    chosen = points[::step]
    if chosen[-1] is not points[-1]:
        chosen.append(points[-1])
    low = min(p["rss_kib"] for p in points)
    high = max(p["rss_kib"] for p in points)
    lines = [
        f"{'t (s)':>7}  {'RSS MiB':>8}  {'anon MiB':>8}  {'CPU %':>6}  RSS, {low / 1024:.2f}"
        f" to {high / 1024:.2f} MiB"
    ]
    previous = None
    for p in chosen:
        cpu = (
            100 * (p["cpu_seconds"] - previous["cpu_seconds"]) / (p["t"] - previous["t"])
            if previous and p["t"] > previous["t"]
            else 0.0
        )
        filled = 1 + round((width - 1) * (p["rss_kib"] - low) / (high - low)) if high > low else 1
        lines.append(
            f"{p['t']:7.0f}  {p['rss_kib'] / 1024:8.2f}  {p['anon_kib'] / 1024:8.2f}  "
            f"{cpu:6.2f}  {'█' * filled}"
        )
        previous = p
    return lines
