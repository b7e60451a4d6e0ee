"""Cgroup attribution on real cgroups: real directories in this host's cgroup v2 hierarchy
(found through /proc/self/mountinfo), real processes moved into them, the kubelet's log files
laid out as it writes them, and the cgroup id as BPF reports it for a real task."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from procmond.naming.cgroups import CgroupLabels, CgroupResolver, Hierarchy, read_layout, walk
from procmond.naming.kubelet import KubeletNames
from tests.e2e.cgroup_tree import CgroupTree, Pod, proc_cgroup_v2
from tests.e2e.harness import REPO


@pytest.fixture(scope="module")
def v2() -> Hierarchy:
    layout = read_layout()
    assert layout.v2 is not None, layout.describe()
    return layout.v2


@pytest.fixture
def tree(v2: Hierarchy) -> Iterator[CgroupTree]:
    t = CgroupTree(v2.mount_point)
    yield t
    t.remove()


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[Pod]:
    p = Pod()
    yield p
    p.remove()


def cgroup_id(tree: CgroupTree, path: str) -> int:
    """What bpf_get_current_cgroup_id() returns for a task in it: the directory's inode."""
    return os.stat(tree.mount / path.lstrip("/")).st_ino


def test_layout_is_read_from_mountinfo() -> None:
    layout = read_layout()
    mounts = [line.split() for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    cgroup2 = [m[4] for m in mounts if m[m.index("-", 6) + 1] == "cgroup2"]
    assert layout.v2 is not None
    assert str(layout.v2.mount_point) in cgroup2
    assert (layout.v2.mount_point / "cgroup.procs").exists()


def test_walk_ids_are_the_inodes_stat_reports(tree: CgroupTree, v2: Hierarchy) -> None:
    tree.make(f"/test.slice/test-{secrets.token_hex(4)}.service/worker")
    dirs = list(walk(v2))
    assert len(dirs) >= 4
    for d in dirs:
        assert d.inode == os.stat(d.directory).st_ino, d
        assert Path(d.directory) == v2.mount_point / d.path.lstrip("/")


def test_a_process_in_a_service_resolves_to_its_unit(tree: CgroupTree, v2: Hierarchy) -> None:
    unit = f"test-{secrets.token_hex(4)}.service"
    worker = tree.make(f"/test.slice/{unit}/worker")
    pid = tree.sleeper(worker)
    path = proc_cgroup_v2(pid)
    assert path == f"/test.slice/{unit}/worker"
    resolver = CgroupResolver(v2)
    assert resolver.path(cgroup_id(tree, path)) == path
    assert resolver.labels(cgroup_id(tree, path)) == CgroupLabels(unit=unit)


@pytest.mark.parametrize(
    ("driver", "qos"),
    [("systemd", "burstable"), ("systemd", ""), ("cgroupfs", "besteffort"), ("cgroupfs", "")],
    ids=["systemd", "systemd-guaranteed", "cgroupfs", "cgroupfs-guaranteed"],
)
def test_processes_in_pod_cgroups_resolve_to_namespace_pod_and_container(
    tree: CgroupTree, v2: Hierarchy, pod: Pod, tmp_path: Path, driver: str, qos: str
) -> None:
    pods, containers = tmp_path / "pods", tmp_path / "containers"
    pod.write_pod_dir(pods)
    pod.write_link(pods, containers)
    in_container = tree.sleeper(tree.make(pod.container_cgroup(driver, qos)))
    in_pod = tree.sleeper(tree.make(pod.cgroup(driver, qos)))  # e.g. the sandbox's pause
    assert proc_cgroup_v2(in_container) == pod.container_cgroup(driver, qos)
    resolver = CgroupResolver(v2, kubelet=KubeletNames(pods, containers))
    container_id = cgroup_id(tree, proc_cgroup_v2(in_container))
    pod_id = cgroup_id(tree, proc_cgroup_v2(in_pod))
    assert resolver.labels(container_id) == CgroupLabels("", pod.namespace, pod.name, pod.container)
    assert resolver.labels(pod_id) == CgroupLabels("", pod.namespace, pod.name, "")


def test_a_container_link_made_later_is_picked_up(
    tree: CgroupTree, v2: Hierarchy, pod: Pod, tmp_path: Path
) -> None:
    pods, containers = tmp_path / "pods", tmp_path / "containers"
    containers.mkdir()
    pod.write_pod_dir(pods)
    pid = tree.sleeper(tree.make(pod.container_cgroup("systemd", "besteffort")))
    now = [0.0]
    kubelet = KubeletNames(pods, containers, refresh_interval=5, clock=lambda: now[0])
    resolver = CgroupResolver(v2, kubelet=kubelet, link_grace=30, clock=lambda: now[0])
    container_id = cgroup_id(tree, proc_cgroup_v2(pid))
    assert resolver.labels(container_id) is None  # not known yet
    pod.write_link(pods, containers)
    assert resolver.labels(container_id) is None  # the files are re-read at most every 5 s
    now[0] += 5
    assert resolver.labels(container_id) == CgroupLabels("", pod.namespace, pod.name, pod.container)
    assert kubelet.refreshes == 2


def test_the_kubelets_real_log_directories(tree: CgroupTree, v2: Hierarchy, pod: Pod) -> None:
    """The default KubeletNames reads /var/log/pods and /var/log/containers themselves."""
    pods, containers = Path("/var/log/pods"), Path("/var/log/containers")
    pod.write_pod_dir(pods)
    pod.write_link(pods, containers)
    pid = tree.sleeper(tree.make(pod.container_cgroup("cgroupfs", "burstable")))
    resolver = CgroupResolver(v2, kubelet=KubeletNames())
    assert resolver.labels(cgroup_id(tree, proc_cgroup_v2(pid))) == CgroupLabels(
        "", pod.namespace, pod.name, pod.container
    )


def test_bpf_reports_the_id_the_resolver_resolves(tree: CgroupTree, v2: Hierarchy) -> None:
    """bpf_get_current_cgroup_id() of a task that forks in a test cgroup is the id the
    resolver maps to that cgroup's unit: the key the probe will carry resolves."""
    from bcc import BPF

    bpf = BPF(
        text=b"""
        BPF_HASH(cgroup_of, u32, u64);
        TRACEPOINT_PROBE(sched, sched_process_fork) {
            u32 tgid = bpf_get_current_pid_tgid() >> 32;
            u64 id = bpf_get_current_cgroup_id();
            cgroup_of.update(&tgid, &id);
            return 0;
        }
        """
    )
    try:
        unit = f"test-{secrets.token_hex(4)}.service"
        cgroup = tree.make(f"/test.slice/{unit}")
        shell = tree.start(cgroup, "sh", "-c", "/bin/true && /bin/true")
        assert shell.wait(timeout=30) == 0
        ids = {k.value: v.value for k, v in bpf[b"cgroup_of"].items()}
    finally:
        bpf.cleanup()
    assert ids[shell.pid] == os.stat(cgroup).st_ino
    assert CgroupResolver(v2).labels(ids[shell.pid]) == CgroupLabels(unit=unit)


def test_the_walk_benchmark_runs_and_removes_its_cgroups(v2: Hierarchy) -> None:
    """Only that benchmarks/cgroup_walk.py works (its figures are in benchmarks/CGROUPS.md)."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.cgroup_walk", "--cgroups", "120", "--rounds", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == 10, result.stdout  # header, rule and eight timings
    layout = read_layout()
    for hierarchy in (layout.v2, layout.pids_v1):
        if hierarchy is not None:
            left = [p.name for p in hierarchy.mount_point.glob("procmond-bench-*")]
            assert not left, left


def test_a_cgroup_gone_before_any_walk_resolves_from_the_mkdir_tracepoint(
    tree: CgroupTree, v2: Hierarchy
) -> None:
    """The records the probe is to keep: cgroup:cgroup_mkdir's id, root and path. For the v2
    hierarchy root is 0 and the path is the one the walk sees; with them as ``kernel_path``
    a cgroup made and removed before any walk still resolves, with no walk at all."""
    from bcc import BPF

    bpf = BPF(
        text=b"""
        struct record { int root; char path[256]; };
        BPF_HASH(mkdirs, u64, struct record);
        TRACEPOINT_PROBE(cgroup, cgroup_mkdir) {
            struct record r = {.root = args->root};
            u64 id = args->id;
            TP_DATA_LOC_READ_STR(&r.path, path, sizeof(r.path));
            mkdirs.update(&id, &r);
            return 0;
        }
        """
    )
    try:
        unit = f"test-{secrets.token_hex(4)}.service"
        short = tree.make(f"/test.slice/{unit}")
        cgroup_id = os.stat(short).st_ino
        shell = tree.start(short, "true")
        assert shell.wait(timeout=30) == 0
        tree.remove()
        assert not short.exists()
        records = {k.value: (v.root, v.path.decode()) for k, v in bpf[b"mkdirs"].items()}
    finally:
        bpf.cleanup()
    assert records[cgroup_id] == (0, f"/test.slice/{unit}")
    v2_paths = {i: path for i, (root, path) in records.items() if root == 0}
    resolver = CgroupResolver(v2, kernel_path=v2_paths.get)
    assert resolver.labels(cgroup_id) == CgroupLabels(unit=unit)
    assert resolver.stats().walks == 0
