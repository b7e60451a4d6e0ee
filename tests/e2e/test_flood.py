"""A cardinality flood from an unprivileged user: a million distinct command names.

Memory and series stay bounded by the config, every creation is still counted (exactly, in its
own series or under __overflow__), and scrapes stay fast."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from procmond.config import Config
from procmond.scrape.metrics import HISTOGRAMS, series_budget
from tests.e2e.harness import Daemon, created_on_host, start_daemon

NAMES = 1_000_000
CREATORS = 2  # one per core


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def flood_as_nobody(creator: Path, mode: str, names: int, prefixes: list[str]) -> None:
    with tempfile.TemporaryDirectory() as public:
        os.chmod(public, 0o755)
        binary = Path(public) / "creator"
        shutil.copy(creator, binary)
        procs = [
            subprocess.Popen(
                [
                    "setpriv",
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                    "--inh-caps=-all",
                    str(binary),
                    mode,
                    "1",
                    "--generate",
                    str(names // len(prefixes)),
                    prefix.encode().hex(),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            for prefix in prefixes
        ]
        for p in procs:
            out, _ = p.communicate(timeout=600)
            assert p.returncode == 0 and out.strip() == f"done {names // len(prefixes)}"


def ours(m, metric: str, prefixes: list[str]) -> float:
    """Counts under our generated names plus __overflow__.

    Background programs whose names were in the map before the flood keep counting in their own
    series, so they do not disturb this sum; the flood's names fill the map within its first
    few thousand creations, after which everything new goes to __overflow__, a background
    command seen for the first time included (the test bounds those with /proc/stat).
    """
    return sum(
        v
        for labels, v in m.series(metric).items()
        if dict(labels)["comm"].startswith((*prefixes, "__overflow__"))
    )


def test_a_million_names(tmp_path: Path, creator: Path) -> None:
    daemon: Daemon = start_daemon(tmp_path)
    try:
        before = daemon.scrape()
        rss_before = rss_kib(daemon.process.pid)
        started = time.monotonic()
        created_before = created_on_host()
        prefixes = [f"f{secrets.token_hex(2)}{i}" for i in range(CREATORS)]
        fork_prefixes = [f"g{secrets.token_hex(2)}"]
        flood_as_nobody(creator, "thread", NAMES, prefixes)
        flood_as_nobody(creator, "fork", 20_000, fork_prefixes)
        flood_seconds = time.monotonic() - started
        scrape_started = time.monotonic()
        after = daemon.scrape()
        scrape_seconds = time.monotonic() - scrape_started
        rss_after = rss_kib(daemon.process.pid)
        # What else the host created meanwhile (the flood's helpers, background services):
        # a new command among them also counts under __overflow__, as it should.
        others = created_on_host() - created_before - NAMES - 20_000
        assert others >= 0
        print(
            f"flood of {NAMES} thread names + 20000 fork names: {flood_seconds:.0f} s; "
            f"scrape after: {scrape_seconds * 1000:.0f} ms, {len(after.samples)} samples; "
            f"RSS {rss_before} -> {rss_after} KiB"
        )

        config = Config()
        threads = "procmond_threads_created_total"
        forks = "procmond_forks_total"
        exits = "procmond_exits_total"  # + the fork creator itself, under its last name
        for metric, names, expected in (
            (threads, prefixes, NAMES),
            (forks, fork_prefixes, 20_000),
            (exits, fork_prefixes, 20_001),
        ):
            counted = ours(after, metric, names) - ours(before, metric, names)
            assert expected <= counted <= expected + others, (metric, counted, others)
        for metric in (threads, forks, exits):
            assert len(after.series(metric)) <= config.max_entries + 1
        for hist in HISTOGRAMS:
            label_sets = after.series(f"{hist.name}_count")
            assert len(label_sets) <= config.histogram_max_entries + 1
        assert len(after.samples) <= series_budget(config) + 200  # + self and process metrics
        assert after.value("procmond_map_overflow_events_total", map="threads_created_total") > (
            NAMES - config.max_entries
        )
        assert after.value("procmond_map_entries", map="threads_created_total") == (
            config.max_entries
        )
        assert scrape_seconds < 1.0
        assert rss_after - rss_before < 30_000
    finally:
        assert daemon.stop() == 0, daemon.log()
