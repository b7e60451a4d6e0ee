"""Read the probe's BPF maps into plain Python values: no Prometheus here, and no ``bcc``.

Works on anything shaped like a BCC table (``items_lookup_batch()``/``items()``, ``Key`` with
``comm`` fields, per-CPU arrays indexable by int), so unit tests can hand it fakes.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

HIST_SLOTS = 64  # bpf/procmond.h


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


EMPTY_HISTOGRAM = Histogram((0,) * HIST_SLOTS, 0)


def _items(table: Any) -> Iterable[tuple[Any, Any]]:
    """All entries, in one batched syscall where the kernel supports it (5.6+)."""
    try:
        return list(table.items_lookup_batch())
    except Exception:  # bcc raises plain Exception when batch ops are unsupported
        return list(table.items())


def _int(value: Any) -> int:
    return value if isinstance(value, int) else int(value.value)


def _histogram(value: Any) -> Histogram:
    return Histogram(tuple(int(s) for s in value.slots), int(value.sum_ns))


def read_counters(table: Any, key_fields: tuple[str, ...]) -> dict[tuple[bytes | int, ...], int]:
    """{(comm, parent_comm): count}, {(comm,): count} or {(comm, error): count}: comm fields
    as raw bytes (ctypes strips the NULs), integer fields as ints."""
    return {tuple(getattr(k, f) for f in key_fields): _int(v) for k, v in _items(table)}


def read_histograms(table: Any) -> dict[tuple[bytes, ...], Histogram]:
    return {(bytes(k.comm),): _histogram(v) for k, v in _items(table)}


def read_percpu_counts(table: Any, size: int) -> list[int]:
    """Per index, the sum over CPUs of a per-CPU u64 array."""
    return [sum(int(v) for v in table[ctypes.c_int(i)]) for i in range(size)]


def read_percpu_histogram(table: Any, index: int) -> Histogram:
    total = EMPTY_HISTOGRAM
    for per_cpu in table[ctypes.c_int(index)]:
        total = total + _histogram(per_cpu)
    return total


class MapReader:
    """The probe's maps by name, read fresh on every call (one call per scrape)."""

    def __init__(self, table: Callable[[str], Any], map_ids: tuple[str, ...]) -> None:
        self._table = table
        self._map_ids = map_ids

    def counters(
        self, name: str, key_fields: tuple[str, ...]
    ) -> dict[tuple[bytes | int, ...], int]:
        return read_counters(self._table(name), key_fields)

    def histograms(self, name: str) -> dict[tuple[bytes, ...], Histogram]:
        return read_histograms(self._table(name))

    def overflow_events(self) -> dict[str, int]:
        counts = read_percpu_counts(self._table("overflow_events"), len(self._map_ids))
        return dict(zip(self._map_ids, counts, strict=False))

    def overflow_histogram(self, name: str) -> Histogram:
        return read_percpu_histogram(self._table("overflow_hist"), self._map_ids.index(name))

    def capacity(self, name: str) -> int:
        return int(self._table(name).max_entries)

    def entries(self, name: str) -> int:
        return len(_items(self._table(name)))
