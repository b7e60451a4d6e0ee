"""Kernel-map rows → exposition, on fake tables (the real ones are in tests/e2e)."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from procmond.config import Config
from procmond.kernel import privileges
from procmond.kernel.maps import Histogram, MapReader
from procmond.scrape.collector import ProbeStatus, ProcmondCollector
from procmond.scrape.metrics import COUNTERS, HISTOGRAMS, cumulative_buckets, series_budget
from tests.unit.fakes import (
    LAYOUTS,
    MAP_IDS,
    FakeHash,
    FakePerCpuArray,
    exited,
    failure,
    hist,
    one,
    pair,
)

STATUS = ProbeStatus(
    {"task_newtask": True, "sys_enter_clone": False}, True, "9.9", "0.26.0", "6.18.0"
)


def tables(**overrides: Any) -> dict[str, Any]:
    t: dict[str, Any] = {
        "forks_total": FakeHash([(pair(b"bash", b"sshd"), 3), (pair(b"make", b"bash"), 40)]),
        "threads_created_total": FakeHash([(pair(b"java", b"systemd"), 7)]),
        "execs_total": FakeHash([(pair(b"cc1", b"make"), 12)]),
        "exits_total": FakeHash([(exited(b"cc1"), 12)]),
        "fork_failures_total": FakeHash([(failure(b"bomb", 11), 70), (failure(b"x", 4095), 1)]),
        "process_lifetime_seconds": FakeHash([(one(b"cc1"), hist({20: 2, 28: 1}, 300_000_000))]),
        "fork_duration_seconds": FakeHash([]),
        "overflow_events": FakePerCpuArray([[0, 0]] * len(MAP_IDS)),
        "overflow_hist": FakePerCpuArray([[hist({}, 0), hist({}, 0)]] * len(MAP_IDS)),
    }
    t.update(overrides)
    return t


DEFAULTS = Config(syscall_probes=True)  # every family present


def scrape(t: dict[str, Any], config: Config = DEFAULTS) -> dict[tuple, float]:
    registry = CollectorRegistry()
    registry.register(ProcmondCollector(MapReader(t.__getitem__, LAYOUTS, MAP_IDS), config, STATUS))
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_counters_carry_both_labels() -> None:
    m = scrape(tables())
    assert m[("procmond_forks_total", (("comm", "make"), ("parent_comm", "bash")))] == 40
    assert m[("procmond_execs_total", (("comm", "cc1"), ("parent_comm", "make")))] == 12
    assert m[("procmond_exits_total", (("comm", "cc1"),))] == 12
    assert m[("procmond_fork_failures_total", (("comm", "bomb"), ("error", "EAGAIN")))] == 70
    assert m[("procmond_fork_failures_total", (("comm", "x"), ("error", "4095")))] == 1
    assert m[("procmond_scrape_success", ())] == 1


def test_histogram_buckets_are_cumulative_with_sum_and_count() -> None:
    m = scrape(tables())
    key = "procmond_process_lifetime_seconds"
    comm = ("comm", "cc1")
    assert m[(f"{key}_bucket", (comm, ("le", "0.000262144")))] == 0  # 2^18 ns
    assert m[(f"{key}_bucket", (comm, ("le", "0.001048576")))] == 2  # 2^20 ns
    assert m[(f"{key}_bucket", (comm, ("le", "0.268435456")))] == 3  # 2^28 ns
    assert m[(f"{key}_bucket", (comm, ("le", "+Inf")))] == 3
    assert m[(f"{key}_count", (comm,))] == 3
    assert m[(f"{key}_sum", (comm,))] == 0.3


def test_overflow_becomes_a_series_and_a_self_metric() -> None:
    overflow = [[0, 0]] * len(MAP_IDS)
    overflow[MAP_IDS.index("forks_total")] = [5, 6]
    hists = [[hist({}, 0)]] * len(MAP_IDS)
    hists[MAP_IDS.index("process_lifetime_seconds")] = [hist({30: 1}, 10**9), hist({30: 2}, 0)]
    m = scrape(
        tables(overflow_events=FakePerCpuArray(overflow), overflow_hist=FakePerCpuArray(hists))
    )
    over = (("comm", "__overflow__"), ("parent_comm", "__overflow__"))
    assert m[("procmond_forks_total", over)] == 11
    assert m[("procmond_map_overflow_events_total", (("map", "forks_total"),))] == 11
    assert m[("procmond_process_lifetime_seconds_count", (("comm", "__overflow__"),))] == 3


def test_names_that_decode_alike_are_one_series() -> None:
    forks = FakeHash(
        [
            (pair(b"a\xff", b"x"), 1),
            (pair(b"a\xfe", b"x"), 2),
            (pair(b"__overflow__", b"__overflow__"), 4),
        ]
    )
    overflow = [[0]] * len(MAP_IDS)
    overflow[0] = [10]
    m = scrape(tables(forks_total=forks, overflow_events=FakePerCpuArray(overflow)))
    assert m[("procmond_forks_total", (("comm", "a\ufffd"), ("parent_comm", "x")))] == 3
    over = (("comm", "__overflow__"), ("parent_comm", "__overflow__"))
    assert m[("procmond_forks_total", over)] == 14


def test_dropped_labels_are_not_exposed() -> None:
    m = scrape(
        tables(forks_total=FakeHash([(pair(b"bash"), 3), (pair(b"make"), 4)])),
        Config(labels=("comm",)),
    )
    assert m[("procmond_forks_total", (("comm", "bash"),))] == 3
    failures = FakeHash([(failure(b"", 11), 5)])
    m = scrape(
        tables(forks_total=FakeHash([(pair(b""), 9)]), fork_failures_total=failures),
        Config(labels=(), syscall_probes=True),
    )
    assert m[("procmond_forks_total", ())] == 9
    assert m[("procmond_fork_failures_total", (("error", "EAGAIN"),))] == 5  # error stays


def test_histograms_off_means_no_histogram_families() -> None:
    m = scrape(tables(), Config(histograms=False))
    assert not [k for k in m if k[0].startswith("procmond_process_lifetime")]
    assert ("procmond_map_entries", (("map", "process_lifetime_seconds"),)) not in m


def test_a_failing_map_is_a_metric_not_a_failed_scrape() -> None:
    m = scrape(tables(execs_total=FakeHash([], broken=True)))
    assert m[("procmond_scrape_success", ())] == 0
    assert m[("procmond_forks_total", (("comm", "make"), ("parent_comm", "bash")))] == 40
    assert not [k for k in m if k[0] == "procmond_execs_total"]


def test_self_metrics() -> None:
    m = scrape(tables())
    assert m[("procmond_probe_attached", (("probe", "sys_enter_clone"),))] == 0
    assert m[("procmond_btf_offsets_in_use", ())] == 1
    info = (("bcc_version", "0.26.0"), ("kernel", "6.18.0"), ("version", "9.9"))
    assert m[("procmond_build_info", info)] == 1
    assert m[("procmond_map_entries", (("map", "forks_total"),))] == 2
    assert m[("procmond_map_max_entries", (("map", "forks_total"),))] == 100
    # In-flight timings live in per-task storage: lost ones are counted, there is no capacity.
    assert m[("procmond_map_overflow_events_total", (("map", "inflight"),))] == 0
    assert ("procmond_map_max_entries", (("map", "inflight"),)) not in m


def test_cumulative_buckets_edges() -> None:
    slots = [0] * 64
    slots[0], slots[10], slots[63] = 1, 2, 4
    buckets = cumulative_buckets(Histogram(tuple(slots), 0), (0, 10, 11))
    assert buckets == [("1e-09", 1), ("1.024e-06", 3), ("2.048e-06", 3), ("+Inf", 7)]


def test_series_budget_counts_every_bucket() -> None:
    pairs = ("comm", "parent_comm")
    c = Config(max_entries=10, histogram_max_entries=2, syscall_probes=True, labels=pairs)
    per_label_set = sum(len(h.bucket_exponents) + 3 for h in HISTOGRAMS)
    assert series_budget(c) == len(COUNTERS) * 11 + 3 * per_label_set
    c = Config(max_entries=10, histograms=False, syscall_probes=True, labels=pairs)
    assert series_budget(c) == len(COUNTERS) * 11
    # the README's figures: the defaults (4 counters of max_entries label sets, live and
    # folded cgroups' together, and __overflow__; the lifetime histogram), and the same with
    # syscall probes
    assert series_budget(Config()) == 4 * (4096 + 1) + 257 * 19 == 21_271
    assert series_budget(Config(syscall_probes=True)) == 5 * 4097 + 257 * (19 + 14) == 28_966


def test_series_budget_counts_dropped_labels() -> None:
    """A dropped label is zeroed in the kernel: with no command name a counter holds one
    label set, the fork-failure counter one per error (+ __overflow__ under `error`)."""
    buckets = {h.name: len(h.bucket_exponents) + 3 for h in HISTOGRAMS}
    assert buckets == {
        "procmond_process_lifetime_seconds": 19,
        "procmond_fork_duration_seconds": 14,
    }
    timed = {"syscall_probes": True}
    # forks, threads, execs, exits: 1 each; failures: 4095 errors + __overflow__; 19 + 14
    assert series_budget(Config(labels=(), **timed)) == 4 + 4095 + 1 + 19 + 14
    assert series_budget(Config(labels=(), max_entries=10, **timed)) == 4 + 10 + 1 + 19 + 14
    assert series_budget(Config(labels=())) == 4 + 19
    # parent_comm alone: the three pair maps stay full-size; exits, failures, histograms not
    assert (
        series_budget(
            Config(labels=("parent_comm",), max_entries=10, histogram_max_entries=2, **timed)
        )
        == 3 * 11 + 1 + 11 + 19 + 14
    )
    assert series_budget(
        Config(labels=("comm",), max_entries=10, histogram_max_entries=2, **timed)
    ) == 5 * 11 + 3 * (19 + 14)


def test_text_rendering_equals_prometheus_clients() -> None:
    """render_text() (procmond's own renderer for the map families) gives exactly the samples
    prometheus_client renders from collect(), hostile names included."""
    forks = FakeHash(
        [
            (pair(b'q"u\\o\nte', b"{x}"), 3),
            (pair(b"bad\xff", b"p"), 4),
            (pair(b"make", b"bash"), 40),
        ]
    )
    t = tables(forks_total=forks)
    collector = ProcmondCollector(MapReader(t.__getitem__, LAYOUTS, MAP_IDS), DEFAULTS, STATUS)
    registry = CollectorRegistry()
    registry.register(collector)

    def samples(text: str) -> dict[tuple, float]:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name != "procmond_scrape_duration_seconds"
        }

    ours = collector.render_text().decode()
    theirs = generate_latest(registry).decode()
    assert samples(ours) == samples(theirs)
    assert len(samples(ours)) > 50
    for family in ("procmond_forks_total", "procmond_process_lifetime_seconds"):
        assert f"# TYPE {family} " in ours


def test_without_syscall_probes_their_families_are_absent() -> None:
    m = scrape(tables(), Config(syscall_probes=False))
    names = {k[0] for k in m}
    assert "procmond_fork_failures_total" not in names
    assert "procmond_fork_duration_seconds_count" not in names
    assert "procmond_process_lifetime_seconds_count" in names
    assert ("procmond_map_entries", (("map", "fork_failures_total"),)) not in m


def test_capabilities_retained_is_what_the_kernel_says_at_each_scrape(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    held = iter([0, 1])
    monkeypatch.setattr(privileges, "retained_count", lambda: next(held))
    assert scrape(tables())[("procmond_capabilities_retained", ())] == 0
    assert scrape(tables())[("procmond_capabilities_retained", ())] == 1
