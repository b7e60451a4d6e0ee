"""Container runtimes outside Kubernetes: their cgroups recognised by structure (every layout
of both cgroup drivers, which PID 1 here cannot show for real: it is not systemd), and their
names read from state laid out as each runtime writes it, hostile state included.
Real runtimes: tests/e2e/test_containers.py."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from procmond.config import Config, parse_config
from procmond.errors import ConfigError
from procmond.naming.cgroups import CgroupResolver, Hierarchy
from procmond.naming.containerd import TASKS, Containerd
from procmond.naming.crio import Crio
from procmond.naming.docker import Docker
from procmond.naming.labels import EMPTY_LABELS, CgroupLabels
from procmond.naming.podman import Podman, pod_in
from procmond.naming.podman_rootless import RootlessPodman
from procmond.naming.runtimes import runtimes

ID = "ab" * 32
POD_ID = "5c" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def docker_state(root: Path, container_id: str, config: bytes | dict) -> None:
    d = root / "containers" / container_id
    d.mkdir(parents=True)
    data = config if isinstance(config, bytes) else json.dumps(config).encode()
    (d / "config.v2.json").write_bytes(data)


def podman_state(root: Path, names: dict[str, str], pods: dict[str, str] | None = None) -> None:
    store = root / "overlay-containers"
    store.mkdir(parents=True, exist_ok=True)
    entries = [{"id": cid, "names": [name], "metadata": "{}"} for cid, name in names.items()]
    (store / "containers.json").write_text(json.dumps(entries))
    for cid, pod_id in (pods or {}).items():
        userdata = store / cid / "userdata"
        userdata.mkdir(parents=True)
        annotations = {"io.kubernetes.cri-o.SandboxID": pod_id}
        (userdata / "config.json").write_text(json.dumps({"annotations": annotations}))


def resolver(tmp_path: Path, paths: dict[int, str], clock: Clock, **roots: str) -> CgroupResolver:
    config = Config(
        docker_root=roots.get("docker", str(tmp_path / "docker")),
        containers_storage_root=roots.get("storage", str(tmp_path / "storage")),
        containerd_state=roots.get("containerd", str(tmp_path / "containerd")),
        nerdctl_root=roots.get("nerdctl", str(tmp_path / "nerdctl")),
    )
    return CgroupResolver(
        Hierarchy(tmp_path / "cgroup"),
        kernel_path=paths.get,
        runtimes=runtimes(config, 64),
        walk_interval=3600,
        link_grace=5,
        clock=clock,
    )


# ---- structure ----------------------------------------------------------------------------------

LAYOUTS = [
    # (runtime, cgroup path, container id it belongs to)
    (Docker, f"/docker/{ID}", ID),  # cgroupfs driver
    (Docker, f"/system.slice/docker-{ID}.scope", ID),  # systemd driver
    (Docker, f"/system.slice/docker-{ID}.scope/init.scope", ID),  # a sub-cgroup inside it
    (Podman, f"/libpod_parent/libpod-{ID}", ID),  # rootful cgroupfs
    (Podman, f"/machine.slice/libpod-{ID}.scope", ID),  # rootful systemd
    (Podman, f"/machine.slice/machine-libpod_pod_{POD_ID}.slice/libpod-{ID}.scope", ID),
    (
        RootlessPodman,
        f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope",
        ID,
    ),  # rootless
    (Crio, f"/system.slice/crio-{ID}.scope", ID),
    (Containerd, f"/system.slice/nerdctl-{ID}.scope", ID),
]
NOT_CONTAINERS = [
    f"/machine.slice/libpod-conmon-{ID}.scope",  # conmon, not the container
    f"/system.slice/crio-conmon-{ID}.scope",
    f"/system.slice/docker-{ID[:12]}.scope",  # not a container id
    f"/docker/{ID}x",
    "/system.slice/docker.service",  # dockerd itself: a unit
    f"/{ID}",
]


@pytest.mark.parametrize(("runtime", "path", "container_id"), LAYOUTS)
def test_each_runtime_recognises_its_layouts_and_no_other(
    runtime: type, path: str, container_id: str, tmp_path: Path
) -> None:
    names = [n for n in path.split("/") if n]
    for source in runtimes(Config(containerd_state=str(tmp_path)), 4):
        expected = container_id if isinstance(source, runtime) else None
        assert source.container_id(names) == expected, (source.name, path)


@pytest.mark.parametrize("path", NOT_CONTAINERS)
def test_conmon_and_look_alikes_are_no_container(path: str, tmp_path: Path) -> None:
    names = [n for n in path.split("/") if n]
    for source in runtimes(Config(containerd_state=str(tmp_path)), 4):
        assert source.container_id(names) is None, (source.name, path)


def test_a_containerd_namespace_path_is_a_container_only_while_its_task_exists(
    tmp_path: Path,
) -> None:
    source = Containerd(str(tmp_path), "")
    assert source.container_id(["default", "build-42"]) is None
    task = tmp_path / TASKS / "default" / "build-42"
    task.mkdir(parents=True)
    assert source.container_id(["default", "build-42"]) == "build-42"
    task.rmdir()
    assert source.container_id(["default", "build-42"]) == "build-42"  # remembered
    assert source.container_id(["..", "build-42"]) is None
    assert source.labels("build-42") == CgroupLabels(container="build-42")
    assert source.labels(ID) == CgroupLabels(container=ID[:12])


def test_nerdctl_names_come_from_its_name_store(tmp_path: Path) -> None:
    names = tmp_path / "nerdctl" / "1935db59" / "names" / "default"
    names.mkdir(parents=True)
    (names / "web").write_text(ID)
    (names / "other").write_text("cd" * 32)
    assert Containerd("", str(tmp_path / "nerdctl")).labels(ID) == CgroupLabels(container="web")


# ---- labels through the resolver ----------------------------------------------------------------


def test_container_scopes_are_named_by_container_never_as_units(tmp_path: Path) -> None:
    clock = Clock()
    docker_state(tmp_path / "docker", ID, {"Name": "/ci-job", "NetworkSettings": {"Name": "x"}})
    podman_state(tmp_path / "storage", {"cd" * 32: "web"}, {"cd" * 32: POD_ID})
    (tmp_path / "storage" / "libpod").mkdir()
    pod_config = {"id": POD_ID, "name": "shop", "labels": {}}
    database = b"\x00" * 4096 + json.dumps(pod_config, separators=(",", ":")).encode() + b"\x00"
    (tmp_path / "storage" / "libpod" / "bolt_state.db").write_bytes(database)
    paths = {
        1: f"/system.slice/docker-{ID}.scope",
        2: f"/docker/{ID}",
        3: f"/libpod_parent/libpod-{'cd' * 32}",
        4: "/system.slice/cron.service",
        5: f"/machine.slice/libpod-conmon-{ID}.scope",
    }
    r = resolver(tmp_path, paths, clock)
    assert r.labels(1) == r.labels(2) == CgroupLabels(container="ci-job")
    assert r.labels(3) == CgroupLabels(pod="shop", container="web")
    assert r.labels(4) == CgroupLabels(unit="cron.service")
    assert r.labels(5) == CgroupLabels(unit=f"libpod-conmon-{ID}.scope")


def test_a_name_read_once_stays_after_the_container_is_removed(tmp_path: Path) -> None:
    clock = Clock()
    docker_state(tmp_path / "docker", ID, {"Name": "/ci-job"})
    source = Docker(str(tmp_path / "docker"))
    assert source.read_name(ID) == "ci-job"
    (tmp_path / "docker" / "containers" / ID / "config.v2.json").unlink()
    r = CgroupResolver(None, runtimes=[source], clock=clock)
    assert source.labels(ID) == CgroupLabels(container="ci-job")
    assert r.labels(7) == EMPTY_LABELS  # no cgroup v2: final and empty, as before


@pytest.mark.parametrize(
    "config",
    [
        b"{" * 100_000,  # deep nesting
        b"\xff\xfe not json",
        json.dumps({"Name": 42}).encode(),
        json.dumps(["/ci-job"]).encode(),
        b'{"Name": "/' + b"x" * (2 << 20) + b'"}',  # above the size limit: not read
    ],
)
def test_hostile_docker_state_gives_the_short_id_after_the_grace_time(
    config: bytes, tmp_path: Path
) -> None:
    clock = Clock()
    docker_state(tmp_path / "docker", ID, config)
    r = resolver(tmp_path, {1: f"/docker/{ID}"}, clock)
    assert r.labels(1) is None  # not known yet: counted under empty labels meanwhile
    clock.now += 5
    assert r.labels(1) == CgroupLabels(container=ID[:12])


def test_names_are_decoded_and_cut(tmp_path: Path) -> None:
    clock = Clock()
    name = "/" + "\udcff" + "é" * 300
    docker_state(tmp_path / "docker", ID, json.dumps({"Name": name}).encode())
    label = resolver(tmp_path, {1: f"/docker/{ID}"}, clock).labels(1)
    assert label is not None
    assert label.container == ("\ufffd" + "é" * 300)[:253]
    label.container.encode("utf-8")  # no surrogate reaches a label


def test_podman_pod_name_is_found_in_either_database_format() -> None:
    config = json.dumps({"id": POD_ID, "name": "shop"}, separators=(",", ":")).encode()
    sqlite_row = b"SQLite format 3\x00" + b"\x00" * 100 + config + b"\x01\x02"
    assert pod_in(b"\x00bolt" + config + b"\x00", POD_ID) == "shop"
    assert pod_in(sqlite_row, POD_ID) == "shop"
    assert pod_in(b'{"id":"' + POD_ID.encode() + b'","name":', POD_ID) == ""  # cut short


def test_caches_stay_bounded_under_churn(tmp_path: Path) -> None:
    ids = [f"{n:064x}" for n in range(200)]
    for cid in ids:
        docker_state(tmp_path / "docker", cid, {"Name": f"/job-{cid[-4:]}"})
    podman_state(tmp_path / "storage", {cid: f"p-{cid[-4:]}" for cid in ids})
    paths = {n + 1: f"/docker/{cid}" for n, cid in enumerate(ids)}
    paths |= {n + 1001: f"/libpod_parent/libpod-{cid}" for n, cid in enumerate(ids)}
    docker, podman = Docker(str(tmp_path / "docker"), 64), Podman(str(tmp_path / "storage"), 64, 0)
    r = CgroupResolver(Hierarchy(tmp_path), kernel_path=paths.get, runtimes=[docker, podman])
    for cgroup_id in paths:
        assert r.labels(cgroup_id) is not None
    sizes = r.sizes()
    for table in ("docker_names", "podman_names", "podman_pods"):
        assert sizes[table] == (64, 64), table


def test_state_roots_are_validated(tmp_path: Path) -> None:
    assert parse_config("docker_root: /srv/docker/\n").docker_root == "/srv/docker"
    assert parse_config('nerdctl_root: ""\n').nerdctl_root == ""
    with pytest.raises(ConfigError, match="docker_root: must be an absolute directory"):
        parse_config("docker_root: var/lib/docker\n")
    with pytest.raises(ConfigError, match="containerd_state: must be an absolute"):
        parse_config("containerd_state: 7\n")
    assert os.path.isabs(Config().containers_storage_root)


# ---- rootless Podman: a user's own store --------------------------------------------------------

USER = 54321
ROOTLESS = f"/user.slice/user-{USER}.slice/user@{USER}.service/user.slice/libpod-{ID}.scope"


def user_store(home: Path, names: dict[str, str], uid: int = USER) -> Path:
    """A home with a rootless store as Podman writes it, all of it owned by ``uid``."""
    storage = home / ".local" / "share" / "containers" / "storage"
    podman_state(storage, names)
    for directory, _dirs, files in os.walk(home):
        os.chown(directory, uid, uid)
        for f in files:
            os.chown(os.path.join(directory, f), uid, uid)
    return storage


def rootless(home: Path, cgroups: Path | None = None, proc: str = "/proc") -> RootlessPodman:
    hierarchy = Hierarchy(cgroups or home / "no-cgroups")
    return RootlessPodman(
        64,
        users=2,
        home=lambda uid: str(home) if uid == USER else "",
        hierarchy=lambda: hierarchy,
        proc=proc,
    )


def names_of_path(source: RootlessPodman, path: str) -> CgroupLabels | None:
    container_id = source.container_id([n for n in path.split("/") if n])
    return None if container_id is None else source.labels(container_id)


def test_a_rootless_container_is_named_from_its_users_store(tmp_path: Path) -> None:
    user_store(tmp_path / "home", {ID: "rl-web"})
    assert names_of_path(rootless(tmp_path / "home"), ROOTLESS) == CgroupLabels(container="rl-web")
    other = ROOTLESS.replace(str(USER), "1000")  # a user with no home: no name (short id later)
    assert names_of_path(rootless(tmp_path / "home"), other) is None
    too_big = ROOTLESS.replace(str(USER), "99999999999")
    assert rootless(tmp_path / "home").container_id(too_big.split("/")[1:]) is None


@pytest.mark.parametrize(
    "trap",
    ["symlinked folder", "symlinked list", "folder of another user", "list of another user",
     "home of another user"],
)  # fmt: skip
def test_a_users_store_is_read_only_where_all_of_it_is_theirs(tmp_path: Path, trap: str) -> None:
    """A user cannot point procmond at names that are not theirs: a store whose folders or list
    are symlinks, or not owned by them, is not read."""
    home = tmp_path / "home"
    storage = user_store(home, {ID: "mine"})
    elsewhere = tmp_path / "root-only"
    podman_state(elsewhere, {ID: "secret"})  # owned by root
    if trap == "symlinked folder":
        shutil.rmtree(storage)
        os.symlink(elsewhere, storage)
    elif trap == "symlinked list":
        listed = storage / "overlay-containers" / "containers.json"
        listed.unlink()
        os.symlink(elsewhere / "overlay-containers" / "containers.json", listed)
    elif trap == "folder of another user":
        os.chown(storage / "overlay-containers", 0, 0)
    elif trap == "list of another user":
        os.chown(storage / "overlay-containers" / "containers.json", 0, 0)
    else:
        os.chown(home, 0, 0)
    assert names_of_path(rootless(home), ROOTLESS) is None


def test_rootless_names_become_the_short_id_after_the_grace_time(tmp_path: Path) -> None:
    clock = Clock()
    resolver = CgroupResolver(
        Hierarchy(tmp_path / "cgroup"),
        kernel_path={7: ROOTLESS}.get,
        runtimes=[rootless(tmp_path / "no-home")],
        link_grace=5,
        clock=clock,
    )
    assert resolver.labels(7) is None
    clock.now += 5
    assert resolver.labels(7) == CgroupLabels(container=ID[:12])


def test_rootless_stores_and_owners_stay_bounded(tmp_path: Path) -> None:
    source = RootlessPodman(16, users=2, home=lambda uid: str(tmp_path / str(uid)))
    for uid in range(1000, 1040):
        path = ROOTLESS.replace(str(USER), str(uid)).replace(ID, f"{uid:064x}")
        assert names_of_path(source, path) is None
    assert source.sizes() == {
        "podman_rootless_containers": (16, 16),
        "podman_rootless_users": (2, 2),
        "podman_rootless_conmon_names": (0, 16),
    }
