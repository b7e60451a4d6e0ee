"""The benchmark's four phases, each returning plain data for the report:

- throughput: every configuration under the same bursts of creations, interleaved round by
  round (ABCD ABCD ...) so that the shared machine's noise hits them alike;
- probe cost: the BPF time per creation, as the kernel times it;
- scrape: a daemon holding many series, scraped again and again;
- soak: a daemon under a steady load and regular scrapes for a long time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks import measures
from benchmarks.configurations import (
    CONFIGURATIONS,
    Configuration,
    Daemon,
    Started,
    wait_for_storms_end,
)
from benchmarks.loadgen import PATHS, LoadGenerator, unique_comm
from procmond.kernel.programs import statistics_on
from tests.support.names import unique_name

Log = Callable[[str], None]
# Configuration name → what makes one in a work folder: CONFIGURATIONS, plus a baseline build's
# daemon when the run compares builds.
Available = Mapping[str, Callable[[Path], Configuration]]


@dataclass
class Run:
    """One burst of creations by one path under one configuration."""

    round: int
    config: str
    path: str
    comm: str
    created: int
    seconds: float
    rate: float
    cpu_seconds: float | None  # the configuration's process, utime+stime, load + drain
    cpu_ns: int | None  # the same from schedstat: ns-precise, but live threads only
    drain_seconds: float  # how long it stayed busy after the load ended
    counted: int | None = None  # what it saw under comm; None if it counts nothing
    # procmond only: events its map sent to __overflow__ during the load (from any process on
    # the host: a map filled by the host's other commands counts a new name there, by design)
    overflowed: int | None = None


def throughput(
    gen: LoadGenerator,
    workdir: Path,
    configs: list[str],
    rounds: int,
    seconds: float,
    syscall_seconds: float,
    workers: int,
    settle: float,
    log: Log,
    available: Available = CONFIGURATIONS,
    idle_window: float = 0.3,
) -> dict[str, object]:
    """``idle_window``: how often a configuration is looked at after a load, until it used
    under 1 % of a core in that time (idle again: its CPU for the load is then read)."""
    runs: list[Run] = []
    syscall_runs: list[dict[str, object]] = []
    starts: list[dict[str, object]] = []
    lost: list[dict[str, object]] = []
    mappings: dict[str, list[dict[str, object]]] = {}
    # ABCD ABCD ... A: the closing "none" brackets the last round, so every round has a
    # no-probe run on each side to interpolate its baseline from (report.py).
    schedule = [(r, name) for r in range(rounds) for name in configs]
    if "none" in configs and len(configs) > 1:
        schedule.append((rounds, "none"))
    for round_, name in schedule:
        config = available[name](workdir)
        started = config.start(settle)
        if started.memory is not None:
            starts.append(
                {
                    "round": round_,
                    "config": name,
                    "ready_seconds": started.ready_seconds,
                    "loader_file_kib": started.loader_file_kib,
                    **asdict(started.memory),
                }
            )
            mappings[name] = started.mappings
        this_round: list[Run] = []
        try:
            for path in PATHS:
                this_round.append(
                    _one_load(gen, config, round_, path, seconds, workers, idle_window)
                )
            # Syscall tracepoints put every task on the kernel's syscall-tracing path: the
            # cost lands on all syscalls of the host, not only on the creations. One worker:
            # a per-call cost of a few percent drowns when the host's own work (and the
            # configuration's) takes turns on every core.
            load = gen.syscalls(syscall_seconds, 1)
            syscall_runs.append(
                {"round": round_, "config": name, "path": "getppid", "rate": load.rate}
            )
        finally:
            config.stop()
        counted = config.counted()
        for run in this_round:
            run.counted = None if counted is None else counted.get(run.comm, 0)
        if config.lost() is not None:
            lost.append({"round": round_, "config": name, "lost": config.lost()})
        runs += this_round
        log(
            (f"round {round_ + 1}/{rounds} {name:9}" if round_ < rounds else "closing none    ")
            + ": "
            + ", ".join(f"{r.path} {r.rate:,.0f}/s" for r in this_round)
            + f", getppid {syscall_runs[-1]['rate'] / 1e6:.1f} M/s"
        )
    return {
        "configs": configs,
        "runs": [asdict(r) for r in runs],
        "syscall_runs": syscall_runs,
        "starts": starts,
        "lost": lost,
        "memory_by_mapping": mappings,
    }


def _one_load(
    gen: LoadGenerator,
    config: Configuration,
    round_: int,
    path: str,
    seconds: float,
    workers: int,
    idle_window: float = 0.3,
) -> Run:
    """The configuration's CPU is read before the load and once it is idle after it, so the
    events it queued and handles late are its cost too."""
    comm = unique_comm(path[:2])
    config.before_load(comm, path)
    pid = config.pid
    cpu_before = measures.cpu_seconds(pid) if pid else 0.0
    ns_before = measures.cpu_ns(pid) if pid else 0
    load = gen.burst(path, seconds, workers, comm)
    busy_ns = round(idle_window * 1e7)  # 1 % of a core: 3 ms in the default 0.3 s
    drained = measures.wait_idle(pid, idle_window, busy_ns) if pid else 0.0
    cpu = measures.cpu_seconds(pid) - cpu_before if pid else None
    ns = measures.cpu_ns(pid) - ns_before if pid else None
    config.after_load(comm, path)
    return Run(
        round_,
        config.name,
        path,
        comm,
        load.created,
        load.seconds,
        load.rate,
        cpu,
        ns,
        drained,
        overflowed=config.overflowed(comm),
    )


# Memory a forking process has written, for the BPF time per fork by process size: the same
# programs take longer after a fork that copied more page tables (their data and code are
# evicted from the caches), which a small load generator alone would not show.
FORK_SIZES_MIB = (0, 64, 256)
SIZED_PATHS = ("fork", "vfork")  # vfork copies no page tables: the control


def probe_cost(
    gen: LoadGenerator,
    workdir: Path,
    configs: list[str],
    seconds: float,
    workers: int,
    log: Log,
    sizes_mib: tuple[int, ...] = FORK_SIZES_MIB,
    available: Available = CONFIGURATIONS,
) -> tuple[dict[str, object], dict[str, object]]:
    """The CPU time each configuration's BPF programs add to every creation, as the kernel
    times them: a figure the machine's noise cannot blur, unlike a throughput ratio. Run
    apart, as the timing itself costs a little on every program run. Second: the procmond
    rows' time per fork and vfork by how much memory the forking process has written."""
    per_config: dict[str, object] = {}
    by_size: dict[str, object] = {}
    with statistics_on():  # the kernel times every program run meanwhile
        for name in configs:
            if name == "none":
                continue
            config = available[name](workdir)
            config.start(0.0)
            assert config.pid is not None
            try:
                per_path = {
                    path: _bpf_time(gen, config, path, seconds, workers, 0) for path in PATHS
                }
                if name in ("procmond", "procmond-sys"):
                    by_size[name] = {
                        str(mib): {
                            path: _bpf_time(gen, config, path, seconds, workers, mib)
                            for path in SIZED_PATHS
                        }
                        for mib in sizes_mib
                    }
            finally:
                config.stop()
            per_config[name] = per_path
            log(
                f"probe cost {name:9}: "
                + ", ".join(f"{p} {v['bpf_ns_per_creation']:,.0f} ns" for p, v in per_path.items())
            )
    return per_config, by_size


def _bpf_time(
    gen: LoadGenerator, config: Configuration, path: str, seconds: float, workers: int, mib: int
) -> dict[str, object]:
    """One load, and the BPF run time of every program of the configuration meanwhile (and,
    for the daemon, of each probe's program, from its own metrics)."""
    assert config.pid is not None
    comm = unique_comm(path[:2])
    config.before_load(comm, path)  # procmond-storm: counting per process
    daemon = config if isinstance(config, Daemon) else None
    probes_before = daemon.program_stats() if daemon else {}
    before = measures.bpf_program_stats(config.pid)
    load = gen.burst(path, seconds, workers, comm, mib)
    after = measures.bpf_program_stats(config.pid)
    by_probe = {  # the daemon's own per-probe figures: which program the time goes to
        probe: {
            "ns_per_creation": (ns - probes_before.get(probe, (0, 0))[0]) / load.created,
            "runs_per_creation": (runs - probes_before.get(probe, (0, 0))[1]) / load.created,
        }
        for probe, (ns, runs) in (daemon.program_stats() if daemon else {}).items()
    }
    config.after_load(comm, path)
    ns = sum(after[p][0] - before.get(p, (0, 0))[0] for p in after)
    runs = sum(after[p][1] - before.get(p, (0, 0))[1] for p in after)
    return {
        "by_probe": by_probe,
        "created": load.created,
        "rate": load.rate,
        "programs": len(after),
        "bpf_ns": ns,
        "bpf_runs": runs,
        "bpf_ns_per_creation": ns / load.created,
        "bpf_runs_per_creation": runs / load.created,
        "creation_us": workers / load.rate * 1e6,  # one worker's time per creation
    }


def scrape_latency(
    gen: LoadGenerator,
    workdir: Path,
    series: int,
    scrapes: int,
    settle: float,
    log: Log,
    idle_seconds: float = 0.0,
    baselines: Mapping[str, Callable[[Path, str], Daemon]] | None = None,
) -> dict[str, object]:
    """Scrape times with ``series`` live procmond_forks_total series, made by one process
    renaming itself ``series`` times with one fork each. Plain text and Prometheus' own
    request (it prefers OpenMetrics, accepts text; gzip) are timed alternately, over
    kept-alive connections. Then, with every connection closed, the daemon's CPU while
    nothing asks it anything for ``idle_seconds``: what its own timers cost (schedstat, ns:
    utime and stime tick every 10 ms, too coarse for a fraction of a millisecond a second).

    ``baselines``: other builds' daemons (name → maker), run at the same time with the same
    config and the same series, each scrape made of every build in turn (the order swapped
    every other pair), so that whatever else the machine does hits them alike; their figures
    go under ``"baselines"``."""
    capacity = max(4096, 2 * series)  # room for the names and for the host's own commands
    config_text = f"max_entries: {capacity}\n"
    daemons = {"procmond": Daemon(workdir, config_text)}
    for name, make in (baselines or {}).items():
        daemons[name] = make(workdir, config_text)
    started: dict[str, Started] = {}
    try:
        for name, daemon in daemons.items():
            started[name] = daemon.start(settle)
        prefix = unique_name("s").decode()[:7]
        made = gen.names(series, prefix, unique_comm("x"))
        # Making the series is a fork storm by the default threshold: the scrapes are timed
        # once the daemon has seen it end, as a host's scrapes mostly are.
        wait_for_storms_end(daemons.values())
        counted: dict[str, tuple[int, int]] = {}
        for name, daemon in daemons.items():
            counted[name] = forks_series, samples = _series(daemon.scrape_text(), prefix)
            log(
                f"scrape: {forks_series} series made, {samples} samples in the exposition"
                + (f" ({name})" if baselines else "")
            )
        kinds = {"plain": measures.PLAIN_HEADERS, "prometheus": measures.PROMETHEUS_HEADERS}
        scrapers = {
            (name, kind): measures.Scraper(daemon.port, headers)
            for name, daemon in daemons.items()
            for kind, headers in kinds.items()
        }
        sizes = {key: len(scraper.scrape()[1]) for key, scraper in scrapers.items()}  # warm-up
        times: dict[tuple[str, str], list[float]] = {key: [] for key in scrapers}
        pids = {name: _pid(daemon) for name, daemon in daemons.items()}
        cpu_before = {name: measures.cpu_seconds(pid) for name, pid in pids.items()}
        order = list(daemons)
        for i in range(scrapes):
            kind = ("plain", "prometheus")[i % 2]
            for name in order if i % 4 < 2 else order[::-1]:
                times[(name, kind)].append(scrapers[(name, kind)].scrape()[0])
        cpu = {name: measures.cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        for scraper in scrapers.values():
            scraper.close()
        memory = {name: measures.memory(pid) for name, pid in pids.items()}
        idle_cpu = _idle_cpu_ms_per_second(pids, idle_seconds) if idle_seconds else {}
    finally:
        _stop_all(daemons.values())

    def figures(name: str) -> dict[str, object]:
        mine = {kind: times[(name, kind)] for kind in kinds}
        start_memory = started[name].memory
        return {
            "series_made": made.created,
            "forks_series": counted[name][0],
            "exposition_samples": counted[name][1],
            "exposition_bytes": {kind: sizes[(name, kind)] for kind in kinds},
            "scrape_seconds": mine,
            "p50_seconds": {k: measures.percentile(v, 50) for k, v in mine.items()},
            "p99_seconds": {k: measures.percentile(v, 99) for k, v in mine.items()},
            "daemon_cpu_seconds_per_scrape": cpu[name] / max(1, scrapes),
            "memory_at_start": asdict(start_memory) if start_memory else None,
            "memory_after_scrapes": asdict(memory[name]),
            "idle_seconds": idle_seconds,
            "idle_cpu_ms_per_second": idle_cpu.get(name),
        }

    result = figures("procmond")
    if baselines:
        result["baselines"] = {name: figures(name) for name in baselines}
    return result


def _series(exposition: str, prefix: str) -> tuple[int, int]:
    """The procmond_forks_total series of the commands named ``prefix``..., and the samples of
    the whole exposition."""
    lines = exposition.splitlines()
    forks_series = sum(
        1
        for line in lines
        if line.startswith("procmond_forks_total{") and f'comm="{prefix}' in line
    )
    return forks_series, sum(1 for line in lines if line and not line.startswith("#"))


def _pid(config: Configuration) -> int:
    assert config.pid is not None, f"{config.name} is not running"
    return config.pid


def _stop_all(configs: Iterable[Configuration]) -> None:
    """Stop every one, even when one fails to stop cleanly (then raise the first failure)."""
    failures: list[BaseException] = []
    for config in configs:
        try:
            config.stop()
        except BaseException as failure:
            config.kill()
            failures.append(failure)
    if failures:
        raise failures[0]


def _idle_cpu_ms_per_second(pids: Mapping[str, int], seconds: float) -> dict[str, float]:
    """CPU ms per second of processes left alone, over the same span: after a second for
    closed connections' threads to end, schedstat over ``seconds``."""
    time.sleep(1.0)
    before = {name: measures.cpu_ns(pid) for name, pid in pids.items()}
    time.sleep(seconds)
    return {
        name: (measures.cpu_ns(pid) - before[name]) / 1e6 / seconds for name, pid in pids.items()
    }


def soak(
    gen: LoadGenerator,
    workdir: Path,
    seconds: float,
    rate: float,
    samples: int,
    scrape_interval: float,
    settle: float,
    log: Log,
) -> dict[str, object]:
    """The daemon's RSS and CPU over ``seconds`` of steady load (``rate`` creations a second,
    every path in turn, 100 command names) while it is scraped every ``scrape_interval``."""
    daemon = Daemon(workdir)
    daemon.start(settle)
    pid = daemon.pid
    assert pid is not None
    warmup = min(10.0, max(1.0, seconds / 10))
    interval = seconds / samples
    load = gen.steady(warmup + seconds + 1, rate, 100, unique_comm("")[:10])
    points: list[dict[str, float]] = []
    scrapes = 0
    try:
        time.sleep(warmup)
        # The first scrape's allocations are start-up, not growth.
        entries = _map_entries(daemon.scrape_text())
        start = time.monotonic()
        next_scrape = start + scrape_interval
        for k in range(samples + 1):
            due = start + k * interval
            while True:
                now = time.monotonic()
                if next_scrape <= min(due, now):
                    entries = _map_entries(daemon.scrape_text())
                    scrapes += 1
                    next_scrape += scrape_interval
                    continue
                if now >= due:
                    break
                time.sleep(min(due, next_scrape) - now)
            memory = measures.memory(pid)
            points.append(
                {
                    "t": time.monotonic() - start,
                    "rss_kib": memory.rss_kib,
                    "anon_kib": memory.anon_kib,
                    "cpu_seconds": measures.cpu_seconds(pid),
                    "map_entries": entries,
                }
            )
            if k and k % max(1, samples // 10) == 0:
                log(f"soak: {points[-1]['t']:.0f}/{seconds:.0f} s, RSS {memory.rss_mib:.1f} MiB")
        made = LoadGenerator.steady_result(load, timeout=60)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
        daemon.stop()
    return {
        "seconds": seconds,
        "rate": rate,
        "scrape_interval": scrape_interval,
        "scrapes": scrapes,
        "created": made.created,
        "load_seconds": made.seconds,
        "points": points,
    }


def _map_entries(exposition: str) -> int:
    """Label sets in all of procmond's maps: its memory at scrape time grows with them, and
    on a host whose other programs keep making new command names, they grow."""
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in exposition.splitlines()
        if line.startswith("procmond_map_entries{")
    )
