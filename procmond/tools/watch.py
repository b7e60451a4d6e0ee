"""``procmond watch``: one line per process or thread creation, live, from a BPF ring buffer.

It reads the running daemon's probe (pinned: procmond/kernel/pins.py), which writes events only
while a watch reads them (procmond/kernel/watch_stream.py): no compile, no second probe for every
creation to pay. Without a daemon it loads its own copy (compiled with PROCMOND_WATCH, whose syscall
probes name each creation's call; the daemon's name it only with syscall_probes, else the
call shows as ``unknown``). Lines keep the prototype's format; ``--json`` gives one JSON
object a line. Filters (command, creating PID, unit, pod) select in user space; exec events
come only on request (``--exec``: the probe sends them only then), timestamps too
(``--timestamp``).
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from procmond.config import CGROUP_LABELS, Config
from procmond.errors import ProcmondError
from procmond.kernel import bpf_loader, pins
from procmond.kernel.handoff import HandedOffProbe
from procmond.kernel.header import comm_len, read_header, syscall_names
from procmond.kernel.watch_stream import EventStream, stream_maps
from procmond.naming.cgroups import unit_of
from procmond.naming.labels import EMPTY_LABELS, CgroupLabels, Namer, Naming
from procmond.text import decoded, printable

# systemd's unit types: a --unit name ending in none of them means NAME.service (systemctl's
# rule); of these, only services and scopes are units procmond names a cgroup by.
UNIT_TYPES = (".service", ".socket", ".device", ".mount", ".automount", ".swap", ".target")
UNIT_TYPES += (".path", ".timer", ".slice", ".scope")
GLOB_CHARACTERS = frozenset("*?[")
_CGROUP_CACHE_MAX = 4096  # cgroup ids whose labels a watch remembers


def syscall_name(value: int) -> str:
    """What a creation_event's syscall field means (enum creation_syscall in procmond.h)."""
    return syscall_names(read_header()).get(value, "unknown")


@functools.cache
def exec_kind() -> int:
    """The value of EVENT_EXEC (enum event_kind in procmond.h)."""
    names = read_header().names_by_value("event_kind", "EVENT_")
    return next(value for value, name in names.items() if name == "exec")


def is_exec(event: Any) -> bool:
    return bool(event.kind == exec_kind())


def call_name(event: Any) -> str:
    """sys_clone, sys_clone3, sys_fork, sys_vfork, kernel_clone, or exec (execve or execveat:
    the exec tracepoint does not tell them apart)."""
    return "exec" if is_exec(event) else syscall_name(event.syscall)


def format_text(event: Any) -> str:
    return (
        f"Process {printable(bytes(event.comm))} (PID:{event.pid}, PPID: {event.ppid}) "
        f"called {call_name(event)}"
    )


def event_fields(event: Any, labels: CgroupLabels = EMPTY_LABELS) -> dict[str, Any]:
    """An event as --json shows it, with its cgroup's labels as the daemon names them."""
    return {
        "timestamp_ns": event.timestamp_ns,
        "comm": decoded(bytes(event.comm)),
        "pid": event.pid,
        "ppid": event.ppid,
        "parent_comm": decoded(bytes(event.parent_comm)),
        "syscall": call_name(event),
        "kind": "exec" if is_exec(event) else "thread" if event.is_thread else "process",
        "child_pid": event.child_pid,
        "child_tid": event.child_tid,
        "cgroup_id": event.cgroup_id,
        **dict(zip(CGROUP_LABELS, labels, strict=True)),
    }


def command_name(name: str) -> bytes:
    """A --comm value as the kernel keeps it: its bytes, cut to 15 (as ``pgrep`` warns)."""
    raw = os.fsencode(name)
    if not raw or b"\0" in raw:
        raise ProcmondError(f"--comm {name!r} is not a command name", "give a non-empty name")
    return raw[: comm_len() - 1]  # the kernel cuts longer names so


def unit_pattern(name: str) -> str:
    """A --unit value as systemctl reads it: a name with a unit type's suffix or a glob
    (``*``, ``?``, ``[...]``, matched as systemctl matches one) as given, any other name as
    NAME.service. A name procmond never labels (a slice, a socket...) is an error rather than
    a watch that shows nothing."""
    if not name or "/" in name:
        raise ProcmondError(f"--unit {name!r} is not a unit name", "give a name like nginx.service")
    if GLOB_CHARACTERS.intersection(name):
        return name
    if not name.endswith(UNIT_TYPES):
        return name + ".service"
    if unit_of("/" + name) != name:
        raise ProcmondError(
            f"--unit {name}: procmond names processes by their service or scope, never by a "
            f"{name.rsplit('.', 1)[1]}",
            "give a .service or .scope (a glob such as 'user-*' matches several)",
        )
    return name


def unit_matches(unit: str, patterns: frozenset[str]) -> bool:
    return unit in patterns or any(
        fnmatch.fnmatchcase(unit, p) for p in patterns if GLOB_CHARACTERS.intersection(p)
    )


@dataclass(frozen=True)
class Selection:
    """Which events ``watch`` prints: each filter given must match one of its values."""

    comms: frozenset[bytes] = frozenset()
    pids: frozenset[int] = frozenset()
    units: frozenset[str] = frozenset()  # unit names and globs, as unit_pattern gives them
    pods: frozenset[str] = frozenset()  # a pod name, or namespace/name
    execs: bool = False
    containers: frozenset[str] = frozenset()  # a container's name (or short id)

    @property
    def by_cgroup(self) -> bool:
        return bool(self.units or self.pods or self.containers)

    def matches(self, event: Any, labels: Callable[[int], CgroupLabels]) -> bool:
        if is_exec(event) and not self.execs:
            return False
        if self.comms and bytes(event.comm) not in self.comms:
            return False
        if self.pids and event.pid not in self.pids:
            return False
        if self.by_cgroup:
            unit, namespace, pod, container = labels(event.cgroup_id)
            if self.units and not unit_matches(unit, self.units):
                return False
            if self.pods and pod not in self.pods and f"{namespace}/{pod}" not in self.pods:
                return False
            if self.containers and container not in self.containers:
                return False
        return True


def no_labels(_cgroup_id: int) -> CgroupLabels:
    return EMPTY_LABELS


class CgroupLabelCache:
    """A namer's answers by cgroup id, so a storm of events asks it once per cgroup."""

    def __init__(self, namer: Namer) -> None:
        self._namer = namer
        self._labels: dict[int, CgroupLabels] = {}

    def __call__(self, cgroup_id: int) -> CgroupLabels:
        labels = self._labels.get(cgroup_id)
        if labels is None:
            if len(self._labels) >= _CGROUP_CACHE_MAX:
                self._labels.clear()
            labels = self._namer(cgroup_id)
            if any(labels):  # empty may only mean "not known yet": ask again next time
                self._labels[cgroup_id] = labels
        return labels


def monotonic_to_wall_ns() -> int:
    """What to add to a CLOCK_MONOTONIC time (the probe's bpf_ktime_get_ns) to get wall-clock
    time. Read once, at start: NTP slews both clocks alike, so the offset changes only when
    the wall clock is stepped. The wall clock is read between two monotonic readings."""
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    wall = time.clock_gettime_ns(time.CLOCK_REALTIME)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    return wall - (before + after) // 2


def rfc3339(wall_ns: int) -> str:
    """Nanoseconds since the epoch as RFC 3339 UTC, microseconds: 2026-12-02T06:36:26.894123Z."""
    seconds, ns = divmod(wall_ns, 1_000_000_000)
    day_and_time = datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{day_and_time}.{ns // 1000:06d}Z"


def format_json(event: Any, monotonic_to_wall: int = 0, labels: CgroupLabels = EMPTY_LABELS) -> str:
    """One event as JSON. ``time`` is wall-clock; ``timestamp_ns`` keeps the probe's own clock
    (CLOCK_MONOTONIC, for ordering and intervals, and for scripts that already read it)."""
    return json.dumps(
        {"time": rfc3339(event.timestamp_ns + monotonic_to_wall), **event_fields(event, labels)},
        ensure_ascii=False,
    )


def formatter(
    as_json: bool,
    timestamps: bool,
    labels: Callable[[int], CgroupLabels] = lambda _id: EMPTY_LABELS,
) -> Callable[[Any], str]:
    """One event → its line: the prototype's text (with its wall-clock time first when asked),
    or JSON, which always carries the time and the cgroup's ``labels``."""
    offset = monotonic_to_wall_ns()
    if as_json:
        return lambda e: format_json(e, offset, labels(e.cgroup_id))
    if not timestamps:
        return format_text
    return lambda e: f"{rfc3339(e.timestamp_ns + offset)} {format_text(e)}"


def _reader_gone(out: TextIO) -> bool:
    try:
        out.flush()
    except BrokenPipeError:
        return True
    return False


def event_source(config: Config) -> tuple[HandedOffProbe | bpf_loader.LoadedProbe, Path | None]:
    """The running daemon's probe (pinned: procmond/kernel/pins.py), whose stream readers share
    under a lock of the pin root; else a probe of this watch's own (its only reader)."""
    running = pins.running(config)
    if running is not None:
        if all(name in running.maps for name in stream_maps()):
            return running, Path(config.pin_root)
        running.close()  # a daemon of a version whose probe has no stream
    return bpf_loader.load(config, watch=True), None


def watch(
    config: Config,
    as_json: bool,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    selection: Selection = Selection(),
    timestamps: bool = False,
    naming: Naming | None = None,
) -> int:
    if selection.by_cgroup and naming is None:
        raise ProcmondError(
            "--unit, --pod and --container need cgroup names, which this procmond cannot resolve",
            "filter with --comm or --pid instead",
        )
    probe, lock_dir = event_source(config)
    labels: Namer = CgroupLabelCache(naming(probe.reader())) if naming else no_labels
    stop = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    fmt = formatter(as_json, timestamps, labels)

    def on_event(event: Any) -> None:
        # A reader that went away (| head) ends the watch.
        nonlocal stop
        if stop or not selection.matches(event, labels):
            return
        try:
            out.write(fmt(event) + "\n")
        except BrokenPipeError:
            stop = True

    try:
        stream = EventStream(probe.map, probe.layouts, on_event, selection.execs, lock_dir)
    except BaseException:
        probe.close()
        raise
    what = "process and thread creation" + (" and execs" if selection.execs else "")
    err.write(f"procmond: watching {what} (Ctrl-C to stop)\n")
    err.flush()
    reported_lost = reported_gaps = 0
    try:
        while not stop:
            stream.poll(200)
            out.flush()
            lost = stream.lost()
            if lost > reported_lost:
                err.write(
                    f"procmond: lost {lost - reported_lost} events (ring buffer full; "
                    "the daemon's counts are unaffected)\n"
                )
                reported_lost = lost
            if stream.gaps > reported_gaps:
                err.write("procmond: not read for over a second: creations meanwhile not shown\n")
                reported_gaps = stream.gaps
    except BrokenPipeError:
        stop = True
    finally:
        stream.close()
        probe.close()
    if stop and _reader_gone(out):
        # Python flushes stdout once more at exit; point it at /dev/null so that the closed
        # pipe does not turn a clean exit into an error message.
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
    return 0
