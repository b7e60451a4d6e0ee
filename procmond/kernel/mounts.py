"""The host's mounts as /proc/self/mountinfo lists them, and what the kernel side needs of them.

The loader asks which pids count the cgroup files show (:func:`shown_pids_event`) before it
compiles the probe, and the memory-limit diagnosis finds the memory cgroup; cgroup naming
(procmond/naming/cgroups.py) and the task-limit scrape (procmond/scrape/tasklimits.py) read the
same mounts from here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from procmond.kernel.btf import PIDS_FORKFAIL, PIDS_MAX

MOUNTINFO = Path("/proc/self/mountinfo")


class Mount(NamedTuple):
    """One line of /proc/self/mountinfo, the fields this module needs."""

    mount_point: str
    root: str  # the mounted directory's path inside its filesystem
    fstype: str
    super_options: frozenset[str]


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040...)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts listed in a mountinfo text; malformed lines are skipped."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        sep = fields.index("-", 6)
        if len(fields) < sep + 4:
            continue
        mounts.append(
            Mount(
                mount_point=_unescape(fields[4]),
                root=_unescape(fields[3]),
                fstype=fields[sep + 1],
                super_options=frozenset(fields[sep + 3].split(",")),
            )
        )
    return mounts


def shown_pids_event(mounts: Iterable[Mount]) -> str:
    """Which of a cgroup's pids counts (``enum pidcg_event``, Linux 6.13+) the file this
    module reads shows: forks refused to the cgroup's own tasks on v1 and on v2 mounted with
    ``pids_localevents``; else (v2) forks refused because the cgroup's own limit was hit."""
    mounts = list(mounts)
    if any(m.fstype == "cgroup" and "pids" in m.super_options for m in mounts):
        return PIDS_FORKFAIL
    v2 = [m for m in mounts if m.fstype == "cgroup2"]
    if v2 and "pids_localevents" not in v2[0].super_options:
        return PIDS_MAX
    return PIDS_FORKFAIL
