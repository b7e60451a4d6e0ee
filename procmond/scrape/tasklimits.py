"""Task-limit hits by systemd unit, Kubernetes pod or container, from the pids controller's
own count.

When a fork is refused because a cgroup reached its ``pids.max`` (systemd's ``TasksMax``, a
pod's pids limit, ``docker run --pids-limit``), the kernel counts it in ``pids.events``
(``max N``). Reading those files at scrape time costs no probe, and says which unit, pod or
container hit its limit. The cgroups are named by their paths in the pids hierarchy, through
procmond.naming.cgroups (``CgroupResolver.path_labels``): runtimes lay a container out there as
in v2 (``/docker/<id>``, ``/libpod_parent/libpod-<id>``), so a container gets its name.

Where the count lands differs by hierarchy, and this module reads the file that counts each
refusal once:

* v1 (hybrid and legacy hosts): ``pids.events`` of the cgroup of the task whose fork failed.
* v2 since Linux 6.13: ``pids.events`` is hierarchical (the cgroup whose limit was hit and
  all its ancestors); ``pids.events.local`` counts at the cgroup whose limit was hit only.
  It is read where it exists; before 6.13, ``pids.events`` itself was that local count.

Summing those per cgroup by labels gives :class:`TaskLimitLabels` totals. A cgroup that is
removed takes its count with it, which would make a sum go down; :class:`TaskLimitCounter`
instead keeps totals that only grow: per cgroup (path and inode, so a re-created cgroup is a
new one) it remembers the last value and adds what changed to its labels' total.

What a cgroup counted after the last scrape and before its removal (a restarted unit, a
finished container) is no longer in any file: the probe reads it from the kernel's pids state
as the cgroup is removed (``on_cgroup_rmdir``, the count pids.events showed, chosen by
procmond.kernel.mounts.shown_pids_event) into ``gone_task_limit_hits``, and the next scrape takes
those entries and folds them as the cgroups' last readings. Removed cgroups the probe could not keep
(that map full) count under ``unit="__overflow__"``. Suggested metric::

    # HELP procmond_task_limit_hits_total Forks refused because a cgroup reached its task limit
    #   (pids.max: systemd TasksMax, a pod's pids limit), by the systemd unit, Kubernetes pod
    #   or container of that cgroup, as counted by the kernel's pids controller (pids.events).
    # TYPE procmond_task_limit_hits_total counter
    procmond_task_limit_hits_total{unit="cron.service",namespace="",pod="",container=""} 3
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from procmond.kernel.maps import GonePidsCgroup
from procmond.naming.cgroups import CgroupLayout, Hierarchy, parse_cgroup_path, walk
from procmond.naming.labels import CgroupLabels
from procmond.scrape.metrics import OVERFLOW_LABEL_VALUE

log = logging.getLogger(__name__)

EVENTS = "pids.events"
EVENTS_LOCAL = "pids.events.local"
LIMIT = "pids.max"
CURRENT = "pids.current"


@dataclass(frozen=True)
class PidsHierarchy:
    """Where the pids controller's files are: a v1 pids hierarchy, or cgroup v2."""

    hierarchy: Hierarchy
    version: int  # 1 or 2


def find_pids_hierarchy(layout: CgroupLayout) -> PidsHierarchy | None:
    """The v1 pids hierarchy if pids is bound there, else cgroup v2 if it offers pids."""
    if layout.pids_v1 is not None:
        return PidsHierarchy(layout.pids_v1, 1)
    if layout.v2 is not None:
        try:
            controllers = (layout.v2.mount_point / "cgroup.controllers").read_text().split()
        except OSError:
            return None
        if "pids" in controllers:
            return PidsHierarchy(layout.v2, 2)
    return None


def parse_pids_events(text: str) -> int:
    """The ``max`` count of a pids.events text ("max 3\\n"; newer kernels may add lines)."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "max":
            return int(value)
    raise ValueError(f"no 'max' line in pids.events: {text!r}")


def parse_pids_value(text: str) -> int | None:
    """pids.max or pids.current: a number, or None for "max" (no limit)."""
    text = text.strip()
    return None if text == "max" else int(text)


@dataclass(frozen=True)
class PidsReading:
    path: str  # the cgroup's path inside its hierarchy
    inode: int  # tells a re-created cgroup of the same path from the old one
    refused: int  # forks refused (the "max" count, see the module docstring)
    limit: int | None = None  # pids.max (None: no limit, or not read)
    current: int | None = None  # pids.current (hierarchical), if read


def _read(directory: str, name: str) -> str:
    """A small cgroup file; os.open/os.read take half the time of open() here (benchmarks/)."""
    fd = os.open(directory + "/" + name, os.O_RDONLY)
    try:
        return os.read(fd, 4096).decode()
    finally:
        os.close(fd)


def read_pids(pids: PidsHierarchy, *, limits: bool = False) -> list[PidsReading]:
    """Every cgroup's refused-fork count (and its pids.max and pids.current with ``limits``).

    The root has no pids files; a cgroup removed between listing and reading is skipped.
    """
    wanted = frozenset({EVENTS, EVENTS_LOCAL, LIMIT, CURRENT})
    readings = []
    for d in walk(pids.hierarchy, wanted):
        events = EVENTS_LOCAL if EVENTS_LOCAL in d.files else EVENTS
        if events not in d.files:
            continue
        try:
            refused = parse_pids_events(_read(d.directory, events))
            limit = current = None
            if limits:
                limit = parse_pids_value(_read(d.directory, LIMIT))
                current = parse_pids_value(_read(d.directory, CURRENT))
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            log.warning("cannot read the pids files of %s: %s", d.directory, exc)
            continue
        readings.append(PidsReading(d.path, d.inode, refused, limit, current))
    return readings


# ---- labels and monotonic totals ----------------------------------------------------------------


TaskLimitLabels = CgroupLabels  # unit, namespace, pod, container

EMPTY = TaskLimitLabels()
OVERFLOW = TaskLimitLabels(unit=OVERFLOW_LABEL_VALUE)


class PathNames(Protocol):
    """What the labels need of procmond.naming.cgroups.CgroupResolver."""

    def path_labels(
        self, path: str, *, pod_level: bool = False, gone: bool = False
    ) -> CgroupLabels | None: ...


Labeller = Callable[[str, bool], tuple[TaskLimitLabels, bool]]


def labeller(names: PathNames | None) -> Labeller:
    """(path, gone) → (labels, final): a pod or container whose names are not on disk yet gets
    empty labels for now; without ``names``, only the path's unit.

    A pod's pids limit is on the pod's cgroup, so (namespace, pod) is the level to name there;
    its container is left out (on v1 a refusal counts at the forking container, and one series
    per container would be redundant with the forks metrics). A runtime's container outside
    Kubernetes (``docker run --pids-limit``) has its limit on its own cgroup: it is named by
    ``container`` (and a Podman pod's ``pod``), its scope never a unit.
    """

    def labels_of(path: str, gone: bool = False) -> tuple[TaskLimitLabels, bool]:
        if names is None:
            return TaskLimitLabels(unit=parse_cgroup_path(path).unit), True
        labels = names.path_labels(path, pod_level=True, gone=gone)
        return (EMPTY, False) if labels is None else (labels, True)

    return labels_of


@dataclass
class _Cgroup:
    inode: int
    last: int = 0
    labels: TaskLimitLabels = EMPTY
    final: bool = False


@dataclass
class _Total:
    value: int = 0
    live: bool = False  # some cgroup with these labels was seen at the last update
    last_live: int = 0  # the update at which it was last seen (for eviction order)


class TaskLimitCounter:
    """Per-label totals of refused forks that only grow, across removed and re-made cgroups.

    * Per cgroup instance (path + inode) the last value read; what it grew by since is added to
      its labels' total. A cgroup seen for the first time adds its whole count (the kernel
      counted it, and the counter exposed starts there).
    * A cgroup's labels are fixed once final; while its pod's names are unknown its growth
      goes to the empty labels, and only later growth to the pod's (nothing ever moves).
    * Bounded: cgroups not in the last reading are forgotten; label sets with no cgroup left
      are dropped when their total is 0, and otherwise kept (their series stays, flat) until
      ``max_label_sets`` is reached, when the one gone longest makes room. When every kept set
      is still in use, new ones count under ``unit="__overflow__"``.
    """

    def __init__(
        self,
        labels_of: Labeller,
        *,
        max_label_sets: int = 1024,
    ) -> None:
        if max_label_sets < 2:
            raise ValueError(f"max_label_sets must be at least 2, not {max_label_sets}")
        self._labels_of = labels_of
        self._max = max_label_sets
        self._cgroups: dict[str, _Cgroup] = {}
        self._totals: dict[TaskLimitLabels, _Total] = {}
        self._updates = 0

    def state(self) -> dict[str, Any]:
        """What a restart keeps (procmond/lifecycle/state.py): each cgroup's last reading and
        every label set's total."""
        return {
            "cgroups": [
                [path, c.inode, c.last, list(c.labels), c.final]
                for path, c in self._cgroups.items()
            ],
            "totals": [[list(k), t.value, t.live, t.last_live] for k, t in self._totals.items()],
            "updates": self._updates,
        }

    def restore(self, data: dict[str, Any]) -> None:
        """``state()`` of the daemon before (label sets saved before the container label was
        added have three values: the container is empty)."""
        self._cgroups = {
            path: _Cgroup(int(inode), int(last), TaskLimitLabels(*labels), bool(final))
            for path, inode, last, labels, final in data["cgroups"]
        }
        self._totals = {
            TaskLimitLabels(*k): _Total(int(v), bool(live), int(last_live))
            for k, v, live, last_live in data["totals"]
        }
        self._updates = int(data["updates"])

    def update(
        self,
        readings: Iterable[PidsReading],
        removed: Iterable[PidsReading] = (),
        lost: int = 0,
    ) -> None:
        """Fold a reading of the live cgroups, then the last readings of ``removed`` ones (taken
        after the live ones: a cgroup removed while they were read is in both, and its final
        count wins), and ``lost`` refused forks of removed cgroups that could not be kept."""
        previous = self._cgroups
        self._update_live(readings)
        for r in removed:
            path = r.path or self._path_of(r.inode, previous)
            cgroup = self._cgroups.pop(path, None)
            if cgroup is None or cgroup.inode != r.inode:
                cgroup = previous.get(path)
            if cgroup is None or cgroup.inode != r.inode:
                cgroup = _Cgroup(r.inode)
            if not cgroup.final:
                cgroup.labels = self._labels_of(path, True)[0] if path else EMPTY
            self._add(cgroup, r.refused, self._slot(cgroup.labels))
        if lost:
            self._slot(OVERFLOW)
            self._totals[OVERFLOW].value += lost
        for labels in [k for k, t in self._totals.items() if not t.live and t.value == 0]:
            del self._totals[labels]

    def _path_of(self, inode: int, previous: dict[str, _Cgroup]) -> str:
        """The path a read saw the cgroup of this inode at, or UNKNOWN_PATH (then its count goes
        to the empty labels: unnamed, but counted)."""
        for cgroups in (self._cgroups, previous):
            for path, cgroup in cgroups.items():
                if cgroup.inode == inode:
                    return path
        return UNKNOWN_PATH

    def _add(self, cgroup: _Cgroup, refused: int, labels: TaskLimitLabels) -> None:
        """What ``cgroup`` refused since its last reading, to ``labels``' total."""
        total = self._totals[labels]
        total.value += refused - cgroup.last if refused >= cgroup.last else refused
        cgroup.last = refused

    def _update_live(self, readings: Iterable[PidsReading]) -> None:
        self._updates += 1
        current: list[tuple[PidsReading, _Cgroup, TaskLimitLabels]] = []
        for r in readings:
            cgroup = self._cgroups.get(r.path)
            if cgroup is None or cgroup.inode != r.inode:
                cgroup = _Cgroup(r.inode)
            labels = cgroup.labels
            if not cgroup.final:
                labels, cgroup.final = self._labels_of(r.path, False)
            current.append((r, cgroup, labels))
        # Mark what is in use before making room, so that room is only taken from gone sets.
        for total in self._totals.values():
            total.live = False
        for _r, _cgroup, labels in current:
            if labels in self._totals:
                self._totals[labels].live = True
        self._cgroups = {}
        for r, cgroup, labels in current:
            cgroup.labels = self._slot(labels)
            self._add(cgroup, r.refused, cgroup.labels)
            total = self._totals[cgroup.labels]
            total.live = True
            total.last_live = self._updates
            self._cgroups[r.path] = cgroup

    def _slot(self, labels: TaskLimitLabels) -> TaskLimitLabels:
        """The labels to count under: these, or the overflow set when no room can be made."""
        if labels in self._totals:
            return labels
        if len(self._totals) >= self._max - 1:  # one place stays for the overflow set
            gone = [(t.last_live, k) for k, t in self._totals.items() if not t.live]
            if not gone:
                self._totals.setdefault(OVERFLOW, _Total(live=True))
                return OVERFLOW
            del self._totals[min(gone)[1]]
        self._totals[labels] = _Total(live=True)
        return labels

    def totals(self) -> dict[TaskLimitLabels, int]:
        """Every label set's total: those with a cgroup now, and gone ones kept (see above)."""
        return {labels: t.value for labels, t in self._totals.items()}


class GoneCgroups(NamedTuple):
    """What the probe kept of cgroups removed since the last take (procmond/kernel/maps.py)."""

    readings: list[PidsReading]  # each removed cgroup's final count
    lost: int  # refused forks of removed cgroups the probe had no room for, since it started


UNKNOWN_PATH = ""  # a removed cgroup whose recorded path cannot be trusted


def gone_reading(gone: GonePidsCgroup) -> PidsReading:
    """A removed cgroup's final count, as the probe recorded it, with its path from the
    hierarchy's root (decoded as the walk decodes directory names). A path the probe's buffer
    cut short is not the cgroup's: it becomes UNKNOWN_PATH, and the count is placed by the
    cgroup's id (TaskLimitCounter.update), never under a wrong name."""
    path = gone.path.decode("utf-8", "surrogateescape")
    return PidsReading(UNKNOWN_PATH if gone.truncated else path, gone.cgroup_id, gone.hits)


class GoneSource(Protocol):
    """What gone_cgroups() needs of procmond.kernel.maps.MapReader."""

    def take_gone_pids_cgroups(self) -> tuple[list[GonePidsCgroup], int]: ...


def gone_cgroups(reader: GoneSource) -> Callable[[], GoneCgroups]:
    """The probe's counts of removed cgroups, taken from its map at each call."""

    def take() -> GoneCgroups:
        gone, lost = reader.take_gone_pids_cgroups()
        return GoneCgroups([gone_reading(entry) for entry in gone], lost)

    return take


class TaskLimits:
    """The scrape-time edge: read the pids hierarchy, take the probe's counts of cgroups
    removed since (``gone``, None without the probe), update the totals, return them.
    ``names`` (the daemon's CgroupResolver) names pods and containers; without, units only."""

    def __init__(
        self,
        pids: PidsHierarchy | None,
        names: PathNames | None = None,
        *,
        max_label_sets: int = 1024,
        gone: Callable[[], GoneCgroups] | None = None,
    ) -> None:
        self.pids = pids
        self.counter = TaskLimitCounter(labeller(names), max_label_sets=max_label_sets)
        self._gone = gone
        self._lost = 0

    def state(self) -> dict[str, Any]:
        """The totals and the probe's lost-count baseline, for procmond/lifecycle/state.py."""
        return {**self.counter.state(), "lost": self._lost}

    def restore(self, data: dict[str, Any]) -> None:
        """``state()`` of the daemon before (or of a retired probe's: its overflow counts are
        carried into this probe's, so its lost-count baseline holds here too)."""
        self.counter.restore(data)
        self._lost = int(data["lost"])

    def collect(self) -> dict[TaskLimitLabels, int]:
        if self.pids is not None:
            readings = read_pids(self.pids)
            gone = self._take_gone()
            self.counter.update(readings, gone.readings, gone.lost - self._lost)
            self._lost = gone.lost
        return self.counter.totals()

    def _take_gone(self) -> GoneCgroups:
        """The probe's counts of removed cgroups; none this time if its map cannot be read
        (what was not taken is taken at the next scrape)."""
        if self._gone is None:
            return GoneCgroups([], self._lost)
        try:
            return self._gone()
        except Exception as exc:  # a map read: OSError, or a layout that does not fit
            log.error("cannot take the task-limit hits of removed cgroups: %s", exc)
            return GoneCgroups([], self._lost)
