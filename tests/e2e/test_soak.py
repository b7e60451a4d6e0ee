"""Soak: steady mixed load and a scrape a second; memory, threads and descriptors stay flat
and the counts are exact at the end. ``--soak-seconds`` makes it longer."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.e2e.harness import own_comm, run_creator, start_daemon, unique_name

BATCH = 100
WARM_UP_SECONDS = 20


def sample(pid: int) -> tuple[int, int, int]:
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    rss_kib = int(status["VmRSS"].split()[0])
    return rss_kib, int(status["Threads"]), len(os.listdir(f"/proc/{pid}/fd"))


def test_soak(tmp_path: Path, creator: Path, request: pytest.FixtureRequest) -> None:
    seconds: float = request.config.getoption("--soak-seconds")
    daemon = start_daemon(tmp_path)
    name = unique_name("soak")
    made = {"fork": 0, "thread": 0, "spawn": 0}
    samples: list[tuple[float, tuple[int, int, int]]] = []
    started = time.monotonic()
    try:
        while (elapsed := time.monotonic() - started) < seconds:
            for mode in made:
                run_creator(creator, mode, BATCH, [name])
                made[mode] += BATCH
            # sampled before this scrape: the previous one's connection thread has ended by now
            samples.append((elapsed, sample(daemon.process.pid)))
            daemon.scrape()
            time.sleep(max(0.0, 1.0 - (time.monotonic() - started - elapsed)))
        m = daemon.scrape()
        labels = {"comm": name.decode(), "parent_comm": own_comm()}
        assert m.value("procmond_forks_total", **labels) == made["fork"] + made["spawn"]
        assert m.value("procmond_threads_created_total", **labels) == made["thread"]
        assert m.value("procmond_exits_total", comm=name.decode()) == made["fork"] + len(
            samples
        ) * len(made)  # + each creator process itself, which exits under the name
        steady = [s for t, s in samples if t >= min(WARM_UP_SECONDS, seconds / 4)]
        rss = [s[0] for s in steady]
        growth = rss[-1] - rss[0]
        print(
            f"soak {seconds:.0f} s, {sum(made.values())} creations: RSS {rss[0]} -> {rss[-1]} KiB"
            f" (max {max(rss)}), threads {steady[0][1]} -> {steady[-1][1]},"
            f" fds {steady[0][2]} -> {steady[-1][2]}"
        )
        assert growth < 2048, f"RSS grew {growth} KiB"
        assert steady[-1][1] == steady[0][1], "thread count changed"
        assert steady[-1][2] == steady[0][2], "descriptor count changed"
    finally:
        assert daemon.stop() == 0, daemon.log()
