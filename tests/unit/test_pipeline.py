"""The scrape as a pipeline (procmond/scrape/collector.py): the stages run once each, in order,
and the two renderers of one stream of placed maps show the same samples."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.core import Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from procmond.config import CGROUP_LABELS, Config
from procmond.kernel.maps import Histogram, MapReader, RawRows
from procmond.scrape import collector as collector_module
from procmond.scrape.attribution import Row, Shown
from procmond.scrape.collector import ProbeStatus, ProcmondCollector
from procmond.scrape.exposition import LabelTexts, render_maps
from procmond.scrape.families import Families, map_families, render_families
from procmond.scrape.metrics import COUNTERS, HISTOGRAMS, OVERFLOW_LABEL_VALUE, bucket_bounds
from procmond.scrape.placement import Placed, PlacedCounter, PlacedHistogram, Placement
from procmond.scrape.read import Scrape
from procmond.scrape.selfmetrics import SelfMetrics
from tests.unit.fakes import LAYOUTS, MAP_IDS, FakeHash, FakePerCpuArray, exited, hist, one, pair

STATUS = ProbeStatus({"task_newtask": True}, True, "9.9", "0.26.0", "6.18.0")
FORKS = next(c for c in COUNTERS if c.map_name == "forks_total")
LIFETIME = next(h for h in HISTOGRAMS if h.map_name == "process_lifetime_seconds")
FIELDS = (*CGROUP_LABELS, "comm", "parent_comm")


def raw_rows(counts: list[int]) -> RawRows:
    """Rows keyed 0, 1, 2... (8-byte keys), each with its count."""
    keys = b"".join(struct.pack("=Q", i) for i in range(len(counts)))
    return RawRows([(keys, struct.pack(f"={len(counts)}Q", *counts), len(counts))], 8)


def placed_stream(names: tuple[str, ...]) -> list[Placed]:
    """One counter and one histogram map, placed by hand: plain rows, a row that is not plain,
    two rows under one label set, a reclaimed row, hostile names, a folded label set (that a
    live row also shows) and __overflow__."""
    labels: list[Row | None] = [
        ("a.service", "", "", "", b"sh", b"bash"),
        ("a.service", "", "", "", b"sh", b"bash"),  # a second cgroup of unit a: one series
        ("", "ns", "web-1", "nginx", b'q"u\\o\nte', b"{x}"),
        ("b.service", "", "", "", b"bad\xff", b"p"),
        ("b.service", "", "", "", b"bad\xfe", b"p"),  # decodes like the row before it
        None,  # reclaimed: its count is folded
        ("", "", "", "", b"__overflow__", b"init"),
    ]
    counts = [3, 4, 5, 6, 7, 8, 9]
    plain = [True, True, False, True, True, False, True]

    def place(raw: bytes, count: int) -> Shown | None:
        (i,) = struct.unpack("=Q", raw)
        row = labels[i]
        return None if row is None else Shown(row, count - (1 if not plain[i] else 0), plain[i])

    def extra(live: Callable[[Row], bool], live_series: int) -> list[tuple[Row, int]]:
        folded: Row = ("a.service", "", "", "", b"sh", b"bash")
        gone: Row = ("c.service", "", "", "", b"cc", b"make")
        assert live(folded) and not live(gone) and live_series == 4
        return [(folded, 8), (gone, 2), ((OVERFLOW_LABEL_VALUE,) * len(FIELDS), 11)]

    counter = PlacedCounter(FORKS, FIELDS, names, raw_rows(counts), [1], place, extra)
    lifetime = Histogram.decoder(LAYOUTS["process_lifetime_seconds"])
    entries = [(b"k1", lifetime(hist({20: 2}, 7))), (b"k2", lifetime(hist({22: 1}, 9)))]
    overflow = ((OVERFLOW_LABEL_VALUE,), lifetime(hist({18: 1}, 1)))
    bounds = bucket_bounds(LIFETIME.bucket_exponents)
    histogram = PlacedHistogram(LIFETIME, ("comm",), ("comm",), entries, decode, overflow, bounds)
    return [counter, histogram]


def decode(raw: bytes) -> Row:
    return (b"cc1" if raw == b"k1" else b"cc\xff",)


def samples(families: list[Metric]) -> dict[tuple, float]:
    out: dict[tuple, float] = {}
    for f in families:
        for s in f.samples:
            key = (s.name.removesuffix("_total"), tuple(sorted(s.labels.items())))
            assert key not in out, key  # each series once
            out[key] = s.value
    return out


@pytest.mark.parametrize(
    "names", [FIELDS, ("unit", "namespace", "pod", "container", "comm")], ids=["all", "no-parent"]
)
def test_text_and_openmetrics_of_one_placed_stream_carry_the_same_samples(
    names: tuple[str, ...],
) -> None:
    texts = LabelTexts(100)
    for _ in range(3):  # the first from nothing, the others from the label text cache
        out = bytearray()
        text_series = render_maps(out, placed_stream(names), texts, Scrape())
        families, family_series = map_families(placed_stream(names), Scrape())
        om = render_families(families, openmetrics.generate_latest, Scrape().failed)
        om += openmetrics.generate_latest(Families([]))
        text_samples = samples(list(parse_text(out.decode())))
        assert text_samples == samples(list(parse_openmetrics(om.decode())))
        assert text_series == family_series
    forks: dict[str, float] = {}
    for (name, labels), value in text_samples.items():
        if name == "procmond_forks":
            comm = dict(labels)["comm"]
            forks[comm] = forks.get(comm, 0) + value
    # "sh": 3 + 4 live and 8 folded (the reclaimed row shows only through what it folded);
    # "q...": 5, less 1 folded before; "__overflow__": a process of that name and the overflow
    assert forks == {"sh": 15, 'q"u\\o\nte': 4, "bad\ufffd": 13, "__overflow__": 20, "cc": 2}


def test_the_stages_run_once_each_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """read → placement → render → self-metrics, each once, in the text path and in the
    OpenMetrics one. The renderer pulls the placed maps one at a time (a counter's folded rows
    are known once its rows are placed), and every map is placed before the self-metrics."""
    calls: list[str] = []

    def spy(name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return call(*args, **kwargs)

        return wrapped

    def placed_spy(call: Callable[..., Any]) -> Callable[..., Any]:
        def placed(*args: Any) -> Any:
            calls.append("placement")
            for p in call(*args):
                calls.append(f"placed {p.metric.map_name}")
                yield p

        return placed

    monkeypatch.setattr(collector_module, "read_maps", spy("read", collector_module.read_maps))
    monkeypatch.setattr(Placement, "placed", placed_spy(Placement.placed))
    monkeypatch.setattr(collector_module, "render_maps", spy("text", collector_module.render_maps))
    monkeypatch.setattr(
        collector_module, "map_families", spy("families", collector_module.map_families)
    )
    monkeypatch.setattr(SelfMetrics, "encoded", spy("self-metrics", SelfMetrics.encoded))
    tables: dict[str, Any] = {
        "forks_total": FakeHash([(pair(b"make", b"sh"), 3)]),
        "threads_created_total": FakeHash([]),
        "execs_total": FakeHash([]),
        "exits_total": FakeHash([(exited(b"cc"), 4)]),
        "process_lifetime_seconds": FakeHash([(one(b"cc1"), hist({20: 2}, 3000))]),
        "overflow_events": FakePerCpuArray([[0]] * len(MAP_IDS)),
        "overflow_hist": FakePerCpuArray([[hist({}, 0)]] * len(MAP_IDS)),
    }
    c = ProcmondCollector(MapReader(tables.__getitem__, LAYOUTS, MAP_IDS), Config(), STATUS)
    maps = [f"placed {m}" for m in (*(x.map_name for x in COUNTERS[:4]), LIFETIME.map_name)]
    c.render_text()
    assert calls == ["read", "text", "placement", *maps, "self-metrics"]
    calls.clear()
    c.render(openmetrics.generate_latest)
    assert calls == ["read", "families", "placement", *maps, "self-metrics"]
