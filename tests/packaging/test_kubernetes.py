"""The Kubernetes manifests, checked without a cluster (none is reachable here).

* Built-in kinds are validated strictly (unknown fields are errors) against the Kubernetes
  API's own OpenAPI schemas, as shipped by the kubernetes-validate package (a test-only
  dependency), for the oldest and the newest Kubernetes it knows.
* The Prometheus Operator's kinds (ServiceMonitor, PrometheusRule) are checked against the
  fields of its CRDs that these manifests use, strictly too.
* The pieces are checked against each other (selectors, ports, names, the config's port) and
  against the files they repeat (the config, the rules, the version).
* The image's entrypoint and the build's context are run for real; ``docker build`` is not
  (no container runtime here).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions, latest_version

from procmond.config import Config, load_config
from tests.e2e.harness import Daemon, build_creator, free_port, run_creator, unique_name
from tests.packaging import daemonset_podman, kustomize
from tests.packaging.shipped import REPO, RULES

K8S = REPO / "packaging" / "kubernetes"
MANIFESTS = sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")
COMPONENTS = sorted(p.parent for p in (K8S / "components").glob("*/kustomization.yaml"))
# The oldest and the newest Kubernetes whose schemas the package ships (1.25 and 1.37 today).
KUBERNETES_VERSIONS = [all_versions()[0], latest_version()]


def resources() -> dict[str, dict]:
    """kind → resource; each file holds one."""
    out = {}
    for path in MANIFESTS:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert len(docs) == 1, path
        out[docs[0]["kind"]] = docs[0]
    return out


def pod_spec() -> dict:
    return resources()["DaemonSet"]["spec"]["template"]["spec"]


def container() -> dict:
    (c,) = pod_spec()["containers"]
    return c


# ---- schemas ----------------------------------------------------------------------------------


BUILT_IN = [p for p in MANIFESTS if "monitoring.coreos.com" not in p.read_text()]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", BUILT_IN, ids=lambda p: p.name)
def test_built_in_kinds_match_the_kubernetes_schema_strictly(path: Path, version: str) -> None:
    kubernetes_validate.validate(yaml.safe_load(path.read_text()), version, strict=True)


def test_the_strict_check_rejects_an_unknown_field() -> None:
    """The check above can fail: a misspelt field is an error, not ignored."""
    daemonset = resources()["DaemonSet"]
    daemonset["spec"]["template"]["spec"]["containers"][0]["readinesProbes"] = {}
    with pytest.raises(
        kubernetes_validate.ValidationError, match="'readinesProbes' was unexpected"
    ):
        kubernetes_validate.validate(daemonset, KUBERNETES_VERSIONS[-1], strict=True)


DURATION = (
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)


def _strict(properties: dict, required: list[str] | None = None) -> dict:
    return {
        "type": "object",
        "properties": properties,
        "required": required or [],
        "additionalProperties": False,
    }


_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = _strict(
    {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": _STRINGS},
    ["name", "namespace"],
)
# The fields of monitoring.coreos.com/v1 that these manifests use, with the types and patterns
# the Prometheus Operator's CRDs give them.
SERVICE_MONITOR = _strict(
    {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": _METADATA,
        "spec": _strict(
            {
                "selector": _strict({"matchLabels": _STRINGS}),
                "namespaceSelector": _strict(
                    {"matchNames": {"type": "array", "items": {"type": "string"}}}
                ),
                "endpoints": {
                    "type": "array",
                    "items": _strict(
                        {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": DURATION},
                            "relabelings": {
                                "type": "array",
                                "items": _strict(
                                    {
                                        "sourceLabels": {
                                            "type": "array",
                                            "items": {
                                                "type": "string",
                                                "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$",
                                            },
                                        },
                                        "targetLabel": {"type": "string"},
                                        "action": {"enum": ["replace", "Replace"]},
                                    }
                                ),
                            },
                        }
                    ),
                },
            },
            ["endpoints", "selector"],
        ),
    },
    ["apiVersion", "kind", "metadata", "spec"],
)
PROMETHEUS_RULE = _strict(
    {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": _METADATA,
        "spec": _strict(
            {
                "groups": {
                    "type": "array",
                    "items": _strict(
                        {
                            "name": {"type": "string", "minLength": 1},
                            "interval": {"type": "string", "pattern": DURATION},
                            "rules": {
                                "type": "array",
                                "items": _strict(
                                    {
                                        "record": {"type": "string"},
                                        "alert": {"type": "string"},
                                        "expr": {"type": ["string", "integer"]},
                                        "for": {"type": "string", "pattern": DURATION},
                                        "keep_firing_for": {"type": "string", "pattern": DURATION},
                                        "labels": _STRINGS,
                                        "annotations": _STRINGS,
                                    },
                                    ["expr"],
                                ),
                            },
                        },
                        ["name"],
                    ),
                }
            }
        ),
    },
    ["apiVersion", "kind", "metadata", "spec"],
)


@pytest.mark.parametrize(
    ("kind", "schema"),
    [("ServiceMonitor", SERVICE_MONITOR), ("PrometheusRule", PROMETHEUS_RULE)],
)
def test_operator_kinds_match_the_fields_of_their_crds(kind: str, schema: dict) -> None:
    jsonschema.validate(resources()[kind], schema)


def test_a_rule_has_exactly_one_of_record_and_alert() -> None:
    for group in resources()["PrometheusRule"]["spec"]["groups"]:
        for rule in group["rules"]:
            assert ("record" in rule) != ("alert" in rule), rule


# ---- the files they repeat ----------------------------------------------------------------------


def test_generated_manifests_are_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(K8S / "generate.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_the_prometheus_rule_carries_the_shipped_rules() -> None:
    shipped = yaml.safe_load(RULES.read_text())["groups"]
    assert resources()["PrometheusRule"]["spec"]["groups"] == shipped


def test_the_config_map_is_the_default_config_and_valid(tmp_path: Path) -> None:
    text = resources()["ConfigMap"]["data"]["config.yaml"]
    assert text == (REPO / "config" / "procmond.yaml").read_text()
    config_file = tmp_path / "config.yaml"
    config_file.write_text(text)
    config, _ = load_config(config_file)
    assert config.listen_port == container()["ports"][0]["containerPort"]


OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}


def test_kustomization_and_components_hold_every_manifest_once() -> None:
    """The workload in the kustomization; the Prometheus Operator's objects in components of
    their own, which an overlay adds or leaves out (a cluster without the operator's CRDs
    would refuse them)."""
    listed = [
        K8S / r for r in yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    ]
    for component in COMPONENTS:
        c = yaml.safe_load((component / "kustomization.yaml").read_text())
        assert (c["apiVersion"], c["kind"]) == ("kustomize.config.k8s.io/v1alpha1", "Component")
        listed += [component / r for r in c.get("resources", [])]
    assert sorted(listed) == MANIFESTS


@pytest.mark.parametrize(
    "components",
    [[], ["servicemonitor", "prometheusrule"]],
    ids=["without-operator", "with-operator"],
)
def test_an_overlay_names_the_image_and_adds_the_components_it_lists(
    tmp_path: Path, components: list[str]
) -> None:
    """The README's overlay, rendered by kustomize: the pushed image in the DaemonSet, the
    operator's objects only when their components are added, everything else as shipped."""
    rendered = kustomize.build(kustomize.overlay(tmp_path / "deploy", components))
    shipped = resources()
    expected = set(shipped) - OPERATOR_KINDS
    if components:
        expected |= OPERATOR_KINDS
    assert set(rendered) == expected
    (c,) = rendered["DaemonSet"]["spec"]["template"]["spec"]["containers"]
    assert c["image"] == kustomize.PUSHED
    c["image"] = container()["image"]
    for kind in expected:
        assert rendered[kind] == shipped[kind], kind


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_seccomp_component_makes_a_valid_unconfined_daemonset(
    tmp_path: Path, version: str
) -> None:
    """For runtimes whose default profile refuses bpf() to CAP_BPF: only the profile
    changes (the image test runs it under such a runtime)."""
    overlay = kustomize.overlay(tmp_path / "deploy", ["seccomp-unconfined"])
    daemonset = kustomize.build(overlay)["DaemonSet"]
    kubernetes_validate.validate(daemonset, version, strict=True)
    (c,) = daemonset["spec"]["template"]["spec"]["containers"]
    assert c["securityContext"].pop("seccompProfile") == {"type": "Unconfined"}
    shipped = container()
    shipped["securityContext"].pop("seccompProfile")
    c["image"] = shipped["image"]
    assert c == shipped


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_container_runtimes_component_mounts_exactly_the_configs_state_read_only(
    tmp_path: Path, version: str
) -> None:
    """Names of containers outside Kubernetes: the directories of the config's default data
    roots that hold them, read-only, and no runtime's socket."""
    overlay = kustomize.overlay(tmp_path / "deploy", ["container-runtimes"])
    daemonset = kustomize.build(overlay)["DaemonSet"]
    kubernetes_validate.validate(daemonset, version, strict=True)
    spec = daemonset["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    shipped = container()
    added = [m for m in c["volumeMounts"] if m not in shipped["volumeMounts"]]
    config = Config()
    assert sorted(m["mountPath"] for m in added) == sorted(
        [
            f"{config.docker_root}/containers",
            f"{config.containers_storage_root}/overlay-containers",
            f"{config.containers_storage_root}/libpod",
            f"{config.containerd_state}/io.containerd.runtime.v2.task",
        ]
    )
    volumes = {v["name"]: v for v in spec["volumes"]}
    for mount in added:
        assert mount["readOnly"] is True
        assert volumes[mount["name"]]["hostPath"]["path"] == mount["mountPath"]
        assert not mount["mountPath"].endswith(".sock")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_rootless_podman_component_mounts_the_homes_and_passwd_read_only(
    tmp_path: Path, version: str
) -> None:
    """Rootless Podman's names: each user's store in their home, the home from the node's
    passwd database; both read-only, nothing else added."""
    overlay = kustomize.overlay(tmp_path / "deploy", ["rootless-podman"])
    daemonset = kustomize.build(overlay)["DaemonSet"]
    kubernetes_validate.validate(daemonset, version, strict=True)
    spec = daemonset["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    added = [m for m in c["volumeMounts"] if m not in container()["volumeMounts"]]
    assert sorted(m["mountPath"] for m in added) == ["/etc/passwd", "/home"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    for mount in added:
        assert mount["readOnly"] is True
        assert volumes[mount["name"]]["hostPath"]["path"] == mount["mountPath"]


def test_kustomization_tags_the_image_with_the_version() -> None:
    """An overlay names the pushed image with `kustomize edit set image procmond=IMAGE`: it
    matches the DaemonSet's image by that name."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    (image,) = kustomization["images"]
    assert image["name"] == container()["image"]
    version = re.search(r'__version__ = "(.+)"', (REPO / "procmond/__init__.py").read_text())
    assert version is not None
    assert image["newTag"] == version.group(1)


# ---- the pieces fit together ----------------------------------------------------------------


def test_service_and_service_monitor_select_the_daemonset() -> None:
    r = resources()
    pod_labels = r["DaemonSet"]["spec"]["template"]["metadata"]["labels"]
    assert r["DaemonSet"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert r["Service"]["spec"]["selector"].items() <= pod_labels.items()
    monitor = r["ServiceMonitor"]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= r["Service"]["metadata"]["labels"].items()
    assert monitor["namespaceSelector"]["matchNames"] == [r["Service"]["metadata"]["namespace"]]
    (port,) = r["Service"]["spec"]["ports"]
    assert monitor["endpoints"][0]["port"] == port["name"]
    assert port["targetPort"] in {p["name"] for p in container()["ports"]}
    # The Prometheus Operator names the job after the Service; the rules expect "procmond".
    assert r["Service"]["metadata"]["name"] == "procmond"
    assert 'job="procmond"' in RULES.read_text()


def test_every_object_is_in_the_namespace_made_for_it() -> None:
    r = resources()
    namespace = r["Namespace"]["metadata"]["name"]
    for kind, resource in r.items():
        if kind != "Namespace":
            assert resource["metadata"]["namespace"] == namespace, kind
    assert r["Namespace"]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == (
        "privileged"
    )


def test_probes_use_the_metrics_port_and_path() -> None:
    c = container()
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}, probe


def test_least_privilege() -> None:
    spec, c = pod_spec(), container()
    security = c["securityContext"]
    assert security["privileged"] is False
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["BPF", "PERFMON"]}
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert spec["automountServiceAccountToken"] is False
    assert spec["hostPID"] is True
    assert "hostNetwork" not in spec
    # tolerating every taint, it must still keep off Windows nodes
    assert {"operator": "Exists"} in spec["tolerations"]
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert spec["priorityClassName"] == "system-node-critical"
    host_paths = {v["name"] for v in spec["volumes"] if "hostPath" in v}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert host_paths <= mounts.keys()
    written = {"bpffs", "state"}  # the pinned probe and its saved counts (procmond/kernel/pins.py)
    for name in host_paths - written:
        assert mounts[name]["readOnly"] is True, name
    for name in written:
        assert "readOnly" not in mounts[name], name
    assert c["resources"]["limits"].keys() == {"cpu", "memory"}


def test_host_paths_cover_what_bcc_and_the_attribution_read() -> None:
    mounts = {m["name"]: m["mountPath"] for m in container()["volumeMounts"]}
    host = {v["name"]: v["hostPath"]["path"] for v in pod_spec()["volumes"] if "hostPath" in v}
    assert {(host[n], mounts[n]) for n in host} == {
        ("/lib/modules", "/host/lib/modules"),
        ("/usr/src", "/host/usr/src"),
        ("/sys/kernel/btf", "/sys/kernel/btf"),
        ("/sys/kernel/tracing", "/sys/kernel/tracing"),
        ("/sys/fs/cgroup", "/sys/fs/cgroup"),
        ("/var/log/pods", "/var/log/pods"),
        ("/var/log/containers", "/var/log/containers"),
        ("/sys/fs/bpf", "/sys/fs/bpf"),
        ("/var/lib/procmond", "/var/lib/procmond"),
    }


# ---- the image's entrypoint, run for real -----------------------------------------------------

RELEASE = "6.99.0-test"


def run_entrypoint(tmp_path: Path, host: Path) -> tuple[subprocess.CompletedProcess, Path]:
    modules = tmp_path / "modules"
    fallback = tmp_path / "fallback"
    fallback.write_text(f"#!/bin/sh\necho fallback > {tmp_path}/fallback-ran\n")
    fallback.chmod(0o755)
    env = {
        **os.environ,
        "PROCMOND_HOST_ROOT": str(host),
        "PROCMOND_MODULES_DIR": str(modules),
        "PROCMOND_KERNEL_RELEASE": RELEASE,
        "PROCMOND_LINK_HEADERS": str(fallback),
        "PROCMOND_BIN": "echo",
    }
    result = subprocess.run(
        [str(K8S / "entrypoint.sh"), "run", "--config", "/etc/procmond/config.yaml"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "run --config /etc/procmond/config.yaml\n"  # exec'd with the args
    return result, modules / RELEASE


def test_entrypoint_links_the_nodes_headers_through_the_host_mount(tmp_path: Path) -> None:
    """Debian and Ubuntu nodes: build and source are absolute links into /usr/src."""
    host = tmp_path / "host"
    headers = host / f"usr/src/linux-headers-{RELEASE}"
    headers.mkdir(parents=True)
    (headers / "Makefile").write_text("")
    (host / f"usr/src/linux-headers-{RELEASE}-common").mkdir()
    (host / f"lib/modules/{RELEASE}").mkdir(parents=True)
    (host / f"lib/modules/{RELEASE}/build").symlink_to(f"/usr/src/linux-headers-{RELEASE}")
    (host / f"lib/modules/{RELEASE}/source").symlink_to(f"/usr/src/linux-headers-{RELEASE}-common")
    result, links = run_entrypoint(tmp_path, host)
    assert os.readlink(links / "build") == str(headers)
    assert os.readlink(links / "source") == str(host / f"usr/src/linux-headers-{RELEASE}-common")
    assert (links / "build" / "Makefile").exists()
    assert not (tmp_path / "fallback-ran").exists()
    assert "the node's kernel headers" in result.stderr


def test_entrypoint_links_a_build_folder_kept_in_lib_modules(tmp_path: Path) -> None:
    """Arch-style nodes: build is a real folder; there is no source link."""
    host = tmp_path / "host"
    build = host / f"lib/modules/{RELEASE}/build"
    build.mkdir(parents=True)
    (build / "Makefile").write_text("")
    _, links = run_entrypoint(tmp_path, host)
    assert os.readlink(links / "build") == str(build)
    assert os.readlink(links / "source") == str(build)


def test_entrypoint_falls_back_to_the_images_headers(tmp_path: Path) -> None:
    host = tmp_path / "host"
    (host / "lib/modules").mkdir(parents=True)
    result, links = run_entrypoint(tmp_path, host)
    assert (tmp_path / "fallback-ran").read_text() == "fallback\n"
    assert not links.exists()
    assert f"the node has no headers for {RELEASE}" in result.stderr


# ---- the image's build context ------------------------------------------------------------------


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The context build-image.sh hands docker, laid out for real (the .deb built too)."""
    out = tmp_path_factory.mktemp("image") / "context"
    result = subprocess.run(
        [str(K8S / "build-image.sh"), "--context", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return out


def test_build_context_has_what_the_dockerfile_copies(context: Path) -> None:
    assert sorted(p.name for p in context.iterdir()) == [
        "Dockerfile",
        "entrypoint.sh",
        "procmond.deb",
    ]
    dockerfile = (context / "Dockerfile").read_text()
    assert re.search(r"^FROM debian:12", dockerfile, re.MULTILINE)
    for source in re.findall(r"^COPY (\S+) ", dockerfile, re.MULTILINE):
        assert (context / source).exists(), source
    assert re.search(r'^ENTRYPOINT \["/usr/local/bin/procmond-entrypoint"\]', dockerfile, re.M)
    assert os.access(context / "entrypoint.sh", os.X_OK)


def test_the_images_packages_resolve_on_debian_12(context: Path) -> None:
    """The Dockerfile's install step, simulated by apt on this Debian 12 machine."""
    result = subprocess.run(
        ["apt-get", "install", "-s", "--no-install-recommends", "python3-bpfcc", "./procmond.deb"],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "procmond" in result.stdout


@pytest.mark.parametrize(
    ("where", "field"),
    [("pod", "hostIPC"), ("container", "lifecycle"), ("securityContext", "procMount")],
)
def test_the_image_test_refuses_a_setting_it_would_not_apply(
    tmp_path: Path, where: str, field: str
) -> None:
    """The image test runs the pod with podman options read from the manifest; a field it
    does not translate fails it rather than being left out of the run."""
    spec = pod_spec()
    target = {
        "pod": spec,
        "container": spec["containers"][0],
        "securityContext": spec["containers"][0]["securityContext"],
    }[where]
    target[field] = True
    with pytest.raises(AssertionError, match=f"the {where} field\\(s\\) \\['{field}'\\]"):
        daemonset_podman.Pod(spec).options(tmp_path, {}, None)


PUSHED = kustomize.PUSHED


@pytest.mark.parametrize(
    ("engine", "plan"),
    [
        (
            "docker",
            [
                "docker buildx build --platform linux/amd64,linux/arm64 -t "
                f"{PUSHED} --push --network host CONTEXT"
            ],
        ),
        (
            "podman",
            [
                f"podman manifest rm {PUSHED} || true",
                "podman build --platform linux/amd64,linux/arm64 --manifest "
                f"{PUSHED} --network host CONTEXT",
                f"podman manifest push --all {PUSHED} docker://{PUSHED}",
            ],
        ),
    ],
)
def test_a_multi_architecture_build_is_one_manifest_list(engine: str, plan: list[str]) -> None:
    """What build-image.sh would run. Only this machine's own platform can be built here (the
    image test builds it for real through the same podman path); arm64 needs an emulator and
    an arm64 base this machine has not, so for two platforms the plan is what is checked."""
    argv = [str(K8S / "build-image.sh"), "--dry-run", "--engine", engine]
    argv += ["--platform", "linux/amd64,linux/arm64", "--push", PUSHED, "--", "--network", "host"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1:] == plan


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engine", "nerdctl"], "--engine must be docker or podman, not 'nerdctl'"),
        (["--platfrom", "linux/arm64"], "unknown option --platfrom"),
        (["a:1", "b:1"], "one image name, not 'a:1' and 'b:1'"),
    ],
)
def test_build_image_refuses_what_it_does_not_know(args: list[str], message: str) -> None:
    done = subprocess.run(
        [str(K8S / "build-image.sh"), "--dry-run", *args], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert message in done.stderr


# ---- the pod, emulated on this host ------------------------------------------------------------


@pytest.fixture(scope="module")
def creator(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_creator(tmp_path_factory.mktemp("creator"))


POD_SCRIPT = r"""
set -eu
host=$1 state=$2; shift 2
mount --bind /usr/src "$host/usr/src"
mount -o remount,bind,ro "$host/usr/src"
if [ "$NODE_HEADERS" = yes ]; then
    mount --bind /lib/modules "$host/lib/modules"
    mount -o remount,bind,ro "$host/lib/modules"
fi
mount -t tmpfs lib-modules /lib/modules        # the pod's emptyDir
mount -t tmpfs tmp "$state"                    # the pod's /tmp
mount -o remount,bind,ro /                     # readOnlyRootFilesystem
exec setpriv --no-new-privs --bounding-set=-all,+bpf,+perfmon --inh-caps=-all,+bpf,+perfmon \
    --ambient-caps=-all,+bpf,+perfmon "$@"
"""


@pytest.mark.parametrize("node_headers", ["yes", "no"], ids=["node-headers", "image-headers"])
def test_the_pod_emulated_counts_with_only_bpf_and_perfmon(
    tmp_path: Path, creator: Path, node_headers: str
) -> None:
    """What the DaemonSet sets up, made with the host's own tools: the node's /lib/modules and
    /usr/src read-only under /host, an empty /lib/modules, a read-only root with a tmpfs for
    state, uid 0 with only CAP_BPF and CAP_PERFMON (bounding, ambient, no_new_privs), and the
    image's entrypoint starting procmond. With node headers it links them; without, the .deb's
    link-kernel-headers links the generic ones, and the probe still counts exactly."""
    host, state = tmp_path / "host", tmp_path / "state"
    for d in (host / "lib/modules", host / "usr/src", state):
        d.mkdir(parents=True)
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(f'listen: "127.0.0.1:{port}"\n')
    env = {
        **os.environ,
        "NODE_HEADERS": node_headers,
        "PROCMOND_HOST_ROOT": str(host),
        "PROCMOND_STATE_DIR": str(state),
        "TMPDIR": str(state),
        "PROCMOND_LINK_HEADERS": str(REPO / "packaging/debian/link-kernel-headers"),
        "PROCMOND_BIN": f"{sys.executable} -m procmond",
    }
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", POD_SCRIPT, "_"]
    argv += [str(host), str(state), str(K8S / "entrypoint.sh"), "run", "--config", str(config)]
    log = tmp_path / "pod.log"
    with log.open("wb") as out:
        pod = subprocess.Popen(argv, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    daemon = Daemon(pod, port, log, config)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert pod.poll() is None, daemon.log()
            try:
                daemon.scrape()
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, daemon.log()
                time.sleep(0.1)
        name = unique_name("pod")
        run_creator(creator, "fork", 25, [name])
        counted = {
            dict(labels)["comm"]: v
            for labels, v in daemon.scrape().series("procmond_forks_total").items()
        }
        assert counted[name.decode()] == 25
        # unshare, sh, setpriv and the entrypoint each exec the next: the pid is procmond's
        lines = Path(f"/proc/{pod.pid}/status").read_text().splitlines()
        status = dict(line.split(":\t", 1) for line in lines)
        # the pod grants only these two; the daemon gives up even them once the probe is
        # loaded (it cannot drop the bounding set without CAP_SETPCAP, which it never had)
        bpf_and_perfmon = (1 << 39) | (1 << 38)
        assert int(status["CapEff"], 16) == int(status["CapPrm"], 16) == 0
        assert int(status["CapBnd"], 16) & ~bpf_and_perfmon == 0
        assert status["NoNewPrivs"] == "1"
        assert "procmond" in Path(f"/proc/{pod.pid}/cmdline").read_text()
    finally:
        assert daemon.stop() == 0, daemon.log()
    expected = (
        "compiling against the node's kernel headers"
        if node_headers == "yes"
        else "the node has no headers"
    )
    assert expected in daemon.log()
