"""The scrape's label text cache with the real daemon and real cgroups: rows it keeps by raw
map key stay exact when their cgroup goes (folded under the same labels) and when another
cgroup takes the same names (one series, their sum). The same cases on fakes, and the cache's
bound: tests/unit/test_scrape_cache.py."""

from __future__ import annotations

import secrets
from pathlib import Path

from tests.e2e.cgroup_tree import CgroupTree
from tests.e2e.harness import Daemon, Exposition, unique_name, wait_until

LABELS = ("unit", "namespace", "pod", "container")


def run_in(tree: CgroupTree, cgroup: Path, creator: Path, n: int, name: bytes) -> None:
    """The creator, inside ``cgroup``, forking ``n`` times under ``name``; it has exited when
    this returns, so the cgroup can be removed."""
    p = tree.start(cgroup, str(creator), "fork", str(n), name.hex())
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0 and out.split()[-1] == str(n), (out, err)


def forks_of(m: Exposition, comm: str) -> dict[tuple[str, ...], float]:
    """{(unit, namespace, pod, container): count} of one command's forks; fails if one of its
    series is written twice."""
    lines = [
        line
        for line in m.text.splitlines()
        if line.startswith("procmond_forks_total{") and f'comm="{comm}"' in line
    ]
    out = {}
    for labels, value in m.series("procmond_forks_total").items():
        d = dict(labels)
        if d["comm"] == comm:
            out[tuple(d[label] for label in LABELS)] = value
    assert len(lines) == len(out), lines
    return out


def test_a_units_rows_stay_exact_through_its_removal_and_its_restart(
    daemon: Daemon, tree: CgroupTree, creator: Path
) -> None:
    unit = f"cache-{secrets.token_hex(4)}.service"
    path = f"/test.slice/{unit}"
    name = unique_name("gone")
    comm, labels = name.decode(), (unit, "", "", "")
    cgroup = tree.make(path)
    run_in(tree, cgroup, creator, 5, name)
    assert forks_of(daemon.scrape(), comm) == {labels: 5}
    assert forks_of(daemon.scrape(), comm) == {labels: 5}  # shown from the cache
    reclaimed = daemon.scrape().value("procmond_cgroup_entries_reclaimed_total")
    tree.made.remove(cgroup)
    cgroup.rmdir()

    def given_back() -> bool:
        m = daemon.scrape()
        assert forks_of(m, comm) == {labels: 5}  # seen gone, then folded: never another value
        return m.value("procmond_cgroup_entries_reclaimed_total") > reclaimed

    wait_until(given_back, 10, "the removed unit's entries to be given back")
    assert forks_of(daemon.scrape(), comm) == {labels: 5}
    run_in(tree, tree.make(path), creator, 3, name)  # the unit again: a new cgroup
    assert forks_of(daemon.scrape(), comm) == {labels: 8}
    run_in(tree, tree.make(path), creator, 1, name)
    assert forks_of(daemon.scrape(), comm) == {labels: 9}


def test_two_cgroups_with_one_units_name_are_one_series(
    daemon: Daemon, tree: CgroupTree, creator: Path
) -> None:
    """Two cgroups named after one unit (in two slices): a row shown from the cache, then a
    row of the other cgroup with the same labels, are one series with their sum."""
    unit = f"twice-{secrets.token_hex(4)}.service"
    first = tree.make(f"/cache-a.slice/{unit}")
    second = tree.make(f"/cache-b.slice/{unit}")
    name = unique_name("twice")
    comm, labels = name.decode(), (unit, "", "", "")
    run_in(tree, first, creator, 2, name)
    assert forks_of(daemon.scrape(), comm) == {labels: 2}
    assert forks_of(daemon.scrape(), comm) == {labels: 2}
    run_in(tree, second, creator, 3, name)
    assert forks_of(daemon.scrape(), comm) == {labels: 5}
    run_in(tree, first, creator, 1, name)
    assert forks_of(daemon.scrape(), comm) == {labels: 6}
