"""Text exposition (format 0.0.4) of the kernel-map families, rendered by procmond itself.

prometheus_client formats every sample generically: it checks each name, escapes each label
value a character at a time and builds each line afresh. For 28,500 samples (10,000 commands)
that took ~90 ms of a ~185 ms scrape here. procmond's map families have fixed names and label
names, and a map key's labels never change, so each key's label text is made once, from the
key's raw bytes, and kept: one cache, bounded by the label sets the config's maps can hold (keys
are never deleted from the maps, so in steady state it is never cleared). OpenMetrics requests
and the small self-metric families still go through prometheus_client.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from procmond.config import Config
from procmond.maps import Histogram, decode_key
from procmond.metrics import (
    OVERFLOW_LABEL_VALUE,
    CounterMetric,
    HistogramMetric,
    counters,
    cumulative_buckets,
    histograms,
    label_value,
)

OVERFLOW_KEY = b""  # no map key is empty: the key of each map's __overflow__ series here
_U64 = struct.Struct("=Q")


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def label_sets_budget(config: Config) -> int:
    """The most label sets the config's maps can hold, each with its __overflow__ set."""
    return sum(config.max_entries + 1 for _ in counters(config)) + sum(
        config.histogram_max_entries + 1 for _ in histograms(config)
    )


def key_labels(raw: bytes, key_fields: tuple[str, ...], names: tuple[str, ...]) -> tuple[str, ...]:
    """A raw map key's label values, in the order of ``names``."""
    if raw == OVERFLOW_KEY:
        return (OVERFLOW_LABEL_VALUE,) * len(names)
    fields = decode_key(raw, key_fields)
    return tuple(label_value(fields[key_fields.index(name)]) for name in names)


Batches = list[tuple[bytes, bytes, int]]  # (keys, values, count): BPFMap.batches()


def split_rows(batches: Batches, key_size: int, value_size: int) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs out of batches: for the few maps small enough not to matter."""
    return [
        (keys[i * key_size : (i + 1) * key_size], values[i * value_size : (i + 1) * value_size])
        for keys, values, count in batches
        for i in range(count)
    ]


class MapLabels:
    """One map's part of the LabelCache: raw key → its rendered label text, as bytes. For a
    counter that is the start of its sample line (``procmond_forks_total{comm="make",
    parent_comm="bash"} ``), for a histogram the text between the braces."""

    def __init__(
        self,
        cache: LabelCache,
        key_fields: tuple[str, ...],
        names: tuple[str, ...],
        counter: str | None,
    ) -> None:
        self.texts: dict[bytes, bytes] = {}
        self.aliased = False  # two keys have the same labels: their rows must be added up
        self._known: dict[bytes, None] = {}  # the texts made: a dict is ~40 % smaller here
        self._cache = cache
        self._key_fields = key_fields
        self._names = names
        self._counter = counter

    def make(self, raw: bytes) -> bytes:
        """The text for a key not in ``texts`` yet, kept there while the cache is under limit.
        Keys that decode alike (invalid UTF-8 becomes U+FFFD; a process named __overflow__)
        get equal texts, which marks the map as aliased."""
        values = key_labels(raw, self._key_fields, self._names)
        inner = ",".join(
            f'{n}="{escape_label_value(v)}"' for n, v in zip(self._names, values, strict=True)
        )
        if self._counter is not None:
            inner = f"{self._counter}{{{inner}}} " if inner else f"{self._counter} "
        text = inner.encode()
        self.aliased = self.aliased or text in self._known
        if self._cache.size < self._cache.limit:
            self.texts[raw] = text
            self._known[text] = None
            self._cache.size += 1
        return text


class LabelCache:
    """Raw map key → rendered label text, per map, made once and kept.

    Keyed by the raw bytes a map read returns, so that a known key costs one dict lookup, not a
    decode. ``limit`` is the config's label-sets budget: the maps cannot hold more keys, so it
    is never reached; if it were (a bug), texts would be made afresh rather than kept.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self._maps: dict[str, MapLabels] = {}

    def of(
        self,
        map_name: str,
        key_fields: tuple[str, ...],
        names: tuple[str, ...],
        counter: str | None = None,
    ) -> MapLabels:
        labels = self._maps.get(map_name)
        if labels is None:
            labels = self._maps[map_name] = MapLabels(self, key_fields, names, counter)
        return labels


def _header(name: str, documentation: str, kind: str) -> bytes:
    return f"# HELP {name} {escape_help(documentation)}\n# TYPE {name} {kind}\n".encode()


def counter_rows(batches: Batches, key_size: int, overflow: int) -> Iterator[tuple[bytes, int]]:
    """(raw key, count) of a counter map's batches, then (OVERFLOW_KEY, overflow) if any."""
    for keys, values, count in batches:
        offsets = range(0, count * key_size, key_size)
        for offset, (value,) in zip(offsets, _U64.iter_unpack(values), strict=True):
            yield keys[offset : offset + key_size], value
    if overflow:
        yield OVERFLOW_KEY, overflow


def render_counter(
    out: bytearray,
    spec: CounterMetric,
    names: tuple[str, ...],
    batches: Batches,
    key_size: int,
    overflow: int,
    cache: LabelCache,
) -> None:
    """Append one counter family, from its map's raw batches, to ``out`` (unsorted:
    Prometheus needs no order). Written into one buffer line by line, the loop inlined: a
    list of 10,000 lines to join held ~1 MB more at once, a generator cost ~1 ms."""
    labels = cache.of(spec.map_name, spec.key_fields, names, counter=spec.name)
    get, make = labels.texts.get, labels.make
    out += _header(spec.name, spec.documentation, "counter")
    start = len(out)
    for keys, values, count in batches:
        offsets = range(0, count * key_size, key_size)
        for offset, (value,) in zip(offsets, _U64.iter_unpack(values), strict=True):
            raw = keys[offset : offset + key_size]
            out += get(raw) or make(raw)
            out += b"%d\n" % value
    if overflow:
        out += get(OVERFLOW_KEY) or make(OVERFLOW_KEY)
        out += b"%d\n" % overflow
    if labels.aliased:  # rare: keys with the same labels are one series, their counts added
        del out[start:]
        merged: dict[bytes, int] = {}
        for raw, value in counter_rows(batches, key_size, overflow):
            text = get(raw) or make(raw)
            merged[text] = merged.get(text, 0) + value
        for text, value in merged.items():
            out += text
            out += b"%d\n" % value


def render_histogram(
    out: bytearray,
    spec: HistogramMetric,
    names: tuple[str, ...],
    rows: list[tuple[bytes, Histogram]],
    cache: LabelCache,
) -> None:
    """Append one histogram family to ``out``; rows under the same labels are added up."""
    labels = cache.of(spec.map_name, spec.key_fields, names)
    get, make = labels.texts.get, labels.make
    merged: dict[bytes, Histogram] = {}
    for raw, hist in rows:
        text = get(raw) or make(raw)
        merged[text] = merged[text] + hist if text in merged else hist
    name = spec.name.encode()
    out += _header(spec.name, spec.documentation, "histogram")
    for inner, hist in merged.items():
        bucket = b"%b_bucket{%b," % (name, inner) if inner else b"%b_bucket{" % name
        for le, count in cumulative_buckets(hist, spec.bucket_exponents):
            out += b'%ble="%b"} %d\n' % (bucket, le.encode(), count)
        labelled = b"{%b}" % inner if inner else b""
        out += b"%b_count%b %d\n" % (name, labelled, hist.count)
        out += b"%b_sum%b %b\n" % (name, labelled, repr(hist.sum_ns / 1e9).encode())
