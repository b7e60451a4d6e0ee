"""Cgroup churn through the real daemon: tens of thousands of real unit cgroups made and
removed, with real forks in them. The daemon's memory and its tables stay within what the
config implies, each counter shows at most ``max_entries`` series plus ``__overflow__``, and
every count is still shown exactly once."""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.churn import Churner, remove_churn_slice
from procmond.naming.cgroups import read_layout
from tests.e2e.harness import REPO, Daemon, Exposition, SeriesFlow, start_daemon


@pytest.fixture
def churn_slice() -> Iterator[Path]:
    """A slice of the test's own in the cgroup v2 hierarchy, removed with whatever is left."""
    layout = read_layout()
    assert layout.v2 is not None, "this test needs cgroup v2 (unified or hybrid)"
    top = layout.v2.mount_point / f"test-churn-{secrets.token_hex(4)}.slice"
    top.mkdir()
    try:
        yield top
    finally:
        remove_churn_slice(top)


def rss_kib(daemon: Daemon) -> int:
    for line in Path(f"/proc/{daemon.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def churn(churner: Churner, flow: SeriesFlow, count: int, fork_every: int, rate: float) -> int:
    """Churn ``count`` cgroups while scraping every 0.3 s; then scrape until the last ones are
    reclaimed. The forks made."""
    flow.scrape()
    churner.start(count, fork_every, rate)
    next_scrape = time.monotonic()
    while not churner.poll():
        if time.monotonic() >= next_scrape:
            flow.scrape()
            next_scrape = max(next_scrape + 0.3, time.monotonic())
        time.sleep(0.02)
    for _ in range(3):  # seen gone, then (a second later) reclaimed
        time.sleep(0.6)
        flow.scrape()
    assert churner.forks is not None
    return churner.forks


def tables(m: Exposition) -> dict[str, tuple[float, float]]:
    """{table: (entries, capacity)} from procmond_table_entries and _max_entries."""
    return {
        dict(k)["table"]: (v, m.value("procmond_table_max_entries", **dict(k)))
        for k, v in m.series("procmond_table_entries").items()
    }


def test_memory_and_tables_follow_the_config_not_the_churn(
    tmp_path: Path, churn_slice: Path
) -> None:
    """40,000 unit cgroups made and removed, every second one with a fork, scraped every
    0.3 s: once the tables are full (10,000 cgroups), RSS stays within 3 MiB while 30,000
    more come and go; every table is within its cap, derived from max_entries; every fork
    is counted once."""
    max_entries = 1024
    d = start_daemon(tmp_path, f"max_entries: {max_entries}\nstorm_threshold: 0\n")
    name = ("ch" + secrets.token_hex(6)).encode()
    churner = Churner(churn_slice, name)
    try:
        flow = SeriesFlow(d, max_entries)
        forks = churn(churner, flow, 10_000, 2, 900)
        warm = rss_kib(d)
        forks += churn(churner, flow, 30_000, 2, 900)
        grown = rss_kib(d) - warm
        m = flow.scrape()
        sizes = tables(m)
        print(
            f"RSS {warm} KiB after 10,000 cgroups, +{grown} KiB after 40,000; "
            f"{flow.scrapes} scrapes, at most {flow.most_series} series; tables {sizes}"
        )
        assert grown < 3 * 1024, f"RSS grew {grown} KiB over 30,000 more cgroups"
        assert forks == 20_000
        flow.assert_counted(name.decode(), forks)
        assert m.value("procmond_cgroup_entries_reclaimed_total") >= 0.5 * forks
        # caps from max_entries: the cgroups 4 counter maps can hold; label sets (and
        # __overflow__) of 4 counters and the lifetime histogram's 256
        assert all(used <= cap for used, cap in sizes.values()), sizes
        cgroups = 4 * max_entries
        assert sizes["cgroup_paths"][1] == sizes["attribution_cgroups"][1] == cgroups
        assert sizes["kubelet_containers"][1] == sizes["cgroups_not_found"][1] == cgroups
        assert sizes["folded_forks_total"][1] == max_entries + 1
        assert sizes["label_texts"][1] == 4 * (max_entries + 1) + 256 + 1
    finally:
        churner.stop()
        assert d.stop() == 0, d.log()


def test_series_stay_within_max_entries_under_churn(tmp_path: Path, churn_slice: Path) -> None:
    """max_entries 1000 and 3,000 units churned, each forking three times: at no scrape does
    a counter show more than 1,001 series (live and gone units' label sets share the room;
    __overflow__ takes the rest), and every fork is counted once."""
    d = start_daemon(tmp_path, "max_entries: 1000\nstorm_threshold: 0\n")
    name = ("cs" + secrets.token_hex(6)).encode()
    churner = Churner(churn_slice, name, forks_each=3)
    try:
        flow = SeriesFlow(d, 1000)
        forks = churn(churner, flow, 3000, 1, 400)
        print(f"{flow.scrapes} scrapes, at most {flow.most_series} series")
        assert forks == 9000
        flow.assert_counted(name.decode(), forks)
        assert flow.most_series >= 1000  # the bound was reached, and held
        assert flow.lost_to_overflow.get(name.decode(), 0) > 0
    finally:
        churner.stop()
        assert d.stop() == 0, d.log()


def test_the_churn_benchmark_runs_and_removes_its_cgroups(tmp_path: Path) -> None:
    """Only that benchmarks/churn.py works (its figures are in benchmarks/CHURN.md), on a few
    hundred cgroups: its report has a row per daemon, and it leaves no cgroup behind."""
    out = tmp_path / "churn.md"
    args = ["--cgroups", "400", "--checkpoints", "200", "--rate", "0", "--scrape-interval"]
    bench = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.churn", *args, "0.3", "--baseline", "", "--out", out],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, stderr = bench.communicate(timeout=120)
    assert bench.returncode == 0, stderr
    rows = [line for line in out.read_text().splitlines() if line.startswith("| this tree")]
    assert len(rows) == 2, out.read_text()  # default config, small max_entries
    layout = read_layout()
    assert layout.v2 is not None
    assert not (layout.v2.mount_point / f"procmond-churn-{bench.pid}.slice").exists()
