"""Fork-storm reports from the real daemon: a named creator forking at full speed is logged
with its PID and command line within the promised time, in a few lines, with an end line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from tests.e2e.harness import Daemon, own_comm, start_daemon, unique_name

THRESHOLD = 300  # processes/s: a creator at full speed makes thousands here
PROMISED_SECONDS = 3.0  # "within about two seconds" of the storm's start, with some slack


def wait_for(daemon: Daemon, pattern: str, deadline: float) -> re.Match[str] | None:
    """The first log line matching ``pattern``, polled until ``deadline`` (monotonic)."""
    while True:
        match = re.search(pattern, daemon.log(), re.M)
        if match or time.monotonic() > deadline:
            return match
        time.sleep(0.02)


def start_storm(creator: Path, name: bytes, seconds: float) -> tuple[subprocess.Popen, float]:
    """A creator forking at full speed for ``seconds`` under ``name``; when it started."""
    process = subprocess.Popen(
        [
            str(creator),
            "fork",
            "1000000000",
            "--wait",
            "--max-ms",
            str(int(seconds * 1000)),
            name.hex(),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdin is not None
    assert process.stdout.readline() == "ready\n"
    process.stdin.write("go\n")
    process.stdin.flush()
    return process, time.monotonic()


def finish(process: subprocess.Popen) -> int:
    """Let the creator exit; the processes it made."""
    assert process.stdin is not None and process.stdout is not None
    done = process.stdout.readline()
    process.stdin.close()
    assert process.wait(timeout=30) == 0
    return int(done.split()[1])


def end_line(daemon: Daemon, name: bytes) -> re.Match[str]:
    """The storm's end line (waited for), with its total (1) and seconds (2)."""
    end = wait_for(
        daemon,
        rf'^.*fork storm over: "{name.decode()}" created (\d+) processes in (\d+) s.*$',
        time.monotonic() + 15,
    )
    assert end, daemon.log()
    return end


def storm_lines(daemon: Daemon, name: bytes) -> list[str]:
    return [ln for ln in daemon.log().splitlines() if f'"{name.decode()}"' in ln]


def test_a_storm_names_its_pid_and_command_line_in_time_and_ends_in_one_line(
    tmp_path: Path, creator: Path
) -> None:
    daemon = start_daemon(tmp_path, f"storm_threshold: {THRESHOLD}\n")
    try:
        name = unique_name("st")
        process, started = start_storm(creator, name, 10.0)
        line = wait_for(
            daemon, rf'^.*fork storm: "{name.decode()}" is creating.*$', started + PROMISED_SECONDS
        )
        assert line, f"no storm line within {PROMISED_SECONDS} s:\n{daemon.log()}"
        rate = int(re.search(r"is creating (\d+) processes/s", line[0])[1])  # type: ignore[index]
        assert rate >= THRESHOLD
        command = f"{creator} fork 1000000000 --wait --max-ms 10000 {name.hex()}"
        assert (
            f"pid {process.pid} at " in line[0]
            and f'"{command}" (parent {os.getpid()} "{own_comm()}")' in line[0]
        ), line[0]
        exposition = daemon.scrape()
        assert exposition.value("procmond_storm_active", comm=name.decode()) == 1
        assert exposition.value("procmond_storm_process_counting") == 1
        made = finish(process)
        end = end_line(daemon, name)
        # Counted from the first second found above the threshold: never more than was made,
        # and at most the seconds before detection short of it.
        assert made - 3 * rate <= int(end[1]) <= made
        assert 7 <= int(end[2]) <= 11
        assert storm_lines(daemon, name) == [line[0], end[0]]  # ten seconds: two lines
        exposition = daemon.scrape()
        assert exposition.value("procmond_storms_total", comm=name.decode()) == 1
        assert exposition.value("procmond_storm_active", comm=name.decode()) == 0
    finally:
        assert daemon.stop() == 0, daemon.log()


def test_zero_turns_detection_off_and_a_reload_turns_it_on(tmp_path: Path, creator: Path) -> None:
    daemon = start_daemon(tmp_path, "storm_threshold: 0\n")
    try:
        quiet = unique_name("sq")
        process, started = start_storm(creator, quiet, 3.0)
        while time.monotonic() < started + 3.0:  # while it storms (the creator's --max-ms)
            # on, the detector would count per process within a second of the storm's start
            assert daemon.scrape().get("procmond_storm_process_counting") == 0
            time.sleep(0.2)
        finish(process)
        assert storm_lines(daemon, quiet) == []
        text = daemon.config_path.read_text().replace(
            "storm_threshold: 0", f"storm_threshold: {THRESHOLD}"
        )
        daemon.config_path.write_text(text)
        daemon.process.send_signal(signal.SIGHUP)
        assert wait_for(daemon, "reloaded config", time.monotonic() + 10), daemon.log()
        loud = unique_name("sl")
        process, started = start_storm(creator, loud, 4.0)
        assert wait_for(daemon, f'fork storm: "{loud.decode()}"', started + PROMISED_SECONDS), (
            daemon.log()
        )
        finish(process)
    finally:
        assert daemon.stop() == 0, daemon.log()
