"""procmond's metrics about itself: the probe, the maps' fill, the cgroup tables, the scrape.

Small families, rendered by prometheus_client after the map families (in either format).
Each group is made apart, so one that raises is left out alone; ``procmond_scrape_success``
comes last, as it tells of every family left out before it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from procmond.config import Config
from procmond.kernel import privileges
from procmond.kernel.inventory import GONE_TASK_LIMIT_HITS, INFLIGHT
from procmond.kernel.maps import MapReader
from procmond.kernel.programs import run_stats
from procmond.naming.cgroups import CgroupLayout, CgroupNamer, CgroupResolver
from procmond.scrape.attribution import Attribution
from procmond.scrape.families import Encoder, render_families
from procmond.scrape.read import MapsRead, Scrape
from procmond.scrape.tasklimits import TaskLimits
from procmond.text import decoded

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeStatus:
    """What the loader achieved, for the self-metrics."""

    attached: dict[str, bool]
    btf_offsets: bool
    version: str
    bcc_version: str
    kernel: str
    programs: Mapping[str, int] = field(default_factory=dict)  # probe → program descriptor


class Cgroups(Protocol):
    """What the scrape needs of the daemon's cgroup wiring (procmond/lifecycle/sources.py)."""

    layout: CgroupLayout
    task_limits: TaskLimits
    attribution: Attribution | None  # None: no cgroup label is kept
    resolver: CgroupResolver
    namer: CgroupNamer | None


class LabelTextsSize(Sized, Protocol):
    limit: int


@dataclass(eq=False)  # registered as a collector: must stay hashable
class ReloadState:
    """What procmond_config_last_reload_* report, as Prometheus itself names them."""

    successful: bool = True
    success_time: float = 0.0

    def collect(self) -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily(
                "procmond_config_last_reload_successful",
                "1 if the last configuration load succeeded, else 0.",
                value=int(self.successful),
            ),
            GaugeMetricFamily(
                "procmond_config_last_reload_success_timestamp_seconds",
                "Unix time of the last successful configuration load.",
                value=self.success_time,
            ),
        ]


@dataclass(frozen=True)
class SelfMetrics:
    """The self-metric families of each scrape. ``texts``: the text renderer's label text
    cache, shown as one of the daemon's tables."""

    _reader: MapReader
    _config: Config
    _status: ProbeStatus
    _cgroups: Cgroups | None
    _texts: LabelTextsSize

    def encoded(
        self, read: MapsRead, scrape: Scrape, encode: Encoder, others: Iterable[Metric]
    ) -> bytes:
        """The self-metrics, then the families of the daemon's other collectors (reload
        state, storms, process), rendered by ``encode``: the others first, so that
        procmond_scrape_success tells of any of them left out."""
        own = self.families(read, scrape)  # made as they are rendered, after the others
        tail = render_families(others, encode, scrape.failed)
        return render_families(own, encode, scrape.failed) + tail

    def families(self, read: MapsRead, scrape: Scrape) -> Iterator[Metric]:
        """Map usage, probe status and cgroup families, each group made apart (one that
        raises is left out), then procmond_scrape_success and the scrape's duration."""
        groups: tuple[Callable[[], Iterable[Metric]], ...] = (
            lambda: self._map_families(read.entries, read.overflowed),
            self._status_families,
            self._cgroup_families,
        )
        for group, what in zip(groups, ("map usage", "status", "cgroup"), strict=True):
            try:
                families = list(group())
            except Exception as exc:
                scrape.failed(f"the {what} families", exc)
                continue
            yield from families
        yield GaugeMetricFamily(
            "procmond_scrape_success",
            "1 if every kernel map was read and every family rendered in this scrape, else 0.",
            value=int(scrape.ok),
        )
        yield GaugeMetricFamily(
            "procmond_scrape_duration_seconds",
            "Time spent reading the kernel maps for this scrape.",
            value=time.perf_counter() - scrape.started,
        )

    def _map_families(self, entries: dict[str, int], overflowed: dict[str, int]) -> list[Metric]:
        used = GaugeMetricFamily(
            "procmond_map_entries",
            "Entries (label sets) in use in each kernel map.",
            labels=["map"],
        )
        capacity = GaugeMetricFamily(
            "procmond_map_max_entries",
            "Capacity of each kernel map, from the config.",
            labels=["map"],
        )
        overflow = CounterMetricFamily(
            "procmond_map_overflow_events_total",
            "Events that found their kernel map full; counters count them under the "
            "__overflow__ label value; for inflight, fork-duration samples lost because the "
            "task's storage could not be allocated.",
            labels=["map"],
        )
        for name, count in sorted(entries.items()):
            used.add_metric([name], count)
            capacity.add_metric([name], self._reader.capacity(name))
            overflow.add_metric([name], overflowed.get(name, 0))
        if self._config.syscall_probes:  # per-task storage: no entries to count, no capacity
            overflow.add_metric([INFLIGHT], overflowed.get(INFLIGHT, 0))
        if self._cgroups is not None and self._cgroups.task_limits.pids is not None:
            gone = GONE_TASK_LIMIT_HITS  # removed cgroups' counts, taken at each scrape
            used.add_metric([gone], self._reader.entries(gone))
            capacity.add_metric([gone], self._reader.capacity(gone))
            overflow.add_metric([gone], overflowed.get(gone, 0))
        return [used, capacity, overflow]

    def _status_families(self) -> Iterator[Metric]:
        s = self._status
        info = GaugeMetricFamily(
            "procmond_build_info",
            "procmond's version, the BCC version and the running kernel.",
            labels=["version", "bcc_version", "kernel"],
        )
        info.add_metric([s.version, s.bcc_version, decoded(s.kernel)], 1)
        yield info
        probes = GaugeMetricFamily(
            "procmond_probe_attached",
            "1 if the probe on this tracepoint is attached, else 0.",
            labels=["probe"],
        )
        for name, attached in sorted(s.attached.items()):
            probes.add_metric([name], int(attached))
        yield probes
        yield from self._program_families()
        yield GaugeMetricFamily(
            "procmond_capabilities_retained",
            "Linux capabilities the daemon still holds (its permitted set): 0 once it has given "
            "them up after loading the probe; 1 (CAP_BPF) where the kernel needs it to read maps.",
            value=privileges.retained_count(),
        )
        yield GaugeMetricFamily(
            "procmond_btf_offsets_in_use",
            "1 if struct offsets come from the running kernel's BTF; 0 if from the installed "
            "kernel headers, which may not match the kernel.",
            value=int(s.btf_offsets),
        )

    def _program_families(self) -> Iterator[Metric]:
        runs = CounterMetricFamily(
            "procmond_bpf_program_runs",
            "Runs of the BPF program of each probe, counted by the kernel only while BPF "
            "statistics are enabled (sysctl kernel.bpf_stats_enabled=1).",
            labels=["probe"],
        )
        spent = CounterMetricFamily(
            "procmond_bpf_program_run_seconds",
            "Time spent in the BPF program of each probe, counted by the kernel only while BPF "
            "statistics are enabled (sysctl kernel.bpf_stats_enabled=1).",
            labels=["probe"],
        )
        for name, fd in sorted(self._status.programs.items()):
            try:
                stats = run_stats(fd)
            except OSError as exc:
                log.error("cannot read the run statistics of the %s program: %s", name, exc)
                continue
            if stats is not None:
                runs.add_metric([name], stats.runs)
                spent.add_metric([name], stats.run_ns / 1e9)
        yield runs
        yield spent

    def _cgroup_families(self) -> Iterator[Metric]:
        cgroups = self._cgroups
        if cgroups is None:
            return
        layout = cgroups.layout
        info = GaugeMetricFamily(
            "procmond_cgroup_info",
            "The host's cgroup layout (unified, hybrid, legacy or none) and where cgroup v2 is; "
            "without v2 (legacy) the unit, namespace, pod and container labels stay empty.",
            labels=["layout", "v2_mount"],
        )
        info.add_metric([layout.kind, decoded(str(layout.v2.mount_point)) if layout.v2 else ""], 1)
        yield info
        yield self._task_limit_family(cgroups.task_limits)
        yield from self._table_families(cgroups)
        if cgroups.attribution is not None:
            yield CounterMetricFamily(
                "procmond_cgroup_entries_reclaimed_total",
                "Kernel counter entries of cgroups that are gone, given back to the maps after "
                "their counts were folded into the daemon (nothing is lost).",
                value=cgroups.attribution.reclaimed,
            )

    @staticmethod
    def _task_limit_family(task_limits: TaskLimits) -> Metric:
        """Task-limit hits, from procmond/scrape/tasklimits.py's reading at this scrape."""
        hits = CounterMetricFamily(
            "procmond_task_limit_hits_total",
            "Forks refused because a cgroup reached its task limit (pids.max: systemd TasksMax, "
            "a pod's or a container's pids limit), by that cgroup's systemd unit, Kubernetes "
            "pod or container, as the kernel's pids controller counts them (pids.events).",
            labels=["unit", "namespace", "pod", "container"],
        )
        try:
            for labels, count in sorted(task_limits.collect().items()):
                hits.add_metric(list(labels), count)
        except OSError as exc:
            log.error("cannot read the pids controller's counts: %s", exc)
        return hits

    def _table_families(self, cgroups: Cgroups) -> Iterator[Metric]:
        """The daemon's own tables of cgroups and label sets, and their caps from the config:
        what keeps its memory fixed whatever the churn."""
        sizes = {"label_texts": (len(self._texts), self._texts.limit)}
        sizes.update(cgroups.resolver.sizes())
        if cgroups.namer is not None:
            sizes.update(cgroups.namer.sizes())
        if cgroups.attribution is not None:
            sizes.update(cgroups.attribution.sizes())
        entries = GaugeMetricFamily(
            "procmond_table_entries",
            "Entries in each of the daemon's tables of cgroups, names and label sets.",
            labels=["table"],
        )
        capacity = GaugeMetricFamily(
            "procmond_table_max_entries",
            "Capacity of each of the daemon's tables, from the config's max_entries.",
            labels=["table"],
        )
        for table, (used, cap) in sorted(sizes.items()):
            entries.add_metric([table], used)
            capacity.add_metric([table], cap)
        yield entries
        yield capacity
