"""Podman's containers: ``libpod-<id>`` (rootful cgroupfs, under ``/libpod_parent``),
``libpod-<id>.scope`` (systemd driver, ``machine.slice``; rootless ones, under
``user@<uid>.service``, are procmond/naming/podman_rootless.py's). ``libpod-conmon-<id>.scope``
holds conmon, not the container, and does not match.

Names come from the container store (procmond.naming.containers_storage). A container in a pod
carries its pod's id in its OCI config (annotation ``io.kubernetes.cri-o.SandboxID``); the
pod's name is in libpod's database, BoltDB (``libpod/bolt_state.db``) or SQLite
(``libpod/db.sql``, Podman 4.8+). Both store the pod's config as a JSON object that starts with
``{"id":"<pod id>"``: that object is found and parsed as JSON (``raw_decode``), whichever the
database's format, without a driver for either.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence

from procmond.naming.containers_storage import ContainerStore
from procmond.naming.labels import CgroupLabels
from procmond.naming.lru import BoundedLRU
from procmond.naming.runtime import HEX_ID, clean_name, leaf_match, read_limited

DEFAULT_ROOT = "/var/lib/containers/storage"
DATABASE_LIMIT = 64 << 20
DATABASES = ("libpod/bolt_state.db", "libpod/db.sql")
CGROUP = re.compile(r"^libpod-(?P<id>[0-9a-f]{64})(?:\.scope)?$")
USER_SERVICE = re.compile(r"^user@(?P<uid>[0-9]{1,10})\.service$")  # a user's own systemd
_POD_ANNOTATION = "io.kubernetes.cri-o.SandboxID"


class Podman:
    name = "podman"

    def __init__(
        self,
        root: str = DEFAULT_ROOT,
        capacity: int = 16384,
        refresh_interval: float = 1.0,
        store: ContainerStore | None = None,
    ) -> None:
        self.store = store or ContainerStore(root, capacity, refresh_interval)
        self._pods: BoundedLRU[str, str] = BoundedLRU(capacity)  # container id → pod name
        self._pod_names: BoundedLRU[str, str] = BoundedLRU(capacity)  # pod id → name
        self._database_stamp: tuple[int, int, int] | None = None

    def container_id(self, names: Sequence[str]) -> str | None:
        if any(USER_SERVICE.match(name) for name in names):
            return None  # rootless: procmond/naming/podman_rootless.py
        return leaf_match(names, CGROUP)

    def labels(self, container_id: str) -> CgroupLabels | None:
        name = self.store.name_of(container_id)
        if name is None:
            return None
        return CgroupLabels(pod=self._pod(container_id), container=name)

    def _pod(self, container_id: str) -> str:
        known = self._pods.get(container_id)
        if known is not None:
            return known
        config = self.store.config(container_id)
        annotations = config.get("annotations") if isinstance(config, dict) else None
        pod_id = annotations.get(_POD_ANNOTATION) if isinstance(annotations, dict) else None
        pod = self.pod_name(pod_id) if isinstance(pod_id, str) and HEX_ID.match(pod_id) else ""
        self._pods.put(container_id, pod)
        return pod

    def pod_name(self, pod_id: str) -> str:
        """A pod's name from libpod's database (either format), or "" if not found."""
        known = self._pod_names.get(pod_id)
        if known is not None:
            return known
        for database in DATABASES:
            path = os.path.join(self.store.root, database)
            data = read_limited(path, DATABASE_LIMIT)
            if data is None:
                continue
            name = pod_in(data, pod_id)
            if name:
                self._pod_names.put(pod_id, name)
                return name
        return ""

    def state_dirs(self) -> list[str]:
        return self.store.state_dirs()

    def watched(self) -> list[ContainerStore]:
        return [self.store]

    def sizes(self) -> dict[str, tuple[int, int]]:
        return {
            "podman_names": self.store.size(),
            "podman_pods": (len(self._pods), self._pods.capacity),
        }


def pod_in(database: bytes, pod_id: str) -> str:
    """The ``name`` of the JSON object ``{"id":"<pod_id>",...}`` stored in a database file."""
    start = database.find(b'{"id":"' + pod_id.encode() + b'"')
    while start >= 0:
        text = database[start : start + (1 << 16)].decode("utf-8", "replace")
        try:
            found, _ = json.JSONDecoder().raw_decode(text)
        except (ValueError, RecursionError):
            found = None
        if isinstance(found, dict) and found.get("id") == pod_id and "name" in found:
            return clean_name(found.get("name"))
        start = database.find(b'{"id":"' + pod_id.encode() + b'"', start + 1)
    return ""
