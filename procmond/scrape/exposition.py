"""Text exposition (format 0.0.4) of the kernel-map families, rendered by procmond itself.

The scrape's render stage for the text format, from procmond/scrape/placement.py's placed
maps. prometheus_client formats every sample generically: it checks each name, escapes each
label value a character at a time and builds each line afresh. procmond's map families have
fixed names and label names, so they are rendered here, from the maps' raw keys.

Here is the scrape path's one cache, :class:`LabelTexts`: the label text of each map row,
kept between scrapes by the row's raw key (its bytes as the kernel returns them), and by its
place while the map holds the same keys. A known row then costs one formatted line: no key
decoded, no cgroup looked up, no Python object made or kept per row. At 10,000 series the
map families took ~47 ms a scrape decoded and attributed row by row, ~2.5 ms this way (plus
~3.5 ms in the kernel's batch lookup), measured on this project's 2-core VM. A row's text
stays right while the row is *plain* (procmond/scrape/attribution.py: final cgroup names, nothing
folded from it): the rows of a cgroup seen gone (the placement names them) are forgotten
before a map is written, and rows that are not plain, or that share their labels with another
row (two cgroups with the same names, a folded label set, names that decode alike), are
placed and added up every scrape. The cache is bounded by the label sets the config's maps can show
(``label_sets_budget``); past it, texts are evicted, never the whole cache at once.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from itertools import accumulate, chain

from procmond.kernel.maps import Histogram, RawRows
from procmond.scrape.attribution import Row
from procmond.scrape.metrics import label_value
from procmond.scrape.placement import Placed, PlacedCounter, PlacedHistogram
from procmond.scrape.read import Scrape


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


class LabelTexts:
    """Label text (``unit="",...,comm="make"``) per map row, for every map: the one cache.

    ``limit`` (from the series budget) holds every label set the maps can show at once; past
    it, texts are evicted (the oldest label sets first) after each map's rendering, never
    mid-map (a line written this scrape may have to be written again).
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"label text cache limit must be at least 1, not {limit}")
        self.limit = limit
        self._maps: dict[str, MapTexts] = {}

    def of(self, map_name: str, fields: tuple[str, ...], names: tuple[str, ...]) -> MapTexts:
        """Map ``map_name``'s texts, for rows of ``fields`` labelled ``names``."""
        texts = self._maps.get(map_name)
        if texts is None or texts.names != names or texts.fields != fields:
            texts = self._maps[map_name] = MapTexts(fields, names)
        return texts

    def __len__(self) -> int:
        return sum(len(t) for t in self._maps.values())

    def trim(self) -> None:
        """Evict texts, from the largest maps first, until the cache is within its limit."""
        excess = len(self) - self.limit
        while excess > 0:
            largest = max(self._maps.values(), key=len)
            excess -= largest.evict(min(excess, len(largest)))


class MapTexts:
    """One map's texts. ``rows``: per row of the map's last read, in the kernel's order, its
    text if the row is shown plainly and alone, else None; ``shown`` indexes those texts, to
    tell when another row takes the same labels. While the map holds the same keys (no key
    made or deleted: the keys buffers are byte for byte the last read's), a row's text is found
    by its place, with no key cut out or looked up; else by key, once. Label rows and raw keys
    that stand for fixed labels (folded label sets, __overflow__, histogram keys) have their
    texts by value."""

    def __init__(self, fields: tuple[str, ...], names: tuple[str, ...]) -> None:
        self.fields = fields
        self.names = names
        self.rows: list[bytes | None] = []
        self.shown: dict[bytes, None] = {}  # a dict: ~40 % smaller than a set here
        self.unknown = 0  # rows without a text (None in ``rows``)
        self._keys: list[bytes] = []  # the last read's keys buffers, one per batch
        self._key_size = 0
        self._other: dict[bytes | Row, bytes] = {}
        self._keep = tuple(fields.index(n) for n in names)

    def __len__(self) -> int:
        return len(self.shown) + len(self._other)

    def text(self, row: Row) -> bytes:
        """The label text of a row of ``fields``."""
        return ",".join(
            f'{name}="{escape_label_value(label_value(row[i]))}"'
            for name, i in zip(self.names, self._keep, strict=True)
        ).encode()

    def of_row(self, row: Row) -> bytes:
        """The text of a row that is kept anyway (a folded label set, __overflow__)."""
        text = self._other.get(row)
        if text is None:
            text = self._other[row] = self.text(row)
        return text

    def of_key(self, raw: bytes, decode: Callable[[bytes], Row]) -> bytes:
        """The text of a raw key whose labels never change (no cgroup in it)."""
        text = self._other.get(raw)
        if text is None:
            text = self._other[raw] = self.text(decode(raw))
        return text

    def follow(self, read: RawRows) -> None:
        """Line ``rows`` up with a new read of the map."""
        keys = [k for k, _, _ in read.batches]
        if keys == self._keys:
            return
        cut = struct.Struct(f"{self._key_size}s").iter_unpack if self._key_size else None
        before = {}
        if cut is not None:
            known = chain.from_iterable(cut(k) for k in self._keys)
            before = {raw: t for (raw,), t in zip(known, self.rows, strict=True) if t is not None}
        get = before.get
        self.rows = [get(raw) for (raw,) in read.key_tuples()]
        self.shown = dict.fromkeys(t for t in self.rows if t is not None)
        self.unknown = len(self.rows) - len(self.shown)
        self._keys, self._key_size = keys, read.key_size

    def keep(self, i: int, text: bytes) -> None:
        """Row ``i`` (without a text) is shown plainly and alone, under ``text``."""
        self.rows[i] = text
        self.shown[text] = None
        self.unknown -= 1

    def forget(self, i: int) -> None:
        text = self.rows[i]
        if text is not None:
            self.rows[i] = None
            del self.shown[text]
            self.unknown += 1

    def holder(self, text: bytes) -> int:
        """The row that shows ``text`` (one of ``shown``)."""
        return self.rows.index(text)

    def evict(self, n: int) -> int:
        """Evict ``n`` texts, the oldest label sets first; how many went."""
        gone = 0
        for key in list(self._other)[:n]:
            del self._other[key]
            gone += 1
        i = len(self.rows)
        while gone < n and i:
            i -= 1
            if self.rows[i] is not None:
                self.forget(i)
                gone += 1
        return gone


def _header(name: str, documentation: str, kind: str) -> bytes:
    return f"# HELP {name} {escape_help(documentation)}\n# TYPE {name} {kind}\n".encode()


def render_maps(out: bytearray, placed: Iterable[Placed], texts: LabelTexts, scrape: Scrape) -> int:
    """Append the family of each placed map to ``out``; returns the series written. A map
    that fails is left out (what was written of it is taken back), the others still render;
    the cache is kept within its bound after each map."""
    series = 0
    for p in placed:
        mark = len(out)
        try:
            if isinstance(p, PlacedCounter):
                series += render_counter(out, p, texts.of(p.metric.map_name, p.fields, p.names))
            else:
                label_sets = render_histogram(
                    out, p, texts.of(p.metric.map_name, p.fields, p.names)
                )
                series += label_sets * (len(p.metric.bucket_exponents) + 3)
        except Exception as exc:
            del out[mark:]
            scrape.failed(f"map {p.metric.map_name}", exc)
        texts.trim()
    return series


def render_counter(out: bytearray, placed: PlacedCounter, texts: MapTexts) -> int:
    """Append one counter family to ``out``: the map's rows (the known ones from the cache,
    the others placed by ``placed.place``), then the rows ``placed.extra`` gives once every
    row is placed (folded label sets, __overflow__), told which series the map's rows show.
    Rows with the same labels are one series, their counts added. Returns the series
    written. The rows of a gone cgroup are forgotten first: their counts are being folded.

    A new plain row joins the cache unless its labels are taken; if a later row takes them,
    it leaves again. Only a row written from the cache that gets company makes the family be
    written again: rare, as a plain row keeps its labels for life."""
    read, resolve, spec = placed.rows, placed.place, placed.metric
    texts.follow(read)
    for i in placed.gone:
        texts.forget(i)
    name = spec.name.encode()
    line = b"%b{%%b} %%d\n" % name if texts.names else b"%b%%b %%d\n" % name
    out += _header(spec.name, spec.documentation, "counter")
    first = len(out)
    rows = texts.rows
    counts = list(read.counts())
    missing = texts.unknown > 0
    # The hot path: per row one formatted line (~0.2 us), nothing decoded or looked up.
    if missing:
        for text, count in zip(rows, counts, strict=True):
            if text is not None:
                out += line % (text, count)
    else:
        for text, count in zip(rows, counts, strict=True):
            out += line % (text, count)
    written = len(rows) - texts.unknown
    added: dict[bytes, int] = {}  # text → count, for rows shown together (or not plain)
    new: dict[int, int] = {}  # row → count, for plain rows new in the cache
    if missing:
        keys, ks = read.joined_keys(), read.key_size
        for i in [i for i, text in enumerate(rows) if text is None]:
            shown = resolve(keys[i * ks : (i + 1) * ks], counts[i])
            if shown is None:
                continue
            text = texts.text(shown.labels)
            if shown.plain and text not in texts.shown and text not in added:
                texts.keep(i, text)
                new[i] = shown.count
            else:
                added[text] = added.get(text, 0) + shown.count
    shown = texts.shown

    def live(labels: Row) -> bool:
        text = texts.of_row(labels)
        return text in shown or text in added

    live_series = len(shown) + sum(1 for text in added if text not in shown)
    for labels, count in placed.extra(live, live_series):
        text = texts.of_row(labels)
        added[text] = added.get(text, 0) + count
    written_before: dict[int, bytes] = {}  # row written above → its text, now shared
    for text in [t for t in added if t in texts.shown]:
        i = texts.holder(text)
        texts.forget(i)
        if i in new:
            added[text] += new.pop(i)
        else:
            written_before[i] = text
    if written_before:  # write the family again, these rows added to the others
        del out[first:]
        written = 0
        for i, (text, count) in enumerate(zip(rows, counts, strict=True)):
            if text is not None:
                out += line % (text, count)
                written += 1
            elif i in written_before:
                added[written_before[i]] += count
    else:
        for i, count in new.items():
            out += line % (rows[i], count)
        written += len(new)
    for text, count in added.items():
        out += line % (text, count)
    return written + len(added)


def render_histogram(out: bytearray, placed: PlacedHistogram, texts: MapTexts) -> int:
    """Append one histogram family to ``out``; rows under the same labels are added up.
    Returns the label sets written."""
    spec, decode = placed.metric, placed.decode
    added: dict[bytes, Histogram] = {}
    for raw, hist in placed.entries:
        text = texts.of_key(raw, decode)
        added[text] = added[text] + hist if text in added else hist
    if placed.overflow is not None:
        labels, hist = placed.overflow
        text = texts.of_row(labels)
        added[text] = added[text] + hist if text in added else hist
    name = spec.name.encode()
    exponents = spec.bucket_exponents
    bounds = [b'le="%b"} ' % le.encode() for le in placed.bounds]
    out += _header(spec.name, spec.documentation, "histogram")
    for text, hist in added.items():
        bucket = b"%b_bucket{%b," % (name, text) if text else b"%b_bucket{" % name
        running = list(accumulate(hist.slots))
        for bound, k in zip(bounds, exponents, strict=True):
            out += b"%b%b%d\n" % (bucket, bound, running[k])
        out += b'%ble="+Inf"} %d\n' % (bucket, hist.count)
        labelled = b"{%b}" % text if text else b""
        out += b"%b_count%b %d\n" % (name, labelled, hist.count)
        out += b"%b_sum%b %b\n" % (name, labelled, repr(hist.sum_ns / 1e9).encode())
    return len(added)
