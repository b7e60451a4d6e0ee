"""Stand-ins for procmond.kernel.bpfmap.BPFMap: raw keys and values, laid out as bpf/procmond.h
does, with the layouts the loader would hand over, for tests without root (tests/e2e reads the real
maps, with the layouts of the real compiled program)."""

from __future__ import annotations

import struct

from procmond.kernel.header import map_ids, read_header
from procmond.kernel.layout import CHARS, UINT, UINTS, Field, Layout, MapLayout

COMM_LEN = 16
HIST_SLOTS = 64
MAP_IDS = map_ids(read_header())

_COUNT = Layout(8, (Field("", 0, 8, UINT),))
_HIST = Layout(
    8 * HIST_SLOTS + 8,
    (Field("slots", 0, 8 * HIST_SLOTS, UINTS), Field("sum_ns", 8 * HIST_SLOTS, 8, UINT)),
)
_INDEX = Layout(4, (Field("", 0, 4, UINT),))
_ID = Field("cgroup_id", 0, 8, UINT)
_ONE = Layout(COMM_LEN, (Field("comm", 0, COMM_LEN, CHARS),))
_CGROUP_ONE = Layout(8 + COMM_LEN, (_ID, Field("comm", 8, COMM_LEN, CHARS)))
_PAIR = Layout(
    8 + 2 * COMM_LEN,
    (_ID, Field("comm", 8, COMM_LEN, CHARS), Field("parent_comm", 8 + COMM_LEN, COMM_LEN, CHARS)),
)
_FAILURE = Layout(
    8 + COMM_LEN + 8,
    (_ID, Field("comm", 8, COMM_LEN, CHARS), Field("error", 8 + COMM_LEN, 4, UINT)),
)
LAYOUTS = {
    "forks_total": MapLayout(_PAIR, _COUNT),
    "threads_created_total": MapLayout(_PAIR, _COUNT),
    "execs_total": MapLayout(_PAIR, _COUNT),
    "exits_total": MapLayout(_CGROUP_ONE, _COUNT),
    "fork_failures_total": MapLayout(_FAILURE, _COUNT),
    "process_lifetime_seconds": MapLayout(_ONE, _HIST),
    "fork_duration_seconds": MapLayout(_ONE, _HIST),
    "overflow_events": MapLayout(_INDEX, _COUNT),
    "overflow_hist": MapLayout(_INDEX, _HIST),
}


def _comm(name: bytes) -> bytes:
    return name[:COMM_LEN].ljust(COMM_LEN, b"\0")


def pair(comm: bytes, parent: bytes = b"", cgroup_id: int = 0) -> bytes:
    """struct comm_pair_key"""
    return struct.pack("=Q", cgroup_id) + _comm(comm) + _comm(parent)


def one(comm: bytes) -> bytes:
    """struct comm_key (histograms)"""
    return _comm(comm)


def exited(comm: bytes, cgroup_id: int = 0) -> bytes:
    """struct cgroup_comm_key (exits)"""
    return struct.pack("=Q", cgroup_id) + _comm(comm)


def failure(comm: bytes, error: int, cgroup_id: int = 0) -> bytes:
    """struct failure_key (with its tail padding)"""
    return struct.pack("=Q", cgroup_id) + _comm(comm) + struct.pack("=II", error, 0)


def hist(slots: dict[int, int], sum_ns: int) -> bytes:
    """struct hist_value"""
    values = [0] * HIST_SLOTS
    for k, n in slots.items():
        values[k] = n
    return struct.pack(f"={HIST_SLOTS + 1}Q", *values, sum_ns)


def _value(v: int | bytes) -> bytes:
    return v if isinstance(v, bytes) else struct.pack("=Q", v)


class FakeHash:
    def __init__(
        self, rows: list[tuple[bytes, int | bytes]], max_entries: int = 100, broken: bool = False
    ) -> None:
        self.rows = [(k, _value(v)) for k, v in rows]
        self.max_entries = max_entries
        self.broken = broken
        self.key_size = len(rows[0][0]) if rows else 0
        self.value_size = len(self.rows[0][1]) if rows else 0

    def items(self) -> list[tuple[bytes, bytes]]:
        if self.broken:
            raise OSError(5, "Input/output error")
        return list(self.rows)

    def batches(self) -> list[tuple[bytes, bytes, int]]:
        """As BPFMap.batches: keys back to back, values back to back."""
        rows = self.items()
        return [(b"".join(k for k, _ in rows), b"".join(v for _, v in rows), len(rows))]

    def per_cpu_values(self, key: bytes) -> list[bytes]:
        raise AssertionError("not a per-CPU map")


class FakePerCpuArray:
    """Index → one value per CPU."""

    def __init__(self, per_index: list[list[int | bytes]]) -> None:
        self.per_index = [[_value(v) for v in values] for values in per_index]
        self.max_entries = len(per_index)
        self.key_size = 4
        self.value_size = len(self.per_index[0][0]) if per_index and per_index[0] else 8

    def items(self) -> list[tuple[bytes, bytes]]:
        raise AssertionError("read per CPU")

    def per_cpu_values(self, key: bytes) -> list[bytes]:
        return self.per_index[struct.unpack("=I", key)[0]]
