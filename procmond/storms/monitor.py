"""The daemon's side of fork-storm reports: a thread that feeds procmond/storms/detector.py,
switches the probe's per-process counting, logs, and exports storm metrics.

Outside storms the thread sleeps, with no timer, until the probe's alarm rings
(procmond/kernel/alarm.py): once per half ``storm_threshold`` tasks the host creates, so an idle
host never wakes it; each time it reads /proc/stat. forks_total and the creators map are read, once
a second, only while the host creates at least half ``storm_threshold`` tasks a second.

With a pinned probe the storm state (counters, the storms going on, and where the per-command
counts of their commands were last read) is handed to ``keep`` after each tick that changed it
and at stop, and ``restore`` gives it to the next daemon: a storm that outlives a restart is
neither logged as started twice nor counted twice, and its end line spans the whole of it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from procmond.config import Config
from procmond.errors import ProcmondError
from procmond.kernel.alarm import ALARM_MAP, RING_MAP, CreationAlarm
from procmond.kernel.inventory import CREATORS, FORKS_TOTAL, STORM_WATCH
from procmond.kernel.layout import MapLayout
from procmond.naming.labels import Namer, names_of
from procmond.scrape.metrics import OVERFLOW_LABEL_VALUE, label_names, label_value
from procmond.storms import creators
from procmond.storms.detector import (
    TICK_SECONDS,
    Arm,
    CreatorRate,
    CreatorView,
    Disarm,
    Event,
    StormContinues,
    StormCounts,
    StormDetector,
    StormEnded,
    StormStarted,
    continues_line,
    ended_line,
    entry_delta,
    started_line,
)
from procmond.text import printable, quoted

log = logging.getLogger(__name__)


class Probe(Protocol):
    """What the monitor needs of the loaded probe: procmond.kernel.handoff.HandedOffProbe."""

    layouts: dict[str, MapLayout]

    def map(self, name: str) -> Any: ...


class Alarm(Protocol):
    """procmond.kernel.alarm.CreationAlarm, or a stand-in for tests."""

    def ring_after(self, creations: int) -> None: ...

    def wait(self, timeout: float | None) -> bool: ...

    def poke(self) -> None: ...

    def close(self) -> None: ...


class CommandForks:
    """Processes made per command since the last read of forks_total. Read every second while
    the host is busy, so it decodes only the entries whose count changed: a full map of 4096
    entries costs ~3 ms instead of ~8 ms."""

    def __init__(self, table: creators.Map, layout: MapLayout) -> None:
        self._table = table
        self._comm = layout.key.field("comm").decoder()
        self._count = layout.value.field("").decoder()
        self._last: dict[bytes, bytes] | None = None
        self._restored: dict[bytes, int] = {}  # counts an earlier daemon read last, by entry

    def reset(self) -> None:
        """Forget the last read: the next one only starts counting again."""
        self._last = None
        self._restored = {}

    def counts_of(self, comms: set[bytes]) -> dict[bytes, int]:
        """The last read's counts of the entries of these commands, by raw key."""
        if not comms or self._last is None:
            return {}
        return {
            key: self._count(value)  # type: ignore[misc]
            for key, value in self._last.items()
            if self._comm(key) in comms
        }

    def restore(self, counts: dict[bytes, int]) -> None:
        """The entries' counts an earlier daemon read last from this same map: the next read
        counts these entries from there (what was created while no daemon ran), the others
        from that read on."""
        self._last, self._restored = None, dict(counts)

    def read(self) -> dict[bytes, int] | None:
        """{comm: processes made} since the last read; None for the first read (but for the
        entries ``restore`` gave)."""
        rows = dict(self._table.items())
        last, self._last = self._last, rows
        restored, self._restored = self._restored, {}
        if last is None and not restored:
            return None
        made: dict[bytes, int] = {}
        for key, value in rows.items():
            if last is None:  # restored: only its entries count, from their saved count
                if key not in restored:
                    continue
                before: int | None = restored[key]
            else:
                raw = last.get(key)
                if raw == value:
                    continue
                before = None if raw is None else self._count(raw)  # type: ignore[assignment]
            delta = entry_delta(before, self._count(value))  # type: ignore[arg-type]
            if delta:
                comm = self._comm(key)
                made[comm] = made.get(comm, 0) + delta  # type: ignore[index]
        return made


class StormMonitor:
    """Started by the daemon; ``configure`` applies storm_threshold (at start and reload)."""

    def __init__(
        self,
        probe: Probe,
        namer: Namer | None = None,
        clock: Callable[[], float] = time.monotonic,
        proc: Path = Path("/proc"),
        alarm: Callable[[], Alarm] | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._switch = probe.map(STORM_WATCH)
        self._creators = creators.CreatorsReader(probe.map(CREATORS), probe.layouts[CREATORS])
        self._forks = CommandForks(probe.map(FORKS_TOTAL), probe.layouts[FORKS_TOTAL])

        def open_alarm() -> Alarm:
            return CreationAlarm(probe.map(ALARM_MAP), probe.map(RING_MAP))

        self._open_alarm = alarm or open_alarm
        self._alarm: Alarm | None = None
        self._host = creators.HostCreations(proc / "stat")
        self._namer = namer
        self._clock = clock
        self._wall = wall
        self._proc = proc
        self._lock = threading.Lock()  # the counts, read by scrapes
        self.counts = StormCounts(OVERFLOW_LABEL_VALUE)
        self._detector: StormDetector | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._ticked = False  # whether the last tick succeeded (and so set the alarm if quiet)
        self._last_error = ""
        # Where the storm state goes after each tick that changed it (with a pinned probe).
        self.keep: Callable[[dict[str, Any]], None] | None = None
        self._restored: list[tuple[dict[str, Any], bool]] = []  # for the detector to come
        self._kept: dict[str, Any] | None = None  # what keep was last given

    @property
    def counting(self) -> bool:
        """Whether the probe counts per process now."""
        detector = self._detector
        return bool(detector and detector.armed)

    def configure(self, config: Config) -> None:
        """Start, stop, or re-threshold detection: storm_threshold applies at once."""
        threshold = config.storm_threshold
        if threshold and not label_names(("comm",), config):
            log.warning(
                "storm_threshold is set but the comm label is not kept: fork storms cannot be "
                "told apart by command, so they are not reported; add comm to labels"
            )
            threshold = 0
        if not threshold:
            self.stop()
            return
        if self._detector is not None and self._thread is not None:
            self._detector.threshold = threshold
            if self._alarm is not None:
                self._alarm.poke()  # a sleeping thread sets its alarm for the new threshold
            return
        # The alarm's descriptors and /proc/stat (kept open) are opened now, before the daemon
        # is ready: its descriptors are then the same from the first scrape on. The first tick
        # sets the alarm.
        try:
            self._alarm = self._open_alarm()
        except (OSError, ProcmondError) as exc:
            log.error("storm reports are off: the probe's alarm cannot be set up (%s)", exc)
            return
        self._detector = StormDetector(threshold)
        self._resume()
        self._ticked = self._try(self.tick)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="storms", daemon=True)
        self._thread.start()

    def state(self) -> dict[str, Any]:
        """The storm state the next daemon takes on: plain JSON-able data."""
        with self._lock:
            data: dict[str, Any] = {"counts": self.counts.state()}
        detector = self._detector
        if detector is not None:
            data.update(detector.state(self._clock(), self._wall()))
            counts = self._forks.counts_of(set(detector.storms))
            data["forks"] = [[key.hex(), count] for key, count in sorted(counts.items())]
        return data

    def restore(self, data: dict[str, Any] | None, same_probe: bool) -> None:
        """What ``state`` gave an earlier daemon: its counts at once, its storms once detection
        starts (``configure``). ``same_probe``: that daemon read this very probe's maps (a
        restart that adopted it, not an upgrade), so its last read of forks_total is where
        this one's reading starts."""
        if not data:
            return
        try:
            with self._lock:
                self.counts.restore(data.get("counts", {}))
            self._restored.append((data, same_probe))
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            log.warning("ignoring the saved storm counts: %s", exc)

    def _resume(self) -> None:
        """The storms of earlier daemons go on in this one: no new start line, no new count."""
        detector = self._detector
        assert detector is not None
        restored, self._restored = self._restored, []
        for data, same_probe in restored:
            try:
                counts = {bytes.fromhex(k): int(c) for k, c in data.get("forks", [])}
                kept, over = detector.restore(data, self._clock(), self._wall(), same_probe)
                if kept and same_probe:
                    self._forks.restore(counts)
            except (KeyError, ValueError, TypeError, AttributeError) as exc:
                log.warning("ignoring the saved fork storms: %s", exc)
                continue
            with self._lock:
                for comm in kept:
                    self.counts.storm_resumed(label_value(comm))
            if kept:
                log.info(
                    "fork storms going on before this start, reported on: %s",
                    ", ".join(quoted(printable(c)) for c in kept),
                )
            if over:
                log.info(
                    "fork storms that ended while no daemon watched (no end line): %s",
                    ", ".join(quoted(printable(c)) for c in over),
                )

    def keep_with(self, save: Callable[[dict[str, Any]], None]) -> None:
        """Where the storm state goes from now on; saved there at once (with what ``restore``
        gave: counts that a daemon without storm detection must keep all the same)."""
        self.keep = save
        self._save()

    def _save(self) -> None:
        """Only what changed: a quiet host's alarm ticks change nothing."""
        if self.keep is None:
            return
        data = self.state()
        if data != self._kept:
            self.keep(data)
            self._kept = data

    def stop(self) -> None:
        """Stop the thread and switch per-process counting off; active storms are dropped
        (after a last save: the next daemon goes on with them)."""
        self._restored = []
        if self._thread is not None:
            assert self._alarm is not None
            self._stopping = True
            self._alarm.poke()
            self._thread.join()
            self._thread = None
        if self._alarm is not None:
            self._alarm.close()
            self._alarm = None
            self._host.close()
        if self._detector is not None:
            self._try(self._save)
            if self._detector.armed:
                self._try(lambda: creators.switch(self._switch, 0))
            with self._lock:
                for comm in self._detector.storms:
                    self.counts.storm_ended(label_value(comm))
            self._detector = None

    def _run(self) -> None:
        alarm, detector = self._alarm, self._detector
        assert alarm is not None and detector is not None
        due = self._clock()
        while not self._stopping:
            step = detector.next_tick
            if step is None:  # quiet: sleep until the alarm the tick set rings (or a poke)
                alarm.wait(None if self._ticked else TICK_SECONDS)  # failing: try each second
                due = self._clock()
            else:  # a storm suspected or going on: tick on time, a poke or a late ring or not
                due += step
                now = self._clock()
                if due < now:  # fell behind (a stopped VM): skip, do not catch up
                    due = now + step
                while not self._stopping and (left := due - self._clock()) > 0:
                    alarm.wait(left)
            if not self._stopping:
                self._ticked = self._try(self.tick)

    def _try(self, action: Callable[[], None]) -> bool:
        """A failing tick is logged once (until it changes) and the next one tried; whether
        it succeeded."""
        try:
            action()
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            if message != self._last_error:
                log.error("storm detection: %s", message)
                self._last_error = message
            return False
        self._last_error = ""
        return True

    def tick(self) -> None:
        detector, alarm = self._detector, self._alarm
        assert detector is not None and alarm is not None
        now = self._clock()
        plan = detector.tick(now, self._host.read())
        made = None
        if plan.commands:
            made = self._forks.read()
        else:
            self._forks.reset()
        found = self._creators.read(detector.generation) if plan.creators else None
        for event in detector.observe(now, made, found):
            self._apply(event, detector.threshold)
        self._save()
        if detector.next_tick is None:
            alarm.ring_after(detector.alarm_after)

    def _apply(self, event: Event, threshold: int) -> None:
        if isinstance(event, Arm):
            creators.switch(self._switch, event.generation)
        elif isinstance(event, Disarm):
            creators.switch(self._switch, 0)
        elif isinstance(event, StormStarted):
            with self._lock:
                self.counts.storm_started(label_value(event.comm))
            top = self._views(event.top)
            log.warning(started_line(printable(event.comm), event, threshold, top))
        elif isinstance(event, StormContinues):
            log.warning(continues_line(printable(event.comm), event, self._views(event.top)))
        elif isinstance(event, StormEnded):
            with self._lock:
                self.counts.storm_ended(label_value(event.comm))
            log.warning(ended_line(printable(event.comm), event))

    def _views(self, top: tuple[CreatorRate, ...]) -> list[CreatorView]:
        return [creator_view(rate, self._namer, self._proc) for rate in top]

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            started = dict(self.counts.started)
            active = dict(self.counts.active)
        total = CounterMetricFamily(
            "procmond_storms",
            "Fork storms logged (a command creating at least storm_threshold processes per "
            "second), by command.",
            labels=["comm"],
        )
        for comm, count in sorted(started.items()):
            total.add_metric([comm], count)
        yield total
        now = GaugeMetricFamily(
            "procmond_storm_active",
            "Fork storms going on now, by command (1 while it lasts).",
            labels=["comm"],
        )
        for comm, count in sorted(active.items()):
            now.add_metric([comm], count)
        yield now
        yield GaugeMetricFamily(
            "procmond_storm_process_counting",
            "1 while the probe counts creations per process (a storm is suspected or going on).",
            value=int(self.counting),
        )


def creator_view(rate: CreatorRate, namer: Namer | None, proc: Path) -> CreatorView:
    c = rate.creator
    return CreatorView(
        rate,
        printable(c.comm),
        printable(c.parent_comm),
        creators.cmdline(c.pid, c.comm, proc),
        names_of(namer, c.cgroup_id),
    )
