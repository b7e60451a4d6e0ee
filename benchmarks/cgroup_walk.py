"""What cgroup attribution costs at scrape time: a walk of ~7,000 real cgroups, and a read of
every pids.events in a pids hierarchy of the same size.

    sudo .venv/bin/python -m benchmarks.cgroup_walk [--cgroups 7000] [--rounds 9]

It makes the cgroups for real (a tree of slices and services, as systemd lays them out)
under a directory of its own in the cgroup v2 hierarchy and in the pids hierarchy (v1 on
hybrid hosts), times the reads (median of ``--rounds``), and removes every cgroup it made, also
on failure. Results are printed as markdown; benchmarks/CGROUPS.md has the figures of the runs
made so far and what follows from them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from subprocess import DEVNULL

from procmond.naming.cgroups import CgroupResolver, Hierarchy, read_layout, walk
from procmond.scrape.tasklimits import PidsHierarchy, TaskLimits, find_pids_hierarchy, read_pids

SERVICES_PER_SLICE = 100


def make_tree(top: Path, count: int) -> list[Path]:
    """``count`` cgroups under ``top``: slices of up to 100 services each (parents included)."""
    made = [top]
    top.mkdir()
    slice_dir = top
    for n in range(count - 1):
        if n % (SERVICES_PER_SLICE + 1) == 0:
            slice_dir = top / f"bench-{n}.slice"
            slice_dir.mkdir()
            made.append(slice_dir)
        else:
            service = slice_dir / f"svc-{n}.service"
            service.mkdir()
            made.append(service)
    return made


def remove_tree(made: list[Path]) -> None:
    for path in sorted(made, key=lambda p: -len(p.parts)):
        if path.exists():
            path.rmdir()


def find_dirs(hierarchy: Hierarchy) -> None:
    subprocess.run(["find", str(hierarchy.mount_point), "-type", "d"], check=True, stdout=DEVNULL)


def median_ms(run: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cgroups", type=int, default=7000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)
    layout = read_layout()
    pids = find_pids_hierarchy(layout)
    if layout.v2 is None or pids is None:
        print(f"needs cgroup v2 and a pids controller: {layout.describe()}")
        return 1
    name = f"procmond-bench-{os.getpid()}"
    v2_made: list[Path] = []
    pids_made: list[Path] = []
    try:
        v2_made = make_tree(layout.v2.mount_point / name, args.cgroups)
        pids_made = make_tree(pids.hierarchy.mount_point / name, args.cgroups)
        ids = [d.inode for d in walk(layout.v2)]

        def cold_labels() -> None:
            CgroupResolver(layout.v2).labels_many(ids)

        warm = CgroupResolver(layout.v2)
        warm.labels_many(ids)
        limits = TaskLimits(pids)
        sub = Hierarchy(pids.hierarchy.mount_point / name, "/" + name)
        sub_pids = PidsHierarchy(sub, pids.version)
        rows = [
            (f"walk of the cgroup v2 tree ({len(ids)} cgroups)", lambda: list(walk(layout.v2))),
            ("the same walk by find(1), in C, for comparison", lambda: find_dirs(layout.v2)),
            ("resolver, cold: labels for every id (one walk)", cold_labels),
            ("resolver, warm: labels for every id (cache hits)", lambda: warm.labels_many(ids)),
            (
                f"pids.events of every cgroup in the pids v{pids.version} hierarchy",
                lambda: read_pids(pids),
            ),
            ("the same, with pids.max and pids.current", lambda: read_pids(pids, limits=True)),
            ("task-limit totals (read + update + totals)", limits.collect),
            (f"pids.events of the {args.cgroups} test cgroups only", lambda: read_pids(sub_pids)),
        ]
        print(f"| {args.rounds} rounds, median | ms |\n| --- | ---: |")
        for label, run in rows:
            print(f"| {label} | {median_ms(run, args.rounds):.1f} |")
    finally:
        remove_tree(v2_made)
        remove_tree(pids_made)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
