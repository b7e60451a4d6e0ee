"""The prometheus_client custom collector: kernel maps → metric families, at scrape time.

Nothing is copied in the background: every scrape reads the maps afresh, so what Prometheus
sees is what the kernel counted. A map that cannot be read makes ``procmond_scrape_success 0``
and a log line, never a failed scrape. No ``bcc`` here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from procmond.config import Config
from procmond.maps import Histogram, MapReader
from procmond.metrics import (
    COUNTERS,
    HISTOGRAMS,
    OVERFLOW_LABEL_VALUE,
    CounterMetric,
    HistogramMetric,
    cumulative_buckets,
    label_names,
    label_value,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeStatus:
    """What the loader achieved, for the self-metrics."""

    attached: dict[str, bool]
    btf_offsets: bool
    version: str
    bcc_version: str
    kernel: str


def _labelled(
    rows: dict[tuple[bytes | int, ...], int] | dict[tuple[bytes, ...], Histogram],
    key_fields: tuple[str, ...],
    names: tuple[str, ...],
) -> dict[tuple[str, ...], object]:
    """Rows keyed by decoded label values, summing rows that decode alike.

    Distinct byte strings can give one label value (invalid UTF-8 becomes U+FFFD), and a
    duplicate series would make the exposition invalid: such rows are added together, which
    keeps every series monotonic.
    """
    keep = [key_fields.index(n) for n in names]
    out: dict[tuple[str, ...], object] = {}
    for key, value in rows.items():
        _merge(out, tuple(label_value(key[i]) for i in keep), value)
    return out


def _merge(out: dict[tuple[str, ...], object], labels: tuple[str, ...], value: object) -> None:
    """Add ``value`` (a count or a Histogram) to ``out[labels]``. With labels dropped, or a
    process really named ``__overflow__``, several sources share one series."""
    previous = out.get(labels)
    out[labels] = value if previous is None else previous + value  # type: ignore[operator]


class ProcmondCollector:
    """Yields procmond's families; register it on a private CollectorRegistry."""

    def __init__(self, reader: MapReader, config: Config, status: ProbeStatus) -> None:
        self._reader = reader
        self._config = config
        self._status = status
        self.last_series: int | None = None  # series read from the maps at the last scrape

    def describe(self) -> Iterable[Metric]:
        return []  # families depend on the config; a private registry needs no description

    def collect(self) -> Iterator[Metric]:
        start = time.perf_counter()
        ok = True
        entries: dict[str, int] = {}
        families: list[Metric] = []
        try:
            overflowed = self._reader.overflow_events()
        except Exception as exc:
            ok = self._failed("overflow_events", exc)
            overflowed = {}
        for counter in COUNTERS:
            try:
                families.append(self._counter_family(counter, entries, overflowed))
            except Exception as exc:
                ok = self._failed(counter.map_name, exc)
        if self._config.histograms:
            for hist in HISTOGRAMS:
                try:
                    families.append(self._histogram_family(hist, entries))
                except Exception as exc:
                    ok = self._failed(hist.map_name, exc)
        try:
            entries["inflight"] = self._reader.entries("inflight")
            families += self._map_families(entries, overflowed)
        except Exception as exc:
            ok = self._failed("inflight", exc)
        self.last_series = sum(len(f.samples) for f in families)
        yield from families
        yield from self._status_families()
        yield GaugeMetricFamily(
            "procmond_scrape_success",
            "1 if every kernel map was read in this scrape, else 0.",
            value=int(ok),
        )
        yield GaugeMetricFamily(
            "procmond_scrape_duration_seconds",
            "Time spent reading the kernel maps for this scrape.",
            value=time.perf_counter() - start,
        )

    def _failed(self, map_name: str, exc: Exception) -> bool:
        log.error("cannot read map %s during scrape: %s", map_name, exc)
        return False

    def _counter_family(
        self, spec: CounterMetric, entries: dict[str, int], overflowed: dict[str, int]
    ) -> Metric:
        names = label_names(spec.key_fields, self._config)
        rows = self._reader.counters(spec.map_name, spec.key_fields)
        entries[spec.map_name] = len(rows)
        labelled = _labelled(rows, spec.key_fields, names)
        if overflowed.get(spec.map_name):
            _merge(labelled, (OVERFLOW_LABEL_VALUE,) * len(names), overflowed[spec.map_name])
        family = CounterMetricFamily(spec.name, spec.documentation, labels=names)
        for labels, value in sorted(labelled.items()):
            family.add_metric(labels, value)
        return family

    def _histogram_family(self, spec: HistogramMetric, entries: dict[str, int]) -> Metric:
        names = label_names(spec.key_fields, self._config)
        rows = self._reader.histograms(spec.map_name)
        entries[spec.map_name] = len(rows)
        family = HistogramMetricFamily(spec.name, spec.documentation, labels=names)
        labelled = _labelled(rows, spec.key_fields, names)
        overflow = self._reader.overflow_histogram(spec.map_name)
        if overflow.count:
            _merge(labelled, (OVERFLOW_LABEL_VALUE,) * len(names), overflow)
        for labels, hist in sorted(labelled.items()):
            assert isinstance(hist, Histogram)
            family.add_metric(
                list(labels),
                cumulative_buckets(hist, spec.bucket_exponents),
                sum_value=hist.sum_ns / 1e9,
            )
        return family

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
            "procmond_btf_offsets_in_use",
            "1 if struct offsets come from the running kernel's BTF; 0 if from the installed "
            "kernel headers, which may not match the kernel.",
            value=int(s.btf_offsets),
        )
