"""The probe's map layouts, and reading its maps into plain Python values.

Maps are read as raw bytes (procmond/bpfmap.py) and decoded here by the layout of the structs
in bpf/procmond.h. ``check_layouts`` compares those sizes with what the kernel reports for the
loaded maps, so C and Python cannot silently disagree. No Prometheus and no ``bcc`` here; unit
tests hand ``MapReader`` fakes with the same ``items()``/``per_cpu_values()`` shape.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from procmond.errors import BPFLoadError

HIST_SLOTS = 64  # bpf/procmond.h
COMM_LEN = 16

# Order of enum map_id in bpf/procmond.h: index into overflow_events / overflow_hist.
MAP_IDS = (
    "forks_total",
    "threads_created_total",
    "execs_total",
    "exits_total",
    "process_lifetime_seconds",
    "fork_duration_seconds",
    "fork_failures_total",
    "inflight",
)

_U64 = struct.Struct("=Q")
_U32 = struct.Struct("=I")
_HIST = struct.Struct(f"={HIST_SLOTS + 1}Q")  # struct hist_value: slots[], then sum_ns


def _comm_at(raw: bytes, offset: int) -> bytes:
    """A command name field: its bytes up to the first NUL."""
    return raw[offset : offset + COMM_LEN].split(b"\0", 1)[0]


def _u32_at(raw: bytes, offset: int) -> int:
    return int(_U32.unpack_from(raw, offset)[0])


# Key field → (offset, decoder), for struct comm_key, comm_pair_key and failure_key.
_KEY_FIELDS: dict[str, tuple[int, Callable[[bytes, int], bytes | int]]] = {
    "comm": (0, _comm_at),
    "parent_comm": (COMM_LEN, _comm_at),
    "error": (COMM_LEN, _u32_at),
}

# (key size, value size) of every map the daemon reads, as bpf/procmond.bpf.c declares them.
MAP_LAYOUTS = {
    "forks_total": (2 * COMM_LEN, 8),
    "threads_created_total": (2 * COMM_LEN, 8),
    "execs_total": (2 * COMM_LEN, 8),
    "exits_total": (COMM_LEN, 8),
    "fork_failures_total": (COMM_LEN + 4, 8),
    "process_lifetime_seconds": (COMM_LEN, _HIST.size),
    "fork_duration_seconds": (COMM_LEN, _HIST.size),
    "inflight": (4, 16),
    "overflow_events": (4, 8),
    "overflow_hist": (4, _HIST.size),
}


class Table(Protocol):
    """What MapReader needs of a map: procmond.bpfmap.BPFMap, or a fake in unit tests."""

    key_size: int
    value_size: int
    max_entries: int

    def items(self) -> list[tuple[bytes, bytes]]: ...

    def per_cpu_values(self, key: bytes) -> list[bytes]: ...


@dataclass(frozen=True)
class Histogram:
    """One label set's log2 histogram: slots[k] counts values v with 2^(k-1) < v <= 2^k ns."""

    slots: tuple[int, ...]
    sum_ns: int

    @property
    def count(self) -> int:
        return sum(self.slots)

    def __add__(self, other: Histogram) -> Histogram:
        return Histogram(
            tuple(a + b for a, b in zip(self.slots, other.slots, strict=False)),
            self.sum_ns + other.sum_ns,
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> Histogram:
        values = _HIST.unpack_from(raw)
        return cls(values[:HIST_SLOTS], values[HIST_SLOTS])


EMPTY_HISTOGRAM = Histogram((0,) * HIST_SLOTS, 0)


def check_layouts(table: Callable[[str], Table]) -> None:
    """Raise BPFLoadError if a loaded map's key or value size is not the one decoded here."""
    for name, (key_size, value_size) in MAP_LAYOUTS.items():
        t = table(name)
        if (t.key_size, t.value_size) != (key_size, value_size):
            raise BPFLoadError(
                f"map {name} has {t.key_size}-byte keys and {t.value_size}-byte values, "
                f"procmond decodes {key_size} and {value_size}",
                "bpf/procmond.h and procmond/maps.py disagree",
            )
    slots = table("overflow_events").max_entries
    if slots != len(MAP_IDS):
        raise BPFLoadError(
            f"overflow_events has {slots} slots, procmond names {len(MAP_IDS)}",
            "enum map_id in bpf/procmond.h and MAP_IDS in procmond/maps.py disagree",
        )


def decode_key(raw: bytes, key_fields: tuple[str, ...]) -> tuple[bytes | int, ...]:
    """A key's fields: commands as raw bytes up to the first NUL, integers as ints."""
    return tuple(_KEY_FIELDS[f][1](raw, _KEY_FIELDS[f][0]) for f in key_fields)


def read_counters(table: Table, key_fields: tuple[str, ...]) -> dict[tuple[bytes | int, ...], int]:
    """{(comm, parent_comm): count}, {(comm,): count} or {(comm, error): count}."""
    return {decode_key(k, key_fields): _U64.unpack_from(v)[0] for k, v in table.items()}


def read_histograms(table: Table) -> dict[tuple[bytes | int, ...], Histogram]:
    return {decode_key(k, ("comm",)): Histogram.from_bytes(v) for k, v in table.items()}


def _index(i: int) -> bytes:
    return _U32.pack(i)


def read_percpu_counts(table: Table, size: int) -> list[int]:
    """Per index, the sum over CPUs of a per-CPU u64 array."""
    return [
        sum(_U64.unpack_from(v)[0] for v in table.per_cpu_values(_index(i))) for i in range(size)
    ]


def read_percpu_histogram(table: Table, index: int) -> Histogram:
    total = EMPTY_HISTOGRAM
    for per_cpu in table.per_cpu_values(_index(index)):
        total = total + Histogram.from_bytes(per_cpu)
    return total


class MapReader:
    """The probe's maps by name, read fresh on every call (one call per scrape)."""

    def __init__(self, table: Callable[[str], Table], map_ids: tuple[str, ...] = MAP_IDS) -> None:
        self._table = table
        self._map_ids = map_ids

    def counters(
        self, name: str, key_fields: tuple[str, ...]
    ) -> dict[tuple[bytes | int, ...], int]:
        return read_counters(self._table(name), key_fields)

    def histograms(self, name: str) -> dict[tuple[bytes | int, ...], Histogram]:
        return read_histograms(self._table(name))

    def overflow_events(self) -> dict[str, int]:
        counts = read_percpu_counts(self._table("overflow_events"), len(self._map_ids))
        return dict(zip(self._map_ids, counts, strict=False))

    def overflow_histogram(self, name: str) -> Histogram:
        return read_percpu_histogram(self._table("overflow_hist"), self._map_ids.index(name))

    def capacity(self, name: str) -> int:
        return int(self._table(name).max_entries)

    def entries(self, name: str) -> int:
        return len(self._table(name).items())
