"""The attribution invariants, on fake cgroups and a fake kernel map (the real ones are in
tests/e2e/test_attribution.py): exact, monotonic, nothing lost, bounded, late names move
nothing."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from procmond.scrape.attribution import UNKNOWN, Attribution, CgroupLabels

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
    # the first two gone units kept their series; from then on the live unit (seen gone, not
    # yet reclaimed: run-10 at the end) left no room, so each reclaimed one overflowed
    assert len(shown) == 3 + 1 and shown[("__overflow__",) * 5] == total - (1 + 2 + 10)
    assert set(shown) - {("__overflow__",) * 5} == {
        (f"run-{i}.service", "", "", "", "sh") for i in (1, 2, 10)
    }
    clock.now += 2
    shown = scrape(attribution, kernel)  # run-10 reclaimed: room for it now
    assert len(shown) == 4 and shown[("run-10.service", "", "", "", "sh")] == 10
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


def test_live_and_folded_label_sets_share_the_bound() -> None:
    """Units come and go, a varying number alive at once: every scrape shows at most
    ``capacity`` series plus __overflow__, each count exactly once, and no series shown by a
    live entry ever goes down (gone cgroups' counts are what yields)."""
    cgroups, kernel, clock, attribution = setup(capacity=5)
    made, alive, shown_before = 0, [], {}
    for step in range(300):
        if step % 3 == 0 or not alive:  # a new unit, with one to four forks
            cgroup_id = 100 + step
            cgroups.names[cgroup_id] = ((f"u{step}.service", "", "", ""), True)
            alive.append(cgroup_id)
        target = alive[step % len(alive)]
        kernel.add(target, "sh", 1 + step % 4)
        made += 1 + step % 4
        if len(alive) > 1 + (step // 20) % 5:  # between 1 and 5 alive, in waves
            cgroups.gone.add(alive.pop(0))
        clock.now += 0.7
        shown = scrape(attribution, kernel)
        assert sum(shown.values()) == made
        assert len([s for s in shown if s != ("__overflow__",) * 5]) <= 5, step
        live = {(*cgroups.names[i][0], "sh") for i, _, _ in kernel.entries.values()}
        for labels in live & set(shown_before):
            assert shown[labels] >= shown_before[labels], (step, labels)
        shown_before = shown
    assert shown[("__overflow__",) * 5] > 0  # the bound was reached


def test_live_label_sets_take_the_room_of_the_oldest_folded_ones() -> None:
    cgroups, kernel, clock, attribution = setup(capacity=3)
    for i in (1, 2, 3):  # three units gone: their label sets fill the room
        cgroups.names[i] = ((f"old-{i}.service", "", "", ""), True)
        kernel.add(i, "sh", 10 * i)
        cgroups.gone.add(i)
    scrape(attribution, kernel)
    clock.now += 2
    assert len(scrape(attribution, kernel)) == 3 and not kernel.entries
    cgroups.names[4] = (UNIT_A, True)  # a live unit: the oldest folded set makes room
    kernel.add(4, "sh", 1)
    clock.now += 2
    assert scrape(attribution, kernel) == {
        ("old-2.service", "", "", "", "sh"): 20,
        ("old-3.service", "", "", "", "sh"): 30,
        (*UNIT_A, "sh"): 1,
        ("__overflow__",) * 5: 10,
    }


def test_a_gone_cgroup_whose_labels_are_live_keeps_its_count_there_when_full() -> None:
    """A unit restarted (a new cgroup, the same labels) while gone units fill the room: the
    old cgroup's count stays in the unit's series, which costs no room, so it never drops."""
    cgroups, kernel, clock, attribution = setup(capacity=2)
    for i in (5, 6):  # two gone units fill the room
        cgroups.names[i] = ((f"old-{i}.service", "", "", ""), True)
        kernel.add(i, "sh", 1)
        cgroups.gone.add(i)
    scrape(attribution, kernel)
    clock.now += 2
    scrape(attribution, kernel)
    cgroups.names.update({1: (UNIT_A, True), 2: (UNIT_A, True)})
    kernel.add(1, "sh", 5)
    clock.now += 2
    shown = scrape(attribution, kernel)
    assert shown[(*UNIT_A, "sh")] == 5 and len(shown) == 3  # old-5 made room (to __overflow__)
    cgroups.gone.add(1)  # restarted: 2 is the new cgroup of unit a
    kernel.add(2, "sh", 2)
    clock.now += 2
    assert scrape(attribution, kernel)[(*UNIT_A, "sh")] == 7
    clock.now += 2
    shown = scrape(attribution, kernel)
    assert shown[(*UNIT_A, "sh")] == 7 and sum(shown.values()) == 9
    assert 1 not in {i for i, _, _ in kernel.entries.values()}  # reclaimed, kept under a


def test_gone_cgroups_are_forgotten_once_reclaimed_and_the_rest_is_capped() -> None:
    cgroups, kernel, clock, attribution = setup(capacity=100)
    attribution.max_cgroups = 10
    for i in range(1, 200):  # churn: each unit forks, is seen gone, then reclaimed
        kernel.add(i, "sh")
        cgroups.gone.add(i)
        clock.now += 1.1
        scrape(attribution, kernel)
        attribution.forget_unused()
        assert len(attribution._cgroups) <= 2, i  # the one seen gone, the one reclaimed
    for i in range(1000, 1030):  # more live cgroups than the cap, each with an entry
        kernel.add(i, "sh")
    scrape(attribution, kernel)
    attribution.forget_unused()
    assert len(attribution._cgroups) == 30 + 1  # every one a scrape saw is kept (199 too)
    kernel.entries = {k: v for k, v in kernel.entries.items() if v[0] >= 1020}
    clock.now += 1
    scrape(attribution, kernel)
    attribution.forget_unused()
    assert len(attribution._cgroups) == 10  # the least recently seen went first
    assert attribution.sizes()["attribution_cgroups"] == (10, 10)


def unit_a_folded(
    cgroups: Cgroups, kernel: KernelMap, clock: Clock, attribution: Attribution
) -> dict[tuple, int]:
    """Cgroup 7 (a.service) counts 3 and goes; scrapes until its entry is folded."""
    cgroups.names[7] = (UNIT_A, True)
    kernel.add(7, "sh", 3)
    scrape(attribution, kernel)
    cgroups.gone.add(7)
    clock.now = 2.0
    scrape(attribution, kernel)
    clock.now = 4.0
    return scrape(attribution, kernel)


def test_a_restart_that_adopts_the_probe_keeps_folded_and_late_named_counts() -> None:
    """state() → JSON → restore() in a new daemon's Attribution, with the same kernel map
    (the adopted probe's): every series goes on where it was, nothing moves."""
    cgroups, kernel, clock, attribution = setup()
    cgroups.names[8] = (("", "ns", "web-1", ""), False)
    kernel.add(8, "sh", 5)
    before = unit_a_folded(cgroups, kernel, clock, attribution)  # 8 recorded: late names
    assert attribution.reclaimed == 1 and before[(*UNIT_A, "sh")] == 3
    saved = json.loads(json.dumps(attribution.state()))
    restarted = Attribution(cgroups, 100, "__overflow__", clock, 1.0)  # the same host
    restarted.restore(saved)
    assert restarted.state() == attribution.state()
    cgroups.names[8] = (POD, True)
    kernel.add(8, "sh", 2)
    clock.now = 6.0
    after = restarted.rows("forks_total", kernel.rows(), kernel)  # type: ignore[arg-type]
    assert after == scrape(attribution, kernel)  # as if the daemon had never restarted
    assert after[(*UNIT_A, "sh")] == 3 and after[("", "ns", "web-1", "", "sh")] == 7
    kernel.add(8, "sh", 1)
    clock.now = 8.0
    after = restarted.rows("forks_total", kernel.rows(), kernel)  # type: ignore[arg-type]
    assert after == scrape(attribution, kernel)
    assert after[(*POD, "sh")] == 1


def test_an_upgrade_takes_over_only_what_was_folded() -> None:
    cgroups, kernel, clock, attribution = setup()
    unit_a_folded(cgroups, kernel, clock, attribution)
    _, new_kernel, _, new = setup()
    new.take_over(json.loads(json.dumps(attribution.state())))
    new.take_over(json.loads(json.dumps(attribution.state())))  # two retired probes add up
    assert new.rows("forks_total", new_kernel.rows(), new_kernel) == {(*UNIT_A, "sh"): 6}  # type: ignore[arg-type]
    assert new.reclaimed == 2
