"""Fork-storm detection (procmond/storms/detector.py) with a fake clock, and the daemon's edge
(procmond/storms/monitor.py) on fake maps and a fake /proc: lines, switch, metrics."""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from procmond.config import Config, parse_config
from procmond.errors import ConfigError
from procmond.storms.creators import CreatorsReader, cmdline
from procmond.storms.detector import (
    Arm,
    Creator,
    CreatorRate,
    CreatorView,
    Disarm,
    Plan,
    StormContinues,
    StormCounts,
    StormDetector,
    StormEnded,
    StormStarted,
    counter_deltas,
    creator_rates,
    duration,
    ended_line,
    started_line,
)
from procmond.storms.monitor import CommandForks, StormMonitor
from tests.unit.creator_fakes import (
    CREATOR_LAYOUT,
    FakeAlarm,
    FakeCreators,
    FakeSwitch,
    creator_entry,
)
from tests.unit.fakes import LAYOUTS, FakeHash, pair

SH = b"sh"


def creator(pid: int, forks: int, comm: bytes = SH, threads: int = 0, start_ns: int = 0) -> Creator:
    return Creator(pid, comm, 1, b"bash", 0, forks, threads, start_ns or pid)


class Host:
    """A host whose commands fork at given rates, ticked once a second by the detector."""

    def __init__(self, detector: StormDetector) -> None:
        self.detector = detector
        self.now = 100.0
        self.created = 1_000_000  # /proc/stat processes
        self.forks: dict[bytes, int] = {}  # per command, one kernel entry each
        self.creators: dict[int, Creator] = {}
        self.events: list[object] = []
        self.plans: list[Plan] = []
        self.read: dict[bytes, int] | None = None  # forks per command at the last busy tick
        self.step({})

    def step(self, rates: dict[bytes, int], pid_of: dict[bytes, int] | None = None) -> list:
        """One second in which each command forks ``rates[comm]`` times (by pid_of[comm])."""
        self.now += 1.0
        for comm, n in rates.items():
            self.created += n
            self.forks[comm] = self.forks.get(comm, 0) + n
            pid = (pid_of or {}).get(comm, 4242)
            old = self.creators.get(pid)
            self.creators[pid] = creator(pid, (old.forks if old else 0) + n, comm)
        plan = self.detector.tick(self.now, self.created)
        self.plans.append(plan)
        made = None  # as procmond.storms.monitor.CommandForks reads forks_total
        if plan.commands:
            if self.read is not None:
                made = {c: n - self.read.get(c, 0) for c, n in self.forks.items()}
            self.read = dict(self.forks)
        else:
            self.read = None
        events = self.detector.observe(
            self.now, made, dict(self.creators) if plan.creators else None
        )
        for e in events:
            if isinstance(e, Arm):
                self.creators = {}  # a new generation: the probe starts every entry afresh
        self.events += events
        return events

    def storm_events(self) -> list[object]:
        return [e for e in self.events if not isinstance(e, Arm | Disarm)]


def test_a_quiet_host_reads_nothing_but_proc_stat() -> None:
    host = Host(StormDetector(2000))
    for _ in range(10):
        host.step({b"cron": 5})
    assert host.plans[-1] == Plan(commands=False, creators=False)
    assert host.events == []


def test_a_storm_is_named_with_its_top_creators_the_second_tick_after_it_starts() -> None:
    host = Host(StormDetector(2000))
    assert host.step({SH: 3000, b"make": 10}, {SH: 77}) == [Arm(1)]
    events = host.step({SH: 3000, b"make": 10}, {SH: 77})
    assert len(events) == 1 and isinstance(events[0], StormStarted)
    started = events[0]
    assert started.comm == SH and started.rate == 3000
    assert [(r.creator.pid, r.forks_per_second) for r in started.top] == [(77, 3000)]


def test_half_the_threshold_host_wide_is_enough_to_start_counting_per_process() -> None:
    """A storm that starts mid-second shows as half its rate in that second: per-process
    counting must already start then, so the next second names the PIDs."""
    host = Host(StormDetector(2000))
    assert host.step({SH: 999}) == []
    assert host.detector.next_tick is None  # quiet: no timer, but an alarm on the count
    assert host.detector.alarm_after == 1000
    assert host.step({SH: 1000}) == [Arm(1)]
    assert host.detector.next_tick == 0.5  # confirmed half a second later, not a second
    host.step({SH: 1000})
    assert host.detector.next_tick == 1.0


class AlarmedHost:
    """The monitor's schedule (procmond/storms/monitor.py) on a host whose commands create at
    constant rates from given times: the detector ticks when ``next_tick`` says, or, when it
    is None, at the moment the host has created ``alarm_after`` more (the probe's ring)."""

    STEP = 0.001  # seconds: the resolution at which the ring's moment is found

    def __init__(self, detector: StormDetector, rates: dict[bytes, tuple[float, float]]) -> None:
        self.detector = detector
        self.rates = rates  # command -> (creations a second, from when)
        self.now = 0.0
        self.ticks: list[float] = []
        self.started: dict[bytes, float] = {}  # command -> when its storm line came
        self._read: dict[bytes, int] | None = None
        self._armed: dict[bytes, int] = {}  # each command's count when counting per process began
        self._tick()

    def made(self, at: float) -> dict[bytes, int]:
        return {c: int(r * max(0.0, at - since)) for c, (r, since) in self.rates.items()}

    def created(self, at: float) -> int:
        return sum(self.made(at).values())

    def run_until(self, end: float) -> None:
        while True:
            step = self.detector.next_tick
            if step is None:
                at, alarm = self.now, self.created(self.now) + self.detector.alarm_after
                while self.created(at) < alarm and at < end:
                    at += self.STEP
                self.now = at
            else:
                self.now += step
            if self.now >= end:
                return
            self._tick()

    def _tick(self) -> None:
        now = self.now
        self.ticks.append(now)
        plan = self.detector.tick(now, self.created(now))
        made = None
        if plan.commands:
            forks = self.made(now)
            if self._read is not None:
                made = {c: n - self._read.get(c, 0) for c, n in forks.items()}
            self._read = forks
        else:
            self._read = None
        pids = {c: 100 + i for i, c in enumerate(self.rates)}
        since_arm = {c: n - self._armed.get(c, 0) for c, n in self.made(now).items()}
        creators = {pids[c]: creator(pids[c], n, c) for c, n in since_arm.items()}
        for event in self.detector.observe(now, made, creators if plan.creators else None):
            if isinstance(event, Arm):  # the probe counts each generation from zero
                self._armed = self.made(now)
            if isinstance(event, StormStarted):
                self.started[event.comm] = now


@pytest.mark.parametrize("times_threshold", [1.05, 2, 10])
@pytest.mark.parametrize("quiet_for", [0.3, 1.0, 57.7])
def test_a_sleeping_detector_names_a_storm_within_one_and_a_half_seconds(
    times_threshold: float, quiet_for: float
) -> None:
    """With no timer at all while the host is quiet, a command creating the threshold a second
    (or more) is still named within 1.5 s of its start (README: within about two)."""
    threshold = 2000
    storm = int(threshold * times_threshold)
    host = AlarmedHost(StormDetector(threshold), {b"cron": (40, 0.0), SH: (storm, quiet_for)})
    host.run_until(quiet_for + 5)
    assert SH in host.started, host.ticks
    assert quiet_for + 0.5 <= host.started[SH] <= quiet_for + 1.5 + 2 * AlarmedHost.STEP
    assert b"cron" not in host.started


def test_a_quiet_host_ticks_once_per_half_the_threshold_it_creates() -> None:
    """Below half the threshold a second, the detector only looks when the probe rings: once
    per threshold / 2 creations, never counting per process."""
    detector = StormDetector(2000)
    host = AlarmedHost(detector, {b"make": (900, 0.0)})
    host.run_until(100.5)  # 90,450 created
    assert len(host.ticks) == 1 + 90_000 // 1000  # the first tick, then one per 1000 created
    assert detector.generation == 0 and not detector.armed


def test_top_creators_are_the_busiest_of_that_command_only() -> None:
    detector = StormDetector(100, top=2)
    detector.tick(0.0, 0)
    assert detector.observe(0.0, None, None) == []  # quiet
    assert detector.tick(1.0, 1000) == Plan(True, False)
    assert detector.observe(1.0, None, None) == [Arm(1)]  # the first count to start from
    detector.tick(2.0, 2000)
    creators = {
        1: creator(1, 50),
        2: creator(2, 400),
        3: creator(3, 300),
        4: creator(4, 900, comm=b"other"),
        5: creator(5, 0, threads=9),  # threads only: not a fork storm's creator
    }
    events = detector.observe(2.0, {SH: 750, b"other": 900}, creators)
    started = {e.comm: e for e in events if isinstance(e, StormStarted)}
    assert [r.creator.pid for r in started[SH].top] == [2, 3]
    assert [r.creator.pid for r in started[b"other"].top] == [4]


def test_a_long_storm_is_a_handful_of_lines_then_one_end_line() -> None:
    host = Host(StormDetector(2000))
    for _ in range(2 * 3600 + 30):  # two hours and a half minute
        host.step({SH: 3000})
    lines = host.storm_events()
    assert [type(e) for e in lines] == [StormStarted] + [StormContinues] * 4
    progress = [e for e in lines if isinstance(e, StormContinues)]
    assert [round(e.seconds) for e in progress] == [60, 600, 3600, 7200]
    assert progress[0].created == 3000 * 60
    for _ in range(10):
        host.step({SH: 100})
    ended = host.storm_events()[-1]
    assert isinstance(ended, StormEnded)
    assert ended.comm == SH and ended.peak == 3000
    assert round(ended.seconds) == 2 * 3600 + 29  # from the first second above to the last
    assert ended.created == 3000 * (2 * 3600 + 29) + 100 * 5  # and the seconds until it ended
    assert len(host.storm_events()) == 6


def test_a_command_missing_from_a_full_forks_map_is_found_by_its_creators() -> None:
    """forks_total full of other names: the storm's command counts under __overflow__ there,
    but its creating processes name it."""
    detector = StormDetector(1000)
    detector.tick(0.0, 0)
    detector.tick(1.0, 5000)
    assert detector.observe(1.0, None, None) == [Arm(1)]
    detector.tick(2.0, 10000)
    events = detector.observe(2.0, {}, {9: creator(9, 3000), 10: creator(10, 2000, comm=b"x")})
    assert [(type(e), e.comm) for e in events] == [(StormStarted, SH), (StormStarted, b"x")]
    assert [(r.creator.pid, r.forks_per_second) for r in events[0].top] == [(9, 3000.0)]


def test_a_dip_shorter_than_the_end_delay_does_not_end_it() -> None:
    host = Host(StormDetector(2000, end_after=5))
    for rates in [{SH: 3000}] * 3 + [{SH: 10}] * 4 + [{SH: 3000}] * 3:
        host.step(rates)
    assert [type(e) for e in host.storm_events()] == [StormStarted]


def test_quiet_again_switches_per_process_counting_off_and_a_new_storm_is_a_new_generation() -> (
    None
):
    host = Host(StormDetector(2000, end_after=3))
    for _ in range(3):
        host.step({SH: 3000})
    for _ in range(5):
        host.step({})
    assert isinstance(host.events[-1], Disarm)
    assert host.detector.armed is False
    host.step({SH: 3000})
    assert host.events[-1] == Arm(2)


def test_counter_deltas_never_go_negative() -> None:
    """An entry deleted and made anew (attribution reclaims those of gone cgroups) has a
    lower count: all of it is new."""
    assert counter_deltas({b"a": 10, b"b": 5, b"gone": 7}, {b"a": 15, b"b": 2, b"new": 4}) == {
        b"a": 5,
        b"b": 2,
        b"new": 4,
    }


def test_a_reused_pid_counts_from_zero() -> None:
    before = {7: creator(7, 100), 8: creator(8, 50)}
    after = {7: creator(7, 30, start_ns=99), 8: creator(8, 60)}
    rates = creator_rates(before, after, 2.0)
    assert [(r.creator.pid, r.forks_per_second) for r in rates] == [(7, 15.0), (8, 5.0)]


def test_storm_metrics_name_a_bounded_set_of_commands() -> None:
    counts = StormCounts("__overflow__", limit=2)
    for comm in ("a", "b", "c", "d", "a"):
        counts.storm_started(comm)
    counts.storm_ended("c")
    counts.storm_ended("a")
    assert counts.started == {"a": 2, "b": 1, "__overflow__": 2}
    assert counts.active == {"a": 1, "b": 1, "__overflow__": 1}


def test_the_start_line_names_pid_command_line_parent_unit_and_pod() -> None:
    rate = CreatorRate(Creator(4242, b"sh", 4000, b"bash", 9, 3000, 0, 1), 2999.6, 0.0)
    views = [
        CreatorView(
            rate, "sh", "bash", "sh -c 'while :; do :& done'", ("cron.service", "", "", "")
        ),
        CreatorView(rate, 'we"ird', "bash", None, ("", "default", "web-1", "app")),
        CreatorView(rate, "sh", "bash", None, ("", "", "", "ci job\n")),
        CreatorView(rate, "sh", "bash", None, ("", "", "shop", "api")),
    ]
    line = started_line("sh", StormStarted(b"sh", 3000.4, (rate, rate)), 2000, views)
    assert line == (
        'fork storm: "sh" is creating 3000 processes/s (threshold 2000/s); top creators: '
        'pid 4242 at 3000/s "sh -c \'while :; do :& done\'" (parent 4000 "bash", unit '
        'cron.service); pid 4242 at 3000/s "[we\\"ird]" (parent 4000 "bash", pod '
        'default/web-1 container app); pid 4242 at 3000/s "[sh]" (parent 4000 "bash", '
        'container ci\\x20job\\x0a); pid 4242 at 3000/s "[sh]" (parent 4000 "bash", pod shop '
        "container api)"
    )
    assert ended_line("sh", StormEnded(b"sh", 3725, 123, 4.5)) == (
        'fork storm over: "sh" created 123 processes in 1 h 2 min (peak 4.5/s)'
    )


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.2, "1 s"), (59.4, "59 s"), (65, "1 min 5 s"), (7380, "2 h 3 min")]
)
def test_durations(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_command_lines_come_from_proc_only_for_the_process_the_probe_saw(tmp_path: Path) -> None:
    proc = tmp_path
    (proc / "10").mkdir()
    (proc / "10" / "comm").write_bytes(b"sh\n")
    (proc / "10" / "cmdline").write_bytes(b"sh\0-c\0echo 'hi there'\n\x1b[2J\0")
    assert cmdline(10, b"sh", proc) == "sh -c 'echo '\\''hi there'\\''\\x0a\\x1b[2J'"
    assert cmdline(10, b"bash", proc) is None  # the pid is another process now
    assert cmdline(11, b"sh", proc) is None  # gone
    (proc / "12").mkdir()
    (proc / "12" / "comm").write_bytes(b"kworker/0:1\n")
    (proc / "12" / "cmdline").write_bytes(b"")
    assert cmdline(12, b"kworker/0:1", proc) is None  # a kernel thread has none
    (proc / "13").mkdir()
    (proc / "13" / "comm").write_bytes(b"long\n")
    (proc / "13" / "cmdline").write_bytes(b"long\0" + b"x" * 1000 + b"\0")
    text = cmdline(13, b"long", proc)
    assert text is not None and len(text) == 200 and text.endswith("...")


@pytest.mark.parametrize("value", ["-1", "'2000'", "true", "1.5", "10000001"])
def test_storm_threshold_must_be_a_whole_number_from_zero(value: str) -> None:
    with pytest.raises(ConfigError, match="storm_threshold"):
        parse_config(f"storm_threshold: {value}\n")


def test_storm_threshold_zero_is_off() -> None:
    assert parse_config("storm_threshold: 0\n") == Config(storm_threshold=0)


# --- The daemon's edge, on fake maps --------------------------------------------------------


class FakeProbe:
    def __init__(self) -> None:
        self.layouts = {**LAYOUTS, "creators": CREATOR_LAYOUT}
        self.forks = FakeHash([])
        self.maps = {"storm_watch": FakeSwitch(), "creators": FakeCreators()}

    def map(self, name: str):  # type: ignore[no-untyped-def]
        return self.forks if name == "forks_total" else self.maps[name]


def test_the_monitor_switches_counting_logs_the_storm_and_counts_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    probe = FakeProbe()
    now = [0.0]
    proc = tmp_path
    (proc / "50").mkdir()
    (proc / "50" / "comm").write_bytes(b"stormy\n")
    (proc / "50" / "cmdline").write_bytes(b"./stormy\0--fast\0")
    monitor = StormMonitor(
        probe,
        namer=lambda cgroup_id: ("storm.service", "", "", ""),
        clock=lambda: now[0],
        proc=proc,
    )
    alarm = FakeAlarm()
    monitor._detector = StormDetector(100)  # as configure() makes them, without the thread
    monitor._alarm = alarm

    def second(created: int, forks: int, creators: list[tuple[bytes, bytes]]) -> None:
        now[0] += 1
        (proc / "stat").write_text(f"cpu  1 2 3\nprocesses {created}\nprocs_running 1\n")
        probe.forks = FakeHash([(pair(b"stormy", b"bash", 7), forks)])
        probe.maps["creators"].rows = creators  # type: ignore[attr-defined]
        monitor.tick()

    caplog.set_level(logging.WARNING)
    second(1000, 0, [])
    assert probe.maps["storm_watch"].values == []  # type: ignore[attr-defined]
    assert alarm.rings == [50]  # quiet: look again once the host has made 50 more
    second(1500, 500, [])  # 500/s host-wide: at least half the threshold
    assert probe.maps["storm_watch"].values == [1]  # type: ignore[attr-defined]
    assert monitor.counting
    second(2000, 1000, [creator_entry(50, 500, 1, b"stormy"), creator_entry(51, 9, 0, b"old")])
    assert alarm.rings == [50]  # busy: ticks on time, no alarm
    assert [r.getMessage() for r in caplog.records] == [
        'fork storm: "stormy" is creating 500 processes/s (threshold 100/s); top creators: '
        'pid 50 at 500/s "./stormy --fast" (parent 1 "bash", unit storm.service)'
    ]
    metrics = {m.name: m.samples for m in monitor.collect()}
    assert [(s.labels, s.value) for s in metrics["procmond_storms"]] == [({"comm": "stormy"}, 1)]
    assert [(s.labels, s.value) for s in metrics["procmond_storm_active"]] == [
        ({"comm": "stormy"}, 1)
    ]
    for _ in range(6):
        second(2000, 1000, [creator_entry(50, 500, 1, b"stormy")])
    assert caplog.records[-1].getMessage() == (
        'fork storm over: "stormy" created 500 processes in 1 s (peak 500/s)'
    )
    assert probe.maps["storm_watch"].values == [1, 0]  # type: ignore[attr-defined]
    assert alarm.rings == [50, 50]  # quiet again: asleep until 50 more
    metrics = {m.name: m.samples for m in monitor.collect()}
    assert [s.value for s in metrics["procmond_storm_active"]] == [0]
    assert [s.value for s in metrics["procmond_storm_process_counting"]] == [0]


def test_the_monitor_reads_only_the_current_generation() -> None:
    reader = CreatorsReader(FakeCreators(), CREATOR_LAYOUT)
    reader._map.rows = [  # type: ignore[attr-defined]
        creator_entry(1, 5, 2, b"new"),
        creator_entry(2, 9, 1, b"stale"),
    ]
    assert list(reader.read(2)) == [1]
    assert reader.read(2)[1].comm == b"new"


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.001)


def test_the_monitor_thread_sleeps_with_no_timeout_until_its_alarm_or_a_new_threshold(
    tmp_path: Path,
) -> None:
    (tmp_path / "stat").write_text("cpu  1 2 3\nprocesses 7000\n")
    alarm = FakeAlarm()
    monitor = StormMonitor(FakeProbe(), proc=tmp_path, alarm=lambda: alarm)
    monitor.configure(Config(storm_threshold=100))
    assert alarm.rings == [50]  # set before the thread starts, by the first tick
    wait_until(lambda: alarm.waits == [None], "the thread to sleep")
    (tmp_path / "stat").write_text("cpu  1 2 3\nprocesses 7010\n")
    monitor.configure(Config(storm_threshold=1000))  # a reload: the alarm is set anew at once
    wait_until(lambda: alarm.rings == [50, 500], "the alarm to be set for the new threshold")
    wait_until(lambda: alarm.waits == [None, None], "the thread to sleep again")
    monitor.stop()
    assert alarm.closed and len(alarm.waits) == 2 and not monitor.counting


def test_an_alarm_that_cannot_be_set_up_turns_storm_reports_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> FakeAlarm:
        raise OSError(errno.EPERM, "mmap refused")

    monitor = StormMonitor(FakeProbe(), alarm=broken)
    monitor.configure(Config(storm_threshold=100))
    assert monitor._thread is None and not monitor.counting
    assert "storm reports are off: the probe's alarm cannot be set up" in caplog.text
    monitor.stop()


def test_storm_detection_needs_the_comm_label(caplog: pytest.LogCaptureFixture) -> None:
    monitor = StormMonitor(FakeProbe())
    monitor.configure(Config(labels=("parent_comm",)))
    assert monitor._thread is None
    assert "comm label" in caplog.text


def test_command_forks_are_what_each_command_made_since_the_last_read() -> None:
    table = FakeHash([(pair(b"a", b"x"), 10), (pair(b"a", b"y"), 5), (pair(b"b"), 7)])
    forks = CommandForks(table, LAYOUTS["forks_total"])
    assert forks.read() is None  # nothing to count from yet
    table.rows = FakeHash(
        [(pair(b"a", b"x"), 12), (pair(b"a", b"y"), 5), (pair(b"b"), 3), (pair(b"c"), 4)]
    ).rows  # b's entry deleted and made anew (attribution), c new
    assert forks.read() == {b"a": 2, b"b": 3, b"c": 4}
    assert forks.read() == {}
    forks.reset()
    assert forks.read() is None


def test_creators_read_again_are_not_decoded_again() -> None:
    table = FakeCreators()
    reader = CreatorsReader(table, CREATOR_LAYOUT)
    table.rows = [creator_entry(1, 5, 1, b"a"), creator_entry(2, 5, 1, b"b")]
    first = reader.read(1)
    table.rows = [creator_entry(1, 5, 1, b"a"), creator_entry(2, 9, 1, b"b")]
    second = reader.read(1)
    assert second[1] is first[1]  # unchanged: the same object
    assert second[2].forks == 9 and first[2].forks == 5
