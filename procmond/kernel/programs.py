"""What the kernel counts of each of procmond's BPF programs: runs and time spent in them.

The kernel times every BPF program run only while BPF statistics are enabled (the sysctl
``kernel.bpf_stats_enabled=1``, or a process holding ``BPF_ENABLE_STATS``): two clock reads a
run, which is why it is off by default. Meanwhile the counts stand still. The daemon holds
each program's descriptor (procmond/kernel/handoff.py), so it reads them from its own
``/proc/self/fdinfo``, as ``bpftool prog`` would, with no capability.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import NamedTuple

from procmond.kernel.bpfmap import libbpf

BPF_STATS_RUN_TIME = 0  # enum bpf_stats_type


class RunStats(NamedTuple):
    """One program's run_time_ns and run_cnt."""

    run_ns: int
    runs: int


def parse_fdinfo(text: str) -> RunStats | None:
    """The run statistics in a BPF program's fdinfo; None on kernels before 5.1, which keep
    none."""
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    try:
        return RunStats(int(fields["run_time_ns"]), int(fields["run_cnt"]))
    except (KeyError, ValueError):
        return None


def run_stats(fd: int) -> RunStats | None:
    """The run statistics of the program behind the daemon's descriptor ``fd``."""
    fdinfo = os.open(f"/proc/self/fdinfo/{fd}", os.O_RDONLY)
    try:
        return parse_fdinfo(os.read(fdinfo, 4096).decode())
    finally:
        os.close(fdinfo)


@contextlib.contextmanager
def statistics_on() -> Iterator[None]:
    """BPF statistics on while the block runs (BPF_ENABLE_STATS, Linux 5.8+), as the benchmark
    and the tests want them: held as a descriptor, so the kernel turns them off again when it
    closes, even if its holder dies."""
    fd = libbpf("bpf_enable_stats", BPF_STATS_RUN_TIME)
    try:
        yield
    finally:
        os.close(fd)
