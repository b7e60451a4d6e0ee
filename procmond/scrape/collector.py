"""One scrape, as a pipeline: read → placement → render, then the self-metrics.

1. procmond/scrape/read.py reads every map once (raw rows, entries, overflow counts).
2. procmond/scrape/placement.py places each map's rows under their labels (attribution,
   gone cgroups folded, late names, __overflow__), as a stream of placed maps.
3. The same stream is rendered either as the text format by procmond/scrape/exposition.py
   (with its label text cache, by the rows' raw keys) or as prometheus_client's families
   by procmond/scrape/families.py (OpenMetrics, ``collect()``).
4. procmond/scrape/selfmetrics.py's families come last, ``procmond_scrape_success`` telling
   of everything the stages before it left out.

Nothing is copied in the background: every scrape reads the maps afresh, so what Prometheus
sees is what the kernel counted. A map that cannot be read, or a family that cannot be
rendered, is left out of the scrape: ``procmond_scrape_success 0`` and one log line (again
only after it recovered), never a failed scrape. No ``bcc`` here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import generate_latest
from prometheus_client.core import Metric

from procmond.config import Config
from procmond.kernel.maps import MapReader
from procmond.scrape.exposition import LabelTexts, render_maps
from procmond.scrape.families import Collector, Encoder, Families, map_families, render_families
from procmond.scrape.metrics import label_sets_budget
from procmond.scrape.placement import Placement
from procmond.scrape.read import Scrape, read_maps
from procmond.scrape.selfmetrics import Cgroups, ProbeStatus, SelfMetrics

__all__ = ["ProbeStatus", "ProcmondCollector"]


class ProcmondCollector:
    """Yields procmond's families; register it on a private CollectorRegistry.

    ``render_text()`` is what most scrapes get; ``render()`` (OpenMetrics) and ``collect()``
    (prometheus_client's registries, tests) render the same placed rows as families, so all
    three show the same samples.
    """

    def __init__(
        self,
        reader: MapReader,
        config: Config,
        status: ProbeStatus,
        cgroups: Cgroups | None = None,
    ) -> None:
        self._reader = reader
        self._config = config
        self._placement = Placement(reader, config, cgroups.attribution if cgroups else None)
        self._texts = LabelTexts(label_sets_budget(config))
        self._self_metrics = SelfMetrics(reader, config, status, cgroups, self._texts)
        self.last_series: int | None = None  # series read from the maps at the last scrape
        self._failing: set[str] = set()  # left out of the last scrape: logged already

    def describe(self) -> Iterable[Metric]:
        return []  # families depend on the config; a private registry needs no description

    def render_text(self, others: Iterable[Collector] = ()) -> bytearray:
        """The text exposition (format 0.0.4) of every family, then the families of
        ``others``, in the one buffer it was written into: a copy of ~1 MB would cost a
        scrape its time and page faults. A family that fails is left out."""
        scrape = Scrape(self._failing)
        sampled = _collected(others, scrape)  # before the maps are read, as always
        read = read_maps(self._reader, self._config, scrape)
        out = bytearray()
        placed = self._placement.placed(read, scrape)
        self.last_series = render_maps(out, placed, self._texts, scrape)
        out += self._self_metrics.encoded(read, scrape, generate_latest, sampled)
        self._failing = scrape.failing
        return out

    def render(self, encode: Encoder, others: Iterable[Collector] = ()) -> bytes:
        """Every family, then those of ``others``, rendered by prometheus_client's ``encode``
        (OpenMetrics) one family at a time: one that fails is left out, the others still
        render."""
        scrape = Scrape(self._failing)
        read = read_maps(self._reader, self._config, scrape)
        families, self.last_series = map_families(self._placement.placed(read, scrape), scrape)
        sampled = _collected(others, scrape)
        out = render_families(families, encode, scrape.failed)
        out += self._self_metrics.encoded(read, scrape, encode, sampled)
        self._failing = scrape.failing
        return out + encode(Families([]))

    def collect(self) -> Iterator[Metric]:
        scrape = Scrape(self._failing)
        read = read_maps(self._reader, self._config, scrape)
        families, self.last_series = map_families(self._placement.placed(read, scrape), scrape)
        yield from families
        yield from self._self_metrics.families(read, scrape)
        self._failing = scrape.failing


def _collected(collectors: Iterable[Collector], scrape: Scrape) -> list[Metric]:
    """Every family of ``collectors``; one whose collect() raises is reported and skipped."""
    families: list[Metric] = []
    for collector in collectors:
        try:
            got = list(collector.collect())  # all of a collector's families, or none
        except Exception as exc:
            scrape.failed(type(collector).__name__, exc)
            continue
        families += got
    return families
