"""The prometheus_client custom collector: kernel maps → metric families, at scrape time.

Nothing is copied in the background: every scrape reads the maps afresh, so what Prometheus
sees is what the kernel counted. A map that cannot be read, or a family that cannot be
rendered, is left out of the scrape: ``procmond_scrape_success 0`` and one log line (again
only after it recovered), never a failed scrape. No ``bcc`` here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from procmond.config import Config
from procmond.kernel import privileges
from procmond.kernel.maps import Histogram, MapReader
from procmond.kernel.programs import run_stats
from procmond.naming.cgroups import CgroupLayout, CgroupNamer, CgroupResolver
from procmond.scrape.attribution import Attribution, Row, Shown
from procmond.scrape.exposition import (
    Collector,
    Encoder,
    Extra,
    Families,
    LabelTexts,
    families_of,
    render_counter,
    render_families,
    render_histogram,
)
from procmond.scrape.metrics import (
    OVERFLOW_LABEL_VALUE,
    CounterMetric,
    HistogramMetric,
    counter_fields,
    counters,
    cumulative_buckets,
    histograms,
    label_names,
    label_sets_budget,
    label_value,
)
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


@dataclass
class CgroupSources:
    """Where the cgroup labels come from, and the pids controller's refused forks."""

    layout: CgroupLayout
    task_limits: TaskLimits
    attribution: Attribution | None  # None: no cgroup label is kept
    resolver: CgroupResolver  # cgroup id → labels, for attribution and storm reports
    namer: CgroupNamer | None = None  # whether cgroups are gone, for attribution


def labelled(
    rows: Iterable[tuple[Row, object]], fields: tuple[str, ...], names: tuple[str, ...]
) -> dict[tuple[str, ...], object]:
    """Rows of ``fields`` keyed by their label values for ``names``, summing rows that decode
    alike (distinct byte strings can give one label value: invalid UTF-8 becomes U+FFFD; a
    duplicate series would make the exposition invalid), which keeps every series monotonic."""
    series = series_of(fields, names)
    out: dict[tuple[str, ...], object] = {}
    for row, value in rows:
        _merge(out, series(row), value)
    return out


def series_of(fields: tuple[str, ...], names: tuple[str, ...]) -> Callable[[Row], tuple[str, ...]]:
    """Row of ``fields`` → the label values of its series (see ``labelled``)."""
    keep = tuple(fields.index(n) for n in names)
    return lambda row: tuple(label_value(row[i]) for i in keep)


@dataclass(frozen=True)
class _Taker:
    """One counter map, as procmond/scrape/attribution.py takes entries from it."""

    reader: MapReader
    spec: CounterMetric

    def take(self, raw_key: bytes) -> int | None:
        return self.reader.take(self.spec.map_name, raw_key)


def _merge(out: dict[tuple[str, ...], object], labels: tuple[str, ...], value: object) -> None:
    """Add ``value`` (a count or a Histogram) to ``out[labels]``. With labels dropped, or a
    process really named ``__overflow__``, several sources share one series."""
    previous = out.get(labels)
    out[labels] = value if previous is None else previous + value  # type: ignore[operator]


@dataclass
class Snapshot:
    """One read of every kernel map, with rows keyed by decoded label values (collect())."""

    counters: list[tuple[CounterMetric, tuple[str, ...], dict[tuple[str, ...], int]]]
    histograms: list[tuple[HistogramMetric, tuple[str, ...], dict[tuple[str, ...], Histogram]]]
    entries: dict[str, int]
    overflowed: dict[str, int]
    ok: bool
    started: float
    failing: set[str] = field(default_factory=set)  # maps and families left out


@dataclass(frozen=True)
class _Placement:
    """How one counter map's rows are labelled in this scrape: ``resolve`` places a kernel
    entry (procmond/scrape/attribution.py, or its decoded key as is), ``extra(live, live_series)``
    gives the rows that are not kernel entries (folded label sets, __overflow__), once every
    entry is placed: ``live_series`` series show them, ``live`` tells a row of one of those."""

    fields: tuple[str, ...]
    names: tuple[str, ...]
    resolve: Callable[[bytes, int], Shown | None]
    extra: Extra


class ProcmondCollector:
    """Yields procmond's families; register it on a private CollectorRegistry.

    ``collect()`` is the prometheus_client path (OpenMetrics, tests); ``render_text()`` gives
    the same samples in the text format, rendering the map families itself from raw map rows
    and the label text cache (see procmond/scrape/exposition.py). Both place each row the same way.
    """

    def __init__(
        self,
        reader: MapReader,
        config: Config,
        status: ProbeStatus,
        cgroups: CgroupSources | None = None,
    ) -> None:
        self._reader = reader
        self._config = config
        self._status = status
        self._cgroups = cgroups
        self._attribution = cgroups.attribution if cgroups else None
        self._texts = LabelTexts(label_sets_budget(config))
        self.last_series: int | None = None  # series read from the maps at the last scrape
        self._failing: set[str] = set()  # left out of the last scrape: logged already

    def describe(self) -> Iterable[Metric]:
        return []  # families depend on the config; a private registry needs no description

    def _start(self) -> Snapshot:
        snap = Snapshot([], [], {}, {}, True, time.perf_counter())
        try:
            snap.overflowed = self._reader.overflow_events()
        except Exception as exc:
            self._failed(snap, "map overflow_events", exc)
        if self._attribution is not None:
            self._attribution.start_scrape()
        return snap

    def snapshot(self) -> Snapshot:
        snap = self._start()
        for counter in counters(self._config):
            try:
                snap.counters.append(self._counter_rows(counter, snap))
            except Exception as exc:
                self._failed(snap, f"map {counter.map_name}", exc)
        if self._attribution is not None:
            self._attribution.forget_unused()
        for hist in histograms(self._config):
            try:
                snap.histograms.append(self._histogram_rows(hist, snap))
            except Exception as exc:
                self._failed(snap, f"map {hist.map_name}", exc)
        self.last_series = sum(len(rows) for _, _, rows in snap.counters) + sum(
            len(rows) * (len(spec.bucket_exponents) + 3) for spec, _, rows in snap.histograms
        )
        return snap

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        yield from self._families(snap)
        self._end(snap)

    def render(self, encode: Encoder, others: Iterable[Collector] = ()) -> bytes:
        """Every family of this collector, then of ``others``, rendered by prometheus_client's
        ``encode`` (OpenMetrics) one family at a time: one that fails is left out, the others
        still render."""
        snap = self.snapshot()
        failed = self._reporter(snap)
        tail = render_families(families_of(others, failed), encode, failed)
        out = render_families(self._families(snap), encode, failed)
        self._end(snap)
        return out + tail + encode(Families([]))

    def _families(self, snap: Snapshot) -> Iterator[Metric]:
        for spec, names, rows in snap.counters:
            family = CounterMetricFamily(spec.name, spec.documentation, labels=names)
            for labels, value in sorted(rows.items()):
                family.add_metric(labels, value)
            yield family
        for hspec, names, hrows in snap.histograms:
            hfamily = HistogramMetricFamily(hspec.name, hspec.documentation, labels=names)
            for labels, hist in sorted(hrows.items()):
                hfamily.add_metric(
                    list(labels),
                    cumulative_buckets(hist, hspec.bucket_exponents),
                    sum_value=hist.sum_ns / 1e9,
                )
            yield hfamily
        yield from self._small_families(snap)

    def render_text(self, others: Iterable[Collector] = ()) -> bytearray:
        """The text exposition (format 0.0.4) of everything ``collect()`` yields, then the
        families of ``others``, in the one buffer it was written into: a copy of ~1 MB would
        cost a scrape its time and page faults. A family that fails is left out (see
        ``render``)."""
        snap = self._start()
        failed = self._reporter(snap)
        tail = render_families(families_of(others, failed), generate_latest, failed)
        out = bytearray()
        series = 0
        for counter in counters(self._config):
            mark = len(out)
            try:
                series += self._render_counter(out, counter, snap)
            except Exception as exc:
                del out[mark:]
                self._failed(snap, f"map {counter.map_name}", exc)
            self._texts.trim()
        if self._attribution is not None:
            self._attribution.forget_unused()
        for hist in histograms(self._config):
            mark = len(out)
            try:
                label_sets = self._render_histogram(out, hist, snap)
                series += label_sets * (len(hist.bucket_exponents) + 3)
            except Exception as exc:
                del out[mark:]
                self._failed(snap, f"map {hist.map_name}", exc)
            self._texts.trim()
        self.last_series = series
        out += render_families(self._small_families(snap), generate_latest, failed)
        out += tail
        self._end(snap)
        return out

    def _small_families(self, snap: Snapshot) -> Iterator[Metric]:
        """The self-metrics, each group made apart (one that raises is left out), then
        procmond_scrape_success, which tells of every family left out before it."""
        groups: tuple[Callable[[], Iterable[Metric]], ...] = (
            lambda: self._map_families(snap.entries, snap.overflowed),
            self._status_families,
            self._cgroup_families,
        )
        for group, what in zip(groups, ("map usage", "status", "cgroup"), strict=True):
            try:
                families = list(group())
            except Exception as exc:
                self._failed(snap, f"the {what} families", exc)
                continue
            yield from families
        yield GaugeMetricFamily(
            "procmond_scrape_success",
            "1 if every kernel map was read and every family rendered in this scrape, else 0.",
            value=int(snap.ok),
        )
        yield GaugeMetricFamily(
            "procmond_scrape_duration_seconds",
            "Time spent reading the kernel maps for this scrape.",
            value=time.perf_counter() - snap.started,
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

    def _failed(self, snap: Snapshot, what: str, exc: Exception) -> None:
        """``what`` (a map, a family) is left out of this scrape: scrape_success 0, and one
        log line, unless it was left out of the last scrape too (no line per scrape)."""
        snap.ok = False
        snap.failing.add(what)
        if what not in self._failing:
            reason = str(exc)  # prometheus_client appends the whole family to its errors
            reason = reason if len(reason) <= 300 else reason[:300] + "..."
            log.error("%s left out of the scrape: %s: %s", what, type(exc).__name__, reason)

    def _reporter(self, snap: Snapshot) -> Callable[[str, Exception], None]:
        return lambda what, exc: self._failed(snap, what, exc)

    def _end(self, snap: Snapshot) -> None:
        self._failing = snap.failing

    def _placement(self, spec: CounterMetric, snap: Snapshot) -> _Placement:
        name = spec.map_name
        overflow = snap.overflowed.get(name, 0)
        attribution = self._attribution if self._config.cgroup_labels else None
        rest = tuple(f for f in spec.key_fields if f != "cgroup_id")
        if attribution is None:  # cgroup ids are zero (no cgroup label) or not resolved
            fields = rest
            decode = self._reader.decoder(name, fields)

            def resolve(raw: bytes, count: int) -> Shown | None:
                return Shown(decode(raw), count, True)

            def extra(live: Callable[[Row], bool], live_series: int) -> list[tuple[Row, int]]:
                return [((OVERFLOW_LABEL_VALUE,) * len(fields), overflow)] if overflow else []

        else:
            fields = counter_fields(spec, self._config)
            decode_key = self._reader.decoder(name, ("cgroup_id", *rest))
            taker = _Taker(self._reader, spec)

            def resolve(raw: bytes, count: int) -> Shown | None:
                cgroup_id, *values = decode_key(raw)
                return attribution.entry(name, raw, cgroup_id, tuple(values), count, taker)  # type: ignore[arg-type]

            def extra(live: Callable[[Row], bool], live_series: int) -> list[tuple[Row, int]]:
                attribution.end_map(name)
                rows = list(attribution.folded(name, live, live_series).items())
                if overflow:
                    rows.append(((OVERFLOW_LABEL_VALUE,) * len(fields), overflow))
                return rows

        return _Placement(fields, label_names(fields, self._config), resolve, extra)

    def _render_counter(self, out: bytearray, spec: CounterMetric, snap: Snapshot) -> int:
        placement = self._placement(spec, snap)
        rows = self._reader.raw(spec.map_name)
        snap.entries[spec.map_name] = rows.count
        texts = self._texts.of(spec.map_name, placement.fields, placement.names)
        texts.follow(rows)
        if self._attribution is not None and self._config.cgroup_labels:
            # A gone cgroup's entries are about to be folded: none may show plainly now.
            ids = self._reader.field_values(spec.map_name, rows, "cgroup_id")
            gone = self._attribution.gone(ids)
            if gone:
                for i in self._reader.rows_where(spec.map_name, rows, "cgroup_id", gone):
                    texts.forget(i)
        return render_counter(out, spec, rows, texts, placement.resolve, placement.extra)

    def _counter_rows(
        self, spec: CounterMetric, snap: Snapshot
    ) -> tuple[CounterMetric, tuple[str, ...], dict[tuple[str, ...], int]]:
        placement = self._placement(spec, snap)
        rows = self._reader.raw(spec.map_name)
        snap.entries[spec.map_name] = rows.count
        placed: list[tuple[Row, object]] = []
        for raw, value in rows.entries():
            shown = placement.resolve(raw, value)
            if shown is not None:
                placed.append((shown.labels, shown.count))
        series = series_of(placement.fields, placement.names)
        live = {series(labels) for labels, _ in placed}
        placed += placement.extra(lambda labels: series(labels) in live, len(live))
        return spec, placement.names, labelled(placed, placement.fields, placement.names)  # type: ignore[return-value]

    def _render_histogram(self, out: bytearray, spec: HistogramMetric, snap: Snapshot) -> int:
        fields = spec.key_fields
        names = label_names(fields, self._config)
        entries = self._reader.histogram_entries(spec.map_name)
        snap.entries[spec.map_name] = len(entries)
        overflow = self._reader.overflow_histogram(spec.map_name)
        return render_histogram(
            out,
            spec,
            entries,
            self._texts.of(spec.map_name, fields, names),
            self._reader.decoder(spec.map_name, fields),
            ((OVERFLOW_LABEL_VALUE,) * len(fields), overflow) if overflow.count else None,
        )

    def _histogram_rows(
        self, spec: HistogramMetric, snap: Snapshot
    ) -> tuple[HistogramMetric, tuple[str, ...], dict[tuple[str, ...], Histogram]]:
        fields = spec.key_fields
        names = label_names(fields, self._config)
        entries = self._reader.histogram_entries(spec.map_name)
        snap.entries[spec.map_name] = len(entries)
        decode = self._reader.decoder(spec.map_name, fields)
        placed: list[tuple[Row, object]] = [(decode(raw), hist) for raw, hist in entries]
        overflow = self._reader.overflow_histogram(spec.map_name)
        if overflow.count:
            placed.append(((OVERFLOW_LABEL_VALUE,) * len(fields), overflow))
        return spec, names, labelled(placed, fields, names)  # type: ignore[return-value]

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
            overflow.add_metric(["inflight"], overflowed.get("inflight", 0))
        if self._cgroups is not None and self._cgroups.task_limits.pids is not None:
            gone = "gone_task_limit_hits"  # removed cgroups' counts, taken at each scrape
            used.add_metric([gone], self._reader.entries(gone))
            capacity.add_metric([gone], self._reader.capacity(gone))
            overflow.add_metric([gone], overflowed.get(gone, 0))
        return [used, capacity, overflow]

    def _cgroup_families(self) -> Iterator[Metric]:
        if self._cgroups is None:
            return
        layout = self._cgroups.layout
        info = GaugeMetricFamily(
            "procmond_cgroup_info",
            "The host's cgroup layout (unified, hybrid, legacy or none) and where cgroup v2 is; "
            "without v2 (legacy) the unit, namespace, pod and container labels stay empty.",
            labels=["layout", "v2_mount"],
        )
        info.add_metric([layout.kind, decoded(str(layout.v2.mount_point)) if layout.v2 else ""], 1)
        yield info
        hits = CounterMetricFamily(
            "procmond_task_limit_hits_total",
            "Forks refused because a cgroup reached its task limit (pids.max: systemd TasksMax, "
            "a pod's pids limit), by that cgroup's systemd unit or Kubernetes pod, as the "
            "kernel's pids controller counts them (pids.events).",
            labels=["unit", "namespace", "pod", "container"],
        )
        try:
            for labels, count in sorted(self._cgroups.task_limits.collect().items()):
                hits.add_metric(list(labels), count)
        except OSError as exc:
            log.error("cannot read the pids controller's counts: %s", exc)
        yield hits
        yield from self._table_families()
        if self._attribution is not None:
            yield CounterMetricFamily(
                "procmond_cgroup_entries_reclaimed_total",
                "Kernel counter entries of cgroups that are gone, given back to the maps after "
                "their counts were folded into the daemon (nothing is lost).",
                value=self._attribution.reclaimed,
            )

    def _table_families(self) -> Iterator[Metric]:
        """The daemon's own tables of cgroups and label sets, and their caps from the config:
        what keeps its memory fixed whatever the churn."""
        assert self._cgroups is not None
        sizes = {"label_texts": (len(self._texts), self._texts.limit)}
        sizes.update(self._cgroups.resolver.sizes())
        if self._cgroups.namer is not None:
            sizes.update(self._cgroups.namer.sizes())
        if self._attribution is not None:
            sizes.update(self._attribution.sizes())
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
