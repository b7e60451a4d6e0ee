"""``procmond watch``: one line per process or thread creation, live, from a BPF ring buffer.

It loads its own copy of the probe (compiled with PROCMOND_WATCH), so a running daemon pays
nothing for it. Lines keep the prototype's format; ``--json`` gives one JSON object a line.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any, TextIO

from procmond import bpf_loader
from procmond.config import Config
from procmond.header import read_header, syscall_names
from procmond.maps import read_percpu_counts
from procmond.text import printable


def syscall_name(value: int) -> str:
    """What a creation_event's syscall field means (enum creation_syscall in procmond.h)."""
    return syscall_names(read_header()).get(value, "unknown")


def format_text(event: Any) -> str:
    return (
        f"Process {printable(bytes(event.comm))} (PID:{event.pid}, PPID: {event.ppid}) "
        f"called {syscall_name(event.syscall)}"
    )


def format_json(event: Any) -> str:
    return json.dumps(
        {
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
    fmt = format_json if as_json else format_text
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
