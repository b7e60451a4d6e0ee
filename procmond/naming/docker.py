"""Docker's containers: ``/docker/<id>`` (cgroupfs driver) and ``docker-<id>.scope``
(systemd driver), named from ``<data-root>/containers/<id>/config.v2.json``.

The file is parsed as JSON and only its top-level ``Name`` ("/ci-job") is taken: other
objects in it have a ``Name`` too (networks), so no text matching. dockerd writes the file at
``docker create``, before the container's cgroup exists, and removes it with the container:
a name read once is kept (bounded LRU) so that a ``docker run --rm`` job is still named after
it is gone.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from procmond.naming.labels import CgroupLabels
from procmond.naming.lru import BoundedLRU
from procmond.naming.runtime import HEX_ID, clean_name, read_json

DEFAULT_ROOT = "/var/lib/docker"
_SCOPE = re.compile(r"^docker-(?P<id>[0-9a-f]{64})\.scope$")


class Docker:
    name = "docker"
    watch_depth = 3  # containers/<id>/config.v2.json

    def __init__(self, root: str = DEFAULT_ROOT, capacity: int = 16384) -> None:
        self.root = root
        self._names: BoundedLRU[str, str] = BoundedLRU(capacity)

    def container_id(self, names: Sequence[str]) -> str | None:
        for i in range(len(names) - 1, -1, -1):
            name = names[i]
            scope = _SCOPE.match(name)
            if scope:
                return scope.group("id")
            if i > 0 and names[i - 1] == "docker" and HEX_ID.match(name):
                return name
        return None

    def labels(self, container_id: str) -> CgroupLabels | None:
        name = self._names.get(container_id) or self.read_name(container_id)
        return CgroupLabels(container=name) if name else None

    def read_name(self, container_id: str) -> str | None:
        """The container's name from its config.v2.json, remembered; None if not there."""
        if not self.root or not HEX_ID.match(container_id):
            return None
        config = read_json(os.path.join(self.root, "containers", container_id, "config.v2.json"))
        name = clean_name(config.get("Name")) if isinstance(config, dict) else ""
        if not name:
            return None
        self._names.put(container_id, name)
        return name

    def state_dirs(self) -> list[str]:
        """Where a new container shows first (watched for names ahead of their look-up; waited
        for if dockerd has not made it yet)."""
        return [self.root] if self.root else []

    def descend(self, relative: Sequence[str]) -> bool:
        return relative[0] == "containers"

    def watched(self) -> list[Docker]:
        return [self]

    def noticed(self, relative: Sequence[str]) -> None:
        """config.v2.json written (at create, before the cgroup exists): read its name."""
        if len(relative) == 3 and relative[0] == "containers" and relative[2] == "config.v2.json":
            self.read_name(relative[1])

    def sizes(self) -> dict[str, tuple[int, int]]:
        return {"docker_names": (len(self._names), self._names.capacity)}
