"""Containers outside Kubernetes named for real: Docker, Podman (alone and in a pod) and
containerd's ``ctr`` run the static creator, and the daemon counts its forks exactly under the
container's name (its pod's for Podman), with ``unit`` and ``namespace`` empty; a
``docker run --rm`` job is named after it is gone. The runtimes' state is the test's own
(tests/e2e/runtimes.py); the daemon is pointed at it by its config, as a user points it at
non-default data roots."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from procmond.naming.cgroups import read_layout
from procmond.scrape.tasklimits import find_pids_hierarchy
from tests.e2e.cgroup_tree import Pod
from tests.e2e.harness import Daemon, Watch, start_daemon, unique_name, wait_until
from tests.e2e.runtimes import (
    RUNC_ULIMITS,
    Containerd,
    Dockerd,
    Podman,
    import_image,
    make_root,
)

IMAGE = "procmond-test-box:1"


@dataclass
class Runtimes:
    root: Path
    docker: Dockerd
    containerd: Containerd
    podman: Podman
    daemon: Daemon


@pytest.fixture(scope="module")
def runtimes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtimes]:
    base = tmp_path_factory.mktemp("runtimes")
    root = make_root(base / "box")
    stops = []
    try:
        docker = Dockerd((base / "docker").resolve())
        stops.append(docker.stop)
        containerd = Containerd(base / "containerd")
        stops.append(containerd.stop)
        podman = Podman(base / "podman")
        stops.append(podman.stop)
        import_image(root, "docker", f"--host=unix://{docker.socket}")
        import_image(root, *podman.cli_args())
        daemon = start_daemon(
            base,
            f"docker_root: {docker.data_root}\n"
            f"containers_storage_root: {podman.root}\n"
            f"containerd_state: {containerd.state}\n"
            'nerdctl_root: ""\n',
        )
        stops.append(lambda: daemon.stop())
        yield Runtimes(root, docker, containerd, podman, daemon)
    finally:
        for stop in reversed(stops):
            stop()


def forks_by_labels(runtimes: Runtimes, comm: str) -> dict[tuple[str, ...], float]:
    """The command's forks by (unit, namespace, pod, container), from one scrape."""
    return runtimes.daemon.scrape().by_cgroup("procmond_forks_total", comm)


def test_a_podman_container_alone_and_in_a_pod_is_counted_exactly_by_name(
    runtimes: Runtimes,
) -> None:
    tag = unique_name("").hex()[:8]
    podman = runtimes.podman
    podman.cli("pod", "create", "--infra=false", f"--name=shop-{tag}")
    runs = {
        "alone": (f"web-{tag}", "", 1200, ()),
        "in a pod": (f"api-{tag}", f"shop-{tag}", 700, (f"--pod=shop-{tag}",)),
    }
    for container, pod, count, options in runs.values():
        name = unique_name("pdm")
        podman.cli(
            "run", f"--name={container}", *options, *RUNC_ULIMITS, IMAGE,
            "/creator", "fork", str(count), name.hex(),
        )  # fmt: skip
        assert forks_by_labels(runtimes, name.decode()) == {("", "", pod, container): count}


def test_a_docker_container_is_named_as_it_starts_and_counted_exactly(runtimes: Runtimes) -> None:
    """Scraped while it runs: the first scrape that sees it names it, and nothing was ever
    counted under empty labels (the name was read when dockerd wrote it)."""
    name, container = unique_name("dck"), f"ci-{unique_name('').hex()[:8]}"
    started = time.monotonic()
    runtimes.docker.cli(
        "run", "-d", f"--name={container}", "--network=none", IMAGE,
        "/creator", "fork", "1500", "--rate", "750", name.hex(),
    )  # fmt: skip
    wait_until(lambda: forks_by_labels(runtimes, name.decode()), 30, "its first forks")
    named = time.monotonic() - started
    assert list(forks_by_labels(runtimes, name.decode())) == [("", "", "", container)]
    runtimes.docker.cli("wait", container)
    assert forks_by_labels(runtimes, name.decode()) == {("", "", "", container): 1500}
    print(f"docker container {container}: named at its first scrape, {named:.2f} s after run")


def test_a_short_lived_docker_run_rm_job_is_named_after_it_is_gone(
    runtimes: Runtimes, tmp_path: Path
) -> None:
    """A CI job: lives 2 s, is removed (its state with it) before procmond is scraped."""
    name, container = unique_name("job"), f"job-{unique_name('').hex()[:8]}"
    cidfile = tmp_path / "cid"
    started = time.monotonic()
    runtimes.docker.cli(
        "run", "--rm", f"--cidfile={cidfile}", f"--name={container}", "--network=none", IMAGE,
        "/creator", "fork", "100", "--rate", "50", name.hex(),
    )  # fmt: skip
    state = runtimes.docker.data_root / "containers" / cidfile.read_text().strip()
    wait_until(lambda: not state.exists(), 30, "the job's state to be removed")
    lived = time.monotonic() - started
    assert forks_by_labels(runtimes, name.decode()) == {("", "", "", container): 100}
    print(f"docker run --rm {container}: lived and was removed in {lived:.2f} s; 100 of 100 named")


def task_limit_hits(runtimes: Runtimes, container: str, cid: str) -> dict[tuple, float]:
    """procmond_task_limit_hits_total of one container, by (unit, namespace, pod, container):
    the series under its name or its short id (the host's other cgroups may hit limits too)."""
    series = runtimes.daemon.scrape().series("procmond_task_limit_hits_total")
    found = {}
    for labels, value in series.items():
        ls = dict(labels)
        if ls["container"] in (container, cid[:12]):
            found[(ls["unit"], ls["namespace"], ls["pod"], ls["container"])] = value
    return found


def refused_in(output: str) -> int:
    """The forks the creator saw refused ("done N failed M", with --tolerate-failures)."""
    words = output.split()
    made, failed = int(words[words.index("done") + 1]), int(words[words.index("failed") + 1])
    assert made >= 1 and failed >= 1, output
    return failed


def test_a_containers_task_limit_hits_are_named_while_it_runs_and_after_it_is_gone(
    runtimes: Runtimes,
) -> None:
    """``docker run --pids-limit``: the refusals are in the container's own cgroup of the pids
    hierarchy (``/docker/<id>`` in the v1 one here), counted there exactly under its name,
    never a unit; once the container is removed its count stays under that name (the last
    reading, from the probe, adds nothing more)."""
    name, container = unique_name("lim"), f"lim-{unique_name('').hex()[:8]}"
    fork = f"/creator fork 20 --together --child-sleep-ms 300 --tolerate-failures {name.hex()}"
    cid = runtimes.docker.cli(
        "run", "-d", "--pids-limit=5", f"--name={container}", "--network=none", IMAGE,
        "sh", "-c", f"{fork}; exec sleep 600",
    ).stdout.strip()  # fmt: skip
    try:
        logs = lambda: runtimes.docker.cli("logs", container).stdout  # noqa: E731
        wait_until(lambda: "failed" in logs(), 60, "the creator's report")
        refused = refused_in(logs())
        assert task_limit_hits(runtimes, container, cid) == {("", "", "", container): refused}
    finally:
        runtimes.docker.cli("rm", "-f", container)
    pids = find_pids_hierarchy(read_layout())
    assert pids is not None and not (pids.hierarchy.mount_point / "docker" / cid).exists()
    assert task_limit_hits(runtimes, container, cid) == {("", "", "", container): refused}
    print(f"docker --pids-limit=5 {container}: {refused} refused, {refused} counted by name")


@pytest.mark.parametrize("runtime", ["docker", "podman"])
def test_a_run_rm_jobs_task_limit_hits_are_named_after_it_is_gone(
    runtimes: Runtimes, tmp_path: Path, runtime: str
) -> None:
    """A CI job at its pids limit, removed before any scrape: its cgroup is gone, so its count
    comes only from the probe (read from the kernel as the cgroup went), named by what was
    read when the runtime wrote its state. Docker's cgroup is ``/docker/<id>``, Podman's
    ``/libpod_parent/libpod-<id>`` in the pids hierarchy here."""
    name, container = unique_name("ljb"), f"ljob-{unique_name('').hex()[:8]}"
    cidfile = tmp_path / "cid"
    cli = runtimes.docker.cli if runtime == "docker" else runtimes.podman.cli
    options = ("--network=none",) if runtime == "docker" else RUNC_ULIMITS
    out = cli(
        "run", "--rm", "--pids-limit=4", f"--cidfile={cidfile}", f"--name={container}",
        *options, IMAGE,
        "/creator", "fork", "30", "--together", "--child-sleep-ms", "300",
        "--tolerate-failures", name.hex(),
    ).stdout  # fmt: skip
    refused = refused_in(out)
    assert cli("ps", "-aq", f"--filter=name={container}").stdout == ""
    hits = task_limit_hits(runtimes, container, cidfile.read_text().strip())
    assert hits == {("", "", "", container): refused}
    print(f"{runtime} run --rm --pids-limit=4 {container}: {refused} refused, all named after it")


def test_a_ctr_container_is_counted_exactly_by_its_id(runtimes: Runtimes) -> None:
    name, container = unique_name("ctr"), f"build-{unique_name('').hex()[:8]}"
    namespace = f"ci-{container[6:]}"
    try:
        runtimes.containerd.ctr(
            "--namespace", namespace, "run", "--rm", "--rootfs", str(runtimes.root),
            container, "/creator", "fork", "900", name.hex(),
        )  # fmt: skip
        assert forks_by_labels(runtimes, name.decode()) == {("", "", "", container): 900}
    finally:  # runc removes the container's cgroups, not the namespace's parent
        for mount in cgroup_mounts():
            with contextlib.suppress(OSError):
                (mount / namespace).rmdir()


def test_churn_of_containers_keeps_the_names_bounded(runtimes: Runtimes, tmp_path: Path) -> None:
    """24 short jobs through a daemon whose tables hold 16 cgroups (max_entries 4, 4
    counters): Docker's names, read ahead as each job is created, stay at 16."""
    daemon = start_daemon(
        tmp_path,
        f"max_entries: 4\nhistograms: false\ndocker_root: {runtimes.docker.data_root}\n"
        'containers_storage_root: ""\ncontainerd_state: ""\nnerdctl_root: ""\n',
    )
    try:
        for n in range(24):
            runtimes.docker.cli(
                "run", "--rm", "--network=none", f"--name=churn-{n}-{unique_name('').hex()[:6]}",
                IMAGE, "/bin/true",
            )  # fmt: skip
        m = daemon.scrape()
        entries = m.value("procmond_table_entries", table="docker_names")
        capacity = m.value("procmond_table_max_entries", table="docker_names")
    finally:
        assert daemon.stop() == 0, daemon.log()
    assert (entries, capacity) == (16, 16)


def test_watch_container_shows_that_containers_creations_from_its_first(
    runtimes: Runtimes, tmp_path: Path
) -> None:
    """``watch --container NAME`` started before the container: every creation in it shows
    (the creator's, and runc's as it sets the container up), nothing from outside it."""
    config = tmp_path / "procmond.yaml"
    config.write_text(f"containers_storage_root: {runtimes.podman.root}\n")
    container, name = f"watched-{unique_name('').hex()[:8]}", unique_name("wct")
    watch = Watch("--config", str(config), "--container", container)
    try:
        outside = [str(runtimes.root / "creator"), "fork", "3", name.hex()]
        assert subprocess.run(outside, capture_output=True, timeout=30).returncode == 0
        runtimes.podman.cli(
            "run", "--rm", f"--name={container}", *RUNC_ULIMITS, IMAGE,
            "/creator", "fork", "7", name.hex(),
        )  # fmt: skip
        mine = f"Process {name.decode()} "
        lines, err, code = watch.finish(7, lambda line: line.startswith(mine))
    finally:
        if watch.process.poll() is None:
            watch.stop()
    assert code == 0, err
    assert sum(ln.startswith(mine) for ln in lines) == 7
    # the rest is runc setting the container up inside its cgroup
    assert all(ln.startswith((mine, "Process runc:[")) for ln in lines), lines


def test_a_short_lived_podman_run_rm_job_is_named_after_it_is_gone(runtimes: Runtimes) -> None:
    """The same for Podman, whose container list appeared only after procmond started (the
    store's ``vfs-containers/`` is made at its first container)."""
    name, container = unique_name("pjb"), f"pjob-{unique_name('').hex()[:8]}"
    runtimes.podman.cli(
        "run", "--rm", f"--name={container}", *RUNC_ULIMITS, IMAGE,
        "/creator", "fork", "60", "--rate", "30", name.hex(),
    )  # fmt: skip
    assert runtimes.podman.cli("ps", "-aq", f"--filter=name={container}").stdout == ""
    assert forks_by_labels(runtimes, name.decode()) == {("", "", "", container): 60}


def test_a_kubelet_cgroup_laid_out_by_ctr_is_named_by_the_kubelets_files(
    runtimes: Runtimes,
) -> None:
    """A real runtime lays out a pod's container cgroup, as the kubelet has containerd do
    (``ctr run --cgroup /kubepods/burstable/pod<uid>/<id>``); the kubelet's log files name it,
    and the runtimes do not (under kubepods the kubelet's names win)."""
    pod, name = Pod(), unique_name("kpd")
    mounts = cgroup_mounts()
    parents = ["/kubepods", "/kubepods/burstable", f"/kubepods/burstable/pod{pod.uid}"]
    made = [m / p.lstrip("/") for m in mounts for p in parents if not (m / p.lstrip("/")).exists()]
    try:
        pod.write_pod_dir(Path("/var/log/pods"))
        pod.write_link(Path("/var/log/pods"), Path("/var/log/containers"))
        runtimes.containerd.ctr(
            "--namespace", "k8s.io", "run", "--rm",
            "--cgroup", f"{pod.cgroup('cgroupfs', 'burstable')}/{pod.container_id}",
            "--rootfs", str(runtimes.root),
            pod.container_id, "/creator", "fork", "800", name.hex(),
        )  # fmt: skip
        labels = ("", pod.namespace, pod.name, pod.container)
        assert forks_by_labels(runtimes, name.decode()) == {labels: 800}
    finally:
        pod.remove()
        for directory in sorted(made, key=lambda d: -len(d.parts)):
            with contextlib.suppress(OSError):
                directory.rmdir()


def cgroup_mounts() -> list[Path]:
    """Every mounted cgroup hierarchy (runc makes a container's cgroup in each)."""
    return [
        Path(line.split()[4])
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split(" - ")[1].split()[0] in ("cgroup", "cgroup2")
    ]
