"""The prometheus_client custom collector: kernel maps → metric families, at scrape time.

Nothing is copied in the background: every scrape reads the maps afresh, so what Prometheus
sees is what the kernel counted. A map that cannot be read makes ``procmond_scrape_success 0``
and a log line, never a failed scrape. No ``bcc`` here.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from procmond import privileges
from procmond.config import Config
from procmond.exposition import (
    OVERFLOW_KEY,
    Batches,
    LabelCache,
    counter_rows,
    key_labels,
    label_sets_budget,
    render_counter,
    render_histogram,
    split_rows,
)
from procmond.maps import Histogram, MapReader
from procmond.metrics import (
    CounterMetric,
    HistogramMetric,
    counters,
    cumulative_buckets,
    histograms,
    label_names,
)

log = logging.getLogger(__name__)

_U64 = struct.Struct("=Q")


class _Families:
    """A fixed list of families, shaped like a registry for generate_latest()."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


class RawTable(Protocol):
    """What the collector reads of a map: procmond.bpfmap.BPFMap, or a fake in unit tests."""

    key_size: int
    value_size: int

    def batches(self) -> Batches: ...


@dataclass(frozen=True)
class ProbeStatus:
    """What the loader achieved, for the self-metrics."""

    attached: dict[str, bool]
    btf_offsets: bool
    version: str
    bcc_version: str
    kernel: str


def _merge(out: dict[tuple[str, ...], object], labels: tuple[str, ...], value: object) -> None:
    """Add ``value`` (a count or a Histogram) to ``out[labels]``. With labels dropped, or a
    process really named ``__overflow__``, several sources share one series."""
    previous = out.get(labels)
    out[labels] = value if previous is None else previous + value  # type: ignore[operator]


@dataclass(frozen=True)
class CounterRead:
    """One counter map as read: its raw batches (BPFMap.batches) and overflow count."""

    spec: CounterMetric
    names: tuple[str, ...]
    batches: Batches
    key_size: int
    overflow: int

    def rows(self) -> Iterator[tuple[bytes, int]]:
        return counter_rows(self.batches, self.key_size, self.overflow)


@dataclass
class Snapshot:
    """One read of every kernel map. Histogram rows: (raw key or OVERFLOW_KEY, Histogram)."""

    counters: list[CounterRead]
    histograms: list[tuple[HistogramMetric, tuple[str, ...], list[tuple[bytes, Histogram]]]]
    entries: dict[str, int]
    overflowed: dict[str, int]
    ok: bool
    started: float


class ProcmondCollector:
    """Yields procmond's families; register it on a private CollectorRegistry.

    ``collect()`` is the prometheus_client path (OpenMetrics, tests); ``render_text()`` gives
    the same samples in the text format, rendering the large map families itself (see
    procmond/exposition.py). Both start from one ``snapshot()``.
    """

    def __init__(self, reader: MapReader, config: Config, status: ProbeStatus) -> None:
        self._reader = reader
        self._config = config
        self._status = status
        self._labels = LabelCache(label_sets_budget(config))
        self.last_series: int | None = None  # series read from the maps at the last scrape

    def describe(self) -> Iterable[Metric]:
        return []  # families depend on the config; a private registry needs no description

    def snapshot(self) -> Snapshot:
        snap = Snapshot([], [], {}, {}, True, time.perf_counter())
        try:
            snap.overflowed = self._reader.overflow_events()
        except Exception as exc:
            snap.ok = self._failed("overflow_events", exc)
        for counter in counters(self._config):
            try:
                snap.counters.append(self._counter_rows(counter, snap))
            except Exception as exc:
                snap.ok = self._failed(counter.map_name, exc)
        for hist in histograms(self._config):
            try:
                snap.histograms.append(self._histogram_rows(hist, snap))
            except Exception as exc:
                snap.ok = self._failed(hist.map_name, exc)
        try:
            snap.entries["inflight"] = self._reader.entries("inflight")
        except Exception as exc:
            snap.ok = self._failed("inflight", exc)
        self.last_series = sum(
            snap.entries[c.spec.map_name] + bool(c.overflow) for c in snap.counters
        ) + sum(len(rows) * (len(spec.bucket_exponents) + 3) for spec, _, rows in snap.histograms)
        return snap

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        for read in snap.counters:
            spec, names = read.spec, read.names
            family = CounterMetricFamily(spec.name, spec.documentation, labels=names)
            counts: dict[tuple[str, ...], int] = {}
            for raw, value in read.rows():
                _merge(counts, key_labels(raw, spec.key_fields, names), value)
            for labels, count in sorted(counts.items()):
                family.add_metric(labels, count)
            yield family
        for hspec, names, hrows in snap.histograms:
            hfamily = HistogramMetricFamily(hspec.name, hspec.documentation, labels=names)
            hists: dict[tuple[str, ...], Histogram] = {}
            for raw, hist in hrows:
                _merge(hists, key_labels(raw, hspec.key_fields, names), hist)
            for labels, hist in sorted(hists.items()):
                hfamily.add_metric(
                    list(labels),
                    cumulative_buckets(hist, hspec.bucket_exponents),
                    sum_value=hist.sum_ns / 1e9,
                )
            yield hfamily
        yield from self._small_families(snap)

    def render_text(self) -> bytes:
        """The text exposition (format 0.0.4) of everything ``collect()`` yields."""
        snap = self.snapshot()
        out = bytearray()
        for c in snap.counters:
            render_counter(out, c.spec, c.names, c.batches, c.key_size, c.overflow, self._labels)
        for spec, names, rows in snap.histograms:
            render_histogram(out, spec, names, rows, self._labels)
        out += generate_latest(_Families(list(self._small_families(snap))))  # type: ignore[arg-type]
        return bytes(out)

    def _small_families(self, snap: Snapshot) -> Iterator[Metric]:
        yield from self._map_families(snap.entries, snap.overflowed)
        yield from self._status_families()
        yield GaugeMetricFamily(
            "procmond_scrape_success",
            "1 if every kernel map was read in this scrape, else 0.",
            value=int(snap.ok),
        )
        yield GaugeMetricFamily(
            "procmond_scrape_duration_seconds",
            "Time spent reading the kernel maps for this scrape.",
            value=time.perf_counter() - snap.started,
        )

    def _failed(self, map_name: str, exc: Exception) -> bool:
        log.error("cannot read map %s during scrape: %s", map_name, exc)
        return False

    def _table(self, map_name: str) -> RawTable:
        """A map itself: MapReader would decode every key into a tuple on every read, and the
        label cache is keyed by the raw bytes instead, so that a known key costs one lookup."""
        return self._reader._table(map_name)  # type: ignore[return-value]

    def _counter_rows(self, spec: CounterMetric, snap: Snapshot) -> CounterRead:
        table = self._table(spec.map_name)
        batches = table.batches()
        snap.entries[spec.map_name] = sum(count for _, _, count in batches)
        names = label_names(spec.key_fields, self._config)
        overflow = snap.overflowed.get(spec.map_name, 0)
        return CounterRead(spec, names, batches, table.key_size, overflow)

    def _histogram_rows(
        self, spec: HistogramMetric, snap: Snapshot
    ) -> tuple[HistogramMetric, tuple[str, ...], list[tuple[bytes, Histogram]]]:
        table = self._table(spec.map_name)
        pairs = split_rows(table.batches(), table.key_size, table.value_size)
        rows = [(raw, Histogram.from_bytes(value)) for raw, value in pairs]
        snap.entries[spec.map_name] = len(rows)
        overflow = self._reader.overflow_histogram(spec.map_name)
        if overflow.count:
            rows.append((OVERFLOW_KEY, overflow))
        return spec, label_names(spec.key_fields, self._config), rows

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
            "__overflow__ label value, the in-flight map loses that fork-duration sample.",
            labels=["map"],
        )
        for name, count in sorted(entries.items()):
            used.add_metric([name], count)
            capacity.add_metric([name], self._reader.capacity(name))
            overflow.add_metric([name], overflowed.get(name, 0))
        return [used, capacity, overflow]

    def _status_families(self) -> Iterator[Metric]:
        s = self._status
        info = GaugeMetricFamily(
            "procmond_build_info",
            "procmond's version, the BCC version and the running kernel.",
            labels=["version", "bcc_version", "kernel"],
        )
        info.add_metric([s.version, s.bcc_version, s.kernel], 1)
        yield info
        probes = GaugeMetricFamily(
            "procmond_probe_attached",
            "1 if the probe on this tracepoint is attached, else 0.",
            labels=["probe"],
        )
        for name, attached in sorted(s.attached.items()):
            probes.add_metric([name], int(attached))
        yield probes
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
