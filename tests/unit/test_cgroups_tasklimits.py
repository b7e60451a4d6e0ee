"""Task-limit hits: the pids files' formats, the reader on v1- and v2-shaped trees in tmp_path,
and the totals that only grow. tests/e2e/test_cgroups_tasklimits.py makes real refused forks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from procmond.kernel.btf import PIDS_FORKFAIL, PIDS_MAX
from procmond.kernel.maps import GonePidsCgroup
from procmond.kernel.mounts import Mount, shown_pids_event
from procmond.naming.cgroups import CgroupResolver, Hierarchy
from procmond.naming.docker import Docker
from procmond.naming.kubelet import KubeletNames
from procmond.scrape.tasklimits import (
    EMPTY,
    OVERFLOW,
    PidsHierarchy,
    PidsReading,
    TaskLimitCounter,
    TaskLimitLabels,
    TaskLimits,
    gone_cgroups,
    gone_reading,
    labeller,
    parse_pids_events,
    parse_pids_value,
    read_pids,
)

UID = "0a1b2c3d-0000-4111-8222-333344445555"


def test_pids_events_format() -> None:
    assert parse_pids_events("max 3\n") == 3
    assert parse_pids_events("max 0\n") == 0
    assert parse_pids_events("max.imposed 9\nmax 7\n") == 7  # other lines are ignored
    with pytest.raises(ValueError, match="no 'max' line"):
        parse_pids_events("")
    with pytest.raises(ValueError):
        parse_pids_events("max x\n")


def test_pids_max_and_current_format() -> None:
    assert parse_pids_value("max\n") is None
    assert parse_pids_value("5\n") == 5


def cgroup(root: Path, path: str, **files: str) -> int:
    d = root / path.lstrip("/")
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name.replace("_", ".")).write_text(text)
    return os.stat(d).st_ino


def test_v1_reader_reads_every_cgroups_pids_events(tmp_path: Path) -> None:
    a = cgroup(tmp_path, "/a.slice", pids_events="max 0\n", pids_max="max\n", pids_current="3\n")
    b = cgroup(
        tmp_path, "/a.slice/b.service", pids_events="max 4\n", pids_max="5\n", pids_current="2\n"
    )
    readings = read_pids(PidsHierarchy(Hierarchy(tmp_path), 1), limits=True)
    assert sorted(readings, key=lambda r: r.path) == [
        PidsReading("/a.slice", a, 0, None, 3),
        PidsReading("/a.slice/b.service", b, 4, 5, 2),
    ]


def test_v2_reader_prefers_the_local_count(tmp_path: Path) -> None:
    """Since 6.13 v2's pids.events is hierarchical (the parent repeats its children's hits):
    pids.events.local counts each refusal once, at the cgroup whose limit was hit."""
    cgroup(tmp_path, "/", cgroup_controllers="pids\n")
    parent = cgroup(tmp_path, "/p.slice", pids_events="max 7\n", pids_events_local="max 0\n")
    child = cgroup(
        tmp_path, "/p.slice/c.service", pids_events="max 7\n", pids_events_local="max 7\n"
    )
    old = cgroup(tmp_path, "/old.service", pids_events="max 2\n")  # a kernel before 6.13
    cgroup(tmp_path, "/no-pids.service")  # pids not enabled for it
    readings = read_pids(PidsHierarchy(Hierarchy(tmp_path), 2))
    assert {r.path: (r.inode, r.refused) for r in readings} == {
        "/p.slice": (parent, 0),
        "/p.slice/c.service": (child, 7),
        "/old.service": (old, 2),
    }


def test_unreadable_pids_files_are_skipped(tmp_path: Path) -> None:
    cgroup(tmp_path, "/bad.service", pids_events="nonsense\n")
    cgroup(tmp_path, "/good.service", pids_events="max 1\n")
    readings = read_pids(PidsHierarchy(Hierarchy(tmp_path), 1))
    assert [(r.path, r.refused) for r in readings] == [("/good.service", 1)]


# ---- totals that only grow --------------------------------------------------------------------


def unit_labels(path: str, gone: bool = False) -> tuple[TaskLimitLabels, bool]:
    return labeller(None)(path, gone)


def R(path: str, refused: int, inode: int = 1) -> PidsReading:  # noqa: N802
    return PidsReading(path, inode, refused)


def test_growth_is_added_by_unit() -> None:
    c = TaskLimitCounter(unit_labels)
    c.update([R("/system.slice/a.service", 2), R("/system.slice/a.service/sub", 1, 2)])
    assert c.totals() == {TaskLimitLabels("a.service"): 3}
    c.update([R("/system.slice/a.service", 5), R("/system.slice/a.service/sub", 1, 2)])
    assert c.totals() == {TaskLimitLabels("a.service"): 6}


def test_a_removed_cgroup_does_not_make_the_total_go_down() -> None:
    c = TaskLimitCounter(unit_labels)
    c.update([R("/s.slice/x.service", 5, inode=10), R("/s.slice/x.service/w", 0, inode=11)])
    c.update([R("/s.slice/x.service", 5, inode=10)])  # the sub-cgroup went away
    assert c.totals() == {TaskLimitLabels("x.service"): 5}
    c.update([])  # the unit stopped: its total stays, flat
    assert c.totals() == {TaskLimitLabels("x.service"): 5}
    c.update([R("/s.slice/x.service", 2, inode=12)])  # restarted: a new cgroup, new count
    assert c.totals() == {TaskLimitLabels("x.service"): 7}


def test_a_recreated_cgroup_with_a_higher_count_adds_all_of_it() -> None:
    c = TaskLimitCounter(unit_labels)
    c.update([R("/x.service", 5, inode=10)])
    c.update([R("/x.service", 8, inode=11)])  # same path, a new cgroup: its 8 are all new
    assert c.totals() == {TaskLimitLabels("x.service"): 13}


def test_gone_label_sets_with_nothing_counted_are_dropped() -> None:
    c = TaskLimitCounter(unit_labels)
    c.update([R("/a.service", 0), R("/b.service", 1, 2)])
    c.update([])
    assert c.totals() == {TaskLimitLabels("b.service"): 1}


def test_late_pod_names_move_nothing(tmp_path: Path) -> None:
    """Growth seen while a pod's names are unknown stays under the empty labels."""
    pods, clock = tmp_path / "pods", [0.0]
    pods.mkdir()
    kubelet = KubeletNames(pods, tmp_path / "none", refresh_interval=1, clock=lambda: clock[0])
    c = TaskLimitCounter(labeller(CgroupResolver(None, kubelet=kubelet)))
    pod = f"/kubepods/burstable/pod{UID}"
    c.update([R(pod, 3)])
    assert c.totals() == {EMPTY: 3}
    (pods / f"shop_web_{UID}").mkdir()
    clock[0] += 1
    c.update([R(pod, 5)])
    assert c.totals() == {EMPTY: 3, TaskLimitLabels("", "shop", "web"): 2}
    c.update([R(pod, 6)])
    assert c.totals() == {EMPTY: 3, TaskLimitLabels("", "shop", "web"): 3}


def test_label_sets_are_bounded_by_evicting_the_longest_gone() -> None:
    c = TaskLimitCounter(unit_labels, max_label_sets=3)
    c.update([R("/a.service", 1, 1), R("/b.service", 1, 2)])
    c.update([R("/b.service", 1, 2)])  # a is gone (kept: it counted something)
    c.update([])  # b is gone too, more recently
    c.update([R("/c.service", 1, 3)])  # needs room: a goes, b stays
    assert c.totals() == {TaskLimitLabels("b.service"): 1, TaskLimitLabels("c.service"): 1}


def test_beyond_the_bound_live_cgroups_count_under_overflow() -> None:
    c = TaskLimitCounter(unit_labels, max_label_sets=3)
    c.update([R(f"/u{n}.service", 1, n) for n in range(5)])
    totals = c.totals()
    assert len(totals) == 3
    assert totals[OVERFLOW] == 3
    assert sum(totals.values()) == 5
    c.update([R(f"/u{n}.service", 2, n) for n in range(5)])
    assert sum(c.totals().values()) == 10
    assert c.totals()[OVERFLOW] == 6  # pinned: the same cgroups keep counting there


def test_label_set_bound_must_leave_room_for_overflow() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        TaskLimitCounter(unit_labels, max_label_sets=1)


def test_a_removed_cgroups_last_count_adds_what_grew_since_its_last_reading() -> None:
    c = TaskLimitCounter(unit_labels)
    c.update([R("/x.service", 5, inode=10)])
    c.update([], removed=[R("/x.service", 9, inode=10)])  # 4 more, then it was removed
    assert c.totals() == {TaskLimitLabels("x.service"): 9}
    c.update([R("/x.service", 2, inode=11)])  # restarted: its new cgroup counts from 0
    assert c.totals() == {TaskLimitLabels("x.service"): 11}


def test_a_cgroup_made_and_removed_between_two_readings_adds_all_of_it() -> None:
    c = TaskLimitCounter(unit_labels)
    c.update([R("/y.service", 3, inode=1)], removed=[R("/x.service", 7, inode=2)])
    assert c.totals() == {TaskLimitLabels("x.service"): 7, TaskLimitLabels("y.service"): 3}


def test_a_cgroup_removed_while_being_read_is_counted_once() -> None:
    """Read live (6), then removed at 8 before the probe's map was read: 8 in all."""
    c = TaskLimitCounter(unit_labels)
    c.update([R("/x.service", 2, inode=10)])
    c.update([R("/x.service", 6, inode=10)], removed=[R("/x.service", 8, inode=10)])
    assert c.totals() == {TaskLimitLabels("x.service"): 8}
    c.update([])
    assert c.totals() == {TaskLimitLabels("x.service"): 8}


def test_removed_cgroups_the_probe_had_no_room_for_count_under_overflow() -> None:
    c = TaskLimitCounter(unit_labels)
    c.update([], lost=12)
    c.update([], lost=3)
    assert c.totals() == {OVERFLOW: 15}


def test_gone_entries_become_readings_and_lost_counts_are_taken_as_they_grow() -> None:
    class Reader:
        def __init__(self) -> None:
            self.taken = [([GonePidsCgroup(10, 4, b"/s.slice/x.service", False)], 5), ([], 7)]

        def take_gone_pids_cgroups(self) -> tuple[list[GonePidsCgroup], int]:
            return self.taken.pop(0)

    pids = PidsHierarchy(Hierarchy(Path("/nonexistent")), 1)
    limits = TaskLimits(pids, gone=gone_cgroups(Reader()), max_label_sets=8)
    assert limits.collect() == {TaskLimitLabels("x.service"): 4, OVERFLOW: 5}
    assert limits.collect() == {TaskLimitLabels("x.service"): 4, OVERFLOW: 7}


def test_which_pids_count_the_files_show() -> None:
    v1 = Mount("/sys/fs/cgroup/pids", "/", "cgroup", frozenset({"rw", "pids"}))
    v2 = Mount("/sys/fs/cgroup", "/", "cgroup2", frozenset({"rw", "nsdelegate"}))
    local = Mount("/sys/fs/cgroup", "/", "cgroup2", frozenset({"rw", "pids_localevents"}))
    assert shown_pids_event([v2, v1]) == PIDS_FORKFAIL  # hybrid: the v1 pids hierarchy
    assert shown_pids_event([v2]) == PIDS_MAX  # unified: pids.events.local
    assert shown_pids_event([local]) == PIDS_FORKFAIL
    assert shown_pids_event([]) == PIDS_FORKFAIL


def test_a_recorded_path_cut_short_names_nothing() -> None:
    """A path longer than the probe's buffer is not the cgroup's: its count is placed by the
    cgroup's id, under the path a reading saw it at, else under the empty labels. Never under
    a wrong name."""
    cut = b"/a.slice/" + b"z" * 235 + b".service-real.scope"
    reading = gone_reading(GonePidsCgroup(10, 6, cut[:255], True))
    assert reading == PidsReading("", 10, 6)
    c = TaskLimitCounter(unit_labels)
    c.update([R("/a.slice/real.service/sub", 2, inode=10)])
    c.update([], removed=[reading])
    assert c.totals() == {TaskLimitLabels("real.service"): 6}
    c.update([], removed=[PidsReading("", 11, 3)])  # never read: unnamed, still counted
    assert c.totals() == {TaskLimitLabels("real.service"): 6, EMPTY: 3}


def test_a_whole_recorded_path_is_the_cgroups() -> None:
    reading = gone_reading(GonePidsCgroup(10, 6, b"/s.slice/x\xff.service", False))
    assert reading == PidsReading("/s.slice/x\udcff.service", 10, 6)


def test_a_failed_take_loses_nothing_and_fails_nothing(caplog: pytest.LogCaptureFixture) -> None:
    class Reader:
        def __init__(self) -> None:
            self.calls = 0

        def take_gone_pids_cgroups(self) -> tuple[list[GonePidsCgroup], int]:
            self.calls += 1
            if self.calls == 1:
                raise OSError(9, "Bad file descriptor")
            return [GonePidsCgroup(10, 4, b"/x.service", False)], 0

    pids = PidsHierarchy(Hierarchy(Path("/nonexistent")), 1)
    limits = TaskLimits(pids, gone=gone_cgroups(Reader()), max_label_sets=8)
    assert limits.collect() == {}
    assert "cannot take the task-limit hits of removed cgroups" in caplog.text
    assert limits.collect() == {TaskLimitLabels("x.service"): 4}


# ---- containers outside Kubernetes --------------------------------------------------------------

CID, OTHER = "ab" * 32, "cd" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def docker_names(tmp_path: Path, clock: Clock) -> tuple[Docker, CgroupResolver]:
    """A resolver naming Docker's containers from a data root in tmp_path, as the daemon's."""
    docker = Docker(str(tmp_path / "docker"), capacity=64)
    return docker, CgroupResolver(None, runtimes=[docker], link_grace=5, clock=clock)


def write_docker_name(tmp_path: Path, container_id: str, name: str) -> Path:
    state = tmp_path / "docker" / "containers" / container_id
    state.mkdir(parents=True)
    (state / "config.v2.json").write_text(json.dumps({"Name": "/" + name}))
    return state


def test_a_containers_refusals_count_under_its_name_in_the_v1_pids_tree(tmp_path: Path) -> None:
    """``docker run --pids-limit`` on a hybrid host: the refusals are in
    ``/sys/fs/cgroup/pids/docker/<id>``; the container's name labels them, never a unit."""
    clock = Clock()
    _docker, names = docker_names(tmp_path, clock)
    write_docker_name(tmp_path, CID, "ci-job")
    c = TaskLimitCounter(labeller(names))
    c.update([R(f"/docker/{CID}", 7, inode=10)])
    assert c.totals() == {TaskLimitLabels(container="ci-job"): 7}
    podman = f"/libpod_parent/libpod-{CID}"
    assert labeller(names)(podman, False) == (EMPTY, True)  # no Podman runtime here: no unit


def test_a_removed_container_keeps_its_name_and_an_unnamed_one_gets_its_short_id(
    tmp_path: Path,
) -> None:
    """Removed before the next scrape (``docker run --rm``): its state is gone, the name read
    when dockerd wrote it labels the probe's last count; a container whose name was never read
    gets its short id at once (no name can come any more), never its 64 hex."""
    clock = Clock()
    docker, names = docker_names(tmp_path, clock)
    state = write_docker_name(tmp_path, CID, "job-1")
    docker.noticed(("containers", CID, "config.v2.json"))  # what the state watcher does
    (state / "config.v2.json").unlink()
    state.rmdir()
    c = TaskLimitCounter(labeller(names))
    c.update([], removed=[R(f"/docker/{CID}", 9, inode=10), R(f"/docker/{OTHER}", 2, inode=11)])
    assert c.totals() == {
        TaskLimitLabels(container="job-1"): 9,
        TaskLimitLabels(container=OTHER[:12]): 2,
    }


def test_a_live_container_named_late_moves_nothing(tmp_path: Path) -> None:
    """While its name is not on disk its growth counts under the empty labels; after the grace
    time it is its short id, as the forks metrics name it."""
    clock = Clock()
    _docker, names = docker_names(tmp_path, clock)
    c = TaskLimitCounter(labeller(names))
    c.update([R(f"/docker/{CID}", 3, inode=10)])
    assert c.totals() == {EMPTY: 3}
    clock.now += 5
    c.update([R(f"/docker/{CID}", 4, inode=10)])
    assert c.totals() == {EMPTY: 3, TaskLimitLabels(container=CID[:12]): 1}


def test_container_label_sets_stay_bounded_under_churn(tmp_path: Path) -> None:
    """Each container is a label set of its own: 50 containers hitting their limits one after
    another, through a counter of 8 label sets, show at most 8 series, the newest ones, and the
    runtime's and resolver's tables stay within their capacities."""
    clock = Clock()
    docker = Docker(str(tmp_path / "docker"), capacity=16)
    names = CgroupResolver(None, runtimes=[docker], capacity=16, pending_capacity=16, clock=clock)
    limits = TaskLimitCounter(labeller(names), max_label_sets=8)
    for n in range(50):
        cid = f"{n:064x}"
        write_docker_name(tmp_path, cid, f"job-{n}")
        limits.update([R(f"/docker/{cid}", 1, inode=100 + n)])
        assert len(limits.totals()) <= 8
    assert TaskLimitLabels(container="job-49") in limits.totals()
    assert sum(limits.totals().values()) == 7  # one place stays for __overflow__
    assert all(used <= cap for used, cap in names.sizes().values())


def test_a_restart_keeps_the_totals_and_the_last_readings() -> None:
    """state() → JSON → restore(): the next reading of the same cgroups adds only their
    growth, and a removed unit's total stays."""
    c = TaskLimitCounter(unit_labels)
    c.update([R("/s.slice/x.service", 5, inode=10), R("/s.slice/y.service", 3, inode=11)])
    c.update([R("/s.slice/x.service", 5, inode=10)])  # y stopped
    restarted = TaskLimitCounter(unit_labels)
    restarted.restore(json.loads(json.dumps(c.state())))
    assert restarted.state() == c.state()
    restarted.update([R("/s.slice/x.service", 7, inode=10)])
    assert restarted.totals() == {TaskLimitLabels("x.service"): 7, TaskLimitLabels("y.service"): 3}


def test_label_sets_saved_before_the_container_label_restore_with_an_empty_container() -> None:
    c = TaskLimitCounter(unit_labels)
    c.restore(
        {
            "cgroups": [["/s.slice/x.service", 10, 5, ["x.service", "", ""], True]],
            "totals": [[["x.service", "", ""], 5, True, 1]],
            "updates": 1,
        }
    )
    c.update([R("/s.slice/x.service", 6, inode=10)])
    assert c.totals() == {TaskLimitLabels("x.service", "", "", ""): 6}
