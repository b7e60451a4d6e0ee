"""Reading the probe's maps into plain Python values.

Maps are read as raw bytes (procmond/kernel/bpfmap.py) and decoded here by the layouts the loader
took from the compiled program (procmond/kernel/layout.py); the overflow slots are named by
``enum map_id`` in bpf/procmond.h (procmond/kernel/header.py). No Prometheus and no ``bcc`` here;
unit tests hand ``MapReader`` fakes with the same ``items()``/``per_cpu_values()`` shape.
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from itertools import chain
from typing import NamedTuple, Protocol

from procmond.errors import BPFLoadError
from procmond.kernel.inventory import (
    CGROUP_PATHS,
    GONE_TASK_LIMIT_HITS,
    OVERFLOW_EVENTS,
    OVERFLOW_HIST,
    counter_maps,
)
from procmond.kernel.inventory import COUNT as _U64  # the value of every counter map and slot
from procmond.kernel.inventory import SLOT as _U32
from procmond.kernel.layout import MapLayout

KeyValues = tuple[bytes | int, ...]


class Table(Protocol):
    """What MapReader needs of a map: procmond.kernel.bpfmap.BPFMap, or a fake in unit tests."""

    key_size: int
    value_size: int
    max_entries: int

    def items(self) -> list[tuple[bytes, bytes]]: ...

    def batches(self) -> list[tuple[bytes, bytes, int]]: ...

    def take(self, key: bytes) -> bytes | None: ...

    def lookup(self, key: bytes) -> bytes | None: ...

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
    def decoder(cls, layout: MapLayout) -> Callable[[bytes], Histogram]:
        """From a struct hist_value, by its layout."""
        slots = layout.value.field("slots").decoder()
        sum_ns = layout.value.field("sum_ns").decoder()
        return lambda raw: cls(slots(raw), sum_ns(raw))  # type: ignore[arg-type]


@dataclass(frozen=True)
class RawRows:
    """One read of a counter map as the kernel hands it over (BPFMap.batches): per batch, the
    keys back to back, the values back to back, and how many. The scrape's text path finds
    each row's label text (procmond/scrape/exposition.py) without decoding its key, and makes no
    Python object per row it already knows."""

    batches: list[tuple[bytes, bytes, int]]
    key_size: int

    @property
    def count(self) -> int:
        return sum(n for _, _, n in self.batches)

    def key_tuples(self) -> Iterator[tuple[bytes]]:
        """Each raw key, as a 1-tuple: cut by struct's C loop, chained by itertools' (a
        generator resuming per key cost more than the rest of the loop)."""
        cut = struct.Struct(f"{self.key_size}s")
        return chain.from_iterable(cut.iter_unpack(keys) for keys, _, _ in self.batches)

    def counts(self) -> Iterator[int]:
        """Each count (the u64 each value starts with), in key order."""
        return chain.from_iterable(_counts(values, n) for _, values, n in self.batches)

    def joined_keys(self) -> bytes:
        """Every raw key, back to back."""
        if len(self.batches) == 1:
            return self.batches[0][0]
        return b"".join(keys for keys, _, _ in self.batches)

    def entries(self) -> Iterator[tuple[bytes, int]]:
        """(raw key, count) of every entry."""
        for (raw,), value in zip(self.key_tuples(), self.counts(), strict=True):
            yield raw, value


def _counts(values: bytes, n: int) -> list[int]:
    """The u64 at the start of each of ``n`` values laid back to back."""
    stride = len(values) // n if n else 8
    if stride == 8:
        return memoryview(values).cast("Q").tolist()
    return [_U64.unpack_from(values, i * stride)[0] for i in range(n)]


class GonePidsCgroup(NamedTuple):
    """One entry of gone_task_limit_hits (struct gone_pids_cgroup)."""

    cgroup_id: int
    hits: int
    path: bytes
    truncated: bool


def check_layouts(table: Callable[[str], Table], layouts: dict[str, MapLayout]) -> None:
    """Raise BPFLoadError if a loaded map's key or value size is not its layout's: the types
    BCC built and the map the kernel made must be the same thing; and if a counter map's value
    is not the one u64 count this module reads (the inventory's role for it)."""
    for name, layout in layouts.items():
        t = table(name)
        if (t.key_size, t.value_size) != (layout.key.size, layout.value.size):
            raise BPFLoadError(
                f"map {name} has {t.key_size}-byte keys and {t.value_size}-byte values, "
                f"its compiled types {layout.key.size} and {layout.value.size}",
                "report this as a bug: BCC's types and the kernel's map disagree",
            )
        if name in counter_maps() and layout.value.size != _U64.size:
            raise BPFLoadError(
                f"counter map {name} has {layout.value.size}-byte values, not one u64 count",
                "report this as a bug: procmond.h's roles and its maps disagree",
            )


def key_decoder(layout: MapLayout, key_fields: tuple[str, ...]) -> Callable[[bytes], KeyValues]:
    """A function from a raw key to its fields: names as bytes up to the first NUL, integers
    as ints."""
    decoders = [layout.key.field(f).decoder() for f in key_fields]
    return lambda raw: tuple(d(raw) for d in decoders)  # type: ignore[misc]


def _index(i: int) -> bytes:
    return _U32.pack(i)


def read_percpu_counts(table: Table, size: int) -> list[int]:
    """Per index, the sum over CPUs of a per-CPU u64 array."""
    return [
        sum(_U64.unpack_from(v)[0] for v in table.per_cpu_values(_index(i))) for i in range(size)
    ]


class MapReader:
    """The probe's maps by name, read fresh on every call (one call per scrape).

    ``layouts`` are the compiled program's (procmond/kernel/layout.py); ``map_ids`` name the
    slots of the overflow arrays (procmond/kernel/header.py).
    """

    def __init__(
        self,
        table: Callable[[str], Table],
        layouts: dict[str, MapLayout],
        map_ids: tuple[str, ...],
    ) -> None:
        self._table = table
        self._layouts = layouts
        self._map_ids = map_ids
        self._keys: dict[tuple[str, tuple[str, ...]], Callable[[bytes], KeyValues]] = {}
        self._histograms: dict[str, Callable[[bytes], Histogram]] = {}
        # Counts carried over from the probe of an earlier build (procmond/kernel/pins.py), by map
        # and raw key in this probe's layout: added to that entry's count at each read, or shown
        # as an entry of their own while the map has none with that key.
        self.carried: dict[str, dict[bytes, int]] = {}
        self.carried_histograms: dict[str, dict[bytes, Histogram]] = {}

    def _key_decoder(self, name: str, key_fields: tuple[str, ...]) -> Callable[[bytes], KeyValues]:
        decoder = self._keys.get((name, key_fields))
        if decoder is None:
            decoder = self._keys[name, key_fields] = key_decoder(self._layouts[name], key_fields)
        return decoder

    def _histogram_decoder(self, name: str) -> Callable[[bytes], Histogram]:
        if name not in self._histograms:
            self._histograms[name] = Histogram.decoder(self._layouts[name])
        return self._histograms[name]

    def counters(self, name: str, key_fields: tuple[str, ...]) -> dict[KeyValues, int]:
        """{(comm, parent_comm): count}, {(comm,): count} or {(comm, error): count}."""
        decode = self._key_decoder(name, key_fields)
        return {decode(k): _U64.unpack_from(v)[0] for k, v in self._table(name).items()}

    def counter_entries(
        self, name: str, key_fields: tuple[str, ...]
    ) -> list[tuple[bytes, KeyValues, int]]:
        """Each entry as (raw key, decoded key, count): the raw key lets it be taken."""
        decode = self._key_decoder(name, key_fields)
        return [(k, decode(k), _U64.unpack_from(v)[0]) for k, v in self._table(name).items()]

    def raw(self, name: str) -> RawRows:
        """A counter map's entries, undecoded (with the counts carried over, if any)."""
        table = self._table(name)
        rows = RawRows(table.batches(), table.key_size)
        carried = self.carried.get(name)
        if not carried:
            return rows
        counts = dict(rows.entries())
        for raw, count in carried.items():
            counts[raw] = counts.get(raw, 0) + count
        keys = b"".join(counts)
        values = b"".join(_U64.pack(count) for count in counts.values())
        return RawRows([(keys, values, len(counts))], table.key_size)

    def decoder(self, name: str, key_fields: tuple[str, ...]) -> Callable[[bytes], KeyValues]:
        """Raw key → the values of ``key_fields``, for keys of map ``name``."""
        return self._key_decoder(name, key_fields)

    def field_values(self, name: str, rows: RawRows, field: str) -> set[int]:
        """The distinct values of an integer key field (the cgroup ids) over ``rows``."""
        values: set[int] = set()
        for _, column in self._column(name, rows, field):
            values.update(column)
        return values

    def rows_where(
        self, name: str, rows: RawRows, field: str, values: Collection[int]
    ) -> list[int]:
        """The places (in ``rows``' order) of the rows whose integer field ``field`` is one of
        ``values``."""
        column = chain.from_iterable(c for _, c in self._column(name, rows, field))
        return [i for i, value in enumerate(column) if value in values]

    def _column(self, name: str, rows: RawRows, field: str) -> Iterator[tuple[bytes, list[int]]]:
        """Per batch, its keys and the values of integer field ``field`` in key order: read
        as a column of the keys buffer (no key sliced) where the field is an aligned u64."""
        f = self._layouts[name].key.field(field)
        aligned = f.size == 8 and f.offset % 8 == 0 and rows.key_size % 8 == 0
        decode = f.decoder()
        ks = rows.key_size
        for keys, _, n in rows.batches:
            if aligned:
                column = memoryview(keys).cast("Q")[f.offset // 8 :: ks // 8][:n].tolist()
            else:
                column = [decode(keys[i * ks : (i + 1) * ks]) for i in range(n)]
            yield keys, column  # type: ignore[misc]

    def take(self, name: str, raw_key: bytes) -> int | None:
        """Delete a counter entry and return its last count (None if it was not there)."""
        value = self._table(name).take(raw_key)
        carried = self.carried.get(name, {}).pop(raw_key, None)
        if value is None:
            return carried
        return int(_U64.unpack_from(value)[0]) + (carried or 0)

    def cgroup_path(self, cgroup_id: int) -> str | None:
        """The path the probe recorded when the cgroup was made (cgroup_paths), if it did and
        recorded all of it.

        The probe keeps at most CGROUP_PATH_LEN - 1 bytes of a path, and a longer one is cut
        there: a record that fills its buffer may be cut short (a wrong unit, or none), so it
        counts as no record, and the cgroup is found by id in the tree instead. The path is
        for finding the directory again: os.fsdecode keeps every byte (procmond/naming/cgroups.py
        decodes names for labels)."""
        table = self._table(CGROUP_PATHS)
        raw = table.lookup(cgroup_id.to_bytes(table.key_size, sys.byteorder))
        if raw is None:
            return None
        field = self._layouts[CGROUP_PATHS].value.field("path")
        path: bytes = field.decoder()(raw)  # type: ignore[assignment]
        if len(path) >= field.size - 1:
            return None
        return os.fsdecode(path)

    def take_gone_pids_cgroups(self) -> tuple[list[GonePidsCgroup], int]:
        """The removed cgroups' refused forks the probe kept (gone_task_limit_hits), each
        taken out of the map; and the refused forks of removed cgroups it had no room for
        (cumulative, from its overflow_events slot)."""
        name = GONE_TASK_LIMIT_HITS
        table, value = self._table(name), self._layouts[name].value
        fields = ("hits", "path_len", "path")
        hits, length, path = (value.field(f).decoder() for f in fields)
        capacity = value.field("path").size
        gone = []
        for key, _ in table.items():
            try:
                raw = table.take(key)
            except OSError:
                break  # what is taken is returned; the rest waits for the next scrape
            if raw is not None:
                cgroup_id = int.from_bytes(key, sys.byteorder)
                cut = length(raw) >= capacity  # type: ignore[operator]
                gone.append(GonePidsCgroup(cgroup_id, hits(raw), path(raw), cut))  # type: ignore[arg-type]
        return gone, self.overflow_events().get(name, 0)

    def histograms(self, name: str, key_fields: tuple[str, ...]) -> dict[KeyValues, Histogram]:
        decode_key = self._key_decoder(name, key_fields)
        decode = self._histogram_decoder(name)
        return {decode_key(k): decode(v) for k, v in self._table(name).items()}

    def histogram_entries(self, name: str) -> list[tuple[bytes, Histogram]]:
        """Each entry as (raw key, histogram)."""
        decode = self._histogram_decoder(name)
        entries = [(k, decode(v)) for k, v in self._table(name).items()]
        carried = self.carried_histograms.get(name)
        if not carried:
            return entries
        merged = dict(entries)
        for raw, histogram in carried.items():
            known = merged.get(raw)
            merged[raw] = histogram if known is None else known + histogram
        return list(merged.items())

    def overflow_events(self) -> dict[str, int]:
        """Per map, the events that found it full: this probe's, and those carried over from
        the probe of an earlier build (keyed by this probe's slot)."""
        counts = read_percpu_counts(self._table(OVERFLOW_EVENTS), len(self._map_ids))
        for raw, count in self.carried.get(OVERFLOW_EVENTS, {}).items():
            counts[_U32.unpack(raw)[0]] += count
        return dict(zip(self._map_ids, counts, strict=True))

    def overflow_histogram(self, name: str) -> Histogram:
        """The observations of histogram map ``name`` that found it full, summed over CPUs."""
        decode = self._histogram_decoder(OVERFLOW_HIST)
        per_cpu = self._table(OVERFLOW_HIST).per_cpu_values(_index(self._map_ids.index(name)))
        histograms = [decode(raw) for raw in per_cpu]
        carried = self.carried_histograms.get(OVERFLOW_HIST, {}).get(
            _index(self._map_ids.index(name))
        )
        if carried is not None:
            histograms.append(carried)
        total = histograms[0]
        for h in histograms[1:]:
            total = total + h
        return total

    def capacity(self, name: str) -> int:
        return int(self._table(name).max_entries)

    def entries(self, name: str) -> int:
        return len(self._table(name).items())
