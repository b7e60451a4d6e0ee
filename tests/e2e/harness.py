"""Test harness for the real thing: the procmond daemon as a subprocess, scraped over HTTP,
and the creator helper (tests/helpers/creator.c) making processes under unique names."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from prometheus_client.parser import text_string_to_metric_families

from procmond.config import CGROUP_LABELS
from procmond.metrics import COUNTERS, OVERFLOW_LABEL_VALUE

REPO = Path(__file__).resolve().parents[2]
CREATOR_SOURCE = REPO / "tests" / "helpers" / "creator.c"
PROCMOND = [sys.executable, "-m", "procmond"]
# The installed command, as a user runs it: unlike `python -m`, it does not import from the
# working directory, so it can be started from anywhere.
PROCMOND_SCRIPT = [str(Path(sys.executable).with_name("procmond"))]

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, what: str) -> T:
    """Poll ``predicate`` until it returns something true, and return that; fail after
    ``timeout`` seconds naming ``what`` was awaited. For waiting on output, never a sleep."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}, in vain")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unique_name(prefix: str = "pm") -> bytes:
    """A 15-byte-or-shorter comm no other program on the host has."""
    return (prefix + secrets.token_hex(5))[:15].encode()


def build_creator(out_dir: Path) -> Path:
    binary = out_dir / "creator"
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-pthread", "-o", str(binary), str(CREATOR_SOURCE)], check=True
    )
    return binary


class Exposition:
    """One scrape, parsed by prometheus_client's own parser."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self.samples[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def get(self, name: str, **labels: str) -> float | None:
        """The sample with exactly these labels; or, where the query names none of the cgroup
        labels (unit, namespace, pod, container), the sum over them: what the series count
        in whichever cgroup the test runs. None when no series matches."""
        exact = self.samples.get((name, tuple(sorted(labels.items()))))
        if exact is not None or set(labels) & set(CGROUP_LABELS):
            return exact
        found = [
            v
            for (n, series), v in self.samples.items()
            if n == name
            and {k for k, _ in series} == set(labels) | set(CGROUP_LABELS)
            and all(dict(series)[k] == want for k, want in labels.items())
        ]
        return sum(found) if found else None

    def value(self, name: str, **labels: str) -> float:
        """The sample's value; 0 when the series does not exist (a counter never incremented)."""
        return self.get(name, **labels) or 0.0

    def series(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        return {labels: v for (n, labels), v in self.samples.items() if n == name}

    def total(self, name: str) -> float:
        return sum(self.series(name).values())


@dataclass
class Daemon:
    process: subprocess.Popen
    port: int
    log_path: Path
    config_path: Path
    extra: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, count: int = 1, timeout: float = 10) -> str:
        """Wait until ``text`` appears ``count`` times in the log; return the log."""
        wait_until(
            lambda: self.log().count(text) >= count or self.process.poll() is not None,
            timeout,
            f"{text!r} x{count} in the daemon's log",
        )
        log = self.log()
        assert log.count(text) >= count, f"daemon exited {self.process.returncode}:\n{log}"
        return log

    def scrape(self) -> Exposition:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as response:
            return Exposition(response.read().decode())

    def stop(self, sig: int = 15, timeout: float = 10) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"daemon ignored signal {sig}; log:\n{self.log()}") from None
        return self.process.returncode


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


def start_daemon(
    tmp: Path,
    config_text: str = "",
    port: int | None = None,
    env: dict[str, str] | None = None,
    ready_timeout: float = 30,
    tls: bool = False,
    args: Sequence[str] = (),
    command: Sequence[str] = PROCMOND,
    cwd: Path | None = None,
    listen_in_file: bool = True,
) -> Daemon:
    """Start ``procmond run`` and wait until it serves: a plain scrape answers or, with TLS,
    the daemon has logged that it serves (the test then scrapes with its own certificates).
    ``args`` follow ``run --config FILE``; the file says to listen on ``port``, unless
    ``listen_in_file`` is false (then the test sets the address itself)."""
    port = port or free_port()
    config = tmp / "procmond.yaml"
    listen = f'listen: "127.0.0.1:{port}"\n' if listen_in_file else ""
    # No pinning unless the test asks for it (tests/e2e/test_pins.py, in a bpffs of its own):
    # a daemon must not adopt the probe another test, or another run on the host, left.
    pins = "" if "pin_root:" in config_text else 'pin_root: ""\n'
    config.write_text(listen + pins + config_text)
    log_path = tmp / "procmond.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*command, "run", "--config", str(config), *args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
    daemon = Daemon(process, port, log_path, config)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"daemon exited {process.returncode}:\n{daemon.log()}")
        try:
            if not tls:
                daemon.scrape()
                return daemon
            if "serving https://" in daemon.log():
                return daemon
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.05)
    daemon.stop(9)
    raise AssertionError(f"daemon not serving after {ready_timeout} s:\n{daemon.log()}")


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


def run_creator(
    creator: Path, mode: str, count: int, names: list[bytes], *options: str
) -> subprocess.CompletedProcess:
    args = [str(creator), mode, str(count), *options, *(n.hex() for n in names)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == str(count * len(names)), result.stdout
    return result


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
