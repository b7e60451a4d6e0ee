"""Creations counted by the systemd unit and Kubernetes pod that made them: the real daemon,
real cgroup v2 directories with real processes in them, and the kubelet's files laid out on
this node as the kubelet lays them out (/var/log/pods, /var/log/containers)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cgroup_tree import CgroupTree, Pod, TaskLimitedUnit
from tests.e2e.harness import (
    Daemon,
    SeriesFlow,
    own_comm,
    start_daemon,
    unique_name,
    wait_until,
)

PODS_DIR = Path("/var/log/pods")
CONTAINERS_DIR = Path("/var/log/containers")
OVERFLOW = "__overflow__"


@pytest.fixture
def pods() -> Iterator[list[Pod]]:
    made: list[Pod] = []
    yield made
    for pod in made:
        pod.remove()


def run_in(tree: CgroupTree, cgroup: Path, creator: Path, mode: str, n: int, name: bytes) -> None:
    """The creator, inside ``cgroup``, making ``n`` creations under ``name``."""
    p = tree.start(cgroup, str(creator), mode, str(n), name.hex())
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0 and out.split()[-1] == str(n), (out, err)


def test_a_unit_counts_its_own_creations_exactly(
    daemon: Daemon, tree: CgroupTree, creator: Path
) -> None:
    unit = f"test-{secrets.token_hex(4)}.service"
    cgroup = tree.make(f"/test.slice/{unit}")
    name = unique_name("unit")
    run_in(tree, cgroup, creator, "fork", 40, name)
    run_in(tree, cgroup, creator, "thread", 25, name)
    m = daemon.scrape()
    comm = name.decode()
    assert m.by_cgroup("procmond_forks_total", comm) == {(unit, "", "", ""): 40}
    assert m.by_cgroup("procmond_threads_created_total", comm) == {(unit, "", "", ""): 25}
    labels = {"unit": unit, "namespace": "", "pod": "", "container": ""}
    assert m.value("procmond_forks_total", comm=comm, parent_comm=own_comm(), **labels) == 40


@pytest.mark.parametrize(("driver", "qos"), [("systemd", "burstable"), ("cgroupfs", "")])
def test_a_pod_container_is_named_from_the_kubelets_files(
    daemon: Daemon, tree: CgroupTree, pods: list[Pod], creator: Path, driver: str, qos: str
) -> None:
    pod = Pod()
    pods.append(pod)
    pod.write_pod_dir(PODS_DIR)
    pod.write_link(PODS_DIR, CONTAINERS_DIR)
    cgroup = tree.make(pod.container_cgroup(driver, qos))
    named = ("", pod.namespace, pod.name, pod.container)
    # The kubelet's directories are re-read at most every few seconds, on a miss: a first
    # creation lets the daemon look the new container up.
    first = unique_name("first")
    run_in(tree, cgroup, creator, "fork", 1, first)
    wait_until(
        lambda: named in daemon.scrape().by_cgroup("procmond_forks_total", first.decode()),
        30,
        "the pod's names to be picked up",
    )
    name = unique_name("pod")
    run_in(tree, cgroup, creator, "fork", 30, name)
    assert daemon.scrape().by_cgroup("procmond_forks_total", name.decode()) == {named: 30}


def test_late_names_move_no_count(
    daemon: Daemon, tree: CgroupTree, pods: list[Pod], creator: Path
) -> None:
    """Counts made before the container's log link exists stay under the empty names; once
    the link is there, what comes after is under the pod's names; no series goes down."""
    pod = Pod()
    pods.append(pod)
    pod.write_pod_dir(PODS_DIR)
    cgroup = tree.make(pod.container_cgroup("systemd", "besteffort"))
    name = unique_name("late")
    comm = name.decode()
    run_in(tree, cgroup, creator, "fork", 12, name)
    first = daemon.scrape().by_cgroup("procmond_forks_total", comm)
    assert first == {("", "", "", ""): 12}
    pod.write_link(PODS_DIR, CONTAINERS_DIR)
    named = ("", pod.namespace, pod.name, pod.container)
    # The kubelet's directories are re-read at most every few seconds, on a miss.
    wait_until(
        lambda: named in daemon.scrape().by_cgroup("procmond_forks_total", comm),
        30,
        "the pod's names to be picked up",
    )
    run_in(tree, cgroup, creator, "fork", 7, name)
    last = daemon.scrape().by_cgroup("procmond_forks_total", comm)
    assert last == {("", "", "", ""): 12, named: 7}


def test_churn_stays_bounded_exact_and_leaves_room(
    tmp_path: Path, tree: CgroupTree, creator: Path
) -> None:
    """Many short-lived units, each forking and removed, through a daemon whose maps hold 64
    entries: gone units' entries are given back, every creation is counted once (gone units
    keep series of their own while the live ones leave room, the rest count under
    __overflow__), a counter never shows more than 64 series and __overflow__, and a unit
    started afterwards gets a series of its own. (Gone units keeping their series is
    tests/unit/test_attribution.py's, where no other load shares the room.)"""
    d = start_daemon(tmp_path, "max_entries: 64\n")
    try:
        flow = SeriesFlow(d, 64)
        name = unique_name("churn")
        comm, units, batch = name.decode(), 300, 20
        flow.scrape()
        for i in range(units):
            cgroup = tree.make(f"/churn.slice/churn-{i}.service")
            run_in(tree, cgroup, creator, "fork", 1, name)
            tree.made.remove(cgroup)
            cgroup.rmdir()
            if i % batch == batch - 1:
                # A scrape sees the batch's units gone; one at least a second later gives
                # their entries back (a program that read a cgroup's id has long finished).
                flow.scrape()
                time.sleep(1.05)
        flow.scrape()
        m = flow.scrape()
        forks = m.by_cgroup("procmond_forks_total", comm)
        # gone units keep series in the room the live ones (the host's too) leave; a unit the
        # host's own cgroup churn left unnamed counts under the empty names
        named = {k: v for k, v in forks.items() if k != ("", "", "", "")}
        assert len(named) <= 64 and set(named.values()) <= {1}
        flow.assert_counted(comm, units)  # every creation, once (some via __overflow__)
        assert m.value("procmond_map_entries", map="forks_total") < 64
        assert m.value("procmond_cgroup_entries_reclaimed_total") >= units
        unit = f"after-{secrets.token_hex(3)}.service"
        cgroup = tree.make(f"/test.slice/{unit}")
        later = unique_name("after")
        run_in(tree, cgroup, creator, "fork", 9, later)
        assert flow.scrape().by_cgroup("procmond_forks_total", later.decode()) == {
            (unit, "", "", ""): 9
        }
    finally:
        assert d.stop() == 0, d.log()


def test_a_fork_bomb_held_by_a_task_limit_is_named_by_unit(
    daemon: Daemon, tree: CgroupTree, creator: Path
) -> None:
    """The default config (no syscall probes) still names the unit that hit its task limit,
    from the pids controller's own count of refused forks: what systemd's TasksMax sets. The
    pids controller is a v1 one on hybrid hosts: the unit's cgroup is made in both, as
    systemd does there."""
    limited = TaskLimitedUnit(tree, f"bomb-{secrets.token_hex(4)}.service", 5)
    try:
        made, failed = limited.bomb(creator, 30, unique_name("bomb"))
        assert (made, failed) == (4, 26)  # the limit counts the creator itself
        hits = daemon.scrape().series("procmond_task_limit_hits_total")
        unit = limited.unit
        assert {dict(k)["unit"]: v for k, v in hits.items() if dict(k)["unit"] == unit} == {
            unit: failed
        }
    finally:
        limited.remove()
