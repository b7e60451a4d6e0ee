"""procmond's image, built from the project's context with a real engine (podman, runc), and
run the way the DaemonSet runs it: the manifest's capabilities, read-only root, memory and CPU
limits, volumes and host mounts (tests/packaging/daemonset_podman.py derives them), on a node
without kernel headers of its own, next to a pod laid out as the kubelet lays it out.

No registry is reachable here: the Dockerfile's base (debian:12-slim) is made from Debian's
packages (mmdebstrap) and imported. Base and built image live in a podman storage of the tests'
own under PROCMOND_TEST_CACHE (default /var/cache/procmond-tests), apart from the machine's
images: a second run reuses both (the .deb is reproducible, so the build is all cache hits).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import re
import resource
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from procmond.naming.cgroups import read_layout
from tests.e2e.cgroup_tree import CgroupTree, Pod
from tests.e2e.harness import Exposition, build_creator, unique_name
from tests.packaging import daemonset_podman, kustomize
from tests.packaging.daemonset_podman import grants_bpf_to_its_capabilities, with_bpf_grants
from tests.packaging.shipped import REPO

K8S = REPO / "packaging" / "kubernetes"
CACHE = Path(os.environ.get("PROCMOND_TEST_CACHE", "/var/cache/procmond-tests"))
STORAGE = CACHE / "podman"
IMAGE = "localhost/procmond:test"
MIRROR = os.environ.get("PROCMOND_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SUITES = {"12": "bookworm", "13": "trixie"}
BASE_MAX_AGE = timedelta(days=30)  # Debian's point releases
# podman's own default seccomp profile (containers/common), what RuntimeDefault means to it
PODMAN_SECCOMP = Path("/usr/share/containers/seccomp.json")
PODS_DIR = Path("/var/log/pods")
CONTAINERS_DIR = Path("/var/log/containers")
FORKS = 1000


def manifest(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


def native_platform() -> str:
    arch = {"x86_64": "amd64", "aarch64": "arm64"}[platform.machine()]
    return f"linux/{arch}"


def ulimits() -> list[str]:
    """runc sets the container's limits and cannot raise one above the runtime's hard limit
    without CAP_SYS_RESOURCE, which this machine does not grant: podman's defaults (1048576)
    fail here. nproc above 4096 failed too (as measured), so that one is fixed."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if nofile == resource.RLIM_INFINITY:
        nofile = 1 << 20
    return [f"nofile={nofile}:{nofile}", "nproc=4096:4096"]


@pytest.fixture(scope="module")
def podman_env() -> Iterator[dict[str, str]]:
    """The environment that points podman at the tests' storage and settings: the cgroupfs
    manager (PID 1 need not be systemd) and runc (crun refuses hybrid cgroups). Held under a
    lock for the module: one build and one set of containers at a time."""
    STORAGE.mkdir(parents=True, exist_ok=True)
    storage = STORAGE / "storage.conf"
    storage.write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{STORAGE / "storage"}"\n'
        f'runroot = "/run/procmond-tests/podman"\n'
    )
    containers = STORAGE / "containers.conf"
    containers.write_text(
        f"[containers]\ndefault_ulimits = {json.dumps(ulimits())}\n"
        '[engine]\ncgroup_manager = "cgroupfs"\nruntime = "runc"\nevents_logger = "file"\n'
    )
    env = {
        **os.environ,
        "CONTAINERS_STORAGE_CONF": str(storage),
        "CONTAINERS_CONF": str(containers),
    }
    with (STORAGE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield env


def podman(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    done = subprocess.run(
        ["podman", *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"podman {' '.join(args)}: {done.stderr}"
    return done.stdout


def ensure_base(env: dict[str, str]) -> str:
    """The Dockerfile's FROM, made from Debian's packages when the storage lacks it or holds
    one made by another recipe or over 30 days ago."""
    dockerfile = (K8S / "Dockerfile").read_text()
    match = re.search(r"^FROM debian:([0-9]+)-slim$", dockerfile, re.MULTILINE)
    assert match, "the image test makes debian:<release>-slim bases only"
    name = f"docker.io/library/debian:{match.group(1)}-slim"
    # debian:*-slim is a minbase root without documentation, manual pages and locales
    recipe = [
        "mmdebstrap",
        "--variant=minbase",
        "--keyring=/usr/share/keyrings/debian-archive-keyring.gpg",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        SUITES[match.group(1)],
        "-",
        MIRROR,
    ]
    label = hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:12]
    found = subprocess.run(
        ["podman", "image", "inspect", name], env=env, capture_output=True, text=True
    )
    if found.returncode == 0:
        (info,) = json.loads(found.stdout)
        created = datetime.fromisoformat(info["Created"][:26].rstrip("Z")).replace(
            tzinfo=timezone.utc
        )
        fresh = datetime.now(timezone.utc) - created < BASE_MAX_AGE
        if (info.get("Labels") or {}).get("procmond.test.recipe") == label and fresh:
            return name
    log = STORAGE / "mmdebstrap.log"
    with log.open("wb") as errors:
        make = subprocess.Popen(recipe, stdout=subprocess.PIPE, stderr=errors)
    imported = subprocess.run(
        ["podman", "import", "--change", f"LABEL procmond.test.recipe={label}", "-", name],
        stdin=make.stdout,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert make.stdout is not None
    make.stdout.close()
    assert make.wait(timeout=600) == 0, log.read_text(errors="replace")
    assert imported.returncode == 0, imported.stderr
    return name


@pytest.fixture(scope="module")
def image(podman_env: dict[str, str]) -> str:
    """The image built by build-image.sh as a one-platform manifest list (the multi-platform
    path, for the one platform this machine runs), with podman; old builds removed."""
    ensure_base(podman_env)
    build = subprocess.run(
        [
            str(K8S / "build-image.sh"),
            *("--engine", "podman", "--platform", native_platform(), IMAGE, "--"),
            *("--network", "host"),  # apt-get reaches Debian's mirror
            # podman build does not take containers.conf's default_ulimits
            *(arg for limit in ulimits() for arg in ("--ulimit", limit)),
        ],
        # one date for every build: a .deb of the same contents is the same file whatever the
        # last commit, and the build all cache hits
        env={**podman_env, "SOURCE_DATE_EPOCH": "1700000000"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    listed = json.loads(podman(podman_env, "manifest", "inspect", IMAGE))
    platforms = [
        f"{m['platform']['os']}/{m['platform']['architecture']}" for m in listed["manifests"]
    ]
    assert platforms == [native_platform()]
    # The list's image has no name of its own: one keeps it (and the layers it was built
    # from, the next build's cache) when earlier builds are pruned.
    instance = podman(podman_env, "image", "inspect", "--format", "{{.Id}}", IMAGE).strip()
    podman(podman_env, "tag", instance, f"{IMAGE}-{native_platform().split('/')[1]}")
    podman(podman_env, "image", "prune", "--force")
    return IMAGE


@pytest.fixture(scope="module")
def creator(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_creator(tmp_path_factory.mktemp("creator"))


@pytest.fixture
def kubelet_dirs() -> Iterator[None]:
    """The kubelet's log folders, which every node has and the pod mounts (hostPath type
    Directory: the kubelet would not start the pod without them); removed after if made."""
    made = [d for d in (PODS_DIR, CONTAINERS_DIR) if not d.is_dir()]
    for d in made:
        d.mkdir(parents=True)
    try:
        yield
    finally:
        for d in made:
            with contextlib.suppress(OSError):  # not empty: another test's pod is in it
                d.rmdir()


@pytest.fixture
def neighbour(kubelet_dirs: None) -> Iterator[tuple[Pod, CgroupTree, Path]]:
    """Another pod on the node, laid out as the kubelet (cgroupfs driver, Burstable) and its
    runtime lay it out: its container's cgroup, its log folder and the log link naming it."""
    layout = read_layout()
    assert layout.v2 is not None, "the image test needs cgroup v2 (unified or hybrid)"
    tree, pod = CgroupTree(layout.v2.mount_point), Pod()
    try:
        pod.write_pod_dir(PODS_DIR)
        pod.write_link(PODS_DIR, CONTAINERS_DIR)
        yield pod, tree, tree.make(pod.container_cgroup("cgroupfs", "burstable"))
    finally:
        tree.remove()
        pod.remove()


def daemonset_pod(folder: Path, component: str | None = None) -> daemonset_podman.Pod:
    """The DaemonSet's pod as an overlay in ``folder`` renders it (kustomize), with a
    component added."""
    overlay = kustomize.overlay(folder / "deploy", [component] if component else [])
    return daemonset_podman.Pod(kustomize.build(overlay)["DaemonSet"]["spec"]["template"]["spec"])


def configmap_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "configmap"
    folder.mkdir()
    for key, text in manifest("configmap.yaml")["data"].items():
        (folder / key).write_text(text)
    return folder


def node_without_headers(tmp_path: Path) -> dict[str, Path]:
    """Empty folders in place of the node's /lib/modules and /usr/src: the image's own
    headers are used, as on most nodes (this one's are for another kernel anyway)."""
    out = {}
    for path in ("/lib/modules", "/usr/src"):
        out[path] = tmp_path / "node" / path.lstrip("/")
        out[path].mkdir(parents=True)
    return out


def scrape(pid: int, port: int, path: str) -> Exposition:
    """GET the metrics from inside the pod's network namespace, on its loopback."""
    code = (
        "import sys, urllib.request\n"
        "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"
    )
    url = f"http://127.0.0.1:{port}{path}"
    done = subprocess.run(
        ["nsenter", f"--net=/proc/{pid}/ns/net", sys.executable, "-c", code, url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        raise ConnectionError(done.stderr.strip().splitlines()[-1:])
    return Exposition(done.stdout)


class Running:
    """The pod's container, started by podman with the DaemonSet's settings."""

    def __init__(self, env: dict[str, str], image: str, options: list[str], args: list[str]):
        self.env = env
        self.name = f"procmond-test-{secrets.token_hex(4)}"
        self.started = time.monotonic()
        try:
            podman(env, "run", "--detach", "--name", self.name, *options, image, *args)
        except BaseException:
            self.remove()  # one that was created but failed to start
            raise

    def state(self) -> dict:
        (info,) = json.loads(podman(self.env, "inspect", self.name))
        return info["State"]

    def logs(self) -> str:
        done = subprocess.run(
            ["podman", "logs", self.name], env=self.env, capture_output=True, text=True
        )
        return done.stdout + done.stderr

    def wait_until_serving(self, port: int, path: str, budget: float) -> float:
        """Seconds from `podman run` to the first answer on the probes' port and path; fails
        if the container exits first or the startup probe's budget runs out."""
        while True:
            state = self.state()
            assert state["Status"] == "running", f"exited {state['ExitCode']}:\n{self.logs()}"
            try:
                scrape(state["Pid"], port, path)
                return time.monotonic() - self.started
            except ConnectionError:
                assert time.monotonic() - self.started < budget, self.logs()
                time.sleep(0.1)

    def wait_until_exited(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while (state := self.state())["Status"] == "running":
            assert time.monotonic() < deadline, f"still running:\n{self.logs()}"
            time.sleep(0.1)
        return state["ExitCode"]

    def status(self) -> dict[str, str]:
        """/proc/<pid>/status of the container's process (the daemon, once it exec'd)."""
        text = Path(f"/proc/{self.state()['Pid']}/status").read_text()
        return dict(line.split(":\t", 1) for line in text.splitlines())

    def remove(self) -> None:
        subprocess.run(
            ["podman", "rm", "--force", "--time", "0", self.name],
            env=self.env,
            capture_output=True,
        )


# Capability numbers (linux/capability.h) of the names a manifest may add
CAPABILITY_BITS = {"BPF": 39, "PERFMON": 38, "SYS_ADMIN": 21, "SYS_RESOURCE": 24}


def cgroup_file(pid: int, controller: str, v1_name: str, v2_name: str) -> str:
    """A controller's file in the cgroup the runtime put the process in: in the controller's
    v1 hierarchy where there is one (hybrid hosts), else in the v2 one."""
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            mount = Path("/sys/fs/cgroup") / controllers
            return (mount / path.lstrip("/") / v1_name).read_text().strip()
    layout = read_layout()
    assert layout.v2 is not None
    (path,) = [line[3:] for line in lines if line.startswith("0::")]
    return (layout.v2.mount_point / path.lstrip("/") / v2_name).read_text().strip()


def limits_applied(pid: int) -> dict[str, float]:
    """The memory limit in bytes and the CPU limit in CPUs that the kernel enforces."""
    memory = int(cgroup_file(pid, "memory", "memory.limit_in_bytes", "memory.max"))
    quota = cgroup_file(pid, "cpu", "cpu.cfs_quota_us", "cpu.max").split()
    period = quota[1] if len(quota) == 2 else cgroup_file(pid, "cpu", "cpu.cfs_period_us", "")
    return {"memory": memory, "cpu": int(quota[0]) / int(period)}


def test_the_image_runs_as_the_daemonset_runs_it_and_counts_a_pod_exactly(
    podman_env: dict[str, str],
    image: str,
    tmp_path: Path,
    creator: Path,
    neighbour: tuple[Pod, CgroupTree, Path],
) -> None:
    """RuntimeDefault stands for the default profile of containerd and Docker, which let
    bpf() and perf_event_open() through to CAP_BPF and CAP_PERFMON: podman's own profile,
    with those two rules added (podman 4.3's refuses, see the next test)."""
    pod, tree, cgroup = neighbour
    spec = daemonset_pod(tmp_path)
    runtime_default = with_bpf_grants(json.loads(PODMAN_SECCOMP.read_text()))
    profile = daemonset_podman.write_profile(runtime_default, tmp_path / "seccomp.json")
    options = spec.options(configmap_folder(tmp_path), node_without_headers(tmp_path), profile)
    probe = spec.container["startupProbe"]["httpGet"]
    port, path = spec.port(probe["port"]), probe["path"]
    container = Running(podman_env, image, options, spec.args)
    try:
        container.wait_until_serving(port, path, spec.startup_budget_seconds())
        pid = container.state()["Pid"]
        assert "the node has no headers" in container.logs()

        name = unique_name("neighbour")
        p = tree.start(cgroup, str(creator), "fork", str(FORKS), name.hex())
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0 and out.split()[-1] == str(FORKS), (out, err)
        counted = scrape(pid, port, path).by_cgroup("procmond_forks_total", name.decode())
        assert counted == {("", pod.namespace, pod.name, pod.container): FORKS}

        status = container.status()
        assert "procmond" in Path(f"/proc/{pid}/cmdline").read_text()
        security = spec.container["securityContext"]
        granted = sum(1 << CAPABILITY_BITS[c] for c in security["capabilities"]["add"])
        assert security["capabilities"]["drop"] == ["ALL"]
        assert int(status["CapBnd"], 16) == granted
        # the daemon gives up even those once the probe is loaded
        assert int(status["CapEff"], 16) == int(status["CapPrm"], 16) == 0
        assert status["NoNewPrivs"].strip() == "1"
        limits = spec.container["resources"]["limits"]
        assert limits_applied(pid) == {
            "memory": daemonset_podman.quantity_bytes(limits["memory"]),
            "cpu": daemonset_podman.quantity_cpus(limits["cpu"]),
        }

        # the kubelet's stop: SIGTERM, then SIGKILL once the grace period is over
        stopping = time.monotonic()
        podman(podman_env, "stop", "--time", str(spec.grace_seconds), container.name)
        assert time.monotonic() - stopping < spec.grace_seconds
        assert container.state()["ExitCode"] == 0, container.logs()
        assert "stopped: probes detached" in container.logs()
    finally:
        container.remove()


def test_on_podmans_own_seccomp_profile_the_unconfined_component_is_needed(
    podman_env: dict[str, str], image: str, tmp_path: Path, kubelet_dirs: None
) -> None:
    """podman 4.3 (Debian 12) lets bpf() and perf_event_open() through only to CAP_SYS_ADMIN:
    under its own RuntimeDefault the pod's two capabilities are not enough, and procmond says
    so and exits (where the installed profile grants them, the probe loads). With the
    seccomp-unconfined component's patch, it loads with the same two capabilities."""
    granted = grants_bpf_to_its_capabilities(json.loads(PODMAN_SECCOMP.read_text()))
    for component in (None, "seccomp-unconfined"):
        folder = tmp_path / (component or "as-shipped")
        spec = daemonset_pod(folder, component)
        options = spec.options(configmap_folder(folder), node_without_headers(folder), None)
        probe = spec.container["startupProbe"]["httpGet"]
        container = Running(podman_env, image, options, spec.args)
        try:
            if granted or component:
                port, path = spec.port(probe["port"]), probe["path"]
                container.wait_until_serving(port, path, spec.startup_budget_seconds())
                assert int(container.status()["CapEff"], 16) == 0
            else:
                assert container.wait_until_exited(spec.startup_budget_seconds()) != 0
                assert "Operation not permitted" in container.logs()
        finally:
            container.remove()
