"""The scrape's second stage: the maps' rows placed under their labels.

Everything that decides under which labels a count shows happens here, once, for both
renderers (procmond/scrape/exposition.py, the text format; procmond/scrape/families.py,
prometheus_client's families): a counter row's cgroup id becomes its unit, namespace, pod and
container (procmond/scrape/attribution.py: late names, gone cgroups reclaimed and folded),
the counts kept for gone cgroups come back as their own rows, and each map's __overflow__
count becomes a row. Without a cgroup label (no attribution) the cgroup id is left out.

Each map is placed as the renderer comes to it (:meth:`Placement.placed` is a stream), and
a placed map still carries the kernel's raw rows: the text renderer keeps the label text of a
*plain* row (``attribution.Shown.plain``) by its raw key and asks ``place`` only for the rows
it does not know, so a known row costs no Python work here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from procmond.config import Config
from procmond.kernel.maps import Histogram, MapReader, RawRows
from procmond.scrape.attribution import Attribution, Row, Shown
from procmond.scrape.metrics import (
    OVERFLOW_LABEL_VALUE,
    CounterMetric,
    HistogramMetric,
    attributed_fields,
    bucket_bounds,
    label_names,
)
from procmond.scrape.read import CounterRead, HistogramRead, MapsRead, Scrape

Place = Callable[[bytes, int], Shown | None]  # a raw key and its count → where it shows
# (is this row's series shown by a kernel entry, how many series those are) → the other rows
Extra = Callable[[Callable[[Row], bool], int], Iterable[tuple[Row, int]]]


@dataclass(frozen=True)
class PlacedCounter:
    """One counter map, placed. ``place`` gives where a kernel row shows (None: reclaimed,
    its count folded); ``extra(live, live_series)``, called once every row is placed, gives
    the rows that are no kernel entry (folded label sets, __overflow__), told which series
    the kernel rows show (``live_series`` of them; ``live`` tells a row of one of those).
    ``gone``: the rows (by place in ``rows``) whose cgroup is seen gone: their counts are
    about to be folded, so none of them may be shown by a label text kept from before."""

    metric: CounterMetric
    fields: tuple[str, ...]  # the fields of a placed row
    names: tuple[str, ...]  # the labels it shows under (a dropped one is zeroed)
    rows: RawRows
    gone: list[int]
    place: Place
    extra: Extra


@dataclass(frozen=True)
class PlacedHistogram:
    """One histogram map, placed: its entries' keys decode to their labels as they are (no
    cgroup in them), its __overflow__ row if anything overflowed, and the ``le`` label of
    each bucket (then +Inf)."""

    metric: HistogramMetric
    fields: tuple[str, ...]
    names: tuple[str, ...]
    entries: list[tuple[bytes, Histogram]]
    decode: Callable[[bytes], Row]
    overflow: tuple[Row, Histogram] | None
    bounds: tuple[str, ...]


Placed = PlacedCounter | PlacedHistogram


@dataclass(frozen=True)
class _Taker:
    """One counter map, as procmond/scrape/attribution.py takes entries from it."""

    reader: MapReader
    map_name: str

    def take(self, raw_key: bytes) -> int | None:
        return self.reader.take(self.map_name, raw_key)


class Placement:
    """Places the rows of each scrape. ``attribution`` is None when no cgroup label is kept
    (the daemon makes none then): the probe zeroes the cgroup id and it is left out."""

    def __init__(self, reader: MapReader, config: Config, attribution: Attribution | None) -> None:
        self._reader = reader
        self._config = config
        self._attribution = attribution

    def placed(self, read: MapsRead, scrape: Scrape) -> Iterator[Placed]:
        """Each map of ``read``, placed, in order; the caller renders each before it asks for
        the next (a counter's folded rows are known once its rows are placed). A map that
        cannot be placed is left out."""
        attribution = self._attribution
        if attribution is not None:
            attribution.start_scrape()  # each cgroup is resolved once for every map
        yield from _each(read.counters, self._counter, scrape)
        if attribution is not None:
            attribution.forget_unused()
        yield from _each(read.histograms, self._histogram, scrape)

    def _counter(self, read: CounterRead) -> PlacedCounter:
        spec, name, rows = read.metric, read.metric.map_name, read.rows
        attribution = self._attribution
        rest = tuple(f for f in spec.key_fields if f != "cgroup_id")
        fields = rest if attribution is None else attributed_fields(spec.key_fields)
        names = label_names(fields, self._config)
        overflow = [((OVERFLOW_LABEL_VALUE,) * len(fields), read.overflow)] if read.overflow else []
        if attribution is None:  # cgroup ids are zero (no cgroup label) or not resolved
            decode = self._reader.decoder(name, rest)

            def place(raw: bytes, count: int) -> Shown | None:
                return Shown(decode(raw), count, True)

            def extra(live: Callable[[Row], bool], live_series: int) -> list[tuple[Row, int]]:
                return overflow

            return PlacedCounter(spec, fields, names, rows, [], place, extra)

        decode_key = self._reader.decoder(name, ("cgroup_id", *rest))
        taker = _Taker(self._reader, name)
        # A gone cgroup's entries are about to be folded: none may show by a kept text now.
        gone_ids = attribution.gone(self._reader.field_values(name, rows, "cgroup_id"))
        gone = self._reader.rows_where(name, rows, "cgroup_id", gone_ids) if gone_ids else []

        def place_attributed(raw: bytes, count: int) -> Shown | None:
            cgroup_id, *values = decode_key(raw)
            return attribution.entry(name, raw, cgroup_id, tuple(values), count, taker)  # type: ignore[arg-type]

        def folded(live: Callable[[Row], bool], live_series: int) -> list[tuple[Row, int]]:
            attribution.end_map(name)
            return [*attribution.folded(name, live, live_series).items(), *overflow]

        return PlacedCounter(spec, fields, names, rows, gone, place_attributed, folded)

    def _histogram(self, read: HistogramRead) -> PlacedHistogram:
        spec = read.metric
        fields = spec.key_fields
        overflow = (
            ((OVERFLOW_LABEL_VALUE,) * len(fields), read.overflow) if read.overflow.count else None
        )
        return PlacedHistogram(
            spec,
            fields,
            label_names(fields, self._config),
            read.entries,
            self._reader.decoder(spec.map_name, fields),
            overflow,
            bucket_bounds(spec.bucket_exponents),
        )


def _each(
    maps: Iterable[CounterRead | HistogramRead],
    place: Callable[[Any], Placed],
    scrape: Scrape,
) -> Iterator[Placed]:
    """Each map placed by ``place``; one that raises is left out of the scrape."""
    for read in maps:
        try:
            placed = place(read)
        except Exception as exc:
            scrape.failed(f"map {read.metric.map_name}", exc)
            continue
        yield placed
