"""``procmond watch``: one line per creation, in the prototype's format or as JSON."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from datetime import datetime
from pathlib import Path

from tests.e2e.harness import PROCMOND, Watch, run_creator, unique_name


def test_text_lines_name_the_caller_its_parent_and_the_call(creator: Path) -> None:
    watch = Watch()
    name = unique_name("wat")
    runs = {
        mode: subprocess.Popen([str(creator), mode, "2", name.hex()], stdout=subprocess.PIPE)
        for mode in ("fork", "vfork", "clone3")
    }
    for p in runs.values():
        p.wait(timeout=30)
    mine = f"Process {name.decode()} "
    watch.wait_for("6 lines", lambda lines: sum(ln.startswith(mine) for ln in lines) >= 6)
    err, code = watch.stop()
    assert code == 0, err
    lines = watch.lines()
    for mode, p in runs.items():
        call = {"fork": "sys_clone", "vfork": "sys_vfork", "clone3": "sys_clone3"}[mode]
        expected = f"Process {name.decode()} (PID:{p.pid}, PPID: {os.getpid()}) called {call}"
        assert lines.count(expected) == 2, (expected, [ln for ln in lines if mine in ln])


def test_json_lines_carry_kind_child_and_wall_clock_time(creator: Path) -> None:
    watch = Watch("--json")
    name = unique_name("wjs")
    before = time.time_ns()
    run_creator(creator, "thread", 3, [name])
    run_creator(creator, "spawn", 2, [name])
    after = time.time_ns()

    def mine(lines: list[str]) -> list[dict]:
        return [e for e in map(json.loads, lines) if e["comm"] == name.decode()]

    watch.wait_for("5 events", lambda lines: len(mine(lines)) >= 5)
    err, code = watch.stop()
    assert code == 0, err
    events = mine(watch.lines())
    assert sorted(e["kind"] for e in events) == ["process"] * 2 + ["thread"] * 3
    assert all(e["syscall"] == "sys_clone3" for e in events)
    assert all(e["ppid"] == os.getpid() for e in events)
    threads = [e for e in events if e["kind"] == "thread"]
    assert all(e["child_pid"] == e["pid"] != e["child_tid"] for e in threads)
    # time: RFC 3339 UTC to the microsecond, within the creators' run. The slack covers
    # truncation to microseconds and watch's one reading of the clocks' offset at start.
    slack = 5_000_000
    for e in events:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", e["time"]), e
        assert before - slack <= wall_ns(e["time"]) <= after + slack, (before, e, after)
    # timestamp_ns is the same instant on the monotonic clock: one offset for every event
    offsets = [wall_ns(e["time"]) - e["timestamp_ns"] for e in events]
    assert max(offsets) - min(offsets) < 1000, offsets  # up to 999 ns lost to truncation


def wall_ns(rfc3339: str) -> int:
    wall = datetime.fromisoformat(rfc3339.replace("Z", "+00:00"))
    return int(wall.timestamp()) * 1_000_000_000 + wall.microsecond * 1000


def test_reader_going_away_ends_watch_cleanly(creator: Path) -> None:
    """`procmond watch | head -1`: the closed pipe ends the watch, exit 0, no noise."""
    watch = subprocess.Popen(
        [*PROCMOND, "watch"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert watch.stderr is not None and watch.stdout is not None
    assert "watching" in watch.stderr.readline()
    run_creator(creator, "fork", 5, [unique_name("pipe")])
    assert watch.stdout.readline().startswith("Process ")
    watch.stdout.close()  # the reader goes away
    run_creator(creator, "fork", 50, [unique_name("pipe")])  # more events to write
    assert watch.wait(timeout=10) == 0
    assert watch.stderr.read() == ""
