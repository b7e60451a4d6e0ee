"""Real cgroups and the kubelet's on-disk layout, made by a test and removed after it.

Shared by tests/e2e/test_cgroups*.py: directories in a real cgroup hierarchy (v2, or the v1
pids one), real processes moved into them through ``cgroup.procs``, and the kubelet's log
directories (``/var/log/pods``, ``/var/log/containers``) under a root of the test's choosing.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path


class CgroupTree:
    """Cgroups made under one mounted hierarchy; ``remove()`` takes them away, deepest first,
    once their processes have gone (a cgroup with a live process cannot be removed)."""

    def __init__(self, mount: Path) -> None:
        self.mount = mount
        self.made: list[Path] = []
        self.processes: list[subprocess.Popen] = []

    def make(self, path: str) -> Path:
        """Make the cgroup at ``path`` ("/a/b") and any missing parent."""
        d = self.mount
        for name in path.strip("/").split("/"):
            d = d / name
            if not d.exists():
                d.mkdir()
                self.made.append(d)
        return d

    def start(self, cgroup: Path, *argv: str) -> subprocess.Popen:
        """Run ``argv`` inside ``cgroup``: the shell joins it, then execs the command."""
        script = f'echo $$ > "{cgroup}/cgroup.procs" && exec "$@"'
        p = subprocess.Popen(
            ["sh", "-c", script, "_", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.processes.append(p)
        return p

    def sleeper(self, cgroup: Path) -> int:
        """A process that sits in ``cgroup``; its pid, once /proc shows it there."""
        p = self.start(cgroup, "sleep", "600")
        relative = "/" + str(cgroup.relative_to(self.mount))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc_cgroup_v2(p.pid) == relative:
                return p.pid
            time.sleep(0.01)
        raise AssertionError(f"pid {p.pid} never showed {relative} in /proc/{p.pid}/cgroup")

    def remove(self) -> None:
        """Kill what was started, then remove the cgroups; a second call does nothing."""
        for p in self.processes:
            if p.poll() is None:
                p.kill()
            p.communicate(timeout=10)
        self.processes = []
        made, self.made = self.made, []
        for d in sorted(made, key=lambda p: -len(p.parts)):
            deadline = time.monotonic() + 10
            while d.exists():
                try:
                    d.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)


def proc_cgroup_v2(pid: int) -> str:
    """The v2 cgroup path /proc/PID/cgroup shows for a process ("0::/a/b")."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    raise AssertionError(f"/proc/{pid}/cgroup has no cgroup v2 line")


@dataclass
class Pod:
    """One pod the way the kubelet leaves it on disk, with unique names and ids."""

    namespace: str = field(default_factory=lambda: "ns-" + secrets.token_hex(3))
    name: str = field(default_factory=lambda: "web-" + secrets.token_hex(3))
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    container: str = "app"
    container_id: str = field(default_factory=lambda: secrets.token_hex(32))
    made: list[Path] = field(default_factory=list)

    def cgroup(self, driver: str, qos: str) -> str:
        """The pod's cgroup path for a cgroup driver (systemd, cgroupfs) and QoS class
        (besteffort, burstable, or "" for Guaranteed pods, which have no QoS level)."""
        if driver == "systemd":
            level = f"-{qos}" if qos else ""
            middle = f"/kubepods{level}.slice" if qos else ""
            pod = f"kubepods{level}-pod{self.uid.replace('-', '_')}.slice"
            return f"/kubepods.slice{middle}/{pod}"
        return f"/kubepods{'/' + qos if qos else ''}/pod{self.uid}"

    def container_cgroup(self, driver: str, qos: str) -> str:
        leaf = f"cri-containerd-{self.container_id}.scope" if driver == "systemd" else None
        return f"{self.cgroup(driver, qos)}/{leaf or self.container_id}"

    def write_pod_dir(self, pods_dir: Path) -> Path:
        """/var/log/pods/<namespace>_<pod>_<uid>/<container>/0.log"""
        log = pods_dir / f"{self.namespace}_{self.name}_{self.uid}" / self.container / "0.log"
        self._make_parents(log)
        log.write_text("")
        self.made.append(log)
        return log

    def write_link(self, pods_dir: Path, containers_dir: Path) -> Path:
        """/var/log/containers/<pod>_<namespace>_<container>-<id>.log → the pod's log file"""
        target = pods_dir / f"{self.namespace}_{self.name}_{self.uid}" / self.container / "0.log"
        name = f"{self.name}_{self.namespace}_{self.container}-{self.container_id}.log"
        link = containers_dir / name
        self._make_parents(link)
        link.symlink_to(target)
        self.made.append(link)
        return link

    def _make_parents(self, path: Path) -> None:
        missing = []
        for parent in path.parents:
            if parent.exists():
                break
            missing.append(parent)
        for parent in reversed(missing):
            parent.mkdir()
            self.made.append(parent)

    def remove(self) -> None:
        """Remove what this pod wrote, deepest first; directories it did not make stay."""
        for path in sorted(self.made, key=lambda p: -len(p.parts)):
            if path.is_symlink() or path.is_file():
                path.unlink()
            elif path.is_dir():
                os.rmdir(path)


class TaskLimitedUnit:
    """A unit-shaped cgroup (``/test.slice/<unit>``) with ``pids.max`` set, as systemd's
    TasksMax sets it: made in the v2 hierarchy (the unit's name) and, on hybrid hosts where
    the pids controller is a v1 one, in the v1 pids hierarchy too. ``bomb`` runs a contained
    fork bomb in it; ``remove`` takes the v1 side away (``tree`` removes the v2 side)."""

    def __init__(self, tree: CgroupTree, unit: str, limit: int) -> None:
        from procmond.naming.cgroups import read_layout
        from procmond.scrape.tasklimits import find_pids_hierarchy

        pids = find_pids_hierarchy(read_layout())
        assert pids is not None, "no pids controller on this host"
        self.unit = unit
        path = f"/test.slice/{unit}"
        self._v1 = CgroupTree(pids.hierarchy.mount_point) if pids.version == 1 else None
        v1 = self._v1.make(path) if self._v1 else None
        cgroup = tree.make(path)
        ((v1 or cgroup) / "pids.max").write_text(f"{limit}\n")
        self._join = f'echo $$ > "{cgroup}/cgroup.procs" && '
        self._join += f'echo $$ > "{v1}/cgroup.procs" && ' if v1 else ""

    def bomb(self, creator: Path, forks: int, name: bytes) -> tuple[int, int]:
        """``forks`` forks at once, each child living 300 ms: (made, refused)."""
        argv = [str(creator), "fork", str(forks), "--together", "--child-sleep-ms", "300"]
        done = subprocess.run(
            ["sh", "-c", self._join + 'exec "$@"', "_", *argv, "--tolerate-failures", name.hex()],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        made, refused = (int(x) for x in done.stdout.split()[1::2])
        return made, refused

    def remove(self) -> None:
        if self._v1 is not None:
            self._v1.remove()
