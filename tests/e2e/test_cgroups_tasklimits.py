"""Task-limit hits for real: a unit's cgroup in the host's pids hierarchy (v1 on hybrid hosts,
v2 on unified ones) with a small pids.max, the creator forking past it, and the reader's count
compared with the forks the creator saw refused."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from procmond.naming.cgroups import read_layout
from procmond.scrape.tasklimits import (
    PidsHierarchy,
    TaskLimitLabels,
    TaskLimits,
    find_pids_hierarchy,
    parse_pids_events,
    read_pids,
)
from tests.e2e.cgroup_tree import CgroupTree
from tests.e2e.harness import Daemon


@pytest.fixture(scope="module")
def pids() -> PidsHierarchy:
    layout = read_layout()
    found = find_pids_hierarchy(layout)
    assert found is not None, f"no pids controller on this host: {layout.describe()}"
    return found


@pytest.fixture
def tree(pids: PidsHierarchy) -> Iterator[CgroupTree]:
    t = CgroupTree(pids.hierarchy.mount_point)
    yield t
    t.remove()


def limited(tree: CgroupTree, pids: PidsHierarchy, path: str, limit: int) -> Path:
    """A cgroup with pids.max = limit (on v2 the controller is enabled down to it)."""
    cgroup = tree.make(path)
    if pids.version == 2:
        d = tree.mount
        for name in path.strip("/").split("/"):
            (d / "cgroup.subtree_control").write_text("+pids\n")
            d = d / name
    (cgroup / "pids.max").write_text(f"{limit}\n")
    return cgroup


def fork_past_limit(tree: CgroupTree, cgroup: Path, creator: Path, forks: int) -> int:
    """Run the creator in ``cgroup``, making ``forks`` children that overlap; the number of
    forks it saw fail."""
    name = ("lim" + secrets.token_hex(5)).encode()
    p = tree.start(
        cgroup,
        str(creator),
        "fork",
        str(forks),
        "--together",
        "--child-sleep-ms",
        "300",
        "--tolerate-failures",
        name.hex(),
    )
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    made, failed = (int(x) for x in out.split()[1::2])
    assert made + failed == forks
    return failed


def test_refused_forks_are_counted_under_the_unit(
    tree: CgroupTree, pids: PidsHierarchy, creator: Path
) -> None:
    unit = f"test-{secrets.token_hex(4)}.service"
    cgroup = limited(tree, pids, f"/test.slice/{unit}", 5)
    failed = fork_past_limit(tree, cgroup, creator, 20)
    assert failed >= 11  # the creator and at most 4 children fit, plus any that exited early

    readings = {r.path: r for r in read_pids(pids, limits=True)}
    reading = readings[f"/test.slice/{unit}"]
    assert (reading.refused, reading.limit) == (failed, 5)
    assert reading.current == 0  # all of them exited

    limits = TaskLimits(pids)
    assert limits.collect()[TaskLimitLabels(unit)] == failed


def test_totals_only_grow_across_a_removed_and_recreated_unit(
    pids: PidsHierarchy, creator: Path
) -> None:
    unit = f"test-{secrets.token_hex(4)}.service"
    path = f"/test.slice/{unit}"
    limits = TaskLimits(pids)
    first = CgroupTree(pids.hierarchy.mount_point)
    try:
        # The fork fails in a worker cgroup below the unit; the unit's limit refuses it.
        limited(first, pids, path, 4)
        worker = first.make(f"{path}/worker")
        failed = fork_past_limit(first, worker, creator, 10)
        assert limits.collect()[TaskLimitLabels(unit)] == failed
    finally:
        first.remove()
    assert limits.collect()[TaskLimitLabels(unit)] == failed  # the cgroup is gone, not its count

    second = CgroupTree(pids.hierarchy.mount_point)
    try:
        again = fork_past_limit(second, limited(second, pids, path, 3), creator, 6)
        assert again >= 1
        assert limits.collect()[TaskLimitLabels(unit)] == failed + again
    finally:
        second.remove()


def kernel_count(pids: PidsHierarchy, cgroup: Path) -> int:
    """The refused forks the kernel shows for ``cgroup`` in the file procmond reads."""
    events = cgroup / "pids.events.local"
    return parse_pids_events((events if events.exists() else cgroup / "pids.events").read_text())


def hits_of(daemon: Daemon, unit: str) -> float:
    return daemon.scrape().value(
        "procmond_task_limit_hits_total", unit=unit, namespace="", pod="", container=""
    )


def test_hits_of_units_removed_before_the_next_scrape_are_kept(
    daemon: Daemon, pids: PidsHierarchy, creator: Path
) -> None:
    """A restarted unit or a finished container takes its pids.events with it: the probe reads
    its count from the kernel as the cgroup is removed, and the next scrape still has every
    refused fork. One unit is scraped while it lives and removed after more refusals; the
    other lives and goes between two scrapes."""
    scraped, unscraped = (f"test-{secrets.token_hex(4)}.service" for _ in range(2))
    hits_of(daemon, scraped)  # a scrape before either unit exists
    trees = [CgroupTree(pids.hierarchy.mount_point) for _ in range(2)]
    try:
        first = limited(trees[0], pids, f"/test.slice/{scraped}", 20)
        early = fork_past_limit(trees[0], first, creator, 100)
        assert early == kernel_count(pids, first) > 0
        assert hits_of(daemon, scraped) == early
        late = fork_past_limit(trees[0], first, creator, 300)
        refused = kernel_count(pids, first)
        assert refused == early + late

        second = limited(trees[1], pids, f"/test.slice/{unscraped}", 20)
        assert fork_past_limit(trees[1], second, creator, 300) == kernel_count(pids, second) > 0
        refused_unscraped = kernel_count(pids, second)
    finally:
        for t in reversed(trees):  # the first made /test.slice, if it was not there
            t.remove()
    assert not (pids.hierarchy.mount_point / "test.slice" / scraped).exists()
    m = daemon.scrape()
    hits = "procmond_task_limit_hits_total"
    assert m.value(hits, unit=scraped, namespace="", pod="", container="") == refused
    assert m.value(hits, unit=unscraped, namespace="", pod="", container="") == refused_unscraped
    assert m.value("procmond_probe_attached", probe="cgroup_rmdir") == 1
    # read as the scrape began, before it took them (other removed cgroups may wait too)
    assert m.value("procmond_map_entries", map="gone_task_limit_hits") >= 2
    assert m.value("procmond_map_overflow_events_total", map="gone_task_limit_hits") == 0
    assert hits_of(daemon, scraped) == refused  # taken once: the next scrape adds nothing


def test_a_cgroup_removed_from_inside_a_cgroup_namespace_is_counted_once(
    daemon: Daemon, pids: PidsHierarchy, tree: CgroupTree, creator: Path
) -> None:
    """A runtime inside a cgroup namespace removes a cgroup that the last scrape saw: the probe
    names it by its path from the hierarchy's root, as the scrape did, so it is counted once,
    under its own unit, with what it refused since."""
    root = f"/test.slice/ns-{secrets.token_hex(4)}"
    unit = f"w-{secrets.token_hex(4)}.service"
    tree.make(root)
    cgroup = limited(tree, pids, f"{root}/{unit}", 20)
    early = fork_past_limit(tree, cgroup, creator, 100)
    assert hits_of(daemon, unit) == early > 0
    late = fork_past_limit(tree, cgroup, creator, 100)
    refused = kernel_count(pids, cgroup)
    assert refused == early + late
    remover = tree.start(tree.mount / root.lstrip("/"), "unshare", "--cgroup", "rmdir", str(cgroup))
    _, err = remover.communicate(timeout=30)
    assert remover.returncode == 0, err
    tree.made.remove(cgroup)
    assert hits_of(daemon, unit) == refused


def test_a_removed_cgroup_whose_path_is_too_long_for_the_probe_is_named_by_its_id(
    daemon: Daemon, pids: PidsHierarchy, tree: CgroupTree, creator: Path
) -> None:
    """The probe keeps 255 bytes of a path: a longer one, cut short, would name another unit
    (or none). The count is placed by the cgroup's id instead, under the unit the last scrape
    read it as."""
    unit = f"{secrets.token_hex(4)}{'L' * 232}.service"  # 248 bytes: the path is 260
    cgroup = limited(tree, pids, f"/test.slice/{unit}", 20)
    early = fork_past_limit(tree, cgroup, creator, 60)
    assert hits_of(daemon, unit) == early > 0
    late = fork_past_limit(tree, cgroup, creator, 60)
    refused = kernel_count(pids, cgroup)
    assert refused == early + late
    tree.made.remove(cgroup)
    cgroup.rmdir()
    m = daemon.scrape()
    assert (
        m.value("procmond_task_limit_hits_total", unit=unit, namespace="", pod="", container="")
        == refused
    )
