"""The DaemonSet's pod, as `podman run` options: what the kubelet would ask of a runtime.

Everything comes from packaging/kubernetes/daemonset.yaml, nothing is restated: a setting the
manifest gains that this translation does not know is an error, so the image test cannot
silently run the pod with less than the manifest says. What a single node has no use for
(scheduling: tolerations, nodeSelector, priority) is named as such.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# Pod fields that only steer scheduling or API access: nothing for one runtime to do.
SCHEDULING = {"tolerations", "nodeSelector", "priorityClassName", "serviceAccountName"}
POD_FIELDS = SCHEDULING | {
    "automountServiceAccountToken",  # false: no token volume to mount
    "hostPID",
    "hostNetwork",
    "terminationGracePeriodSeconds",
    "containers",
    "volumes",
}
CONTAINER_FIELDS = {
    "name",
    "image",  # the test runs its own build
    "imagePullPolicy",  # the image is local
    "args",
    "env",
    "ports",
    "startupProbe",
    "livenessProbe",
    "readinessProbe",
    "resources",
    "securityContext",
    "volumeMounts",
}
SECURITY_FIELDS = {
    "privileged",
    "runAsUser",
    "runAsNonRoot",
    "readOnlyRootFilesystem",
    "allowPrivilegeEscalation",
    "capabilities",
    "seccompProfile",
}
_UNITS = {"": 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "k": 10**3, "M": 10**6, "G": 10**9}


def quantity_bytes(text: str) -> int:
    """A Kubernetes memory quantity ("256Mi") in bytes."""
    match = re.fullmatch(r"([0-9]+)(Ki|Mi|Gi|k|M|G|)", str(text))
    assert match, f"memory quantity {text!r} not understood"
    return int(match.group(1)) * _UNITS[match.group(2)]


def quantity_cpus(text: str) -> float:
    """A Kubernetes CPU quantity ("1", "500m") in CPUs."""
    match = re.fullmatch(r"([0-9.]+)(m?)", str(text))
    assert match, f"cpu quantity {text!r} not understood"
    return float(match.group(1)) / (1000 if match.group(2) else 1)


def _unknown(what: str, fields: Mapping, known: set[str]) -> None:
    extra = sorted(set(fields) - known)
    assert not extra, (
        f"the image test does not know what the {what} field(s) {extra} ask of a runtime"
    )


@dataclass
class Pod:
    """The pod's spec and its one container, with what a test needs beside the options."""

    spec: dict

    @property
    def container(self) -> dict:
        (container,) = self.spec["containers"]
        return container

    @property
    def grace_seconds(self) -> int:
        return int(self.spec.get("terminationGracePeriodSeconds", 30))

    def port(self, name: str) -> int:
        (port,) = [p["containerPort"] for p in self.container["ports"] if p["name"] == name]
        return port

    def startup_budget_seconds(self) -> float:
        probe = self.container["startupProbe"]
        return probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)

    def options(
        self,
        config_dir: Path,
        host_paths: Mapping[str, Path],
        seccomp_profile: Path | None,
    ) -> list[str]:
        """`podman run` options for the pod. ``config_dir`` holds the ConfigMap's files;
        ``host_paths`` puts another folder in place of a hostPath (a node without headers);
        ``seccomp_profile`` stands for RuntimeDefault (None: the runtime's own default)."""
        spec, container = self.spec, self.container
        _unknown("pod", spec, POD_FIELDS)
        _unknown("container", container, CONTAINER_FIELDS)
        security = container.get("securityContext", {})
        _unknown("securityContext", security, SECURITY_FIELDS)
        assert security.get("privileged") is not True, "a privileged pod needs --privileged"

        out = ["--pid", "host"] if spec.get("hostPID") else []
        # A pod has a network namespace of its own (the CNI would add an interface to it)
        out += ["--network", "host" if spec.get("hostNetwork") else "none"]
        if "runAsUser" in security:
            out += ["--user", str(security["runAsUser"])]
        if security.get("readOnlyRootFilesystem"):
            # podman would add its own tmpfs on /tmp, /var/tmp and /run; a pod has only its
            # volumes
            out += ["--read-only", "--read-only-tmpfs=false"]
        if security.get("allowPrivilegeEscalation") is False:
            out += ["--security-opt", "no-new-privileges"]
        capabilities = security.get("capabilities", {})
        for cap in capabilities.get("drop", []):
            out += ["--cap-drop", cap.lower()]
        for cap in capabilities.get("add", []):
            out += ["--cap-add", cap]
        seccomp = security.get("seccompProfile", {}).get("type", "RuntimeDefault")
        if seccomp == "Unconfined":
            out += ["--security-opt", "seccomp=unconfined"]
        elif seccomp == "RuntimeDefault":
            if seccomp_profile is not None:
                out += ["--security-opt", f"seccomp={seccomp_profile}"]
        else:
            raise AssertionError(f"seccompProfile {seccomp} is not translated")
        limits = container.get("resources", {}).get("limits", {})
        if "memory" in limits:
            out += ["--memory", str(quantity_bytes(limits["memory"]))]
        if "cpu" in limits:
            out += ["--cpus", str(quantity_cpus(limits["cpu"]))]
        for env in container.get("env", []):
            out += ["--env", f"{env['name']}={env['value']}"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for mount in container.get("volumeMounts", []):
            out += ["--mount", _mount(volumes[mount["name"]], mount, config_dir, host_paths)]
        return out

    @property
    def args(self) -> list[str]:
        return list(self.container.get("args", []))


def _mount(volume: dict, mount: dict, config_dir: Path, host_paths: Mapping[str, Path]) -> str:
    target = mount["mountPath"]
    readonly = ",readonly=true" if mount.get("readOnly") else ""
    if "configMap" in volume:
        return f"type=bind,src={config_dir},dst={target},readonly=true"
    if "emptyDir" in volume:
        empty = volume["emptyDir"] or {}
        assert empty.get("medium") == "Memory", f"emptyDir {volume['name']} on disk"
        size = f",tmpfs-size={quantity_bytes(empty['sizeLimit'])}" if "sizeLimit" in empty else ""
        return f"type=tmpfs,dst={target}{size}"
    if "hostPath" in volume:
        path = volume["hostPath"]["path"]
        source = host_paths.get(path, Path(path))
        if volume["hostPath"].get("type") == "Directory":
            # the kubelet refuses to start the pod otherwise
            assert source.is_dir(), f"hostPath {path} ({source}) is not a folder"
        return f"type=bind,src={source},dst={target}{readonly}"
    raise AssertionError(f"volume {volume['name']}: kind not translated")


# The seccomp rules containerd and Docker added to their default profiles (containerd#7301,
# moby#43987): bpf() for CAP_BPF holders, perf_event_open() for CAP_PERFMON holders.
GRANTS = {"bpf": "CAP_BPF", "perf_event_open": "CAP_PERFMON"}


def grants_bpf_to_its_capabilities(profile: dict) -> bool:
    """Does this profile allow bpf() and perf_event_open() to CAP_BPF / CAP_PERFMON alone?"""
    allowed = {
        (name, cap)
        for rule in profile["syscalls"]
        if rule["action"] == "SCMP_ACT_ALLOW"
        for name in rule["names"]
        for cap in (rule.get("includes") or {}).get("caps", [None])
    }
    return all((name, cap) in allowed or (name, None) in allowed for name, cap in GRANTS.items())


def with_bpf_grants(profile: dict) -> dict:
    """A containers/common seccomp profile with the grants above. Its own rules allow those
    calls only with CAP_SYS_ADMIN and answer EPERM without it; that answer is narrowed to
    holders of neither capability, so the new allow rule never meets a conflicting one."""
    rules = []
    for rule in profile["syscalls"]:
        moved = [n for n in rule["names"] if n in GRANTS]
        excluded = (rule.get("excludes") or {}).get("caps")
        if moved and rule["action"] != "SCMP_ACT_ALLOW" and excluded == ["CAP_SYS_ADMIN"]:
            rest = [n for n in rule["names"] if n not in GRANTS]
            if rest:
                rules.append({**rule, "names": rest})
            for name in moved:
                caps = ["CAP_SYS_ADMIN", GRANTS[name]]
                rules.append({**rule, "names": [name], "excludes": {"caps": caps}})
        else:
            rules.append(rule)
    for name, cap in GRANTS.items():
        rules.append({"names": [name], "action": "SCMP_ACT_ALLOW", "includes": {"caps": [cap]}})
    return {**profile, "syscalls": rules}


def write_profile(profile: dict, path: Path) -> Path:
    path.write_text(json.dumps(profile))
    return path
