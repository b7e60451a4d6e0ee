"""Fork storms: which command crosses ``storm_threshold``, and which processes drive it.

Pure logic, fed by procmond/storms/monitor.py, so that it can be tested with a fake clock. The
metrics carry no PIDs (cardinality); the log must, while the storm runs. Free when nothing
happens, precise when something does:

1. Each tick the host's creations since boot come in (/proc/stat ``processes``). While their
   rate stays under half the threshold, the detector does not ask for a tick at a time but
   after a number of creations (``next_tick`` None, ``alarm_after``): once the host has created
   half the threshold more, which the probe signals (procmond/kernel/alarm.py). A quiet host so
   costs no wake-up at all. Two such ticks within a second make a rate of half the threshold: a
   command creating ``threshold`` a second is seen within a second of its start.
2. Only when the host's rate reaches half the threshold (so that a storm that started
   mid-window is caught at that window's end) or a storm is going on does the detector ask for
   the per-command fork counters, tick once a second, and switch the probe's per-process
   counting on (``Arm``): until then a creation pays one array lookup for it.
3. The next tick, half a second later, gives per-command rates over the same time as the
   per-process counts; a command at or above the threshold starts a storm: one line naming it
   and its top creating processes, 0.5 to 1.5 seconds after the storm began.
4. While it lasts, a line after 1 minute, 10 minutes, then every hour; one line once its rate
   has stayed below the threshold for ``END_AFTER_SECONDS`` (duration, total created).
5. Quiet again and no storm left: per-process counting is switched off (``Disarm``), and the
   detector waits for the host's count again.

The storms going on are kept across a restart that adopts the pinned probe (``state`` and
``restore``: plain JSON-able data, times as wall-clock, commands as tagged bytes), so the next
daemon goes on with the same storm rather than starting it again.

Counters are differenced per kernel map entry, not per command, so an entry deleted and made
anew (procmond/scrape/attribution.py reclaims those of gone cgroups) never makes a rate negative. A
command's rate is the larger of its forks_total count and the sum over its creating processes:
the first misses a command new to a full map (counted under __overflow__), the second a fork
bomb whose many processes push each other out of the LRU map.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from procmond.naming.labels import CgroupLabels
from procmond.saved import tagged, untagged
from procmond.text import one_word, quoted

TICK_SECONDS = 1.0  # how often a busy host's counts are read
CONFIRM_SECONDS = 0.5  # the tick after counting per process starts comes this much sooner
END_AFTER_SECONDS = 5.0  # a storm ends once its command stays below the threshold this long
PROGRESS_AFTER_SECONDS = (60.0, 600.0, 3600.0)  # then every hour
TOP_CREATORS = 5
COMMANDS_MAX = 100  # distinct commands the storm metrics name; more share __overflow__
CMDLINE_MAX_CHARS = 200


@dataclass(frozen=True)
class Creator:
    """One creating process, as the probe's creators map holds it (struct creator)."""

    pid: int
    comm: bytes
    ppid: int
    parent_comm: bytes
    cgroup_id: int
    forks: int
    threads: int
    start_ns: int  # the process's start time: another one under the same pid has another


@dataclass(frozen=True)
class CreatorRate:
    creator: Creator
    forks_per_second: float
    threads_per_second: float


@dataclass(frozen=True)
class Arm:
    """Switch per-process counting on, as this generation (older entries are stale)."""

    generation: int


@dataclass(frozen=True)
class Disarm:
    """Switch per-process counting off."""


@dataclass(frozen=True)
class StormStarted:
    comm: bytes
    rate: float
    top: tuple[CreatorRate, ...]


@dataclass(frozen=True)
class StormContinues:
    comm: bytes
    rate: float
    seconds: float
    created: int
    peak: float
    top: tuple[CreatorRate, ...]


@dataclass(frozen=True)
class StormEnded:
    comm: bytes
    seconds: float
    created: int
    peak: float


Event = Arm | Disarm | StormStarted | StormContinues | StormEnded


@dataclass(frozen=True)
class Plan:
    """What the detector needs read this tick."""

    commands: bool  # processes made per command since the last busy tick (forks_total)
    creators: bool  # the creators map


def entry_delta(before: int | None, count: int) -> int:
    """What a counter map entry counted since it read ``before``. An entry not there before
    was made since, so all of its count is new; one that went down was deleted and made anew."""
    if before is None or count < before:
        return count
    return count - before


def counter_deltas(previous: dict[bytes, int], current: dict[bytes, int]) -> dict[bytes, int]:
    """What each entry counted since ``previous`` (entries that counted nothing left out)."""
    out = {}
    for key, count in current.items():
        delta = entry_delta(previous.get(key), count)
        if delta:
            out[key] = delta
    return out


def creator_deltas(
    previous: dict[int, Creator], current: dict[int, Creator]
) -> list[tuple[Creator, int, int]]:
    """Each process's (entry, forks, threads) since ``previous``, for those that made any. A
    pid whose entry is another process's now (its pid reused) counts from zero."""
    out = []
    for pid, now in current.items():
        before = previous.get(pid)
        if before is None or before.start_ns != now.start_ns:
            forks, threads = now.forks, now.threads
        else:
            forks, threads = now.forks - before.forks, now.threads - before.threads
        if forks or threads:
            out.append((now, forks, threads))
    return out


def creator_rates(
    previous: dict[int, Creator], current: dict[int, Creator], seconds: float
) -> list[CreatorRate]:
    """Each process's creations per second since ``previous``, busiest first."""
    out = [
        CreatorRate(c, forks / seconds, threads / seconds)
        for c, forks, threads in creator_deltas(previous, current)
    ]
    out.sort(key=lambda r: (-r.forks_per_second, -r.threads_per_second, r.creator.pid))
    return out


@dataclass
class _Storm:
    started: float  # the start of the first second found above the threshold
    created: int
    peak: float
    last_above: float  # the end of the latest second above the threshold
    progress: int = 0  # progress lines given
    next_progress: float = 0.0


class StormDetector:
    """Ticks in (``tick`` then ``observe``), events out. ``threshold`` > 0: processes created
    per second by one command."""

    def __init__(
        self,
        threshold: int,
        end_after: float = END_AFTER_SECONDS,
        progress_after: tuple[float, ...] = PROGRESS_AFTER_SECONDS,
        top: int = TOP_CREATORS,
    ) -> None:
        self.threshold = threshold
        self.end_after = end_after
        self.progress_after = progress_after
        self.top = top
        self.generation = 0  # of per-process counting: each Arm starts a new one
        self.armed = False
        # Seconds until the edge should tick again; None: once the host has created
        # alarm_after more tasks, however long that takes.
        self.next_tick: float | None = None
        self.storms: dict[bytes, _Storm] = {}
        self._host: tuple[float, int] | None = None
        self._busy = False  # this tick reads the per-command counts
        self._commands_at: float | None = None  # when they were last read
        self._creators: tuple[float, dict[int, Creator]] = (0.0, {})

    @property
    def alarm_after(self) -> int:
        """Creations after which a quiet detector looks again: half the threshold, so two looks
        within a second mean the host creates at least half the threshold a second."""
        return max(1, (self.threshold + 1) // 2)

    def tick(self, now: float, host_created: int) -> Plan:
        """The host's creations since boot, now; says what to read for ``observe``."""
        busy = False
        if self._host is not None and now > self._host[0]:
            # A tick brought early (a new threshold) may follow the last by a millisecond: a
            # few creations in it are no rate. The alarm's ticks come after half the threshold
            # created, so over half a second or less they are busy all the same.
            seconds = max(now - self._host[0], CONFIRM_SECONDS)
            busy = (host_created - self._host[1]) / seconds >= self.threshold / 2
        self._host = (now, host_created)
        self._busy = busy or bool(self.storms)
        return Plan(self._busy, self.armed)

    def observe(
        self,
        now: float,
        made: dict[bytes, int] | None,
        creators: dict[int, Creator] | None,
    ) -> list[Event]:
        """What the plan asked for: ``made``, processes created per command since the last
        busy tick (None on the first one: there was no count to start from); ``creators``, the
        creators map's entries of the current generation."""
        self.next_tick = TICK_SECONDS
        if not self._busy:  # quiet: forget the baselines, stop counting per process, sleep
            self._commands_at = None
            self.next_tick = None
            if self.armed:
                self.armed = False
                return [Disarm()]
            return []
        events: list[Event] = []
        rates: list[CreatorRate] = []
        by_creators: dict[bytes, int] = {}  # forks of the window, summed over its creators
        if creators is not None:
            since, before = self._creators
            if now > since:
                rates = creator_rates(before, creators, now - since)
                for c, forks, _threads in creator_deltas(before, creators):
                    by_creators[c.comm] = by_creators.get(c.comm, 0) + forks
            self._creators = (now, creators)
        if not self.armed:
            self.generation += 1
            self.armed = True
            self._creators = (now, {})  # a new generation starts from nothing
            self.next_tick = CONFIRM_SECONDS  # name the storm half a second from now
            events.append(Arm(self.generation))
        since = self._commands_at
        if made is not None and since is not None and now > since:
            by_comm = dict(made)
            # Each undercounts in its own way: a command new to a full forks_total counts under
            # __overflow__, a fork bomb's many processes push each other out of the creators
            # map. Both were counted over the same second: the larger is the closer.
            for comm, forks in by_creators.items():
                by_comm[comm] = max(by_comm.get(comm, 0), forks)
            events += self._storms(since, now, by_comm, rates)
        self._commands_at = now
        return events

    def _storms(
        self, since: float, now: float, created: dict[bytes, int], rates: list[CreatorRate]
    ) -> list[Event]:
        seconds = now - since
        events: list[Event] = []
        for comm in sorted(set(created) | set(self.storms)):
            made = created.get(comm, 0)
            rate = made / seconds
            storm = self.storms.get(comm)
            if storm is None:
                if rate >= self.threshold:
                    storm = self.storms[comm] = _Storm(since, made, rate, now)
                    storm.next_progress = since + self.progress_after[0]
                    events.append(StormStarted(comm, rate, self._top(comm, rates)))
                continue
            storm.created += made
            if rate >= self.threshold:
                storm.last_above = now
                storm.peak = max(storm.peak, rate)
            elif now - storm.last_above >= self.end_after:
                del self.storms[comm]
                seconds_on = storm.last_above - storm.started
                events.append(StormEnded(comm, seconds_on, storm.created, storm.peak))
                continue
            if now >= storm.next_progress:
                storm.progress += 1
                storm.next_progress = storm.started + self._progress_at(storm.progress)
                events.append(
                    StormContinues(
                        comm,
                        rate,
                        now - storm.started,
                        storm.created,
                        storm.peak,
                        self._top(comm, rates),
                    )
                )
        return events

    def state(self, now: float, wall: float) -> dict[str, Any]:
        """The storms going on, for the next daemon: times as wall-clock (``wall`` is ``now``
        by the clock), so they mean something to the reader of the file too."""

        def at(t: float) -> float:
            return round(wall - (now - t), 3)

        storms = [
            {
                "comm": tagged(comm),
                "started": at(s.started),
                "created": s.created,
                "peak": round(s.peak, 1),
                "last_above": at(s.last_above),
                "progress": s.progress,
                "next_progress": at(s.next_progress),
            }
            for comm, s in sorted(self.storms.items())
        ]
        commands_at = None if self._commands_at is None else at(self._commands_at)
        return {"storms": storms, "commands_at": commands_at, "generation": self.generation}

    def restore(
        self, data: dict[str, Any], now: float, wall: float, counted_since: bool = False
    ) -> tuple[list[bytes], list[bytes]]:
        """Takes on the storms ``state`` gave (at most COMMANDS_MAX), but those the END rule
        would have ended by ``now``: their command stayed below the threshold (as far as anyone
        knows) for ``end_after`` since they were last above it. ``counted_since``: the per-command
        counts are read on from where the saved state had read them (the same probe), so the
        next read's window starts at the saved ``commands_at``. The commands taken on and those
        dropped as over."""
        over: list[bytes] = []

        def mono(t: Any) -> float:
            return now - (wall - float(t))

        storms: dict[bytes, _Storm] = {}  # all read before any is taken on: a bad file, none
        for item in data.get("storms", [])[:COMMANDS_MAX]:
            comm = untagged(item["comm"])
            last_above = min(now, mono(item["last_above"]))  # a wall clock set back
            if now - last_above >= self.end_after:
                over.append(comm)
                continue
            started = min(mono(item["started"]), last_above)
            storm = _Storm(started, int(item["created"]), float(item["peak"]), last_above)
            storm.progress = int(item["progress"])
            storm.next_progress = started + self._progress_at(storm.progress)
            storms.setdefault(comm, storm)
        # Per-process counting starts a generation after the saved one: the probe's entries of
        # that one (cumulative, from the earlier daemon's arming) are stale to this daemon.
        generation = int(data.get("generation", 0))
        commands_at = data.get("commands_at")
        read_at = None if commands_at is None else min(now, mono(commands_at))
        kept = [comm for comm in storms if comm not in self.storms]
        self.storms.update((comm, storms[comm]) for comm in kept)
        self.generation = max(self.generation, generation)
        if kept and counted_since and read_at is not None and self._commands_at is None:
            self._commands_at = read_at
        return kept, over

    def _progress_at(self, given: int) -> float:
        """Seconds after the start of progress line number ``given`` (0-based)."""
        steps = self.progress_after
        if given < len(steps):
            return steps[given]
        return steps[-1] * (given - len(steps) + 2)

    def _top(self, comm: bytes, rates: list[CreatorRate]) -> tuple[CreatorRate, ...]:
        return tuple(r for r in rates if r.creator.comm == comm and r.forks_per_second)[: self.top]


@dataclass
class StormCounts:
    """procmond_storms_total and procmond_storm_active by command, with a bounded number of
    commands: beyond ``limit`` they share ``overflow``."""

    overflow: str
    limit: int = COMMANDS_MAX
    started: dict[str, int] = field(default_factory=dict)
    active: dict[str, int] = field(default_factory=dict)

    def label(self, comm: str) -> str:
        if comm in self.started or len(self.started) < self.limit:
            return comm
        return self.overflow

    def storm_started(self, comm: str) -> None:
        label = self.label(comm)
        self.started[label] = self.started.get(label, 0) + 1
        self.active[label] = self.active.get(label, 0) + 1

    def storm_ended(self, comm: str) -> None:
        label = self.label(comm)
        self.active[label] = max(0, self.active.get(label, 0) - 1)

    def storm_resumed(self, comm: str) -> None:
        """A storm counted by an earlier daemon goes on here: active again, not counted again."""
        label = self.label(comm)
        self.active[label] = self.active.get(label, 0) + 1

    def state(self) -> dict[str, Any]:
        """What the counters say, for the next daemon: procmond_storms_total never goes down.
        Active storms are not kept here; those the detector takes on again are resumed."""
        return {"started": dict(self.started), "labels": sorted(self.active)}

    def restore(self, data: dict[str, Any]) -> None:
        """Adds the saved counts to these, the same bound on commands kept."""
        started = {str(comm): int(count) for comm, count in data.get("started", {}).items()}
        overflow = started.pop(self.overflow, 0)
        for comm, count in started.items():  # in the order they were first counted
            label = self.label(comm)
            self.started[label] = self.started.get(label, 0) + count
        if overflow:
            self.started[self.overflow] = self.started.get(self.overflow, 0) + overflow
        for comm in data.get("labels", []):  # series shown before, at 0 until resumed
            label = self.label(str(comm))
            self.active.setdefault(label, 0)


# --- Log lines ------------------------------------------------------------------------------


def per_second(rate: float) -> str:
    """A rate for a log line: whole numbers, but a tenth below 10."""
    return f"{rate:.0f}" if rate >= 10 or rate == 0 else f"{rate:.1f}"


@dataclass(frozen=True)
class CreatorView:
    """A creator as a log line shows it: what the probe saw, and what /proc and the cgroup
    namer add (procmond/storms/monitor.py)."""

    rate: CreatorRate
    comm: str  # printable
    parent_comm: str  # printable
    cmdline: str | None  # printable; None once the process is gone
    labels: CgroupLabels


def describe_creator(view: CreatorView) -> str:
    c = view.rate.creator
    command = view.cmdline if view.cmdline else f"[{view.comm}]"
    where = [f"parent {c.ppid} {quoted(view.parent_comm)}"]
    unit, namespace, pod, container = (*view.labels, "", "", "", "")[:4]
    if unit:
        where.append(f"unit {one_word(unit.encode())}")
    in_container = f"container {one_word(container.encode())}" if container else ""
    if pod:  # a Kubernetes pod, or a Podman pod (no namespace)
        pod_name = one_word((f"{namespace}/{pod}" if namespace else pod).encode())
        where.append(f"pod {pod_name} {in_container}".rstrip())
    elif in_container:  # Docker, Podman, containerd or CRI-O outside Kubernetes
        where.append(in_container)
    return (
        f"pid {c.pid} at {per_second(view.rate.forks_per_second)}/s {quoted(command)} "
        f"({', '.join(where)})"
    )


def _top_text(top: Iterable[CreatorView]) -> str:
    described = [describe_creator(v) for v in top]
    if not described:
        return "top creators: none seen (each made too few, or exited at once)"
    return "top creators: " + "; ".join(described)


def started_line(comm: str, event: StormStarted, threshold: int, top: list[CreatorView]) -> str:
    return (
        f"fork storm: {quoted(comm)} is creating {per_second(event.rate)} processes/s "
        f"(threshold {threshold}/s); {_top_text(top)}"
    )


def continues_line(comm: str, event: StormContinues, top: list[CreatorView]) -> str:
    return (
        f"fork storm continues: {quoted(comm)} is creating {per_second(event.rate)} "
        f"processes/s, {event.created} in {duration(event.seconds)} "
        f"(peak {per_second(event.peak)}/s); "
        f"{_top_text(top)}"
    )


def ended_line(comm: str, event: StormEnded) -> str:
    return (
        f"fork storm over: {quoted(comm)} created {event.created} processes in "
        f"{duration(event.seconds)} (peak {per_second(event.peak)}/s)"
    )


def duration(seconds: float) -> str:
    """1 s, 59 s, 1 min 5 s, 2 h 3 min: at a glance, to the second."""
    total = max(1, math.floor(seconds + 0.5))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"
