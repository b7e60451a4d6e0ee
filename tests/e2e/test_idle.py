"""An idle daemon wakes up for nothing: no timer, no poll, in any of its threads (counted by
the kernel: each thread's context switches). The storm monitor sleeps until the probe rings
its alarm, once per half ``storm_threshold`` tasks the host creates, and signals still wake
the main loop at once."""

from __future__ import annotations

import signal
import struct
import time
from pathlib import Path

from procmond.config import Config
from procmond.kernel import bpf_loader
from procmond.kernel.alarm import ALARM_MAP, RING_MAP, CreationAlarm
from procmond.kernel.bpfmap import possible_cpus
from procmond.kernel.header import read_header
from tests.e2e.harness import (
    Daemon,
    created_on_host,
    run_creator,
    start_daemon,
    unique_name,
    wait_until,
)

IDLE_SECONDS = 3.0  # a span in which nothing is expected to happen: its length is the test


def switches(pid: int) -> dict[int, int]:
    """Voluntary context switches so far of each of the process's threads: each time it went
    to sleep, so each wake-up but the one in progress. (Involuntary ones are preemptions of a
    running thread by the host's other tasks, not wake-ups.)"""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except FileNotFoundError:  # a thread that just ended
            continue
        out[int(task.name)] = sum(
            int(line.split()[1])
            for line in status.splitlines()
            if line.startswith("voluntary_ctxt_switches")
        )
    return out


def woken(before: dict[int, int], after: dict[int, int]) -> int:
    """Switches in between, over every thread (one that started counts all of its)."""
    return sum(count - before.get(tid, 0) for tid, count in after.items())


def settle(daemon: Daemon) -> None:
    """Wait until the last scrape's connection is closed and every thread is asleep: two reads
    of the switch counts a quarter of a second apart agree."""
    pid = daemon.process.pid
    last: dict[int, int] = {}

    def settled() -> bool:
        nonlocal last
        now, previous = switches(pid), last
        last = now
        if now == previous:
            return True
        time.sleep(0.25)
        return False

    wait_until(settled, 10, "the daemon's threads to go to sleep")


def test_an_idle_daemon_wakes_no_thread_and_signals_still_wake_it(tmp_path: Path) -> None:
    """No connection, no watchdog, and a host creating fewer tasks than half the threshold
    (500,000): not one wake-up in any thread. SIGHUP and SIGTERM still act at once."""
    daemon = start_daemon(tmp_path, "storm_threshold: 1000000\n")
    try:
        daemon.scrape()  # served, and its connection closed
        settle(daemon)
        created = created_on_host()
        before = switches(daemon.process.pid)
        time.sleep(IDLE_SECONDS)
        after = switches(daemon.process.pid)
        assert created_on_host() - created < 500_000  # else the alarm may ring, rightly
        assert woken(before, after) == 0, (before, after)
        daemon.process.send_signal(signal.SIGHUP)  # the main loop waits with no timeout
        daemon.wait_for_log("reloaded config")
    finally:
        assert daemon.stop() == 0, daemon.log()


def test_the_storm_monitor_wakes_once_per_half_its_threshold_created(
    tmp_path: Path, creator: Path
) -> None:
    """A host creating tasks, but fewer than half the threshold a second, wakes the daemon once
    per half the threshold of them (the kernel's count bounds it), not once a second. Half of
    100,000 a second is more than this kind of machine can create, whatever else runs on it."""
    daemon = start_daemon(tmp_path, "storm_threshold: 100000\n")  # an alarm every 50,000
    try:
        daemon.scrape()
        settle(daemon)
        created = created_on_host()
        before = switches(daemon.process.pid)
        started = time.monotonic()
        run_creator(creator, "thread", 60_000, [unique_name("iw")], "--rate", "12000")
        seconds = time.monotonic() - started
        after = switches(daemon.process.pid)
        made = created_on_host() - created
        # once a second would have been at least 4 times (5 s at the creator's rate)
        assert seconds >= 4.9
        assert 60_000 // 50_000 <= woken(before, after) <= made // 50_000 + 1, (made, after)
        assert "storm detection" not in daemon.log()  # no error logged
    finally:
        assert daemon.stop() == 0, daemon.log()


def test_the_probe_rings_the_alarm_once_the_host_has_created_that_many(creator: Path) -> None:
    probe = bpf_loader.load(Config())
    slot = probe.map(ALARM_MAP)
    alarm = CreationAlarm(slot, probe.map(RING_MAP))

    def left() -> int:
        return int(struct.unpack("=Q", slot.lookup(struct.pack("=I", 0)) or b"")[0])

    # Each CPU takes its creations off the alarm a batch at a time: up to a batch less one per
    # CPU may be pending, from before the alarm was set or not yet taken off.
    batch = read_header().define("ALARM_BATCH")
    slack = (batch - 1) * possible_cpus()
    try:
        # It counts down every creation the kernel counts (/proc/stat): the kernel's count over
        # the span inside the set and the read, and over the span around them, bounds it.
        outer_before = created_on_host()
        alarm.ring_after(10**12)  # far off
        inner_before = created_on_host()
        run_creator(creator, "fork", 300, [unique_name("ac")])
        run_creator(creator, "thread", 300, [unique_name("ac")])
        inner_after = created_on_host()
        counted = 10**12 - left()
        outer_after = created_on_host()
        assert inner_after - inner_before - slack <= counted <= outer_after - outer_before + slack
        assert counted % batch == 0
        assert counted >= 602 - slack  # ours: two creators and their 600 creations
        assert alarm.wait(0.2) is False

        alarm.ring_after(50)
        run_creator(creator, "fork", 50 + slack, [unique_name("ac")])
        assert alarm.wait(10) is True
        assert alarm.wait(0) is False  # drained: rung once, not until read
        run_creator(creator, "fork", 10, [unique_name("ac")])
        assert left() == 0  # rung, the alarm is off: creations only read it

        alarm.poke()  # another thread ends a wait with no timeout
        assert alarm.wait(None) is False
    finally:
        alarm.close()
        probe.close()
