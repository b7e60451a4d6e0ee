"""Pure rules: which unit, pod and container a cgroup path names; where cgroup v2 is mounted."""

from __future__ import annotations

from pathlib import Path

import pytest

from procmond.naming.cgroups import (
    BoundedLRU,
    CgroupPath,
    Hierarchy,
    detect_layout,
    parse_cgroup_path,
)

UID = "0a1b2c3d-0000-4111-8222-333344445555"
UID_ = UID.replace("-", "_")
CID = "ab" * 32
STATIC_UID = "6f1c2b3a4d5e6f708192a3b4c5d6e7f8"  # static pods: the config hash is the uid


@pytest.mark.parametrize(
    ("path", "unit"),
    [
        ("/system.slice/cron.service", "cron.service"),
        ("/user.slice/user-1000.slice/session-3.scope", "session-3.scope"),
        ("/user.slice/user-1000.slice/user@1000.service", "user@1000.service"),
        # the deepest unit wins: a user's own services under their manager
        ("/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service", "foo.service"),
        ("/user.slice/user-1000.slice/user@1000.service/init.scope", "init.scope"),
        ("/init.scope", "init.scope"),
        ("/system.slice/docker-" + CID + ".scope", "docker-" + CID + ".scope"),
        # below a unit, a cgroup that is not one (a delegated subtree) still belongs to it
        ("/system.slice/foo.service/worker", "foo.service"),
        ("/system.slice", ""),
        ("/user.slice/user-1000.slice", ""),
        ("/", ""),
        ("/docker/" + CID, ""),  # docker with the cgroupfs driver: not a unit
        ("/system.slice/.service", ""),  # a suffix alone is no name
    ],
)
def test_unit_is_the_deepest_service_or_scope(path: str, unit: str) -> None:
    assert parse_cgroup_path(path) == CgroupPath(unit=unit)


@pytest.mark.parametrize(
    ("path", "uid", "container"),
    [
        # systemd driver, with and without a QoS level (Guaranteed pods have none)
        (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice", UID, ""),
        (
            f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice"
            f"/cri-containerd-{CID}.scope",
            UID,
            CID,
        ),
        (f"/kubepods.slice/kubepods-pod{UID_}.slice/crio-{CID}.scope", UID, CID),
        (f"/kubepods.slice/kubepods-pod{UID_}.slice/docker-{CID}.scope", UID, CID),
        # cgroupfs driver
        (f"/kubepods/burstable/pod{UID}/{CID}", UID, CID),
        (f"/kubepods/pod{UID}/{CID}", UID, CID),
        (f"/kubepods/besteffort/pod{UID}", UID, ""),
        (f"/kubepods/pod{STATIC_UID}/{CID}", STATIC_UID, CID),
        # a container's own sub-cgroups belong to the container
        (f"/kubepods/pod{UID}/{CID}/init.scope", UID, CID),
        # CRI-O's conmon scope sits beside the container: the pod's, not a container
        (f"/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{CID}.scope", UID, ""),
        # kubelet with --cgroup-root (kind): kubelet.slice/kubelet-kubepods.slice/...
        (
            f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice"
            f"/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope",
            UID,
            CID,
        ),
        # the same seen from the host the kind node runs on
        (
            f"/system.slice/docker-{CID}.scope/kubelet.slice/kubelet-kubepods.slice"
            f"/kubelet-kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope",
            UID,
            CID,
        ),
    ],
)
def test_kubernetes_paths_name_pod_and_container_but_no_unit(
    path: str, uid: str, container: str
) -> None:
    assert parse_cgroup_path(path) == CgroupPath(
        unit="", kubernetes=True, pod_uid=uid, container_id=container
    )


@pytest.mark.parametrize(
    "path",
    ["/kubepods.slice", "/kubepods.slice/kubepods-burstable.slice", "/kubepods/besteffort"],
)
def test_kubepods_without_a_pod_is_kubernetes_with_no_names(path: str) -> None:
    assert parse_cgroup_path(path) == CgroupPath(kubernetes=True)


def test_a_pod_like_name_outside_kubepods_is_not_a_pod() -> None:
    assert parse_cgroup_path(f"/system.slice/pod{UID}/{CID}") == CgroupPath(unit="")


# ---- mountinfo ----------------------------------------------------------------------------------

HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
UNIFIED = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
"""
LEGACY = """\
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:1 - cgroup cgroup rw,cpu,cpuacct
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime shared:2 - cgroup cgroup rw,pids
"""
# A container in its own cgroup namespace: the runtime's view of its own cgroup at
# /sys/fs/cgroup ("/"), and the host's whole hierarchy bind-mounted, shown as "/../..".
CONTAINER = """\
600 500 0:26 / /sys/fs/cgroup ro,nosuid - cgroup2 cgroup2 rw
601 500 0:26 /../.. /host/cgroup ro,nosuid - cgroup2 cgroup2 rw
"""


def test_hybrid_layout_has_v2_at_unified_and_pids_in_v1() -> None:
    layout = detect_layout(HYBRID)
    assert layout.kind == "hybrid"
    assert layout.v2 == Hierarchy(Path("/sys/fs/cgroup/unified"))
    assert layout.pids_v1 == Hierarchy(Path("/sys/fs/cgroup/pids"))
    assert layout.v1_controllers == {"cpu", "pids", "name=systemd"}
    assert layout.describe() == (
        "cgroup v2 at /sys/fs/cgroup/unified beside v1 controllers (hybrid): creations are "
        "attributed to systemd units and Kubernetes pods"
    )


def test_unified_layout() -> None:
    layout = detect_layout(UNIFIED)
    assert (layout.kind, layout.v2, layout.pids_v1) == (
        "unified",
        Hierarchy(Path("/sys/fs/cgroup")),
        None,
    )


def test_legacy_layout_says_why_labels_are_empty() -> None:
    layout = detect_layout(LEGACY)
    assert (layout.kind, layout.v2) == ("legacy", None)
    assert layout.pids_v1 == Hierarchy(Path("/sys/fs/cgroup/pids"))
    assert layout.describe() == (
        "only cgroup v1 is mounted (no cgroup2 line in /proc/self/mountinfo), so the unit, "
        "namespace, pod and container labels stay empty; boot with "
        "systemd.unified_cgroup_hierarchy=1 (or mount cgroup2) to get them"
    )


def test_no_cgroups_at_all() -> None:
    layout = detect_layout("")
    assert layout.kind == "none"
    assert layout.describe().startswith("no cgroup is mounted (no cgroup2 line")


def test_the_whole_hierarchy_wins_over_a_namespaced_view() -> None:
    assert detect_layout(CONTAINER).v2 == Hierarchy(Path("/host/cgroup"), "")


def test_a_subtree_mount_keeps_its_path_as_prefix() -> None:
    text = "600 500 0:26 /kubepods/pod1 /mnt/cg\\040x rw - cgroup2 cgroup2 rw\n"
    v2 = detect_layout(text).v2
    assert v2 == Hierarchy(Path("/mnt/cg x"), "/kubepods/pod1")
    assert v2.cgroup_path("/") == "/kubepods/pod1"
    assert v2.cgroup_path("/abc") == "/kubepods/pod1/abc"


def test_malformed_mountinfo_lines_are_skipped() -> None:
    assert detect_layout("garbage\n1 2 3\n" + UNIFIED).kind == "unified"


# ---- the bounded cache --------------------------------------------------------------------------


def test_lru_drops_the_least_recently_used() -> None:
    cache: BoundedLRU[int, str] = BoundedLRU(2)
    cache.put(1, "a")
    cache.put(2, "b")
    assert cache.get(1) == "a"  # 1 is now the most recent
    cache.put(3, "c")
    assert (1 in cache, 2 in cache, 3 in cache, len(cache)) == (True, False, True, 2)


def test_lru_refuses_a_capacity_below_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        BoundedLRU(0)
