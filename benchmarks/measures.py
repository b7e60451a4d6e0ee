"""What the benchmark reads from the system: a process's CPU time and memory from /proc, the
time one HTTP scrape takes, and the statistics the report is made of."""

from __future__ import annotations

import http.client
import math
import os
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from procmond.kernel.programs import RunStats, parse_fdinfo

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process, dead threads included, from /proc/PID/stat.

    The kernel reports clock ticks (1/CLK_TCK s, 10 ms here): callers add up long spans.
    """
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text.rsplit(")", 1)[1].split()  # the comm, in parentheses, may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def cpu_ns(pid: int) -> int:
    """Nanoseconds on CPU of the live threads (schedstat): precise, unlike cpu_seconds, but
    blind to threads that have exited, so only used to see whether a process is busy."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread exited between listing and reading
    return total


@dataclass(frozen=True)
class Memory:
    """Resident memory in KiB, as /proc/PID/status reports it, and the proportional set size:
    RSS counts a page shared with other processes (the Python binary, libc, and any library
    that another process on the host maps) in full, PSS only its share."""

    rss_kib: int
    anon_kib: int
    file_kib: int
    pss_kib: int

    @property
    def rss_mib(self) -> float:
        return self.rss_kib / 1024

    @property
    def anon_mib(self) -> float:
        return self.anon_kib / 1024


def memory(pid: int) -> Memory:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            values[key] = int(rest.split()[0])
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            values["Pss"] = int(line.split()[1])
    return Memory(values["VmRSS"], values["RssAnon"], values["RssFile"], values["Pss"])


_MAPPING_HEADER = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")
# BCC and its compiler: the daemon leaves them to its loader child (procmond/kernel/handoff.py), so
# any of their pages in the daemon is a regression.
LOADER_LIBRARIES = re.compile(r"/lib(LLVM|clang|clang-cpp|bcc)[-.][^/]*$")


def memory_by_mapping(pid: int) -> list[dict[str, object]]:
    """Resident memory (KiB) per mapped file, anonymous part apart, largest first: where the
    RSS of a process goes, so that a missed memory target comes with its cause."""
    rss: dict[str, int] = {}
    anon: dict[str, int] = {}
    name = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if _MAPPING_HEADER.match(line):
            parts = line.split(maxsplit=5)
            name = parts[5].strip() if len(parts) == 6 else "[anonymous]"
        elif line.startswith("Rss:"):
            rss[name] = rss.get(name, 0) + int(line.split()[1])
        elif line.startswith("Anonymous:"):
            anon[name] = anon.get(name, 0) + int(line.split()[1])
    biggest = sorted(rss, key=lambda n: rss[n], reverse=True)
    return [{"mapping": n, "rss_kib": rss[n], "anon_kib": anon.get(n, 0)} for n in biggest]


def wait_idle(
    pid: int, window: float = 0.3, busy_ns: int = 3_000_000, timeout: float = 120.0
) -> float:
    """Wait until the process has used less than ``busy_ns`` of CPU in ``window`` seconds: a
    monitor that queues events (perf or ring buffer) is still working through them after the
    load ends, and that work is part of its cost. Returns the seconds waited."""
    start = time.monotonic()
    before = cpu_ns(pid)
    while time.monotonic() - start < timeout:
        time.sleep(window)
        now = cpu_ns(pid)
        if now - before < busy_ns:
            break
        before = now
    return time.monotonic() - start


def bpf_program_stats(pid: int) -> dict[int, RunStats]:
    """{descriptor: run statistics} of the BPF programs the process holds, from
    /proc/PID/fdinfo (no bpftool needed)."""
    programs: dict[int, RunStats] = {}
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd) != "anon_inode:bpf-prog":
                continue
            stats = parse_fdinfo(Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text())
        except (FileNotFoundError, ProcessLookupError):
            continue
        if stats is not None:
            programs[int(fd.name)] = stats
    return programs


# What Prometheus 2.x sends: it prefers OpenMetrics and always accepts gzip.
PROMETHEUS_HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
    "Accept-Encoding": "gzip",
}
PLAIN_HEADERS = {"Accept": "text/plain"}


class Scraper:
    """GET /metrics over one kept-alive connection, as Prometheus does, timing each scrape
    from the request to the last byte of the body."""

    def __init__(self, port: int, headers: dict[str, str], timeout: float = 30.0) -> None:
        self.headers = headers
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def scrape(self) -> tuple[float, bytes]:
        start = time.perf_counter()
        self.connection.request("GET", "/metrics", headers=self.headers)
        response = self.connection.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - start
        if response.status != 200:
            raise RuntimeError(f"/metrics answered {response.status}")
        return elapsed, body

    def close(self) -> None:
        self.connection.close()


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank percentile: a value that was really measured, never interpolated."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]
