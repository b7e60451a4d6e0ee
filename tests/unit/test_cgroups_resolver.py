"""CgroupResolver and KubeletNames on directory trees in tmp_path, with an injected clock.

Any directory tree walks like a cgroup2 tree (an inode per directory), so the caching, the
rate limits and the bounds are tested here without root; tests/e2e/test_cgroups.py does the
same on real cgroups with real processes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from procmond.naming.cgroups import (
    EMPTY_LABELS,
    CgroupLabels,
    CgroupNamer,
    CgroupResolver,
    Hierarchy,
    walk,
)
from procmond.naming.kubelet import (
    ContainerName,
    KubeletNames,
    PodName,
    parse_container_link,
    parse_pod_dir,
)

UID = "0a1b2c3d-0000-4111-8222-333344445555"
CID = "cd" * 32
SANDBOX = "5a" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def mkdirs(root: Path, path: str) -> int:
    """Make a cgroup-like directory; its inode plays the cgroup id."""
    d = root / path.lstrip("/")
    d.mkdir(parents=True)
    return os.stat(d).st_ino


@pytest.fixture
def clock() -> Clock:
    return Clock()


# ---- the walk -----------------------------------------------------------------------------------


def test_walk_gives_every_directory_with_its_stat_inode(tmp_path: Path) -> None:
    ids = {p: mkdirs(tmp_path, p) for p in ["/a.slice", "/a.slice/b.service", "/c.scope"]}
    (tmp_path / "a.slice" / "pids.events").write_text("max 0\n")
    found = {
        d.path: (d.inode, d.files) for d in walk(Hierarchy(tmp_path), frozenset({"pids.events"}))
    }
    assert found == {
        "/": (os.stat(tmp_path).st_ino, ()),
        "/a.slice": (ids["/a.slice"], ("pids.events",)),
        "/a.slice/b.service": (ids["/a.slice/b.service"], ()),
        "/c.scope": (ids["/c.scope"], ()),
    }


def test_walk_of_a_missing_hierarchy_is_empty(tmp_path: Path) -> None:
    assert list(walk(Hierarchy(tmp_path / "gone"))) == []


def test_walk_of_a_subtree_mount_gives_full_paths(tmp_path: Path) -> None:
    mkdirs(tmp_path, "/x.service")
    paths = {d.path for d in walk(Hierarchy(tmp_path, "/kubepods/pod1"))}
    assert paths == {"/kubepods/pod1", "/kubepods/pod1/x.service"}


# ---- paths: mkdir records, walk, rate limit, negative cache -------------------------------------


def test_mkdir_records_answer_without_a_walk(tmp_path: Path, clock: Clock) -> None:
    """A short-lived cgroup, gone before any walk, still resolves from the kernel's records."""
    records = {4242: "/system.slice/short.service"}
    r = CgroupResolver(Hierarchy(tmp_path), kernel_path=records.get, clock=clock)
    assert r.labels(4242) == CgroupLabels(unit="short.service")
    assert r.stats().walks == 0
    assert r.stats().kernel_paths == 1


def test_a_miss_walks_once_then_is_rate_limited(tmp_path: Path, clock: Clock) -> None:
    cron = mkdirs(tmp_path, "/system.slice/cron.service")
    r = CgroupResolver(Hierarchy(tmp_path), walk_interval=10, clock=clock)
    assert r.path(cron) == "/system.slice/cron.service"
    assert r.stats().walks == 1
    late = mkdirs(tmp_path, "/system.slice/late.service")
    assert r.labels(late) is None  # not in the last walk, and the next is not due yet
    assert r.labels(late) is None  # the negative cache answers, still no walk
    assert (r.stats().walks, r.stats().negative) == (1, 1)
    clock.now += 10
    assert r.labels(late) == CgroupLabels(unit="late.service")
    assert (r.stats().walks, r.stats().negative) == (2, 0)


def test_a_walk_indexes_every_id_so_later_asks_hit(tmp_path: Path, clock: Clock) -> None:
    ids = [mkdirs(tmp_path, f"/s.slice/u{n}.service") for n in range(20)]
    r = CgroupResolver(Hierarchy(tmp_path), clock=clock)
    assert r.labels(ids[0]) == CgroupLabels(unit="u0.service")
    assert [r.labels(i) for i in ids] == [CgroupLabels(unit=f"u{n}.service") for n in range(20)]
    assert r.stats().walks == 1


def test_labels_many_makes_one_walk_for_all_misses(tmp_path: Path, clock: Clock) -> None:
    ids = [mkdirs(tmp_path, f"/u{n}.service") for n in range(5)]
    r = CgroupResolver(Hierarchy(tmp_path), capacity=2, clock=clock)
    answers = r.labels_many([*ids, 999_999_999])
    assert answers == {
        **{i: CgroupLabels(unit=f"u{n}.service") for n, i in enumerate(ids)},
        999_999_999: None,
    }
    assert r.stats().walks == 1


def test_caches_stay_within_their_capacity(tmp_path: Path, clock: Clock) -> None:
    ids = [mkdirs(tmp_path, f"/u{n}.service") for n in range(50)]
    r = CgroupResolver(
        Hierarchy(tmp_path), capacity=8, negative_capacity=4, walk_interval=0, clock=clock
    )
    assert r.labels(ids[17]) == CgroupLabels(unit="u17.service")  # kept despite the small cache
    for unknown in range(10_000_000, 10_000_100):
        assert r.labels(unknown) is None
    stats = r.stats()
    assert (stats.cached_paths, stats.final_labels, stats.negative) == (8, 1, 4)


def test_a_walk_never_pushes_out_the_paths_in_use(tmp_path: Path, clock: Clock) -> None:
    """A tree larger than the cache: the cgroups a walk passes by fill free room only, so the
    ids asked about at every scrape keep their paths (else each walk would evict them and the
    next ones would walk again)."""
    ids = [mkdirs(tmp_path, f"/u{n}.service") for n in range(50)]
    r = CgroupResolver(Hierarchy(tmp_path), capacity=4, walk_interval=0, clock=clock)
    in_use = ids[:3]
    assert r.labels_many(in_use) == {
        i: CgroupLabels(unit=f"u{ids.index(i)}.service") for i in in_use
    }
    for other in ids[10:20]:  # each a miss: a walk of all 51 cgroups
        r.path(other)
        walks = r.stats().walks
        assert [r.path(i) for i in in_use] == [f"/u{n}.service" for n in range(3)]
        assert r.stats().walks == walks  # from the cache
    assert r.sizes()["cgroup_paths"] == (4, 4)


def test_unplaced_ids_are_bounded(tmp_path: Path, clock: Clock) -> None:
    r = CgroupResolver(Hierarchy(tmp_path), walk_interval=3600, clock=clock)
    namer = CgroupNamer(r, Hierarchy(tmp_path), clock, capacity=16)
    r.path(1)  # the one walk allowed in the next hour
    for unknown in range(10_000_000, 10_001_000):  # ids no walk has placed yet
        assert namer.alive(unknown) is None
    assert namer.sizes() == {"cgroups_unplaced": (16, 16)}


def test_no_cgroup_v2_makes_every_id_final_and_empty(clock: Clock) -> None:
    r = CgroupResolver(None, clock=clock)
    assert r.labels_many([1, 2]) == {1: EMPTY_LABELS, 2: EMPTY_LABELS}
    assert r.path(1) is None


# ---- Kubernetes names ---------------------------------------------------------------------------


class Node:
    """A kubelet's cgroups (systemd driver) and log directories, in tmp_path."""

    def __init__(self, root: Path) -> None:
        self.cgroups = root / "cgroup"
        self.pods = root / "pods"
        self.containers = root / "containers"
        for d in (self.cgroups, self.pods, self.containers):
            d.mkdir()
        self.pod_slice = (
            f"/kubepods.slice/kubepods-burstable.slice/"
            f"kubepods-burstable-pod{UID.replace('-', '_')}.slice"
        )

    def cgroup(self, container_id: str = "") -> int:
        leaf = f"/cri-containerd-{container_id}.scope" if container_id else ""
        return mkdirs(self.cgroups, self.pod_slice + leaf)

    def pod_dir(self) -> None:
        (self.pods / f"shop_web-7d4b9_{UID}" / "nginx").mkdir(parents=True)

    def link(self, container_id: str = CID) -> None:
        target = self.pods / f"shop_web-7d4b9_{UID}" / "nginx" / "0.log"
        (self.containers / f"web-7d4b9_shop_nginx-{container_id}.log").symlink_to(target)

    def resolver(self, clock: Clock, **kwargs: float) -> tuple[CgroupResolver, KubeletNames]:
        kubelet = KubeletNames(self.pods, self.containers, refresh_interval=5, clock=clock)
        resolver = CgroupResolver(
            Hierarchy(self.cgroups), kubelet=kubelet, link_grace=30, clock=clock, **kwargs
        )
        return resolver, kubelet


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path)


def test_container_names_come_from_its_log_link(node: Node, clock: Clock) -> None:
    node.pod_dir()
    node.link()
    r, _ = node.resolver(clock)
    assert r.labels(node.cgroup(CID)) == CgroupLabels("", "shop", "web-7d4b9", "nginx")


def test_pod_level_cgroup_is_named_by_uid(node: Node, clock: Clock) -> None:
    node.pod_dir()
    r, _ = node.resolver(clock)
    assert r.labels(node.cgroup()) == CgroupLabels("", "shop", "web-7d4b9", "")


def test_a_link_made_later_is_picked_up_at_a_bounded_rate(node: Node, clock: Clock) -> None:
    node.pod_dir()
    container = node.cgroup(CID)
    r, kubelet = node.resolver(clock)
    assert r.labels(container) is None  # not known yet: the caller keeps its counts pending
    node.link()
    for _ in range(100):
        assert r.labels(container) is None  # the kubelet's files are not re-read yet
    assert kubelet.refreshes == 1
    clock.now += 5
    assert r.labels(container) == CgroupLabels("", "shop", "web-7d4b9", "nginx")
    assert kubelet.refreshes == 2
    assert r.stats().pending == 0


def test_final_answers_stay_when_the_files_go(node: Node, clock: Clock) -> None:
    node.pod_dir()
    node.link()
    container = node.cgroup(CID)
    r, _ = node.resolver(clock)
    first = r.labels(container)
    for link in node.containers.iterdir():
        link.unlink()
    clock.now += 60
    assert r.labels(container) == first == CgroupLabels("", "shop", "web-7d4b9", "nginx")


def test_the_sandbox_gets_pod_names_after_the_grace_time(node: Node, clock: Clock) -> None:
    """The pause container never gets a log link: after link_grace its pod's names, final."""
    node.pod_dir()
    sandbox = node.cgroup(SANDBOX)
    r, _ = node.resolver(clock)
    assert r.labels(sandbox) is None
    clock.now += 29.9
    assert r.labels(sandbox) is None
    clock.now += 0.1
    assert r.labels(sandbox) == CgroupLabels("", "shop", "web-7d4b9", "")
    node.link(SANDBOX)  # even a link appearing now does not change a final answer
    clock.now += 60
    assert r.labels(sandbox) == CgroupLabels("", "shop", "web-7d4b9", "")


def test_a_pod_never_seen_on_disk_ends_with_empty_names(node: Node, clock: Clock) -> None:
    pod = node.cgroup()
    r, _ = node.resolver(clock)
    assert r.labels(pod) is None
    clock.now += 30
    assert r.labels(pod) == EMPTY_LABELS


def test_pending_ids_are_bounded(node: Node, clock: Clock) -> None:
    records = {n: f"/kubepods/pod{n:08d}-0000-0000-0000-000000000000" for n in range(10)}
    r = CgroupResolver(
        Hierarchy(node.cgroups),
        kernel_path=records.get,
        kubelet=KubeletNames(node.pods, node.containers, clock=clock),
        pending_capacity=3,
        clock=clock,
    )
    assert r.labels_many(records) == dict.fromkeys(records)
    assert r.stats().pending == 3


def test_kubernetes_cgroups_without_a_kubelet_source_are_final_and_empty(
    node: Node, clock: Clock
) -> None:
    r = CgroupResolver(Hierarchy(node.cgroups), clock=clock)
    assert r.labels(node.cgroup(CID)) == EMPTY_LABELS


# ---- the kubelet's file names -------------------------------------------------------------------


def test_pod_dir_names() -> None:
    assert parse_pod_dir(f"kube-system_coredns-5d78c9869d-abcde_{UID}") == (
        UID,
        PodName("kube-system", "coredns-5d78c9869d-abcde"),
    )
    for bad in ["", "a_b", "a__c", "a_b_c_d", "_b_c"]:
        assert parse_pod_dir(bad) is None, bad


def test_container_link_names() -> None:
    assert parse_container_link(f"coredns-5d78c9869d-abcde_kube-system_coredns-{CID}.log") == (
        CID,
        ContainerName("kube-system", "coredns-5d78c9869d-abcde", "coredns"),
    )
    # a container name with dashes: the id is what follows the last one
    assert parse_container_link(f"p_ns_my-side-car-{CID}.log") == (
        CID,
        ContainerName("ns", "p", "my-side-car"),
    )
    for bad in [
        f"p_ns_c-{CID}",  # no .log
        f"p_ns_c-{CID[:-1]}.log",  # 63 hex digits
        f"p_ns_c-{CID.upper()}.log",
        f"p_ns_-{CID}.log",  # no container name
        f"p_ns_c_x-{CID}.log",
        f"ns_c-{CID}.log",
    ]:
        assert parse_container_link(bad) is None, bad


def test_missing_kubelet_dirs_give_no_names(tmp_path: Path, clock: Clock) -> None:
    kubelet = KubeletNames(tmp_path / "no-pods", tmp_path / "no-containers", clock=clock)
    assert kubelet.pod(UID) is None
    assert kubelet.container(CID) is None


def test_kubelet_index_is_capped(tmp_path: Path, clock: Clock) -> None:
    pods = tmp_path / "pods"
    for n in range(10):
        (pods / f"ns_p{n}_uid{n}").mkdir(parents=True)
    kubelet = KubeletNames(pods, tmp_path, capacity=4, clock=clock)
    known = [kubelet.pod(f"uid{n}") for n in range(10)]
    assert sum(k is not None for k in known) == 4
