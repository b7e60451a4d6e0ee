"""A family that cannot be collected or rendered is left out alone, in both formats: every
other family still renders, procmond_scrape_success says 0, and one log line tells of it
(however many scrapes it keeps failing). Names from the kernel cannot carry a surrogate any
more (tests/unit/test_hostile_names.py); fakes bring one here, to fail a family for sure."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from procmond.config import Config
from procmond.kernel.maps import MapReader
from procmond.lifecycle.sources import CgroupSources
from procmond.naming.cgroups import CgroupLayout, CgroupResolver
from procmond.scrape.attribution import Attribution
from procmond.scrape.collector import ProbeStatus, ProcmondCollector
from procmond.scrape.tasklimits import TaskLimits
from tests.unit.fakes import LAYOUTS, MAP_IDS, FakeHash, FakePerCpuArray, exited, hist, pair
from tests.unit.test_attribution import Cgroups

STATUS = ProbeStatus({"task_newtask": True}, True, "9.9", "0.26.0", "6.18.0")
SURROGATE = "bad\udcff.service"  # what a name decoded with surrogateescape used to carry
CC = tuple(  # the labels of cgroup 8's "cc" row, as parsed
    sorted(
        dict(
            unit="cc.service", namespace="", pod="", container="", comm="cc", parent_comm="make"
        ).items()
    )
)


class Good:
    def collect(self) -> list[Metric]:
        return [GaugeMetricFamily("other_good", "Renders.", value=1)]


class Unencodable:
    def collect(self) -> list[Metric]:
        family = GaugeMetricFamily("other_bad", "A label value UTF-8 cannot encode.", labels=["n"])
        family.add_metric([SURROGATE], 1)
        return [family]


class Broken:
    def collect(self) -> list[Metric]:
        raise RuntimeError("collect failed")


def collector(cgroups: Cgroups) -> ProcmondCollector:
    tables: dict[str, Any] = {
        "forks_total": FakeHash([(pair(b"make", b"sh", 7), 3), (pair(b"cc", b"make", 8), 4)]),
        "threads_created_total": FakeHash([(pair(b"java", b"sh", 8), 2)]),
        "execs_total": FakeHash([(pair(b"cc", b"make", 8), 4)]),
        "exits_total": FakeHash([(exited(b"cc", 8), 4)]),
        "process_lifetime_seconds": FakeHash([]),
        "overflow_events": FakePerCpuArray([[0]] * len(MAP_IDS)),
        "overflow_hist": FakePerCpuArray([[hist({}, 0)]] * len(MAP_IDS)),
    }
    tables["process_lifetime_seconds"].key_size = 16
    attribution = Attribution(cgroups, 100, "__overflow__")
    sources = CgroupSources(
        CgroupLayout(None, frozenset(), None), TaskLimits(None), attribution, CgroupResolver(None)
    )
    return ProcmondCollector(
        MapReader(tables.__getitem__, LAYOUTS, MAP_IDS), Config(), STATUS, sources
    )


Render = Callable[[ProcmondCollector, tuple[Any, ...]], dict[tuple, float]]


def text(c: ProcmondCollector, others: tuple[Any, ...]) -> dict[tuple, float]:
    out = c.render_text(others).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in parse_text(out)
        for s in f.samples
    }


def om(c: ProcmondCollector, others: tuple[Any, ...]) -> dict[tuple, float]:
    out = c.render(openmetrics.generate_latest, others).decode()
    samples = parse_openmetrics(out)  # raises unless it ends in exactly one "# EOF"
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in samples for s in f.samples}


def names(samples: dict[tuple, float]) -> set[str]:
    return {name for name, _ in samples}


@pytest.fixture(params=[text, om], ids=["text", "openmetrics"])
def render(request: pytest.FixtureRequest) -> Iterator[Render]:
    yield request.param


def test_a_family_of_another_collector_that_fails_leaves_the_others_whole(
    render: Render, caplog: pytest.LogCaptureFixture
) -> None:
    c = collector(Cgroups({8: (("cc.service", "", "", ""), True)}))
    for _ in range(3):
        m = render(c, (Broken(), Unencodable(), Good()))
        assert m[("procmond_scrape_success", ())] == 0
        assert m[("other_good", ())] == 1
        assert "other_bad" not in names(m)
        assert m[("procmond_forks_total", CC)] == 4
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2, errors  # one line each, not one a scrape
    assert any(e.startswith("Broken left out of the scrape: RuntimeError") for e in errors)
    assert any(e.startswith("other_bad left out of the scrape: UnicodeEncodeError") for e in errors)
    assert all("\n" not in e and len(e) < 500 for e in errors)


def test_a_map_family_that_fails_leaves_the_other_maps_whole(
    render: Render, caplog: pytest.LogCaptureFixture
) -> None:
    cgroups = Cgroups({7: ((SURROGATE, "", "", ""), True), 8: (("cc.service", "", "", ""), True)})
    c = collector(cgroups)
    for _ in range(2):
        m = render(c, (Good(),))
        assert m[("procmond_scrape_success", ())] == 0
        assert "procmond_forks_total" not in names(m)  # the row of cgroup 7 cannot be encoded
        assert m[("procmond_execs_total", CC)] == 4
        assert {"procmond_threads_created_total", "procmond_exits_total", "other_good"} <= names(m)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "forks" in errors[0] and "left out of the scrape: UnicodeEncodeError" in errors[0]
