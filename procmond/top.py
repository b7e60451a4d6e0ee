"""``procmond top``: a live view of process and thread creation on this host, by command.

It loads its own probe (as ``watch`` does: no daemon needed) with per-process counting on for
its whole run, reads the counter maps every interval and shows, per command (and its unit and
pod when known), the rates of forks, threads, execs, exits and failed creation calls, and the
busiest creating processes of the selected row. Rates are differences of the kernel's counts
over the measured time between two reads. ``-b`` prints the same table as plain text.
"""

from __future__ import annotations

import contextlib
import curses
import datetime
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from procmond import bpf_loader, creators
from procmond.config import Config
from procmond.maps import MapReader
from procmond.metrics import COUNTERS
from procmond.storms import CgroupNamer, Creator, CreatorRate, counter_deltas, creator_rates
from procmond.text import one_word

RATE_COLUMNS = ("forks", "threads", "execs", "exits", "failures")
MAP_OF = {
    "forks": "forks_total",
    "threads": "threads_created_total",
    "execs": "execs_total",
    "exits": "exits_total",
    "failures": "fork_failures_total",
}
SORT_KEYS = {
    "f": "forks",
    "t": "threads",
    "e": "execs",
    "x": "exits",
    "a": "failures",
    "c": "command",
}
SORT_NAMES = tuple(SORT_KEYS.values())
TOP_CREATORS = 10
GENERATION = 1  # per-process counting stays on for the whole run: one generation


@dataclass(frozen=True, order=True)
class RowKey:
    comm: bytes
    unit: str
    pod: str  # namespace/name, or ""


@dataclass
class Row:
    key: RowKey
    rates: dict[str, float] = field(default_factory=lambda: dict.fromkeys(RATE_COLUMNS, 0.0))
    parents: dict[bytes, float] = field(default_factory=dict)  # parent command → its share

    @property
    def parent(self) -> bytes:
        """The parent command behind most of this row's creations and execs."""
        if not self.parents:
            return b""
        return max(self.parents.items(), key=lambda item: (item[1], item[0]))[0]


@dataclass(frozen=True)
class Frame:
    """One refresh: what happened between two reads of the maps."""

    wall_time: float
    seconds: float
    host_rate: float  # tasks created per second, host-wide (/proc/stat)
    rows: list[Row]
    creators: list[tuple[RowKey, CreatorRate]]  # busiest first, with the row each belongs to
    failures_known: bool  # fork failures need the syscall probes


Fields = dict[str, Any]  # a counter key's fields by name


def row_key(fields: Fields, labels: Callable[[int], tuple[str, ...]]) -> RowKey:
    unit, namespace, pod, _container = labels(int(fields.get("cgroup_id", 0)))
    return RowKey(bytes(fields.get("comm", b"")), unit, f"{namespace}/{pod}" if pod else "")


def build_rows(
    deltas: dict[str, list[tuple[Fields, int]]],
    seconds: float,
    labels: Callable[[int], tuple[str, ...]],
) -> list[Row]:
    """Rows from what each counter map counted over ``seconds``: {column: [(key fields,
    count)]}. Rows that counted nothing are left out."""
    rows: dict[RowKey, Row] = {}
    for column, entries in deltas.items():
        for fields, delta in entries:
            key = row_key(fields, labels)
            row = rows.get(key) or rows.setdefault(key, Row(key))
            rate = delta / seconds
            row.rates[column] += rate
            if "parent_comm" in fields:
                parent = bytes(fields["parent_comm"])
                row.parents[parent] = row.parents.get(parent, 0.0) + rate
    return list(rows.values())


def creator_key(creator: Creator, labels: Callable[[int], tuple[str, ...]]) -> RowKey:
    """The row a creating process belongs to: its command, in its unit and pod."""
    return row_key({"comm": creator.comm, "cgroup_id": creator.cgroup_id}, labels)


def sort_rows(rows: list[Row], by: str) -> list[Row]:
    if by == "command":
        return sorted(rows, key=lambda r: r.key)
    return sorted(rows, key=lambda r: (-r.rates[by], r.key))


def creators_of(frame: Frame, row: Row) -> list[CreatorRate]:
    """The creating processes of ``row``: its command, in its unit and pod."""
    return [rate for key, rate in frame.creators if key == row.key]


class Sampler:
    """Reads the maps and turns two reads into a Frame."""

    def __init__(
        self,
        reader: MapReader,
        creators_reader: creators.CreatorsReader,
        labels: Callable[[int], tuple[str, ...]],
        failures: bool,
        clock: Callable[[], float] = time.monotonic,
        stat: Path = Path("/proc/stat"),
    ) -> None:
        self._reader = reader
        self._creators = creators_reader
        self.labels = labels
        self.failures = failures
        self._clock = clock
        self._host = creators.HostCreations(stat)
        self._columns = tuple(c for c in RATE_COLUMNS if failures or c != "failures")
        self._fields = {spec.map_name: spec.key_fields for spec in COUNTERS}
        self._last = self._read()

    def _read(self) -> tuple[float, int, dict[str, dict[bytes, tuple[Fields, int]]], Any]:
        now = self._clock()
        host = self._host.read()
        counts = {}
        for column in self._columns:
            name = MAP_OF[column]
            names = self._fields[name]
            counts[column] = {
                raw: (dict(zip(names, values, strict=True)), count)
                for raw, values, count in self._reader.counter_entries(name, names)
            }
        return now, host, counts, self._creators.read(GENERATION)

    def sample(self) -> Frame:
        before, self._last = self._last, self._read()
        then, host_then, counts_then, creators_then = before
        now, host_now, counts_now, creators_now = self._last
        seconds = max(now - then, 1e-6)
        deltas: dict[str, list[tuple[Fields, int]]] = {}
        for column, entries in counts_now.items():
            previous = {raw: count for raw, (_f, count) in counts_then.get(column, {}).items()}
            current = {raw: count for raw, (_f, count) in entries.items()}
            deltas[column] = [
                (entries[raw][0], delta) for raw, delta in counter_deltas(previous, current).items()
            ]
        return Frame(
            time.time(),
            seconds,
            (host_now - host_then) / seconds,
            build_rows(deltas, seconds, self.labels),
            [
                (creator_key(r.creator, self.labels), r)
                for r in creator_rates(creators_then, creators_now, seconds)
            ],
            self.failures,
        )


# --- Text ------------------------------------------------------------------------------------

_RATE_HEAD = "".join(f"{c.upper() + '/s':>11}" for c in RATE_COLUMNS)
TABLE_HEAD = f"{_RATE_HEAD}  {'COMMAND':<16} {'PARENT':<16} {'UNIT':<28} POD"
CREATORS_HEAD = f"{'PID':>9} {'FORKS/s':>10} {'THREADS/s':>10} {'PPID':>9}  {'PARENT':<16} CMDLINE"
HELP = "f t e x a c: sort by forks threads execs exits failures command; up/down: select; q: quit"


def header_line(frame: Frame, sort: str) -> str:
    clock = datetime.datetime.fromtimestamp(frame.wall_time).strftime("%H:%M:%S")
    return (
        f"procmond top {clock}  interval {frame.seconds:.2f} s  host {frame.host_rate:.1f} "
        f"tasks created/s  sort {sort}"
    )


def row_line(row: Row, failures_known: bool) -> str:
    rates = "".join(
        f"{'-':>11}" if c == "failures" and not failures_known else f"{row.rates[c]:>11.1f}"
        for c in RATE_COLUMNS
    )
    return (
        f"{rates}  {one_word(row.key.comm):<16} {one_word(row.parent):<16} "
        f"{row.key.unit or '-':<28} {row.key.pod or '-'}"
    )


def creator_line(rate: CreatorRate, proc: Path = Path("/proc")) -> str:
    c = rate.creator
    command = creators.cmdline(c.pid, c.comm, proc) or f"[{one_word(c.comm)}]"
    return (
        f"{c.pid:>9} {rate.forks_per_second:>10.1f} {rate.threads_per_second:>10.1f} "
        f"{c.ppid:>9}  {one_word(c.parent_comm):<16} {command}"
    )


@dataclass(frozen=True)
class View:
    """A frame as text: the rows in order (the selected one's index) and its top creators."""

    header: str
    rows: list[str]
    selected: int | None
    creators: list[str]

    def lines(self) -> list[str]:
        """As ``-b`` prints it."""
        return [self.header, TABLE_HEAD, *self.rows, "", *self.creators]


def view(frame: Frame, sort: str, selected: RowKey | None) -> View:
    """The frame sorted; the row of ``selected`` if still there, else the first, is the one
    whose creators are shown."""
    rows = sort_rows(frame.rows, sort)
    keys = [r.key for r in rows]
    index = keys.index(selected) if selected in keys else (0 if rows else None)
    if index is None:
        creator_lines = ["TOP CREATORS: nothing was created"]
    else:
        row = rows[index]
        creator_lines = [f"TOP CREATORS of {one_word(row.key.comm)}", CREATORS_HEAD]
        creator_lines += [creator_line(r) for r in creators_of(frame, row)[:TOP_CREATORS]]
    return View(
        header_line(frame, sort),
        [row_line(r, frame.failures_known) for r in rows],
        index,
        creator_lines,
    )


# --- Running ---------------------------------------------------------------------------------


def batch(sampler: Sampler, interval: float, count: int | None, sort: str, out: TextIO) -> None:
    """``-b``: ``count`` refreshes (None: until interrupted) as plain text, a blank line
    after each; the first row is the selected one."""
    done = 0
    due = time.monotonic()
    while count is None or done < count:
        due += interval
        time.sleep(max(0.0, due - time.monotonic()))
        out.write("\n".join(view(sampler.sample(), sort, None).lines()) + "\n\n")
        out.flush()
        done += 1


@dataclass
class Screen:
    """The interactive view's state: sort, selection, and the last frame."""

    sort: str
    frame: Frame | None = None
    selected: RowKey | None = None

    def key(self, ch: int) -> bool:
        """Act on a key; False to quit."""
        if ch in (ord("q"), ord("Q")):
            return False
        if 0 <= ch < 256 and chr(ch) in SORT_KEYS:
            self.sort = SORT_KEYS[chr(ch)]
        elif ch in (curses.KEY_DOWN, ord("j")):
            self._move(1)
        elif ch in (curses.KEY_UP, ord("k")):
            self._move(-1)
        return True

    def _move(self, step: int) -> None:
        if self.frame is None or not self.frame.rows:
            return
        keys = [r.key for r in sort_rows(self.frame.rows, self.sort)]
        index = keys.index(self.selected) if self.selected in keys else 0
        self.selected = keys[max(0, min(len(keys) - 1, index + step))]

    def lines(self, height: int) -> list[str]:
        """What fits in ``height`` lines: the table scrolled to keep the selected row, the
        selected row marked with ">", its creators below, the keys at the bottom."""
        if self.frame is None:
            return ["procmond top: measuring the first interval...", "", HELP]
        shown = view(self.frame, self.sort, self.selected)
        index = shown.selected
        self.selected = None if index is None else sort_rows(self.frame.rows, self.sort)[index].key
        room = max(1, height - 4 - len(shown.creators))
        first = 0 if index is None else max(0, index - room + 1)
        rows = [
            (">" if i == index else " ") + line
            for i, line in enumerate(shown.rows)
            if first <= i < first + room
        ]
        return [shown.header, " " + TABLE_HEAD, *rows, "", *shown.creators, HELP]


def interactive(sampler: Sampler, interval: float, count: int | None, sort: str) -> None:
    """The curses view, until q (or ``count`` refreshes); the terminal is restored however it
    ends (curses.wrapper)."""

    def loop(screen: Any) -> None:
        with contextlib.suppress(curses.error):
            curses.curs_set(0)  # a terminal may not be able to hide the cursor
        screen.timeout(100)  # ms: keys answer at once, refreshes come on time
        state = Screen(sort)
        due = time.monotonic() + interval
        dirty = True
        refreshes = 0
        while True:
            if time.monotonic() >= due:
                if count is not None and refreshes >= count:
                    return
                state.frame = sampler.sample()
                refreshes += 1
                due = max(due + interval, time.monotonic() + interval / 10)
                dirty = True
            ch = screen.getch()
            if ch != -1:
                if not state.key(ch):
                    return
                dirty = True
            if dirty:
                draw(screen, state.lines(screen.getmaxyx()[0]))
                dirty = False

    curses.wrapper(loop)


def draw(screen: Any, lines: list[str]) -> None:
    height, width = screen.getmaxyx()
    screen.erase()
    for y, line in enumerate(lines[:height]):
        with contextlib.suppress(curses.error):  # the screen's last cell cannot be written
            screen.addnstr(y, 0, line, max(0, width - 1))
    screen.refresh()


class StopError(Exception):
    """SIGTERM or SIGHUP (a closed terminal): unwind, restoring the terminal."""


def _stop_on_signals() -> None:
    def stop(_signum: int, _frame: object) -> None:
        raise StopError

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)


def top(
    config: Config,
    interval: float,
    count: int | None,
    as_batch: bool,
    sort: str,
    out: TextIO = sys.stdout,
    namer: CgroupNamer | None = None,
) -> int:
    """``procmond top``: load the probe, count per process for the whole run, show."""
    probe = bpf_loader.load(config)
    try:
        creators.switch(probe.map("storm_watch"), GENERATION)
        sampler = Sampler(
            probe.reader(),
            creators.CreatorsReader(probe.map("creators"), probe.layouts["creators"]),
            lambda cgroup_id: creators.labels_of(namer, cgroup_id),
            config.syscall_probes,
        )
        _stop_on_signals()
        try:
            if as_batch:
                batch(sampler, interval, count, sort, out)
            else:
                interactive(sampler, interval, count, sort)
        except (KeyboardInterrupt, StopError, BrokenPipeError):
            pass
    finally:
        probe.close()
    return 0
