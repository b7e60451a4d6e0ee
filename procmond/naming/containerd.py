"""containerd's own clients, ``ctr`` and nerdctl: a container's cgroup is
``/<namespace>/<id>`` (cgroupfs, the clients' default) or ``nerdctl-<id>.scope`` (systemd).

``/<namespace>/<id>`` is an ordinary-looking path, so structure alone is not enough: it is a
container while containerd's task state ``<state>/io.containerd.runtime.v2.task/<namespace>/<id>``
exists, which the shim makes before runc makes the cgroup. A path recognised once is
remembered (bounded LRU), so a container removed since is still named.

Names: nerdctl keeps one file per name, ``<nerdctl root>/<hash>/names/<namespace>/<name>``,
holding the container's id; ``ctr`` has no names but ids its user chose ("build-42"): the id is
the name, cut to 12 hex if it is a 64-hex id.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence

from procmond.naming.labels import CgroupLabels
from procmond.naming.lru import BoundedLRU
from procmond.naming.runtime import HEX_ID, clean_name, leaf_match, read_limited, short_id

DEFAULT_STATE = "/run/containerd"
DEFAULT_NERDCTL_ROOT = "/var/lib/nerdctl"
TASKS = "io.containerd.runtime.v2.task"
NAMES_MAX = 4096  # name files listed per namespace
_SCOPE = re.compile(r"^nerdctl-(?P<id>[0-9a-f]{64})\.scope$")


class Containerd:
    name = "containerd"
    watch_depth = 3  # io.containerd.runtime.v2.task/<namespace>/<id>

    def __init__(
        self,
        state: str = DEFAULT_STATE,
        nerdctl_root: str = DEFAULT_NERDCTL_ROOT,
        capacity: int = 16384,
    ) -> None:
        self.state = state
        self.nerdctl_root = nerdctl_root
        self._tasks: BoundedLRU[str, bool] = BoundedLRU(capacity)  # "ns/id" seen as a task
        self._names: BoundedLRU[str, str] = BoundedLRU(capacity)  # id → nerdctl name

    def container_id(self, names: Sequence[str]) -> str | None:
        scope = leaf_match(names, _SCOPE)
        if scope is not None:
            return scope
        if len(names) < 2 or not self.state or {names[0], names[1]} & {".", ".."}:
            return None
        key = f"{names[0]}/{names[1]}"
        if self._tasks.get(key) is None:
            if not os.path.isdir(os.path.join(self.state, TASKS, names[0], names[1])):
                return None
            self._tasks.put(key, True)
        return names[1]

    def labels(self, container_id: str) -> CgroupLabels:
        name = self._names.get(container_id) or self._nerdctl_name(container_id)
        return CgroupLabels(container=name or short_id(container_id))

    def _nerdctl_name(self, container_id: str) -> str | None:
        """The name nerdctl gave the container, read from its name store (ids are 64 hex)."""
        if not self.nerdctl_root or not HEX_ID.match(container_id):
            return None
        pattern = os.path.join(glob.escape(self.nerdctl_root), "*", "names", "*")
        for directory in glob.glob(pattern)[:64]:
            try:
                with os.scandir(directory) as entries:
                    files = [e for _, e in zip(range(NAMES_MAX), entries, strict=False)]
            except OSError:
                continue
            for entry in files:
                if read_limited(entry.path, 256) == container_id.encode():
                    name = clean_name(entry.name)
                    if name:
                        self._names.put(container_id, name)
                        return name
        return None

    def state_dirs(self) -> list[str]:
        return [self.state] if self.state else []

    def descend(self, relative: Sequence[str]) -> bool:
        return relative[0] == TASKS

    def watched(self) -> list[Containerd]:
        return [self]

    def noticed(self, relative: Sequence[str]) -> None:
        """A task's directory made (before its cgroup): its path is a container's."""
        if len(relative) == 3 and relative[0] == TASKS:
            self._tasks.put(f"{relative[1]}/{relative[2]}", True)

    def sizes(self) -> dict[str, tuple[int, int]]:
        return {
            "containerd_tasks": (len(self._tasks), self._tasks.capacity),
            "nerdctl_names": (len(self._names), self._names.capacity),
        }
