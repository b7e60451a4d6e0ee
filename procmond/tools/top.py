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
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from procmond.config import Config
from procmond.errors import ProcmondError
from procmond.kernel import bpf_loader, inventory, pins
from procmond.kernel.handoff import HandedOffProbe
from procmond.kernel.header import comm_len
from procmond.kernel.maps import MapReader
from procmond.naming.labels import Naming, names_of
from procmond.scrape.metrics import COUNTERS
from procmond.storms import creators
from procmond.storms.detector import Creator, CreatorRate, counter_deltas, creator_rates
from procmond.text import one_word

RATE_COLUMNS = ("forks", "threads", "execs", "exits", "failures")
MAP_OF = {
    "forks": inventory.FORKS_TOTAL,
    "threads": inventory.THREADS_CREATED_TOTAL,
    "execs": inventory.EXECS_TOTAL,
    "exits": inventory.EXITS_TOTAL,
    "failures": inventory.FORK_FAILURES_TOTAL,
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
    container: str = ""  # the container's name (a Kubernetes, Docker, Podman... container)


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
    unit, namespace, pod, container = labels(int(fields.get("cgroup_id", 0)))
    pod = f"{namespace}/{pod}" if namespace else pod  # a Podman pod has no namespace
    return RowKey(bytes(fields.get("comm", b"")), unit, pod, container)


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
        generation: Callable[[], int] = lambda: GENERATION,
    ) -> None:
        self._reader = reader
        self._creators = creators_reader
        self.labels = labels
        self.failures = failures
        self._clock = clock
        self._generation = generation
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
        return now, host, counts, self._creators.read(self._generation())

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

RATE_WIDTH = 10  # rates up to 999999.9 and a space; a longer title and a space


def rate_title(column: str) -> str:
    return column.upper() + "/s"


def rate_width(column: str) -> int:
    return max(RATE_WIDTH, len(rate_title(column)) + 1)


@dataclass(frozen=True)
class TextColumn:
    title: str
    ideal: int  # enough for most values; a header is never cut below its title's length
    optional: bool = False  # shown only where COMMAND still gets its ideal width


TEXT_COLUMNS = (
    TextColumn("COMMAND", comm_len() - 1),  # a whole command: TASK_COMM_LEN - 1 bytes
    TextColumn("PARENT", 15),
    TextColumn("UNIT", 28),
    TextColumn("POD", 28),
    TextColumn("CONTAINER", 20, optional=True),
)
CUT_MARK = "+"  # a value cut to its column's width ends with it, as in procps top


@dataclass(frozen=True)
class Layout:
    """Which columns a table shows and how wide: the rate columns, then the first
    ``len(widths)`` TEXT_COLUMNS. ``cut``: a longer value is cut to its width (on a screen);
    otherwise it pushes the rest of its line right (``-b``, for scripts, loses nothing)."""

    rates: tuple[str, ...]
    widths: tuple[int, ...]
    cut: bool

    def head(self) -> str:
        return self._join(
            [f"{rate_title(c):>{rate_width(c)}}" for c in self.rates],
            [c.title for c in TEXT_COLUMNS[: len(self.widths)]],
        )

    def line(self, row: Row) -> str:
        key = row.key
        values = (one_word(key.comm), one_word(row.parent), key.unit, key.pod, key.container)
        return self._join(
            [f"{row.rates[c]:>{rate_width(c)}.1f}" for c in self.rates],
            [v or "-" for v in values[: len(self.widths)]],
        )

    def _join(self, rates: list[str], texts: list[str]) -> str:
        cells = []
        for text, width in zip(texts, self.widths, strict=True):
            if self.cut and len(text) > width:
                text = text[: width - 1] + CUT_MARK
            cells.append(f"{text:<{width}}")
        return ("".join(rates) + "  " + " ".join(cells)).rstrip()


def layout(width: int | None, failures_known: bool) -> Layout:
    """The table's columns for a screen ``width`` characters wide (None: no limit, ``-b``).

    FAILURES/s shows only when failures are counted (else it is a column of dashes). Each
    text column gets at least its title's width (CONTAINER only where COMMAND is whole too); then
    COMMAND grows to a whole command, the
    others evenly to their ideal width, and the last one takes what is left. Columns that
    cannot get their title's width are left out, from the right: no header is cut mid-word.
    """
    rates = [c for c in RATE_COLUMNS if failures_known or c != "failures"]
    if width is None:
        return Layout(tuple(rates), tuple(c.ideal for c in TEXT_COLUMNS), cut=False)
    columns = list(TEXT_COLUMNS)

    def room() -> int:
        return width - sum(map(rate_width, rates)) - 2

    def needed() -> int:
        return sum(len(c.title) + 1 for c in columns) - 1

    while len(columns) > 1 and needed() > room():  # then, on a very narrow screen,
        columns.pop()
    while len(rates) > 1 and needed() > room():  # the rates but forks,
        rates.pop()
    while columns and needed() > room():  # and COMMAND
        columns.pop()
    while (
        columns
        and columns[-1].optional
        and needed() + columns[0].ideal - len(columns[0].title) > room()
    ):  # an optional column never costs a whole command
        columns.pop()
    widths = [len(c.title) for c in columns]
    spare = room() - sum(widths) - (len(columns) - 1)
    if columns:
        grow = max(0, min(spare, columns[0].ideal - widths[0]))
        widths[0] += grow
        spare -= grow
    while spare > 0:  # evenly: the narrowest column below its ideal grows first
        below = [i for i, c in enumerate(columns) if widths[i] < c.ideal]
        if not below:
            break
        widths[min(below, key=lambda i: widths[i])] += 1
        spare -= 1
    if columns:
        widths[-1] += max(0, spare)
    return Layout(tuple(rates), tuple(widths), cut=True)


CREATORS_HEAD = f"{'PID':>9} {'FORKS/s':>10} {'THREADS/s':>10} {'PPID':>9}  {'PARENT':<16} CMDLINE"
KEYS_LINE = "f t e x a c: sort  up/down: select  ?: keys  q: quit"
KEYS = (
    ("f", "sort by forks per second"),
    ("t", "sort by threads created per second"),
    ("e", "sort by execs per second"),
    ("x", "sort by exits per second"),
    ("a", "sort by failed creation calls per second (with --syscall-probes)"),
    ("c", "sort by command"),
    ("up, k", "select the row above"),
    ("down, j", "select the row below"),
    ("?, h", "show these keys"),
    ("q", "quit"),
)
FAILURES_NOT_COUNTED = "failures are not counted without --syscall-probes: rows are by command"


def keys_help() -> list[str]:
    """The help screen of ``?`` and ``h``."""
    return [
        "procmond top: keys",
        "",
        *(f"  {key:<9}{what}" for key, what in KEYS),
        "",
        "The selected row (>) shows its busiest creating processes below the table.",
        "Press any key to return.",
    ]


def header_line(frame: Frame, sort: str) -> str:
    clock = datetime.datetime.fromtimestamp(frame.wall_time).strftime("%H:%M:%S")
    return (
        f"procmond top {clock}  interval {frame.seconds:.2f} s  host {frame.host_rate:.1f} "
        f"created/s  sort {sort}"
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
    notes: list[str]  # why a column or an order is empty
    table_head: str
    rows: list[str]
    selected: int | None
    creators: list[str]

    def lines(self) -> list[str]:
        """As ``-b`` prints it."""
        return [self.header, *self.notes, self.table_head, *self.rows, "", *self.creators]


def view(frame: Frame, sort: str, selected: RowKey | None, width: int | None = None) -> View:
    """The frame sorted, its table fit to ``width``; the row of ``selected`` if still there,
    else the first, is the one whose creators are shown."""
    rows = sort_rows(frame.rows, sort)
    keys = [r.key for r in rows]
    index = keys.index(selected) if selected in keys else (0 if rows else None)
    if index is None:
        creator_lines = ["TOP CREATORS: nothing was created"]
    else:
        row = rows[index]
        creator_lines = [f"TOP CREATORS of {one_word(row.key.comm)}", CREATORS_HEAD]
        creator_lines += [creator_line(r) for r in creators_of(frame, row)[:TOP_CREATORS]]
    table = layout(width, frame.failures_known)
    notes = [FAILURES_NOT_COUNTED] if sort == "failures" and not frame.failures_known else []
    return View(
        header_line(frame, sort),
        notes,
        table.head(),
        [table.line(r) for r in rows],
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
    """The interactive view's state: sort, selection, the last frame, and whether the keys'
    help is shown."""

    sort: str
    frame: Frame | None = None
    selected: RowKey | None = None
    showing_keys: bool = False

    def key(self, ch: int) -> bool:
        """Act on a key; False to quit."""
        if self.showing_keys:  # any key returns from the help
            self.showing_keys = ch == curses.KEY_RESIZE
            return True
        if ch in (ord("q"), ord("Q")):
            return False
        if ch in (ord("?"), ord("h")):
            self.showing_keys = True
        elif 0 <= ch < 256 and chr(ch) in SORT_KEYS:
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

    def lines(self, height: int, width: int) -> list[str]:
        """What fits in ``height`` lines of ``width`` characters (the last one left blank):
        the table scrolled to keep the selected row, the selected row marked with ">", its
        creators below, the keys at the bottom; or the keys' help."""
        if self.showing_keys:
            return keys_help()
        if self.frame is None:
            return ["procmond top: measuring the first interval...", "", KEYS_LINE]
        shown = view(self.frame, self.sort, self.selected, width - 2)  # ">" and the last cell
        index = shown.selected
        self.selected = None if index is None else sort_rows(self.frame.rows, self.sort)[index].key
        room = max(1, height - 4 - len(shown.notes) - len(shown.creators))
        first = 0 if index is None else max(0, index - room + 1)
        rows = [
            (">" if i == index else " ") + line
            for i, line in enumerate(shown.rows)
            if first <= i < first + room
        ]
        head = [shown.header, *shown.notes, " " + shown.table_head]
        return [*head, *rows, "", *shown.creators, KEYS_LINE]


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
                draw(screen, state.lines(*screen.getmaxyx()))
                dirty = False

    curses.wrapper(loop)


def draw(screen: Any, lines: list[str]) -> None:
    height, width = screen.getmaxyx()
    screen.erase()
    for y, line in enumerate(lines[:height]):
        with contextlib.suppress(curses.error):  # the screen's last cell cannot be written
            screen.addnstr(y, 0, line, max(0, width - 1))
    screen.refresh()


class NotATerminalError(ProcmondError):
    """The interactive view was asked for without a terminal to draw on and read keys from."""

    exit_code = 2  # a usage error, as argparse's


def require_terminal(keys: TextIO, screen: TextIO) -> None:
    """Fail before anything is loaded or drawn, rather than half-way through curses' setup
    (which leaves escape codes in a file and says only "nocbreak() returned ERR")."""
    if not (keys.isatty() and screen.isatty()):
        raise NotATerminalError("not a terminal: use -b for plain text (or --once)")
    try:
        curses.setupterm(fd=screen.fileno())
    except curses.error:
        term = os.environ.get("TERM", "")
        raise NotATerminalError(
            f"this terminal (TERM={term!r}) is unknown to curses: use -b for plain text"
        ) from None


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
    naming: Naming | None = None,
) -> int:
    """``procmond top``: read the running daemon's probe (pinned: procmond/kernel/pins.py), else
    load one; count per process for the whole run, show."""
    if not as_batch:
        require_terminal(sys.stdin, out)
    running = pins.running(config)
    probe: HandedOffProbe | bpf_loader.LoadedProbe
    if running is not None:
        probe = running
        shared = creators.SharedSwitch(probe.map(inventory.STORM_WATCH))
        generation, failures = shared.generation, probe.attached.get("sys_exit_clone", False)
    else:
        probe = bpf_loader.load(config)
        creators.switch(probe.map(inventory.STORM_WATCH), GENERATION)
        generation, failures = (lambda: GENERATION), config.syscall_probes
    namer = naming(probe.reader()) if naming is not None else None
    try:
        sampler = Sampler(
            probe.reader(),
            creators.CreatorsReader(
                probe.map(inventory.CREATORS), probe.layouts[inventory.CREATORS]
            ),
            lambda cgroup_id: names_of(namer, cgroup_id),
            failures,
            generation=generation,
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
        if running is not None:
            shared.release()
        probe.close()
    return 0
