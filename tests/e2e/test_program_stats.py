"""The daemon's own kernel cost, per probe: the runs and run time of each of its BPF
programs, as the kernel counts them while BPF statistics are enabled, and only then."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from procmond.kernel.programs import statistics_on
from tests.e2e.harness import Daemon, created_on_host, run_creator, unique_name

RUNS = "procmond_bpf_program_runs_total"
SECONDS = "procmond_bpf_program_run_seconds_total"


def test_each_probe_counts_its_runs_while_statistics_are_on(daemon: Daemon, creator: Path) -> None:
    """task_newtask runs once per task the kernel creates: its runs grow exactly as
    /proc/stat's `processes`, bounded only by when each scrape read them."""

    def runs() -> tuple[int, float, float, int]:
        before = created_on_host()
        m = daemon.scrape()
        after = created_on_host()
        return (
            before,
            m.value(RUNS, probe="task_newtask"),
            m.value(SECONDS, probe="task_newtask"),
            after,
        )

    with statistics_on():
        first_before, first, first_seconds, first_after = runs()
        run_creator(creator, "fork", 200, [unique_name("runs")])
        last_before, last, last_seconds, last_after = runs()
    assert last_before - first_after <= last - first <= last_after - first_before
    assert last - first >= 200
    assert 0 < last_seconds - first_seconds < 1  # 200-odd runs take well under a second
    attached = daemon.scrape().series("procmond_probe_attached")
    probes = {dict(labels)["probe"] for labels, up in attached.items() if up == 1}
    assert {dict(labels)["probe"] for labels in daemon.scrape().series(RUNS)} == probes


def test_the_counts_stand_still_while_statistics_are_off(daemon: Daemon, creator: Path) -> None:
    with stats_sysctl_off():
        before = daemon.scrape().value(RUNS, probe="task_newtask")
        run_creator(creator, "fork", 50, [unique_name("still")])
        assert daemon.scrape().value(RUNS, probe="task_newtask") == before


@contextlib.contextmanager
def stats_sysctl_off() -> Iterator[None]:
    """kernel.bpf_stats_enabled at 0 for the block, as it was after."""
    sysctl = Path("/proc/sys/kernel/bpf_stats_enabled")
    was = sysctl.read_text().strip()
    sysctl.write_text("0")
    try:
        yield
    finally:
        sysctl.write_text(was)
