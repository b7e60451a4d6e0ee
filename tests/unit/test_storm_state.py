"""Storm state across a restart (procmond/storms/detector.py ``state``/``restore``, the
monitor's, procmond/lifecycle/state.py's file), with a fake clock: a storm going on when the
daemon restarts is reported on as one storm, from its real start, and no counter goes down."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from procmond.lifecycle.state import StateFile
from procmond.storms.detector import (
    COMMANDS_MAX,
    StormContinues,
    StormCounts,
    StormDetector,
    StormEnded,
    StormStarted,
)
from procmond.storms.monitor import CommandForks, StormMonitor
from procmond.text import printable, quoted
from tests.unit.creator_fakes import FakeAlarm, creator_entry
from tests.unit.fakes import LAYOUTS, FakeHash, pair
from tests.unit.test_storms import SH, FakeProbe, Host

WALL = 1_800_000_000.0  # the wall clock when the fake monotonic clock reads 0
HOSTILE = b'\xff"\n\x1b[31m'  # a command name is any bytes


def through_json(data: dict[str, Any]) -> dict[str, Any]:
    """As the state file holds it."""
    return json.loads(json.dumps(data))


def restarted(host: Host, gap: float = 0.0, counted_since: bool = True) -> tuple[list, list]:
    """The host's detector replaced by a new one that takes on its state after ``gap``
    seconds with no detector (creations go on at the rates of the last second); the new
    detector's monotonic clock is another process's (offset), its wall clock the same."""
    old = host.detector
    saved = through_json(old.state(host.now, WALL + host.now))
    host.now += gap
    host.detector = StormDetector(old.threshold, old.end_after, old.progress_after)
    if not counted_since:
        host.read = None
    return host.detector.restore(saved, host.now, WALL + host.now, counted_since)


def storm_events(host: Host) -> list[tuple]:
    """What the log says of storms: type, command, created, seconds."""
    out = []
    for e in host.storm_events():
        if isinstance(e, StormStarted):
            out.append(("started", e.comm))
        elif isinstance(e, StormContinues):
            out.append(("continues", e.comm, e.created, round(e.seconds)))
        elif isinstance(e, StormEnded):
            out.append(("ended", e.comm, e.created, round(e.seconds), e.peak))
    return out


def run(host: Host, rates: list[dict[bytes, int]]) -> None:
    for r in rates:
        host.step(r)


STORM = [{HOSTILE: 3000}] * 70 + [{HOSTILE: 10}] * 8


def test_a_restart_mid_storm_reports_what_an_uninterrupted_daemon_reports() -> None:
    """One start line, the reminder at a minute from the real start, and the end line's
    duration and total as if no restart had happened."""
    steady = Host(StormDetector(2000))
    run(steady, STORM)
    host = Host(StormDetector(2000))
    run(host, STORM[:30])
    kept, over = restarted(host)
    assert (kept, over) == ([HOSTILE], [])
    run(host, STORM[30:])
    assert storm_events(host) == storm_events(steady)
    assert [e[0] for e in storm_events(host)] == ["started", "continues", "ended"]


def test_creations_while_no_daemon_ran_count_in_the_storm() -> None:
    """With the same probe, the new daemon reads forks_total on from where the last one had
    read it: the two seconds without a daemon are in the total, as if it had ticked in them."""
    steady = Host(StormDetector(2000))
    run(steady, STORM[:30] + [{HOSTILE: 3000}] * 2 + STORM[30:])
    host = Host(StormDetector(2000))
    run(host, STORM[:30])
    kept, _ = restarted(host, gap=2.0)
    host.forks[HOSTILE] += 2 * 3000  # created while no daemon ran
    host.created += 2 * 3000
    assert kept == [HOSTILE]
    run(host, STORM[30:])
    assert storm_events(host) == storm_events(steady)
    assert [e[0] for e in storm_events(host)] == ["started", "continues", "ended"]


def test_after_an_upgrade_the_storm_goes_on_from_the_new_probes_first_read() -> None:
    """Another probe: the old counts are no baseline. The storm goes on, one start line; what
    was created before the new daemon's first read of its own map is not in the total."""
    host = Host(StormDetector(2000))
    run(host, STORM[:30])
    created_before = host.detector.storms[HOSTILE].created
    kept, _ = restarted(host, gap=1.0, counted_since=False)
    assert kept == [HOSTILE]
    run(host, STORM[30:])
    ended = host.storm_events()[-1]
    assert isinstance(ended, StormEnded)
    assert ended.created >= created_before + 3000 * 38  # the 40 s after, but the first reads
    assert [type(e) for e in host.storm_events()].count(StormStarted) == 1


@pytest.mark.parametrize(("gap", "kept"), [(3.9, True), (4.0, False), (60.0, False)])
def test_a_storm_the_end_rule_would_have_ended_is_not_taken_on(gap: float, kept: bool) -> None:
    """Last above the threshold at the last tick; the END rule ends it ``end_after`` (5 s)
    later: counted from that tick, a second before the save plus the gap."""
    host = Host(StormDetector(2000, end_after=5.0))
    run(host, [{SH: 3000}] * 10 + [{SH: 10}])  # the last second below: saved 1 s after above
    assert restarted(host, gap=gap) == (([SH], []) if kept else ([], [SH]))
    assert bool(host.detector.storms) is kept


def test_a_wall_clock_set_back_does_not_put_a_storm_in_the_future() -> None:
    host = Host(StormDetector(2000))
    run(host, [{SH: 3000}] * 10)
    saved = through_json(host.detector.state(host.now, WALL + host.now))
    detector = StormDetector(2000)
    assert detector.restore(saved, host.now, WALL + host.now - 3600, True) == ([SH], [])
    storm = detector.storms[SH]
    assert storm.started <= storm.last_above <= host.now


def test_the_saved_storms_are_bounded() -> None:
    detector = StormDetector(10)
    data = {
        "storms": [
            {
                "comm": {"b": f"c{i}".encode().hex()},
                "started": WALL,
                "created": 100,
                "peak": 50.0,
                "last_above": WALL,
                "progress": 0,
                "next_progress": WALL + 60,
            }
            for i in range(COMMANDS_MAX + 50)
        ],
        "commands_at": WALL,
    }
    kept, over = detector.restore(data, 5.0, WALL + 1, True)
    assert len(kept) == len(detector.storms) == COMMANDS_MAX and over == []


def test_storm_counters_never_go_down_and_stay_bounded() -> None:
    counts = StormCounts("__overflow__", limit=2)
    for comm in ("a", "b", "c", "a"):
        counts.storm_started(comm)
    counts.storm_ended("a")
    counts.storm_ended("a")
    again = StormCounts("__overflow__", limit=2)
    again.storm_started("d")  # a storm this daemon saw before taking on the state
    again.restore(through_json(counts.state()))
    assert again.started == {"d": 1, "a": 2, "__overflow__": 2}  # b joins c in the overflow
    assert again.active == {"d": 1, "a": 0, "__overflow__": 0}  # shown at 0 until resumed
    again.storm_resumed("a")
    assert again.active["a"] == 1


def test_command_forks_restored_count_only_the_saved_entries_from_their_saved_counts() -> None:
    table = FakeHash([(pair(b"a", b"x"), 10), (pair(b"a", b"y"), 5), (pair(b"b"), 7)])
    first = CommandForks(table, LAYOUTS["forks_total"])
    first.read()
    saved = first.counts_of({b"a"})
    assert saved == {pair(b"a", b"x"): 10, pair(b"a", b"y"): 5}
    table.rows = FakeHash([(pair(b"a", b"x"), 40), (pair(b"a", b"y"), 3), (pair(b"b"), 90)]).rows
    second = CommandForks(table, LAYOUTS["forks_total"])
    second.restore(saved)
    assert second.read() == {b"a": 33}  # y deleted and made anew: all of its 3; b not asked for
    table.rows = FakeHash([(pair(b"a", b"x"), 41), (pair(b"a", b"y"), 3), (pair(b"b"), 95)]).rows
    assert second.read() == {b"a": 1, b"b": 5}


def monitor_on(probe: FakeProbe, proc: Path, now: list[float]) -> StormMonitor:
    monitor = StormMonitor(probe, clock=lambda: now[0], proc=proc, wall=lambda: WALL + now[0])
    monitor._alarm = FakeAlarm()
    return monitor


def test_the_monitor_restarted_mid_storm_logs_one_start_and_the_whole_storm_at_its_end(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two monitors on the same probe, the state passed through the file: the second logs no
    start line, counts what the first counted plus what was made while none ran, and its
    procmond_storms_total goes on from the first's."""
    probe = FakeProbe()
    table = probe.forks
    now = [0.0]
    file = StateFile(tmp_path / "state-x.json", 42)
    first = monitor_on(probe, tmp_path, now)
    first.keep_with(lambda storms: file.save({"storms": storms}))
    first._detector = StormDetector(100)  # as configure() makes it, without the thread
    key = pair(HOSTILE, b"bash", 7)
    made = [0]

    def second(monitor: StormMonitor, forks: int) -> None:
        now[0] += 1
        made[0] += forks
        (tmp_path / "stat").write_text(f"processes {10_000 + made[0]}\n")
        table.rows = FakeHash([(key, made[0])]).rows
        probe.maps["creators"].rows = [creator_entry(50, made[0], 1, HOSTILE)]  # type: ignore[attr-defined]
        monitor.tick()

    caplog.set_level(logging.INFO)
    for _ in range(6):
        second(first, 500)
    counted = first._detector.storms[HOSTILE].created
    first.stop()  # SIGTERM: a last save
    stopped_at = made[0]
    now[0] += 2  # two seconds with no daemon, the storm going on
    made[0] += 1000
    data = StateFile(tmp_path / "state-x.json", 42).load()
    assert data is not None
    then = monitor_on(probe, tmp_path, now)
    then.restore(data["storms"], same_probe=True)
    then._detector = StormDetector(100)
    then._resume()
    metrics = {m.name: m.samples for m in then.collect()}
    assert [s.value for s in metrics["procmond_storms"]] == [1]
    assert [s.value for s in metrics["procmond_storm_active"]] == [1]
    for _ in range(3):
        second(then, 500)
    for _ in range(7):
        second(then, 0)
    lines = [r.getMessage() for r in caplog.records]
    assert len([ln for ln in lines if ln.startswith("fork storm:")]) == 1, lines
    total = counted + (made[0] - stopped_at)
    assert lines[-1].startswith(f"fork storm over: {quoted(printable(HOSTILE))} created {total} ")
    metrics = {m.name: m.samples for m in then.collect()}
    assert [s.value for s in metrics["procmond_storms"]] == [1]
    assert [s.value for s in metrics["procmond_storm_active"]] == [0]


def test_a_fresh_probe_starts_from_nothing() -> None:
    """No saved state given (a fresh probe): nothing restored, nothing counted."""
    monitor = StormMonitor(FakeProbe())
    monitor.restore(None, same_probe=False)
    metrics = {m.name: m.samples for m in monitor.collect()}
    assert metrics["procmond_storms"] == [] and metrics["procmond_storm_active"] == []


def test_the_state_file_keeps_the_parts_a_save_does_not_name(tmp_path: Path) -> None:
    file = StateFile(tmp_path / "state-x.json", 7)
    file.save({"task_limits": {"lost": 1}})
    file.save({"storms": {"counts": {"started": {"sh": 2}}}})
    file.save({"task_limits": {"lost": 3}})
    assert StateFile(tmp_path / "state-x.json", 7).load() == {
        "version": 1,
        "probe": 7,
        "task_limits": {"lost": 3},
        "storms": {"counts": {"started": {"sh": 2}}},
    }


def test_a_damaged_saved_storm_takes_on_none_of_them(caplog: pytest.LogCaptureFixture) -> None:
    host = Host(StormDetector(2000))
    run(host, [{SH: 3000, b"make": 3000}] * 5)
    saved = through_json(host.detector.state(host.now, WALL + host.now))
    saved["storms"][1]["comm"] = {"b": "not hex"}
    monitor = StormMonitor(FakeProbe(), clock=lambda: host.now, wall=lambda: WALL + host.now)
    monitor.restore({"counts": {"started": {"sh": 1, "make": 1}}, **saved}, same_probe=True)
    monitor._detector = StormDetector(2000)
    monitor._resume()
    assert monitor._detector.storms == {}
    assert "ignoring the saved fork storms" in caplog.text
    metrics = {m.name: m.samples for m in monitor.collect()}
    assert [s.value for s in metrics["procmond_storms"]] == [1, 1]  # the counters still go on
    assert metrics["procmond_storm_active"] == []
