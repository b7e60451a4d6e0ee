"""``procmond watch``: one line per process or thread creation, live, from a BPF ring buffer.

It loads its own copy of the probe (compiled with PROCMOND_WATCH), so a running daemon pays
nothing for it. Lines keep the prototype's format; ``--json`` gives one JSON object a line.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TextIO

from procmond import bpf_loader
from procmond.config import Config
from procmond.header import read_header, syscall_names
from procmond.maps import read_percpu_counts


def syscall_name(value: int) -> str:
    """What a creation_event's syscall field means (enum creation_syscall in procmond.h)."""
    return syscall_names(read_header()).get(value, "unknown")


def printable(raw: bytes) -> str:
    """A comm for a terminal line: UTF-8 (invalid bytes → U+FFFD), control characters and
    backslashes escaped, so a hostile name can never break or fake a line."""
    out = []
    for ch in raw.decode("utf-8", "replace"):
        if ch == "\\":
            out.append("\\\\")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def format_text(event: Any) -> str:
    return (
        f"Process {printable(bytes(event.comm))} (PID:{event.pid}, PPID: {event.ppid}) "
        f"called {syscall_name(event.syscall)}"
    )


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


def format_json(event: Any, monotonic_to_wall: int = 0) -> str:
    """One event as JSON. ``timestamp_ns`` keeps the probe's own clock (CLOCK_MONOTONIC, for
    ordering and intervals, and for scripts that already read it); ``time`` is wall-clock."""
    return json.dumps(
        {
            "time": rfc3339(event.timestamp_ns + monotonic_to_wall),
            "timestamp_ns": event.timestamp_ns,
            "comm": bytes(event.comm).decode("utf-8", "replace"),
            "pid": event.pid,
            "ppid": event.ppid,
            "parent_comm": bytes(event.parent_comm).decode("utf-8", "replace"),
            "syscall": syscall_name(event.syscall),
            "kind": "thread" if event.is_thread else "process",
            "child_pid": event.child_pid,
            "child_tid": event.child_tid,
        },
        ensure_ascii=False,
    )


def _reader_gone(out: TextIO) -> bool:
    try:
        out.flush()
    except BrokenPipeError:
        return True
    return False


def watch(config: Config, as_json: bool, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    probe = bpf_loader.load(config, watch=True)
    stop = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    fmt: Callable[[Any], str] = format_text
    if as_json:
        fmt = functools.partial(format_json, monotonic_to_wall=monotonic_to_wall_ns())
    events = probe.table("events")

    def on_event(_ctx: object, data: object, _size: int) -> None:
        # An exception must not escape into BCC's C callback (it would only be printed, for
        # every event): a reader that went away (| head) ends the watch instead.
        nonlocal stop
        if stop:
            return
        try:
            out.write(fmt(events.event(data)) + "\n")
        except BrokenPipeError:
            stop = True

    events.open_ring_buffer(on_event)
    err.write("procmond: watching process and thread creation (Ctrl-C to stop)\n")
    err.flush()
    reported_lost = 0
    try:
        while not stop:
            probe.bpf.ring_buffer_poll(200)
            out.flush()
            lost = read_percpu_counts(probe.map("watch_lost"), 1)[0]
            if lost > reported_lost:
                err.write(
                    f"procmond: lost {lost - reported_lost} events (ring buffer full; "
                    "the daemon's counts are unaffected)\n"
                )
                reported_lost = lost
    except BrokenPipeError:
        stop = True
    finally:
        probe.close()
    if stop and _reader_gone(out):
        # Python flushes stdout once more at exit; point it at /dev/null so that the closed
        # pipe does not turn a clean exit into an error message.
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
    return 0
