"""Kubernetes names for pod uids and container ids, from the kubelet's files on the node.

No API server, no credentials: the kubelet already writes what is needed where log shippers
read it.

* ``/var/log/pods/<namespace>_<pod>_<uid>/`` is made when the pod's sandbox is, before any of
  its containers: namespace and pod by uid.
* ``/var/log/containers/<pod>_<namespace>_<container>-<container id>.log`` is a link the kubelet
  makes for each container it starts: all three names by container id. The pod's sandbox
  (``pause``) has none.

Namespaces, pods and containers are DNS names, which have no ``_``, so both file names split
unambiguously. What is on disk is still any bytes (whatever can write there chooses them):
names are decoded as they are listed (procmond.text.decoded: invalid UTF-8 → U+FFFD). Both
directories are listed whole at most once per ``refresh_interval`` seconds, and only when a
look-up misses; the index is replaced at each listing, so it is bounded by what is on disk,
and at most ``capacity`` names of each are kept (the daemon's ``metrics.cgroups_capacity``:
as many cgroups as its maps can hold).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from procmond.text import decoded

log = logging.getLogger(__name__)

PODS_DIR = Path("/var/log/pods")
CONTAINERS_DIR = Path("/var/log/containers")

_CONTAINER_ID = re.compile(r"^[0-9a-f]{64}$")


class PodName(NamedTuple):
    namespace: str
    pod: str


class ContainerName(NamedTuple):
    namespace: str
    pod: str
    container: str


def parse_pod_dir(name: str) -> tuple[str, PodName] | None:
    """``<namespace>_<pod>_<uid>`` → (uid, names), or None for any other name."""
    parts = name.split("_")
    if len(parts) != 3 or not all(parts):
        return None
    namespace, pod, uid = parts
    return uid, PodName(namespace, pod)


def parse_container_link(name: str) -> tuple[str, ContainerName] | None:
    """``<pod>_<namespace>_<container>-<64 hex>.log`` → (container id, names), or None."""
    if not name.endswith(".log"):
        return None
    parts = name[: -len(".log")].split("_")
    if len(parts) != 3 or not all(parts):
        return None
    pod, namespace, rest = parts
    container, _, container_id = rest.rpartition("-")
    if not container or not _CONTAINER_ID.match(container_id):
        return None
    return container_id, ContainerName(namespace, pod, container)


def _list(directory: Path, limit: int) -> list[str]:
    """Up to ``limit`` names in a directory, as text; none (and a debug line) if it cannot be
    read. Names are only parsed, never opened, so they are decoded here, once."""
    names = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if len(names) == limit:
                    log.warning(
                        "%s has more than %d entries; names beyond them stay unknown",
                        directory,
                        limit,
                    )
                    break
                names.append(decoded(entry.name))
    except OSError as exc:
        log.debug("cannot list %s: %s", directory, exc)
    return names


class KubeletNames:
    """Pod and container names by uid and id, re-read from disk on a miss at a bounded rate.

    Answers are facts (a uid names one pod, an id one container), so a name once found is
    returned until the kubelet removes its file. ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        pods_dir: Path = PODS_DIR,
        containers_dir: Path = CONTAINERS_DIR,
        *,
        refresh_interval: float = 5.0,
        capacity: int = 16384,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pods_dir = pods_dir
        self._containers_dir = containers_dir
        self._refresh_interval = refresh_interval
        self._capacity = capacity
        self._clock = clock
        self._pods: dict[str, PodName] = {}
        self._containers: dict[str, ContainerName] = {}
        self._last_refresh: float | None = None
        self._lock = threading.Lock()
        self.refreshes = 0

    def pod(self, uid: str) -> PodName | None:
        with self._lock:
            if uid not in self._pods:
                self._refresh_if_due()
            return self._pods.get(uid)

    def container(self, container_id: str) -> ContainerName | None:
        with self._lock:
            if container_id not in self._containers:
                self._refresh_if_due()
            return self._containers.get(container_id)

    def _refresh_if_due(self) -> None:
        now = self._clock()
        if self._last_refresh is not None and now - self._last_refresh < self._refresh_interval:
            return
        self._last_refresh = now
        self.refreshes += 1
        pods = (parse_pod_dir(n) for n in _list(self._pods_dir, self._capacity))
        self._pods = dict(p for p in pods if p is not None)
        links = (parse_container_link(n) for n in _list(self._containers_dir, self._capacity))
        self._containers = dict(c for c in links if c is not None)

    def sizes(self) -> dict[str, tuple[int, int]]:
        """Names kept, and how many may be (procmond_table_entries)."""
        with self._lock:
            return {
                "kubelet_pods": (len(self._pods), self._capacity),
                "kubelet_containers": (len(self._containers), self._capacity),
            }
