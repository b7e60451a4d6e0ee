"""Stand-ins for the probe's per-process counting maps (struct creator in bpf/procmond.h), for
tests without root."""

from __future__ import annotations

import struct
import threading

from procmond.kernel.layout import CHARS, UINT, Field, Layout, MapLayout

CREATOR_LAYOUT = MapLayout(
    Layout(4, (Field("", 0, 4, UINT),)),
    Layout(
        72,
        (
            Field("forks", 0, 8, UINT),
            Field("threads", 8, 8, UINT),
            Field("cgroup_id", 16, 8, UINT),
            Field("start_ns", 24, 8, UINT),
            Field("ppid", 32, 4, UINT),
            Field("generation", 36, 4, UINT),
            Field("comm", 40, 16, CHARS),
            Field("parent_comm", 56, 16, CHARS),
        ),
    ),
)


def creator_entry(pid: int, forks: int, generation: int, comm: bytes) -> tuple[bytes, bytes]:
    """One creators entry: ``pid`` (started at pid ns, parent 1, bash, cgroup 7) made
    ``forks`` processes."""
    value = struct.pack("=QQQQII", forks, 0, 7, pid, 1, generation)
    value += comm.ljust(16, b"\0") + b"bash".ljust(16, b"\0")
    return struct.pack("=I", pid), value


class FakeSwitch:
    """storm_watch: records each value set."""

    def __init__(self) -> None:
        self.values: list[int] = []

    def update(self, key: bytes, value: bytes) -> None:
        assert key == struct.pack("=I", 0)
        self.values.append(struct.unpack("=I", value)[0])


class FakeCreators:
    def __init__(self) -> None:
        self.rows: list[tuple[bytes, bytes]] = []

    def items(self) -> list[tuple[bytes, bytes]]:
        return list(self.rows)


class FakeAlarm:
    """The probe's creation alarm (procmond/kernel/alarm.py): records each alarm set; ``wait``
    blocks until poked (or its timeout), as if the host created nothing."""

    def __init__(self) -> None:
        self.rings: list[int] = []
        self.waits: list[float | None] = []
        self.closed = False
        self._pokes = threading.Semaphore(0)

    def ring_after(self, creations: int) -> None:
        self.rings.append(creations)

    def wait(self, timeout: float | None) -> bool:
        self.waits.append(timeout)
        self._pokes.acquire(timeout=timeout)
        return False

    def poke(self) -> None:
        self._pokes.release()

    def close(self) -> None:
        self.closed = True
