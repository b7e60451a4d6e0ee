"""The attribution invariants, on fake cgroups and a fake kernel map (the real ones are in
tests/e2e/test_attribution.py): exact, monotonic, nothing lost, bounded, late names move
nothing."""

from __future__ import annotations

from dataclasses import dataclass, field

from procmond.attribution import UNKNOWN, Attribution, CgroupLabels

UNIT_A: CgroupLabels = ("a.service", "", "", "")
POD: CgroupLabels = ("", "ns", "web-1", "nginx")


@dataclass
class Cgroups:
    names: dict[int, tuple[CgroupLabels, bool]] = field(default_factory=dict)
    gone: set[int] = field(default_factory=set)

    def labels(self, cgroup_id: int) -> tuple[CgroupLabels, bool]:
        return self.names.get(cgroup_id, (UNKNOWN, True))

    def alive(self, cgroup_id: int) -> bool | None:
        return cgroup_id not in self.gone


@dataclass
class KernelMap:
    """raw key → (cgroup id, comm, count)"""

    entries: dict[bytes, tuple[int, str, int]] = field(default_factory=dict)

    def add(self, cgroup_id: int, comm: str, n: int = 1) -> None:
        key = f"{cgroup_id}/{comm}".encode()
        old = self.entries.get(key, (cgroup_id, comm, 0))[2]
        self.entries[key] = (cgroup_id, comm, old + n)

    def rows(self) -> list[tuple[bytes, tuple[int, str], int]]:
        return [(k, (i, c), n) for k, (i, c, n) in self.entries.items()]

    def take(self, raw_key: bytes) -> int | None:
        entry = self.entries.pop(raw_key, None)
        return None if entry is None else entry[2]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def setup(capacity: int = 100) -> tuple[Cgroups, KernelMap, Clock, Attribution]:
    cgroups, kernel, clock = Cgroups(), KernelMap(), Clock()
    return cgroups, kernel, clock, Attribution(cgroups, capacity, "__overflow__", clock, 1.0)


def scrape(attribution: Attribution, kernel: KernelMap) -> dict[tuple, int]:
    return attribution.rows("forks_total", kernel.rows(), kernel)  # type: ignore[arg-type]


def test_counts_show_under_their_cgroups_labels() -> None:
    cgroups, kernel, _, attribution = setup()
    cgroups.names = {7: (UNIT_A, True), 8: (POD, True)}
    kernel.add(7, "sh", 3)
    kernel.add(8, "sh", 2)
    kernel.add(9, "sh", 1)  # no unit, no pod
    assert scrape(attribution, kernel) == {
        (*UNIT_A, "sh"): 3,
        (*POD, "sh"): 2,
        (*UNKNOWN, "sh"): 1,
    }


def test_a_gone_cgroup_is_reclaimed_without_losing_a_count() -> None:
    cgroups, kernel, clock, attribution = setup()
    cgroups.names = {7: (UNIT_A, True)}
    kernel.add(7, "sh", 3)
    assert scrape(attribution, kernel) == {(*UNIT_A, "sh"): 3}
    kernel.add(7, "sh", 2)  # counted before the rmdir, after the last scrape
    cgroups.gone.add(7)
    clock.now = 0.5
    assert scrape(attribution, kernel) == {(*UNIT_A, "sh"): 5}  # seen gone: not yet taken
    assert kernel.entries
    clock.now = 2.0
    assert scrape(attribution, kernel) == {(*UNIT_A, "sh"): 5}
    assert not kernel.entries and attribution.reclaimed == 1
    # the same unit started again (a new cgroup): its series goes on from there
    cgroups.names[10] = (UNIT_A, True)
    kernel.add(10, "sh", 4)
    assert scrape(attribution, kernel) == {(*UNIT_A, "sh"): 9}


def test_late_names_move_nothing() -> None:
    cgroups, kernel, _, attribution = setup()
    cgroups.names = {8: (("", "ns", "web-1", ""), False)}  # the container's link is not there yet
    kernel.add(8, "sh", 5)
    before = scrape(attribution, kernel)
    assert before == {("", "ns", "web-1", "", "sh"): 5}
    kernel.add(8, "sh", 2)  # counted while the names were still unknown
    cgroups.names[8] = (POD, True)
    after = scrape(attribution, kernel)
    # what was counted before the names were known stays where it was; only what comes after
    # them is under the full names
    assert after == {("", "ns", "web-1", "", "sh"): 7, (*POD, "sh"): 0}
    kernel.add(8, "sh", 1)
    assert scrape(attribution, kernel) == {("", "ns", "web-1", "", "sh"): 7, (*POD, "sh"): 1}


def test_folded_label_sets_are_bounded_and_the_rest_overflows() -> None:
    cgroups, kernel, clock, attribution = setup(capacity=3)
    total = 0
    for i in range(1, 11):  # ten short-lived units, each gone after one scrape
        cgroups.names[i] = ((f"run-{i}.service", "", "", ""), True)
        kernel.add(i, "sh", i)
        total += i
        scrape(attribution, kernel)
        cgroups.gone.add(i)
        clock.now += 2
        scrape(attribution, kernel)
        clock.now += 2
    shown = scrape(attribution, kernel)
    assert sum(shown.values()) == total  # nothing lost
    assert len(shown) == 4 and shown[("__overflow__",) * 5] == total - (1 + 2 + 3)
    assert not kernel.entries  # every kernel entry given back


def test_no_series_ever_goes_down() -> None:
    """Under churn, with room for two folded label sets: every series shown only grows (or,
    once its cgroup is gone and no room is left, hands its count to __overflow__), and each
    scrape shows every count exactly once."""
    cgroups, kernel, clock, attribution = setup(capacity=2)
    seen: dict[tuple, int] = {}
    for step in range(40):
        cgroup_id = 1 + step % 7
        cgroups.names.setdefault(cgroup_id, ((f"u{cgroup_id}.service", "", "", ""), True))
        if step % 5 == 4:
            cgroups.gone.add(cgroup_id)
        kernel.add(cgroup_id, "sh", 1)
        clock.now += 0.7
        shown = scrape(attribution, kernel)
        for labels, value in shown.items():
            assert value >= seen.get(labels, 0), (step, labels)
            seen[labels] = value
        assert sum(shown.values()) == step + 1
        assert len(kernel.entries) <= 7


def test_cgroups_no_entry_names_are_forgotten() -> None:
    cgroups, kernel, clock, attribution = setup()
    for i in range(1, 50):
        kernel.add(i, "sh")
        cgroups.gone.add(i)
        scrape(attribution, kernel)
        clock.now += 2
        scrape(attribution, kernel)  # reclaimed
    clock.now += 1000
    attribution.forget_unused()
    assert not attribution._cgroups and not attribution._entries
    assert sum(scrape(attribution, kernel).values()) == 49
