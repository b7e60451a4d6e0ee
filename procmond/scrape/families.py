"""prometheus_client's metric families: the map families made from the placed rows, and
every family rendered by prometheus_client's encoders one at a time.

The other renderer of procmond/scrape/placement.py's stream, beside the text format of
procmond/scrape/exposition.py: for OpenMetrics (the clients that accept nothing else) and for
``collect()``; the self-metrics and the daemon's other collectors are rendered here in either
format. Every row is placed (there is no cache here); rows whose label values come out
alike (two cgroups of one unit, a folded label set, names that decode alike) are one series,
their counts added, as in the text format.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from procmond.scrape.attribution import Row
from procmond.scrape.metrics import cumulative_buckets, label_value
from procmond.scrape.placement import Placed, PlacedCounter, PlacedHistogram
from procmond.scrape.read import Scrape

Failed = Callable[[str, Exception], None]  # what could not be collected or rendered, and why
Encoder = Callable[..., bytes]  # prometheus_client's generate_latest, either format


class Collector(Protocol):
    def collect(self) -> Iterable[Metric]: ...


class Families:
    """A fixed list of families, shaped like a registry for prometheus_client's encoders."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


def render_families(families: Iterable[Metric], encode: Encoder, failed: Failed) -> bytes:
    """``families`` rendered by ``encode`` one at a time, without the format's trailer
    (OpenMetrics' ``# EOF``): a family that cannot be rendered is reported and left out, and
    every other one still renders (prometheus_client encodes a whole registry at once, so one
    bad label value would fail them all). Each family is rendered before the next is asked
    for, so a family made later (procmond_scrape_success) can tell of the failures."""
    trailer = encode(Families([]))
    out = bytearray()
    for family in families:
        try:
            text = encode(Families([family]))
        except Exception as exc:
            failed(family.name, exc)
            continue
        out += text[: len(text) - len(trailer)] if trailer and text.endswith(trailer) else text
    return bytes(out)


def map_families(placed: Iterable[Placed], scrape: Scrape) -> tuple[list[Metric], int]:
    """Each placed map's family, and the series they hold; a map that fails is left out."""
    families: list[Metric] = []
    series = 0
    for p in placed:
        try:
            if isinstance(p, PlacedCounter):
                family, label_sets = counter_family(p)
                series += label_sets
            else:
                family, label_sets = histogram_family(p)
                series += label_sets * (len(p.metric.bucket_exponents) + 3)
        except Exception as exc:
            scrape.failed(f"map {p.metric.map_name}", exc)
            continue
        families.append(family)
    return families, series


def counter_family(placed: PlacedCounter) -> tuple[CounterMetricFamily, int]:
    """Every row of one counter map placed, then its extra rows, as one family; and its
    label sets."""
    shown: list[tuple[Row, object]] = []
    for raw, value in placed.rows.entries():
        row = placed.place(raw, value)
        if row is not None:
            shown.append((row.labels, row.count))
    series = series_of(placed.fields, placed.names)
    live = {series(labels) for labels, _ in shown}
    shown += placed.extra(lambda labels: series(labels) in live, len(live))
    spec = placed.metric
    family = CounterMetricFamily(spec.name, spec.documentation, labels=placed.names)
    rows = labelled(shown, placed.fields, placed.names)
    for labels, value in sorted(rows.items()):
        family.add_metric(labels, value)
    return family, len(rows)


def histogram_family(placed: PlacedHistogram) -> tuple[HistogramMetricFamily, int]:
    """One histogram map's rows, and its __overflow__ row, as one family; and its label
    sets."""
    rows: list[tuple[Row, object]] = [(placed.decode(raw), hist) for raw, hist in placed.entries]
    if placed.overflow is not None:
        rows.append(placed.overflow)
    spec = placed.metric
    family = HistogramMetricFamily(spec.name, spec.documentation, labels=placed.names)
    by_labels = labelled(rows, placed.fields, placed.names)
    for labels, hist in sorted(by_labels.items()):
        family.add_metric(
            list(labels),
            cumulative_buckets(hist, spec.bucket_exponents),  # type: ignore[arg-type]
            sum_value=hist.sum_ns / 1e9,  # type: ignore[attr-defined]
        )
    return family, len(by_labels)


def labelled(
    rows: Iterable[tuple[Row, object]], fields: tuple[str, ...], names: tuple[str, ...]
) -> dict[tuple[str, ...], object]:
    """Rows of ``fields`` keyed by their label values for ``names``, summing rows that decode
    alike (distinct byte strings can give one label value: invalid UTF-8 becomes U+FFFD; a
    duplicate series would make the exposition invalid), which keeps every series monotonic."""
    series = series_of(fields, names)
    out: dict[tuple[str, ...], object] = {}
    for row, value in rows:
        labels = series(row)
        previous = out.get(labels)  # with labels dropped, several rows share one series
        out[labels] = value if previous is None else previous + value  # type: ignore[operator]
    return out


def series_of(fields: tuple[str, ...], names: tuple[str, ...]) -> Callable[[Row], tuple[str, ...]]:
    """Row of ``fields`` → the label values of its series (see ``labelled``)."""
    keep = tuple(fields.index(n) for n in names)
    return lambda row: tuple(label_value(row[i]) for i in keep)
