"""The scrape's first stage: every kernel map the config exposes, read once.

A scrape reads the maps afresh (``BPF_MAP_LOOKUP_BATCH``: keys back to back, values back to
back) and hands on what the kernel gave, undecoded: the counter maps' raw rows (the text
renderer finds a known row's labels by its raw key), the histograms' entries, each map's
__overflow__ counts and how many entries each map holds. A map that cannot be read is left
out of the scrape (:class:`Scrape` tells of it); every other map is still read.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from procmond.config import Config
from procmond.kernel.maps import Histogram, MapReader, RawRows
from procmond.scrape.metrics import CounterMetric, HistogramMetric, counters, histograms

log = logging.getLogger(__name__)


@dataclass
class Scrape:
    """What one scrape left out so far, carried through every stage to
    ``procmond_scrape_success``. ``logged``: what the last scrape left out, logged then (one
    line when a thing starts failing, not one a scrape)."""

    logged: set[str] = field(default_factory=set)
    started: float = field(default_factory=time.perf_counter)
    ok: bool = True
    failing: set[str] = field(default_factory=set)  # maps and families left out

    def failed(self, what: str, exc: Exception) -> None:
        """``what`` (a map, a family) is left out of this scrape: scrape_success 0, and one
        log line, unless it was left out of the last scrape too."""
        self.ok = False
        self.failing.add(what)
        if what not in self.logged:
            reason = str(exc)  # prometheus_client appends the whole family to its errors
            reason = reason if len(reason) <= 300 else reason[:300] + "..."
            log.error("%s left out of the scrape: %s: %s", what, type(exc).__name__, reason)


@dataclass(frozen=True)
class CounterRead:
    """One counter map as read: its rows as the kernel gave them, and its __overflow__ count."""

    metric: CounterMetric
    rows: RawRows  # keys back to back, values back to back, per batch
    overflow: int  # events that found the map full


@dataclass(frozen=True)
class HistogramRead:
    """One histogram map as read: (raw key, histogram) per entry, and its __overflow__ one."""

    metric: HistogramMetric
    entries: list[tuple[bytes, Histogram]]
    overflow: Histogram


@dataclass
class MapsRead:
    """Every map of one scrape, in the order of the exposition."""

    counters: list[CounterRead] = field(default_factory=list)
    histograms: list[HistogramRead] = field(default_factory=list)
    entries: dict[str, int] = field(default_factory=dict)  # map → entries, for the self-metrics
    overflowed: dict[str, int] = field(default_factory=dict)  # map → overflow events


def read_maps(reader: MapReader, config: Config, scrape: Scrape) -> MapsRead:
    """The maps this config exposes, each read once; one that fails is left out."""
    read = MapsRead()
    counter_maps, histogram_maps = counters(config), histograms(config)
    try:
        read.overflowed = reader.overflow_events()
    except Exception as exc:
        scrape.failed("map overflow_events", exc)
    for counter in counter_maps:
        try:
            rows = reader.raw(counter.map_name)
        except Exception as exc:
            scrape.failed(f"map {counter.map_name}", exc)
            continue
        read.entries[counter.map_name] = rows.count
        read.counters.append(CounterRead(counter, rows, read.overflowed.get(counter.map_name, 0)))
    for hist in histogram_maps:
        try:
            entries = reader.histogram_entries(hist.map_name)
            read.entries[hist.map_name] = len(entries)
            overflow = reader.overflow_histogram(hist.map_name)
        except Exception as exc:
            scrape.failed(f"map {hist.map_name}", exc)
            continue
        read.histograms.append(HistogramRead(hist, entries, overflow))
    return read
