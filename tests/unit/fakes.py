"""Stand-ins for procmond.bpfmap.BPFMap: raw keys and values, laid out as bpf/procmond.h does,
for tests without root (tests/e2e reads the real maps)."""

from __future__ import annotations

import struct

from procmond.maps import COMM_LEN, HIST_SLOTS


def _comm(name: bytes) -> bytes:
    return name[:COMM_LEN].ljust(COMM_LEN, b"\0")


def pair(comm: bytes, parent: bytes = b"") -> bytes:
    """struct comm_pair_key"""
    return _comm(comm) + _comm(parent)


def one(comm: bytes) -> bytes:
    """struct comm_key"""
    return _comm(comm)


def failure(comm: bytes, error: int) -> bytes:
    """struct failure_key"""
    return _comm(comm) + struct.pack("=I", error)


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
