"""Test harness for the real thing: the procmond daemon as a subprocess, scraped over HTTP,
and the creator helper (tests/helpers/creator.c) making processes under unique names. The
launcher, the parser, the names and the creator are shared with the benchmarks
(tests/support); this adds what only tests need, and keeps every name tests import here."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from procmond.scrape.metrics import COUNTERS, OVERFLOW_LABEL_VALUE
from tests.support.creator import CREATOR_SOURCE, build_creator, run_creator
from tests.support.exposition import Exposition
from tests.support.launcher import (
    PROCMOND,
    PROCMOND_SCRIPT,
    Daemon,
    free_port,
    launch,
    start_daemon,
    wait_serving,
    wait_until,
)
from tests.support.names import unique_name

REPO = Path(__file__).resolve().parents[2]

__all__ = [
    "CREATOR_SOURCE",
    "PROCMOND",
    "PROCMOND_SCRIPT",
    "REPO",
    "Daemon",
    "Exposition",
    "SeriesFlow",
    "Watch",
    "build_creator",
    "created_on_host",
    "free_port",
    "launch",
    "own_comm",
    "procmond",
    "run_creator",
    "start_daemon",
    "unique_name",
    "wait_serving",
    "wait_until",
]


class SeriesFlow:
    """``procmond_forks_total`` followed from scrape to scrape, each one checked: at most
    ``max_entries`` series plus __overflow__ per counter; a series only ever goes down (or
    away) by handing its count to __overflow__, so that what __overflow__ gains is exactly
    what series lost plus the events that found the kernel map full. Every count of a cgroup
    is shown under its labels before it is folded (reclaim waits a scrape), so this accounts
    for every count; ``lost_to_overflow`` keeps it per command. The first scrape is the base:
    make it before the load starts; no other client may scrape the daemon meanwhile."""

    def __init__(self, daemon: Daemon, max_entries: int) -> None:
        self.daemon = daemon
        self.max_entries = max_entries
        self.before: dict[tuple[tuple[str, str], ...], float] = {}
        self.kernel_overflow: float | None = None
        self.kernel_overflow_first = 0.0
        self.lost_to_overflow: dict[str, float] = {}
        self.most_series = 0
        self.scrapes = 0

    def scrape(self) -> Exposition:
        m = self.daemon.scrape()
        assert m.value("procmond_scrape_success") == 1, self.daemon.log()[-3000:]
        for name in (c.name for c in COUNTERS if not c.needs_syscall_probes):
            series = len(m.series(name))
            assert series <= self.max_entries + 1, f"{name}: {series} series"
            self.most_series = max(self.most_series, series)
        now = m.series("procmond_forks_total")
        overflow = next((k for k in now if all(v == OVERFLOW_LABEL_VALUE for _, v in k)), ())
        kernel = m.value("procmond_map_overflow_events_total", map="forks_total")
        lost = 0.0
        for labels, value in self.before.items():
            if labels != overflow and now.get(labels, 0.0) < value:
                drop = value - now.get(labels, 0.0)
                comm = dict(labels)["comm"]
                self.lost_to_overflow[comm] = self.lost_to_overflow.get(comm, 0.0) + drop
                lost += drop
        if self.kernel_overflow is None:
            self.kernel_overflow_first = kernel
        else:
            gained = now.get(overflow, 0.0) - self.before.get(overflow, 0.0)
            assert gained == lost + kernel - self.kernel_overflow, (gained, lost, kernel)
        self.before, self.kernel_overflow = now, kernel
        self.scrapes += 1
        return m

    def counted(self, comm: str) -> float:
        """The command's forks: in its series now, and handed to __overflow__ on the way."""
        shown = sum(v for k, v in self.before.items() if dict(k)["comm"] == comm)
        return shown + self.lost_to_overflow.get(comm, 0.0)

    def assert_counted(self, comm: str, made: int) -> None:
        """Each of ``made`` forks by ``comm`` counted once: exactly, unless the host filled
        the kernel map meanwhile; then a fork may have counted under __overflow__ at once
        (the map's overflow events, which name no command), and no more than those."""
        counted = self.counted(comm)
        overflowed = (self.kernel_overflow or 0.0) - self.kernel_overflow_first
        assert counted <= made <= counted + overflowed, (counted, made, overflowed)


class Watch:
    """``procmond watch`` as a subprocess: started once its probe is attached, its output
    lines collected as they come, so a test waits for the lines it expects."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [*PROCMOND, "watch", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert self.process.stderr is not None
        line = self.process.stderr.readline()  # printed once every probe is attached
        assert b"watching" in line, line + self.process.stderr.read()
        self.raw: list[bytes] = []  # whole lines, newline included
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.raw.append(line)

    def lines(self) -> list[str]:
        return [line.decode("utf-8", "replace").rstrip("\n") for line in list(self.raw)]

    def wait_for(
        self, what: str, predicate: Callable[[list[str]], object], timeout: float = 30
    ) -> None:
        wait_until(
            lambda: predicate(self.lines()) or self.process.poll() is not None, timeout, what
        )
        assert self.process.poll() is None, f"watch exited {self.process.returncode}"

    def finish(
        self, expected: int, mine: Callable[[str], bool] = lambda _line: True
    ) -> tuple[list[str], str, int]:
        """Wait for ``expected`` lines that are ``mine``, then stop: every line, stderr and
        the exit status. A filter test then checks nothing else came."""
        self.wait_for(f"{expected} lines", lambda lines: sum(map(mine, lines)) >= expected)
        err, code = self.stop()
        return self.lines(), err, code

    def stop(self) -> tuple[str, int]:
        """SIGTERM; its stderr and exit status. Lines stay in ``raw`` / ``lines()``."""
        assert self.process.stderr is not None
        self.process.terminate()
        code = self.process.wait(timeout=10)
        self._reader.join(timeout=10)
        return self.process.stderr.read().decode("utf-8", "replace"), code


def procmond(
    *args: str, wrapper: tuple[str, ...] = (), timeout: float = 60
) -> subprocess.CompletedProcess:
    """Run the procmond command line to completion (``wrapper``: e.g. setpriv or unshare)."""
    return subprocess.run(
        [*wrapper, *PROCMOND, *args], capture_output=True, text=True, timeout=timeout
    )


def own_comm() -> str:
    """This test process's command: the parent_comm of every creator it starts."""
    return Path("/proc/self/comm").read_text().rstrip("\n")


def created_on_host() -> int:
    """Processes and threads created since boot, host-wide (/proc/stat)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("processes "):
            return int(line.split()[1])
    raise AssertionError("no processes line in /proc/stat")
