"""``procmond watch``: one line per creation, in the prototype's format or as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from tests.e2e.harness import PROCMOND, run_creator, unique_name


class Watch:
    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [*PROCMOND, "watch", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        assert self.process.stderr is not None
        line = self.process.stderr.readline()  # printed once every probe is attached
        assert "watching" in line, line + self.process.stderr.read()

    def stop(self) -> tuple[list[str], str, int]:
        time.sleep(0.3)  # the poll loop drains the ring buffer every 0.2 s
        self.process.terminate()
        out, err = self.process.communicate(timeout=10)
        return out.splitlines(), err, self.process.returncode


def test_text_lines_name_the_caller_its_parent_and_the_call(creator: Path) -> None:
    watch = Watch()
    name = unique_name("wat")
    runs = {
        mode: subprocess.Popen([str(creator), mode, "2", name.hex()], stdout=subprocess.PIPE)
        for mode in ("fork", "vfork", "clone3")
    }
    for p in runs.values():
        p.wait(timeout=30)
    lines, err, code = watch.stop()
    assert code == 0, err
    for mode, p in runs.items():
        call = {"fork": "sys_clone", "vfork": "sys_vfork", "clone3": "sys_clone3"}[mode]
        expected = f"Process {name.decode()} (PID:{p.pid}, PPID: {os.getpid()}) called {call}"
        assert lines.count(expected) == 2, (expected, [ln for ln in lines if name.decode() in ln])


def test_json_lines_carry_kind_and_child(creator: Path) -> None:
    watch = Watch("--json")
    name = unique_name("wjs")
    run_creator(creator, "thread", 3, [name])
    run_creator(creator, "spawn", 2, [name])
    lines, err, code = watch.stop()
    assert code == 0, err
    events = [json.loads(line) for line in lines]
    mine = [e for e in events if e["comm"] == name.decode()]
    assert sorted(e["kind"] for e in mine) == ["process"] * 2 + ["thread"] * 3
    assert all(e["syscall"] == "sys_clone3" for e in mine)
    assert all(e["ppid"] == os.getpid() for e in mine)
    threads = [e for e in mine if e["kind"] == "thread"]
    assert all(e["child_pid"] == e["pid"] != e["child_tid"] for e in threads)


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
