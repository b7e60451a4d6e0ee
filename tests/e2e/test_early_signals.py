"""Signals that come before the daemon is ready are held, not fatal: a SIGHUP right after
start is a reload once it serves, a SIGTERM stops it cleanly, even one sent to the loader child
too (as systemd's stop does to the whole service).

The instants count from procmond's first line, when it holds them (its /proc status shows
SIGHUP, SIGINT and SIGTERM blocked). Before that the interpreter is still starting, which no
Python program can cover; that time is measured and printed."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.e2e import bpf_objects
from tests.e2e.harness import Daemon, launch, wait_until

HUP_INSTANTS = (0.0, 0.01, 0.05, 0.1, 0.3)  # seconds after procmond holds its signals
REPEATS = 3
HELD = {signal.SIGHUP, signal.SIGINT, signal.SIGTERM}


def spawn(tmp: Path) -> Daemon:
    """``procmond run`` started, not waited for."""
    tmp.mkdir(parents=True, exist_ok=True)
    return launch(tmp)


def _mask(pid: int, field: str) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1], 16)
    return 0


def _bits(signals: set[int]) -> int:
    return sum(1 << (s - 1) for s in signals)


def wait_until_held(daemon: Daemon) -> float:
    """Seconds from spawn until procmond holds its signals. Fails if it installs a SIGHUP
    handler without having held them first: a signal before then was fatal."""
    started = time.monotonic()
    pid = daemon.process.pid
    while _mask(pid, "SigBlk") & _bits(HELD) != _bits(HELD):
        assert daemon.process.poll() is None, f"exited {daemon.process.returncode}"
        assert not _mask(pid, "SigCgt") & _bits({signal.SIGHUP}), (
            "procmond handles SIGHUP without having held it: one sent earlier killed it"
        )
        assert time.monotonic() - started < 30, "procmond never held its signals"
        time.sleep(0.001)
    return time.monotonic() - started


def hup_after_hold(tmp: Path, instant: float) -> float:
    """One daemon, one SIGHUP ``instant`` s after it holds its signals; it must reload once it
    serves, serve, and stop with 0. Returns the time from spawn to the hold."""
    daemon = spawn(tmp)
    try:
        held_after = wait_until_held(daemon)
        time.sleep(instant)
        daemon.process.send_signal(signal.SIGHUP)
        log = daemon.wait_for_log("reloaded config from", timeout=30)
        assert "probes attached" in log, log
        try:
            reloaded = daemon.scrape().value("procmond_config_last_reload_successful")
        except OSError as exc:
            raise AssertionError(f"the scrape failed: {exc!r}\n{daemon.log()}") from exc
        assert reloaded == 1
    finally:
        code = daemon.stop()
    assert code == 0, f"SIGHUP {instant} s after the hold: exit {code}\n{daemon.log()}"
    return held_after


def test_a_sighup_at_any_instant_after_start_is_a_reload(tmp_path: Path) -> None:
    runs = [(instant, n) for instant in HUP_INSTANTS for n in range(REPEATS)]
    with ThreadPoolExecutor(REPEATS) as pool:
        held = list(
            pool.map(lambda run: hup_after_hold(tmp_path / f"{run[0]}-{run[1]}", run[0]), runs)
        )
    held.sort()
    print(
        f"spawn -> signals held: median {held[len(held) // 2] * 1000:.0f} ms, "
        f"max {held[-1] * 1000:.0f} ms (the interpreter's own start)"
    )


def _stopped_cleanly(daemon: Daemon, before: tuple[set[int], set[int]]) -> None:
    code = daemon.process.wait(timeout=30)
    log = daemon.log()
    assert code == 0, f"exit {code}:\n{log}"
    assert "stopped: probes detached" in log, log
    assert bpf_objects.left_behind(before) == set(), "BPF objects left loaded"


def test_a_sigterm_as_soon_as_signals_are_held_stops_it_cleanly(tmp_path: Path) -> None:
    before = bpf_objects.snapshot()
    daemon = spawn(tmp_path)
    try:
        wait_until_held(daemon)
        daemon.process.send_signal(signal.SIGTERM)
        _stopped_cleanly(daemon, before)
    finally:
        daemon.stop(signal.SIGKILL)


def test_a_sigterm_to_the_daemon_and_its_loader_while_loading_stops_it_cleanly(
    tmp_path: Path,
) -> None:
    """systemd's stop (KillMode=control-group) and a terminal's Ctrl-C signal every process of
    the service: the loader child must not die halfway, the daemon stops once it holds the
    probe, and detaches it."""
    before = bpf_objects.snapshot()
    daemon = spawn(tmp_path)
    pid = daemon.process.pid
    try:
        children = wait_until(
            lambda: Path(f"/proc/{pid}/task/{pid}/children").read_text().split(),
            30,
            "the loader child",
        )
        loader = int(children[0])
        os.kill(loader, signal.SIGTERM)
        daemon.process.send_signal(signal.SIGTERM)
        _stopped_cleanly(daemon, before)
        wait_until(lambda: not Path(f"/proc/{loader}").exists(), 10, "the loader to exit")
    finally:
        daemon.stop(signal.SIGKILL)
