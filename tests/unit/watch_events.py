"""creation_event records as BCC hands them to ``procmond watch``, made by hand."""

from __future__ import annotations

import time
from types import SimpleNamespace


def event(
    comm: bytes = b"make",
    syscall: int = 1,
    thread: int = 0,
    pid: int = 10,
    cgroup_id: int = 0,
    kind: int = 0,
) -> SimpleNamespace:
    """A creation by ``pid`` (parent 1, bash) of pid 11; ``kind`` 1 is an exec."""
    return SimpleNamespace(
        timestamp_ns=time.monotonic_ns(),
        comm=comm,
        parent_comm=b"bash",
        pid=pid,
        ppid=1,
        child_pid=11,
        child_tid=11,
        syscall=syscall,
        is_thread=thread,
        kind=kind,
        cgroup_id=cgroup_id,
    )
