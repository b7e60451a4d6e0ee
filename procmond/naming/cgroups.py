"""Which systemd unit and Kubernetes pod a cgroup v2 id belongs to.

The probe keys its counters by ``bpf_get_current_cgroup_id()``: the id of the creating task's
cgroup in the v2 hierarchy, which is the inode number of that cgroup's directory in the
cgroup2 filesystem (64-bit kernels). This module turns such an id into labels:

    id ──(mkdir records, else a walk of the cgroup2 tree)──▶ path ──(path rules)──▶ unit
                                                              └──(kubelet's log files)──▶ pod

* **Where cgroup v2 is** comes from ``/proc/self/mountinfo`` (:func:`read_layout`), never from
  a guessed path: ``/sys/fs/cgroup`` on unified hosts, ``/sys/fs/cgroup/unified`` on hybrid
  ones, nowhere on v1-only hosts (:meth:`CgroupLayout.describe` says so in one sentence).
* **Path rules** (:func:`parse_cgroup_path`, pure): the unit is the deepest ``.service`` or
  ``.scope`` component (slices are not units). Under a kubelet's ``kubepods`` tree the unit is
  left empty and the pod uid and container id are read from the path instead, for both cgroup
  drivers (systemd: ``kubepods-<qos>-pod<uid_>.slice/cri-containerd-<id>.scope``, cgroupfs:
  ``kubepods/<qos>/pod<uid>/<id>``). A container scope is also a systemd unit, but naming it
  would make one ``unit`` value per container id, unbounded over time and redundant with
  ``pod``/``container``, which name it better and stay the same across restarts.
* **Names** for pod uids and container ids come from the node's own files
  (procmond/naming/kubelet.py), never from the API server.
* **Containers outside kubepods** (Docker, Podman, containerd, CRI-O) are recognised and named
  by the runtimes of procmond/naming/, asked in turn for every path outside a kubepods tree:
  a runtime's container gets ``container`` (and a Podman pod's ``pod``), never its scope as a
  unit; one whose name is not found within ``link_grace`` gets its 12-hex short id.
* **Bytes until named:** a cgroup's name is any bytes but "/" and NUL, not always UTF-8.
  Paths travel as Python makes them of bytes (surrogates for undecodable bytes), so that the
  directory can be found again; they become text only in :func:`parse_cgroup_path`, through
  procmond.text.decoded (invalid UTF-8 → U+FFFD), so no label carries a surrogate.

The contract of :meth:`CgroupResolver.labels` (what the collector relies on):

* It returns :class:`CgroupLabels` when the answer is **final**, or ``None`` when it is **not
  known yet**: the id's path has not been found (the walk is rate-limited), or the path is a
  Kubernetes pod or container whose names are not on disk yet.
* A final answer is a fact about the id: a v2 cgroup cannot be renamed and its id is never
  reused during a boot, a pod uid names one pod, a container id one container. Asked again it
  is the same, or ``None`` after it fell out of the bounded caches and the pod's files are
  gone. One exception: a container cgroup whose log link has not appeared ``link_grace``
  seconds after it was first asked for (the pod's sandbox, ``pause``, never gets one) is
  answered with its pod's names and an empty container; if that answer is evicted and a link
  appears later, a later answer may add the container name.
* So the caller **pins** the first final answer per counter key and never relabels it. For a
  key whose answer is ``None`` it counts under :data:`EMPTY_LABELS` for now; when the key's
  answer arrives, what was counted so far stays under the empty labels (the caller remembers
  the count at that moment) and only what comes after goes to the named series. Late names
  never move counts from one series to another.
* Everything is bounded: paths and final labels are LRU caches of ``capacity`` ids, ids not
  found are remembered (negative cache, ``negative_capacity`` ids) until the next walk is
  allowed, and pending ids (``pending_capacity``) only keep the time they were first asked for.
  The daemon sizes them all by the cgroups its maps can hold (``metrics.cgroups_capacity``).
  A walk of the tree runs at most once per ``walk_interval`` seconds, and only on a miss; it
  adds the other cgroups it passes to the path cache only where there is room, so that a tree
  larger than the cache never pushes out the ids in use. The kubelet's files are re-read at
  most once per their own interval, only on a miss.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

from procmond.kernel.mounts import MOUNTINFO, Mount, parse_mountinfo
from procmond.naming.kubelet import KubeletNames
from procmond.naming.labels import EMPTY_LABELS, CgroupLabels
from procmond.naming.lru import BoundedLRU
from procmond.naming.runtime import ContainerRuntime, short_id
from procmond.text import decoded

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hierarchy:
    """A mounted cgroup hierarchy: the directory to read, and which cgroup that directory is.

    ``prefix`` is the path of the mounted directory inside the hierarchy, "" for its root.
    Inside a cgroup namespace the kernel shows the root of a mount relative to the namespace's
    own cgroup: a mount of the whole hierarchy (the host's, bind-mounted into a container) then
    reads ``/..`` or ``/../..``. Those are taken as the hierarchy's root, which is what such a
    bind mount is; a mount of a subtree (``/kubepods/...``) keeps that path as its prefix.
    """

    mount_point: Path
    prefix: str = ""

    def cgroup_path(self, relative: str) -> str:
        """The full cgroup path of a directory at ``relative`` ("/", "/a/b") in this mount."""
        if not self.prefix:
            return relative
        return self.prefix if relative == "/" else self.prefix + relative

    def directory(self, path: str) -> str:
        """Where a cgroup path (from the hierarchy's root) is in this mount."""
        prefix = self.prefix
        relative = path[len(prefix) :] if prefix and path.startswith(prefix) else path
        return f"{self.mount_point}{relative if relative != '/' else ''}"


def _hierarchy(mount: Mount) -> Hierarchy:
    parts = [p for p in mount.root.split("/") if p]
    prefix = "" if all(p == ".." for p in parts) else "/" + "/".join(parts)
    return Hierarchy(Path(mount.mount_point), prefix)


def _outermost(mounts: list[Mount]) -> Mount | None:
    """Of several mounts of one hierarchy, the one showing the most of it (see Hierarchy)."""

    def rank(m: Mount) -> tuple[bool, int]:
        parts = [p for p in m.root.split("/") if p]
        subtree = any(p != ".." for p in parts)
        return (subtree, -len(parts))

    return min(mounts, key=rank) if mounts else None


@dataclass(frozen=True)
class CgroupLayout:
    """The host's cgroup set-up, as /proc/self/mountinfo shows it."""

    v2: Hierarchy | None  # the cgroup2 hierarchy, where ids and paths come from
    v1_controllers: frozenset[str]  # controllers (and name=...) mounted as v1 hierarchies
    pids_v1: Hierarchy | None  # the v1 pids hierarchy, if pids is a v1 controller here

    @property
    def kind(self) -> str:
        """unified (v2 only), hybrid (v2 beside v1), legacy (v1 only) or none."""
        if self.v2 is not None:
            return "hybrid" if self.v1_controllers else "unified"
        return "legacy" if self.v1_controllers else "none"

    def describe(self) -> str:
        """One sentence for ``procmond doctor`` and the log: where v2 is, or why no labels."""
        if self.v2 is None:
            what = "only cgroup v1 is mounted" if self.v1_controllers else "no cgroup is mounted"
            return (
                f"{what} (no cgroup2 line in /proc/self/mountinfo), so the unit, namespace, "
                "pod and container labels stay empty; boot with "
                "systemd.unified_cgroup_hierarchy=1 (or mount cgroup2) to get them"
            )
        beside = " beside v1 controllers (hybrid)" if self.v1_controllers else " (unified)"
        where = decoded(str(self.v2.mount_point))
        return (
            f"cgroup v2 at {where}{beside}: creations are attributed to "
            "systemd units and Kubernetes pods"
        )


def detect_layout(mountinfo: str) -> CgroupLayout:
    """The cgroup layout from the text of a mountinfo file (pure)."""
    mounts = parse_mountinfo(mountinfo)
    v2 = _outermost([m for m in mounts if m.fstype == "cgroup2"])
    v1 = [m for m in mounts if m.fstype == "cgroup"]
    controllers = frozenset(
        opt for m in v1 for opt in m.super_options if opt not in _V1_MOUNT_OPTIONS
    )
    pids = _outermost([m for m in v1 if "pids" in m.super_options])
    return CgroupLayout(
        v2=_hierarchy(v2) if v2 else None,
        v1_controllers=controllers,
        pids_v1=_hierarchy(pids) if pids else None,
    )


# Options of a v1 cgroup mount that are not controllers.
_V1_MOUNT_OPTIONS = frozenset(
    {"rw", "ro", "noprefix", "clone_children", "xattr", "cpuset_v2_mode", "favordynmods"}
)


def read_layout(mountinfo: Path = MOUNTINFO) -> CgroupLayout:
    """The cgroup layout of this process's mount namespace."""
    return detect_layout(mountinfo.read_text(errors="surrogateescape"))


# ---- walking a hierarchy ------------------------------------------------------------------------


class CgroupDir(NamedTuple):
    path: str  # cgroup path inside the hierarchy: "/" or "/a/b"
    inode: int  # the directory's inode number: the cgroup id on v2
    directory: str  # where it is on this machine
    files: tuple[str, ...]  # which of the wanted file names it has


def walk(hierarchy: Hierarchy, wanted: frozenset[str] = frozenset()) -> Iterator[CgroupDir]:
    """Every cgroup of a mounted hierarchy, parents before children.

    One ``getdents`` per cgroup and no ``stat``: the kernel fills each entry's inode number and
    type (``DirEntry.inode()``, ``is_dir()``), and for a cgroup2 directory that inode is the
    cgroup id. Cgroups removed during the walk are skipped.
    """
    top = str(hierarchy.mount_point)
    try:
        top_inode = os.stat(top).st_ino
    except OSError as exc:
        log.warning("cannot read the cgroup hierarchy at %s: %s", top, exc)
        return
    stack = [(top, hierarchy.cgroup_path("/"), top_inode)]
    while stack:
        directory, path, inode = stack.pop()
        found = []
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        child = path + entry.name if path == "/" else path + "/" + entry.name
                        stack.append((entry.path, child, entry.inode()))
                    elif entry.name in wanted:
                        found.append(entry.name)
        except OSError:
            continue  # removed since its parent was listed
        yield CgroupDir(path, inode, directory, tuple(found))


# ---- path rules ---------------------------------------------------------------------------------

_UNIT_SUFFIXES = (".service", ".scope")
# The kubelet's top cgroup: kubepods (cgroupfs), kubepods.slice, or <root>-kubepods.slice when
# the kubelet runs with --cgroup-root (kind nodes: kubelet.slice/kubelet-kubepods.slice).
_KUBEPODS = re.compile(r"^(?:kubepods|(?:.+-)?kubepods\.slice)$")
_POD_SYSTEMD = re.compile(
    r"^(?:.+-)?kubepods(?:-besteffort|-burstable)?-pod(?P<uid>[0-9A-Fa-f_]+)\.slice$"
)
_POD_CGROUPFS = re.compile(r"^pod(?P<uid>[0-9A-Fa-f-]+)$")
# A container's cgroup: <64 hex> (cgroupfs) or <runtime>-<64 hex>.scope (systemd driver).
_CONTAINER = re.compile(r"^(?:(?:cri-containerd|crio|docker)-)?(?P<id>[0-9a-f]{64})(?:\.scope)?$")


@dataclass(frozen=True)
class CgroupPath:
    """What a cgroup's path says by itself."""

    unit: str = ""  # the deepest .service or .scope; "" under kubepods or with none
    kubernetes: bool = False  # under a kubelet's kubepods tree
    pod_uid: str = ""  # with dashes, as /var/log/pods spells it
    container_id: str = ""  # 64 hex digits


def unit_of(path: str | bytes) -> str:
    """The deepest .service or .scope component of a cgroup path, or "" (as text)."""
    for name in reversed(decoded(path).split("/")):
        for suffix in _UNIT_SUFFIXES:
            if name.endswith(suffix) and len(name) > len(suffix):
                return name
    return ""


def parse_cgroup_path(path: str | bytes) -> CgroupPath:
    """Unit, pod uid and container id from a cgroup path (pure; see the module docstring).
    Where a cgroup's names become text: every label a path gives is decoded here."""
    path = decoded(path)
    names = [n for n in path.split("/") if n]
    start = next((i for i, n in enumerate(names) if _KUBEPODS.match(n)), None)
    if start is None:
        return CgroupPath(unit=unit_of(path))
    below = names[start + 1 :]
    for i, name in enumerate(below):
        systemd = _POD_SYSTEMD.match(name)
        pod = systemd or _POD_CGROUPFS.match(name)
        if pod is None:
            continue
        uid = pod.group("uid").replace("_", "-") if systemd else pod.group("uid")
        container = _CONTAINER.match(below[i + 1]) if i + 1 < len(below) else None
        return CgroupPath(
            kubernetes=True, pod_uid=uid, container_id=container.group("id") if container else ""
        )
    return CgroupPath(kubernetes=True)


# ---- labels -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolverStats:
    """Counts for self-metrics and tests."""

    walks: int  # tree walks made
    walk_seconds: float  # their total duration
    kernel_paths: int  # paths the mkdir records gave
    walk_paths: int  # paths only a walk found (ids looked up, not every id indexed)
    not_found: int  # look-ups that ended with no path
    final_labels: int  # ids in the final-label cache
    cached_paths: int
    negative: int  # ids remembered as not found
    pending: int  # ids whose Kubernetes names are awaited


class CgroupResolver:
    """cgroup v2 id → path → :class:`CgroupLabels`, cached and bounded (contract: module doc).

    ``kernel_path`` is the id → path look-up in the probe's ``cgroup_mkdir`` records (a cgroup
    made while procmond runs resolves from there even after it is gone); it returns None for an
    id it has no record of and must not raise. Only records of the v2 hierarchy belong there:
    the tracepoint also fires for v1 hierarchies, and its ``root`` field (the hierarchy id, as
    in /proc/PID/cgroup) is 0 for v2. Its ``path`` is from the hierarchy's root, as the walk's
    paths are. ``hierarchy`` None (no cgroup v2 here) makes every id final with empty labels.
    ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        hierarchy: Hierarchy | None,
        *,
        kernel_path: Callable[[int], str | None] | None = None,
        kubelet: KubeletNames | None = None,
        runtimes: Sequence[ContainerRuntime] = (),
        capacity: int = 16384,
        negative_capacity: int = 4096,
        pending_capacity: int = 4096,
        walk_interval: float = 10.0,
        link_grace: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._hierarchy = hierarchy
        self._kernel_path = kernel_path
        self._kubelet = kubelet
        self._runtimes = tuple(runtimes)
        self._walk_interval = walk_interval
        self._link_grace = link_grace
        self._clock = clock
        self._paths: BoundedLRU[int, str] = BoundedLRU(capacity)
        self._labels: BoundedLRU[int, CgroupLabels] = BoundedLRU(capacity)
        self._negative: BoundedLRU[int, float] = BoundedLRU(negative_capacity)  # id → until
        # id (or a v1 path, path_labels) → when first asked
        self._pending: BoundedLRU[int | str, float] = BoundedLRU(pending_capacity)
        self._last_walk: float | None = None
        self._lock = threading.Lock()
        self._walks = 0
        self._walk_seconds = 0.0
        self._kernel_hits = 0
        self._walk_hits = 0
        self._not_found = 0

    # -- paths --

    def path(self, cgroup_id: int) -> str | None:
        """The cgroup path of an id, or None if it is not known (yet)."""
        with self._lock:
            return self._paths_of([cgroup_id]).get(cgroup_id)

    def _paths_of(self, ids: Iterable[int]) -> dict[int, str]:
        found: dict[int, str] = {}
        missing: set[int] = set()
        now = self._clock()
        for cgroup_id in ids:
            path = self._paths.get(cgroup_id)
            if path is None:
                until = self._negative.get(cgroup_id)
                if until is not None and until > now:
                    self._not_found += 1
                    continue
                if self._kernel_path is not None:
                    path = self._kernel_path(cgroup_id)
                    if path is not None:
                        self._kernel_hits += 1
                        self._paths.put(cgroup_id, path)
            if path is None:
                missing.add(cgroup_id)
            else:
                found[cgroup_id] = path
        if missing and self._hierarchy is not None:
            if self._walk_allowed(now):
                walked = self._walk(missing)
                self._walk_hits += len(walked)
                found.update(walked)
                missing -= walked.keys()
            next_walk = (self._last_walk or now) + self._walk_interval
            for cgroup_id in missing:
                self._negative.put(cgroup_id, next_walk)
            self._not_found += len(missing)
        return found

    @property
    def last_walk(self) -> float | None:
        """When the last walk of the tree started (the injected clock's time), or None."""
        return self._last_walk

    def _walk_allowed(self, now: float) -> bool:
        return self._last_walk is None or now - self._last_walk >= self._walk_interval

    def _walk(self, wanted: set[int]) -> dict[int, str]:
        """Index every cgroup of the tree; the wanted ids go into the cache last, so that a tree
        larger than the cache still keeps them."""
        assert self._hierarchy is not None
        started = time.perf_counter()
        self._last_walk = self._clock()
        found: dict[int, str] = {}
        for d in walk(self._hierarchy):
            if d.inode in wanted:
                found[d.inode] = d.path
            else:
                self._paths.offer(d.inode, d.path)
        for cgroup_id, path in found.items():
            self._paths.put(cgroup_id, path)
            self._negative.pop(cgroup_id)
        self._walks += 1
        self._walk_seconds += time.perf_counter() - started
        return found

    # -- labels --

    def labels(self, cgroup_id: int) -> CgroupLabels | None:
        """Final labels for an id, or None while they are not known (contract: module doc)."""
        return self.labels_many([cgroup_id])[cgroup_id]

    def names(self, cgroup_id: int) -> CgroupLabels:
        """Labels for a report (storm lines, ``top``, ``watch``): empty while not known."""
        return self.labels(cgroup_id) or EMPTY_LABELS

    def labels_many(self, ids: Iterable[int]) -> dict[int, CgroupLabels | None]:
        """:meth:`labels` for many ids with at most one walk: what a scrape calls."""
        ids = list(ids)
        with self._lock:
            answers: dict[int, CgroupLabels | None] = {}
            unlabelled = []
            for cgroup_id in ids:
                known = self._labels.get(cgroup_id)
                if known is not None or self._hierarchy is None:
                    answers[cgroup_id] = known or EMPTY_LABELS
                else:
                    unlabelled.append(cgroup_id)
            paths = self._paths_of(unlabelled) if unlabelled else {}
            now = self._clock()
            for cgroup_id in unlabelled:
                path = paths.get(cgroup_id)
                labels = None if path is None else self._labels_for(cgroup_id, path, now)
                if labels is not None:
                    self._labels.put(cgroup_id, labels)
                    self._pending.pop(cgroup_id)
                answers[cgroup_id] = labels
            return answers

    def path_labels(
        self, path: str, *, pod_level: bool = False, gone: bool = False
    ) -> CgroupLabels | None:
        """Final labels of a cgroup by its path alone, in any hierarchy (a runtime lays out a
        container in each controller's v1 tree as in v2: ``/docker/<id>``), or None while not
        known; the same rules as :meth:`labels`. ``pod_level``: a Kubernetes cgroup gets its
        pod's names only (where a pod's limits sit). ``gone``: the cgroup was removed, so no
        name will come later: a runtime's container not named by then gets its short id."""
        with self._lock:
            where = parse_cgroup_path(path)
            if where.kubernetes and pod_level:
                if not where.pod_uid or self._kubelet is None:
                    return EMPTY_LABELS
                pod = self._kubelet.pod(where.pod_uid)
                if pod is not None:
                    return CgroupLabels("", pod.namespace, pod.pod, "")
                return EMPTY_LABELS if gone else None
            labels = self._labels_for(path, path, self._clock(), gone=gone)
            if labels is not None:
                self._pending.pop(path)
            return labels

    def _labels_for(
        self, key: int | str, path: str, now: float, *, gone: bool = False
    ) -> CgroupLabels | None:
        """Labels of the cgroup at ``path``; ``key`` (its id, or its path) keeps the time it
        was first asked for while its names are awaited."""
        where = parse_cgroup_path(path)
        if not where.kubernetes:
            if self._runtimes:
                names = [n for n in decoded(path).split("/") if n]
                for runtime in self._runtimes:
                    container_id = runtime.container_id(names)
                    if container_id is not None:
                        return self._container_labels(key, runtime, container_id, now, gone)
            return CgroupLabels(unit=where.unit)
        if not where.pod_uid or self._kubelet is None:
            return EMPTY_LABELS
        if where.container_id:
            container = self._kubelet.container(where.container_id)
            if container is not None:
                return CgroupLabels("", container.namespace, container.pod, container.container)
        pod = self._kubelet.pod(where.pod_uid)
        if pod is not None and not where.container_id:
            return CgroupLabels("", pod.namespace, pod.pod, "")
        first = self._pending.get(key)
        if first is None:
            self._pending.put(key, now)
        elif now - first >= self._link_grace:
            # no link after the grace time: the sandbox, or a container logging elsewhere
            return CgroupLabels("", pod.namespace, pod.pod, "") if pod else EMPTY_LABELS
        return None

    def _container_labels(
        self,
        key: int | str,
        runtime: ContainerRuntime,
        container_id: str,
        now: float,
        gone: bool = False,
    ) -> CgroupLabels | None:
        """A runtime's container: its names, or its short id once ``link_grace`` has passed
        with no name on disk (never its scope as a unit: one per container, unbounded); at
        once for a ``gone`` cgroup (no name can come any more)."""
        labels = runtime.labels(container_id)
        if labels is not None:
            return labels
        if gone:
            return CgroupLabels(container=short_id(container_id))
        first = self._pending.get(key)
        if first is None:
            self._pending.put(key, now)
        elif now - first >= self._link_grace:
            return CgroupLabels(container=short_id(container_id))
        return None

    def sizes(self) -> dict[str, tuple[int, int]]:
        """Entries and capacity of each table, the kubelet's names included: what stays
        bounded under churn (procmond_table_entries)."""
        with self._lock:
            tables = {
                "cgroup_paths": self._paths,
                "cgroup_labels": self._labels,
                "cgroups_not_found": self._negative,
                "cgroups_awaiting_names": self._pending,
            }
            sizes = {name: (len(t), t.capacity) for name, t in tables.items()}
        if self._kubelet is not None:
            sizes.update(self._kubelet.sizes())
        for runtime in self._runtimes:
            sizes.update(runtime.sizes())
        return sizes

    def stats(self) -> ResolverStats:
        with self._lock:
            return ResolverStats(
                walks=self._walks,
                walk_seconds=self._walk_seconds,
                kernel_paths=self._kernel_hits,
                walk_paths=self._walk_hits,
                not_found=self._not_found,
                final_labels=len(self._labels),
                cached_paths=len(self._paths),
                negative=len(self._negative),
                pending=len(self._pending),
            )


class CgroupNamer:
    """What procmond/scrape/attribution.py asks of cgroups: labels with their finality, and
    whether a cgroup still exists (so that its kernel map entries can be given back).

    A cgroup exists while its directory is there with its id as inode (a re-created unit has
    the same path and a new id). An id whose path is unknown is gone once a walk that started
    after it was first asked about did not find it: the walk sees every live cgroup, and one
    made since then is in the probe's mkdir records.
    """

    def __init__(
        self,
        resolver: CgroupResolver,
        hierarchy: Hierarchy | None,
        clock: Callable[[], float] = time.monotonic,
        capacity: int = 16384,
    ) -> None:
        self._resolver = resolver
        self._hierarchy = hierarchy
        self._clock = clock
        # id → first asked, while its path is unknown; an id evicted is asked about afresh
        self._unplaced: BoundedLRU[int, float] = BoundedLRU(capacity)

    def labels(self, cgroup_id: int) -> tuple[tuple[str, ...], bool]:
        labels = self._resolver.labels(cgroup_id)
        return (tuple(EMPTY_LABELS), False) if labels is None else (tuple(labels), True)

    def alive(self, cgroup_id: int) -> bool | None:
        if self._hierarchy is None:
            return True  # no v2 ids to tell apart: nothing is ever reclaimed
        path = self._resolver.path(cgroup_id)
        if path is None:
            first = self._unplaced.get(cgroup_id)
            if first is None:
                first = self._clock()
                self._unplaced.put(cgroup_id, first)
            last_walk = self._resolver.last_walk
            if last_walk is not None and last_walk > first:
                self._unplaced.pop(cgroup_id)
                return False
            return None
        self._unplaced.pop(cgroup_id)
        try:
            inode = os.stat(self._hierarchy.directory(path), follow_symlinks=False).st_ino
        except OSError:
            return False
        return inode == cgroup_id

    def sizes(self) -> dict[str, tuple[int, int]]:
        """Entries and capacity of its table (procmond_table_entries)."""
        return {"cgroups_unplaced": (len(self._unplaced), self._unplaced.capacity)}


class PathRecords(Protocol):
    def cgroup_path(self, cgroup_id: int) -> str | None: ...


def recorded_paths(records: PathRecords) -> Callable[[int], str | None]:
    """The probe's cgroup_mkdir records (procmond.kernel.maps.MapReader.cgroup_path) as a
    ``kernel_path`` look-up: a map that cannot be read is no record."""

    def recorded_path(cgroup_id: int) -> str | None:
        try:
            return records.cgroup_path(cgroup_id)
        except OSError:
            return None

    return recorded_path


def host_namer(
    records: PathRecords | None, runtimes: Sequence[ContainerRuntime] = ()
) -> Callable[[int], CgroupLabels]:
    """cgroup id → labels for `watch` and `top`, which run without the daemon, named as the
    daemon names them: from the probe's mkdir records first, so that a cgroup made while
    they run is named from its first creation; else by a walk (at most every walk_interval).
    Ids not known (yet) get empty names."""
    layout = read_layout()
    resolver = CgroupResolver(
        layout.v2,
        kernel_path=recorded_paths(records) if records is not None else None,
        kubelet=KubeletNames(),
        runtimes=runtimes,
    )
    return resolver.names
