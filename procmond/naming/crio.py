"""CRI-O's containers outside Kubernetes: ``crio-<id>.scope`` (``crio-conmon-<id>.scope`` is
its monitor, not the container). Under a kubepods tree the kubelet's names win
(procmond/naming/cgroups.py looks there first). CRI-O keeps its containers in containers/storage,
as Podman does: names from the store's container list."""

from __future__ import annotations

import re
from collections.abc import Sequence

from procmond.naming.containers_storage import ContainerStore
from procmond.naming.labels import CgroupLabels
from procmond.naming.runtime import leaf_match

DEFAULT_ROOT = "/var/lib/containers/storage"
_SCOPE = re.compile(r"^crio-(?P<id>[0-9a-f]{64})\.scope$")


class Crio:
    name = "crio"

    def __init__(
        self, root: str = DEFAULT_ROOT, capacity: int = 16384, store: ContainerStore | None = None
    ) -> None:
        self.store = store or ContainerStore(root, capacity)

    def container_id(self, names: Sequence[str]) -> str | None:
        return leaf_match(names, _SCOPE)

    def labels(self, container_id: str) -> CgroupLabels | None:
        name = self.store.name_of(container_id)
        return None if name is None else CgroupLabels(container=name)

    def state_dirs(self) -> list[str]:
        return self.store.state_dirs()

    def watched(self) -> list[ContainerStore]:
        return [self.store]

    def sizes(self) -> dict[str, tuple[int, int]]:
        return {"crio_names": self.store.size()}
