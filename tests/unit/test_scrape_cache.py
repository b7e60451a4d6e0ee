"""The text path's label cache against the plain path, on fake maps and fake cgroups: the same
samples through cgroup churn (late names, gone cgroups folded, rows sharing labels, hostile
names), and a cache that stays within its bound (the real daemon: tests/e2e/test_scrape_cache.py).
"""

from __future__ import annotations

import struct
from collections import Counter
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from procmond.config import Config
from procmond.kernel.maps import MapReader, RawRows
from procmond.lifecycle.sources import CgroupSources
from procmond.naming.cgroups import CgroupLayout, CgroupResolver
from procmond.scrape.attribution import Attribution, CgroupLabels
from procmond.scrape.collector import ProbeStatus, ProcmondCollector
from procmond.scrape.exposition import LabelTexts
from procmond.scrape.metrics import label_sets_budget
from procmond.scrape.tasklimits import TaskLimits
from tests.unit.fakes import LAYOUTS, MAP_IDS, FakeHash, FakePerCpuArray, exited, hist, one, pair
from tests.unit.test_attribution import POD, UNIT_A, Cgroups, Clock

STATUS = ProbeStatus({"task_newtask": True}, True, "9.9", "0.26.0", "6.18.0")
POD_ONLY: CgroupLabels = ("", "ns", "web-1", "")


class KernelMap(FakeHash):
    """A counter map whose entries can be counted up and taken, as the kernel's can."""

    def __init__(self, key_size: int = len(pair(b"")), max_entries: int = 100) -> None:
        super().__init__([], max_entries)
        self.key_size = key_size
        self.value_size = 8
        self.counts: dict[bytes, int] = {}

    def add(self, key: bytes, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n
        self.rows = [(k, struct.pack("=Q", v)) for k, v in self.counts.items()]

    def take(self, key: bytes) -> bytes | None:
        count = self.counts.pop(key, None)
        self.rows = [(k, struct.pack("=Q", v)) for k, v in self.counts.items()]
        return None if count is None else struct.pack("=Q", count)


class World:
    """A collector over its own fake maps and attribution; cgroups and clock are shared."""

    def __init__(self, cgroups: Cgroups, clock: Clock, config: Config) -> None:
        self.forks = KernelMap()
        self.tables: dict[str, Any] = {
            "forks_total": self.forks,
            "threads_created_total": KernelMap(),
            "execs_total": KernelMap(),
            "exits_total": KernelMap(len(exited(b""))),
            "process_lifetime_seconds": FakeHash([(one(b"cc1"), hist({20: 2}, 3000))]),
            "overflow_events": FakePerCpuArray([[0, 0]] * len(MAP_IDS)),
            "overflow_hist": FakePerCpuArray([[hist({}, 0), hist({}, 0)]] * len(MAP_IDS)),
        }
        self.tables["exits_total"].add(exited(b"cc1", 7), 2)
        attribution = Attribution(cgroups, 100, "__overflow__", clock, 1.0)
        layout = CgroupLayout(None, frozenset(), None)
        sources = CgroupSources(layout, TaskLimits(None), attribution, CgroupResolver(None))
        reader = MapReader(self.tables.__getitem__, LAYOUTS, MAP_IDS)
        self.collector = ProcmondCollector(reader, config, STATUS, sources)

    def overflow(self, map_name: str, n: int) -> None:
        slots = [[0, 0] for _ in MAP_IDS]
        slots[MAP_IDS.index(map_name)] = [n, 0]
        self.tables["overflow_events"] = FakePerCpuArray(slots)  # type: ignore[arg-type]


def samples(text: str) -> dict[tuple, float]:
    """Every sample but the scrape's duration and the size of the text path's own cache
    (which collect() does not fill); fails if a series is shown twice."""
    seen: Counter[tuple] = Counter()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            seen[key] += 1
            cache = s.name == "procmond_table_entries" and s.labels["table"] == "label_texts"
            if s.name != "procmond_scrape_duration_seconds" and not cache:
                out[key] = s.value
    assert [k for k, n in seen.items() if n > 1] == []
    return out


def text_of(world: World) -> dict[tuple, float]:
    return samples(world.collector.render_text().decode())


def collected(world: World) -> dict[tuple, float]:
    registry = CollectorRegistry()
    registry.register(world.collector)  # type: ignore[arg-type]
    return samples(generate_latest(registry).decode())


def forks(m: dict[tuple, float], comm: str) -> dict[tuple[str, ...], float]:
    """{(unit, namespace, pod, container): count} of one command's forks."""
    out = {}
    for (name, labels), value in m.items():
        d = dict(labels)
        if name == "procmond_forks_total" and d["comm"] == comm:
            out[(d["unit"], d["namespace"], d["pod"], d["container"])] = value
    return out


def test_the_cached_text_path_shows_what_the_plain_path_shows_through_churn() -> None:
    """Two collectors fed the same kernel counts, one read through render_text() (the label
    cache), the other through collect() (every row decoded and attributed): the same samples
    after every step, each series once."""
    cgroups, clock = Cgroups(), Clock()
    cgroups.names = {7: (UNIT_A, True), 8: (POD_ONLY, False), 9: (UNIT_A, True)}
    cached, plain = World(cgroups, clock, Config()), World(cgroups, clock, Config())
    hostile = [b'q"u\\o\nte', b"bad\xff", b"bad\xfe", b"__overflow__"]

    def step(*adds: tuple[bytes, int]) -> None:
        for w in (cached, plain):
            for key, n in adds:
                w.forks.add(key, n)
        clock.now += 0.5
        assert text_of(cached) == collected(plain)

    step((pair(b"sh", b"bash", 7), 3), *((pair(h, b"bash", 7), 1) for h in hostile))
    step((pair(b"sh", b"bash", 7), 2), (pair(b"sh", b"bash", 8), 4))  # all rows known: no decode
    step((pair(b"sh", b"bash", 9), 1))  # a second cgroup of unit a: one series with the first
    cgroups.names[8] = (POD, True)  # late names: what 8 counts from now on shows under them
    step((pair(b"sh", b"bash", 8), 5), (pair(b"make", b"sh", 0), 1))
    cgroups.gone.add(7)  # unit a's first cgroup goes: seen gone, then folded
    step((pair(b"sh", b"bash", 9), 1), (pair(b"sh", b"bash", 8), 2))
    step()
    for w in (cached, plain):
        w.overflow("forks_total", 6)
    step((pair(b"sh", b"bash", 9), 2))
    shown = forks(text_of(cached), "sh")
    assert shown == {UNIT_A: 3 + 2 + 1 + 1 + 2, POD_ONLY: 4 + 5, POD: 2}
    assert cached.forks.counts.keys() == plain.forks.counts.keys()  # 7's entries taken in both
    assert all(struct.unpack_from("=Q", k)[0] != 7 for k in cached.forks.counts)


def test_a_cached_row_of_a_cgroup_that_goes_is_folded_under_the_same_labels() -> None:
    cgroups, clock = Cgroups(), Clock()
    cgroups.names = {7: (UNIT_A, True)}
    world = World(cgroups, clock, Config())
    world.forks.add(pair(b"sh", b"bash", 7), 3)
    assert forks(text_of(world), "sh") == {UNIT_A: 3}
    world.forks.add(pair(b"sh", b"bash", 7), 2)
    assert forks(text_of(world), "sh") == {UNIT_A: 5}  # from the cache
    cgroups.gone.add(7)
    clock.now += 0.5
    assert forks(text_of(world), "sh") == {UNIT_A: 5}  # seen gone: not yet taken
    assert world.forks.counts
    clock.now += 2
    m = text_of(world)
    assert forks(m, "sh") == {UNIT_A: 5}  # taken from the kernel map, folded
    assert not world.forks.counts
    assert m[("procmond_cgroup_entries_reclaimed_total", ())] == 2  # its forks and exits entries
    cgroups.names[10] = (UNIT_A, True)  # the unit again, in a new cgroup
    world.forks.add(pair(b"sh", b"bash", 10), 4)
    assert forks(text_of(world), "sh") == {UNIT_A: 9}
    world.forks.add(pair(b"sh", b"bash", 10), 1)
    assert forks(text_of(world), "sh") == {UNIT_A: 10}


def test_late_names_show_from_the_next_scrape_and_move_nothing() -> None:
    cgroups, clock = Cgroups(), Clock()
    cgroups.names = {8: (POD_ONLY, False)}  # the container's log link is not there yet
    world = World(cgroups, clock, Config())
    world.forks.add(pair(b"sh", b"bash", 8), 5)
    assert forks(text_of(world), "sh") == {POD_ONLY: 5}
    assert forks(text_of(world), "sh") == {POD_ONLY: 5}
    world.forks.add(pair(b"sh", b"bash", 8), 2)
    cgroups.names[8] = (POD, True)
    assert forks(text_of(world), "sh") == {POD_ONLY: 7, POD: 0}
    world.forks.add(pair(b"sh", b"bash", 8), 1)
    assert forks(text_of(world), "sh") == {POD_ONLY: 7, POD: 1}


def test_a_row_written_from_the_cache_that_gets_company_is_one_series() -> None:
    """A cached row, then a row of another cgroup with the same names: one series, their sum,
    at once and from then on."""
    cgroups, clock = Cgroups(), Clock()
    cgroups.names = {7: (UNIT_A, True), 9: (UNIT_A, True)}
    world = World(cgroups, clock, Config())
    world.forks.add(pair(b"sh", b"bash", 7), 3)
    text_of(world)
    assert forks(text_of(world), "sh") == {UNIT_A: 3}
    world.forks.add(pair(b"sh", b"bash", 9), 4)
    assert forks(text_of(world), "sh") == {UNIT_A: 7}
    world.forks.add(pair(b"sh", b"bash", 7), 1)
    assert forks(text_of(world), "sh") == {UNIT_A: 8}


def test_the_cache_stays_within_its_bound_when_label_sets_churn_beyond_it() -> None:
    """Entries deleted behind procmond's back leave texts nothing asks for (histogram keys
    here, never deleted by procmond): past the bound set from the config, texts are evicted,
    and every scrape still shows exactly what the maps hold."""
    config = Config(max_entries=4, histogram_max_entries=2)
    world = World(Cgroups(), Clock(), config)
    texts = world.collector._texts
    # four counters (4 live and folded together, __overflow__ each), one histogram (2,
    # __overflow__)
    assert texts.limit == label_sets_budget(config) == 4 * (4 + 1) + (2 + 1)
    evicted = False
    for i in range(100):
        world.forks.counts.clear()
        for j in range(4):
            world.forks.add(pair(b"c%d" % (i * 4 + j), b"sh", 0), j + 1)
        lifetimes = [(one(b"h%d" % (i * 2 + j)), hist({20: j + 1}, 10)) for j in range(2)]
        world.tables["process_lifetime_seconds"] = FakeHash(lifetimes)  # type: ignore[arg-type]
        m = text_of(world)
        shown = {dict(k)["comm"]: v for (n, k), v in m.items() if n == "procmond_forks_total"}
        assert shown == {f"c{i * 4 + j}": j + 1 for j in range(4)}
        counts = {
            dict(k)["comm"]: v
            for (n, k), v in m.items()
            if n == "procmond_process_lifetime_seconds_count"
        }
        assert counts == {f"h{i * 2 + j}": j + 1 for j in range(2)}
        assert len(texts) <= texts.limit
        evicted = evicted or len(texts) == texts.limit
    assert evicted


def test_label_texts_evict_the_oldest_label_sets_first() -> None:
    texts = LabelTexts(4)
    forks = texts.of("forks_total", ("comm",), ("comm",))
    for i in range(3):
        forks.of_row((b"folded%d" % i,))
    forks.follow(RawRows([(b"k0k1k2", struct.pack("=3Q", 1, 2, 3), 3)], 2))  # three new rows
    assert forks.rows == [None, None, None] and forks.unknown == 3
    for i in range(3):
        forks.keep(i, forks.text((b"c%d" % i,)))
    assert len(texts) == 6 and forks.unknown == 0
    texts.trim()
    assert len(texts) == 4
    assert forks.rows == [b'comm="c0"', b'comm="c1"', b'comm="c2"']  # the two oldest sets went
    texts.limit = 1
    texts.trim()
    assert forks.rows == [b'comm="c0"', None, None]  # then the last label set, then rows
    assert list(forks.shown) == [b'comm="c0"'] and len(texts) == 1 and forks.unknown == 2
