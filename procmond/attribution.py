"""Counter rows keyed by cgroup id → rows keyed by unit, namespace, pod and container.

The probe keys every counter by the creating task's cgroup v2 id. Turning ids into names and
keeping the kernel maps bounded under cgroup churn must not cost a single count, nor make any
exposed series go down. So, per counter map entry (its raw key), this module remembers which
labels its count is shown under and from which base:

- A new entry is shown under its cgroup's labels as resolved now (empty where unknown).
- Late names: when a cgroup's labels become known later (a pod's log link appears after its
  cgroup), what its entries counted so far stays under the old labels (folded into user space)
  and only what they count from then on shows under the new ones. Nothing moves.
- Reclaim: an entry of a cgroup that is gone (rmdir'd: no task can count in it any more) is
  deleted from the kernel map, atomically with reading its last value, once the cgroup has
  been seen gone at an earlier scrape (a program that read the id just before the rmdir has
  long finished). Its count is folded into user space under its labels, so the kernel entry is
  free for a new cgroup.
- Folded counts are kept per label set, at most ``capacity`` label sets per map; beyond that
  they go to the ``__overflow__`` label set, as kernel-map overflow does. Memory is fixed by
  the config whatever the churn.

Invariants (tests/unit/test_attribution.py, tests/e2e/test_attribution.py): every count shows
exactly once; no exposed series goes down; kernel entries and user-space state are bounded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from procmond.config import CGROUP_LABELS

CgroupLabels = tuple[str, ...]  # values for CGROUP_LABELS, in order
Row = tuple[bytes | int | str, ...]
UNKNOWN: CgroupLabels = ("",) * len(CGROUP_LABELS)
RECLAIM_AFTER_SECONDS = 1.0  # a cgroup seen gone this long ago is reclaimed at the next scrape
FORGET_AFTER_SECONDS = 300.0  # a cgroup no entry named for this long is forgotten


class Namer(Protocol):
    """What attribution needs of cgroup resolution (procmond/cgroups.py)."""

    def labels(self, cgroup_id: int) -> tuple[CgroupLabels, bool]:
        """The cgroup's labels, and whether they are final (False: a name may still come)."""
        ...

    def alive(self, cgroup_id: int) -> bool | None:
        """Whether the cgroup exists; None when that cannot be told yet (not looked up)."""
        ...


class Table(Protocol):
    def take(self, raw_key: bytes) -> int | None:
        """Delete the entry and return its last value (None if it is not there)."""
        ...


@dataclass
class _Cgroup:
    labels: CgroupLabels
    final: bool
    gone_since: float | None = None
    seen: float = 0.0


@dataclass
class _Entry:
    """A kernel entry seen while its cgroup's names were not final: where its count shows,
    and how much of it is already folded under earlier names. An entry first seen with final
    names needs no record (it shows, from 0, under those names for good): at 10,000 entries
    that is most of a scrape's time and memory."""

    labels: Row
    base: int


class Shown(NamedTuple):
    """Where an entry's count shows in a scrape. ``plain``: under its cgroup's final names,
    all of it, for as long as the entry lives (until its cgroup is gone), so a renderer may
    keep its label text by the raw key."""

    labels: Row
    count: int
    plain: bool


class Attribution:
    """Each scrape: ``start_scrape()``, then per counter map ``entry()`` for each kernel entry
    the caller does not already show plainly, ``end_map()``, and ``folded()``; after every map,
    ``forget_unused()``. ``rows()`` does one map's part in one call."""

    def __init__(
        self,
        namer: Namer,
        capacity: int,
        overflow_value: str,
        clock: Callable[[], float] = time.monotonic,
        reclaim_after: float = RECLAIM_AFTER_SECONDS,
    ) -> None:
        self._namer = namer
        self._capacity = capacity
        self._overflow = overflow_value
        self._clock = clock
        self._reclaim_after = reclaim_after
        self._cgroups: dict[int, _Cgroup] = {}
        self._entries: dict[tuple[str, bytes], _Entry] = {}
        self._folded: dict[str, dict[Row, int]] = {}
        self._now = clock()
        self._settled: dict[int, _Cgroup] = {}  # cgroups resolved in this scrape
        self._present: set[tuple[str, bytes]] = set()  # recorded entries seen in this scrape
        self.reclaimed = 0  # kernel entries deleted, for procmond_cgroup_entries_reclaimed_total

    def rows(
        self, map_name: str, entries: list[tuple[bytes, Row, int]], table: Table
    ) -> dict[Row, int]:
        """{(unit, namespace, pod, container, *rest): count} for one map's entries, each given
        as (raw key, (cgroup_id, *rest), count), as one scrape."""
        self.start_scrape()
        out: dict[Row, int] = {}
        for raw, (cgroup_id, *rest), count in entries:
            shown = self.entry(map_name, raw, int(cgroup_id), tuple(rest), count, table)  # type: ignore[call-overload]
            if shown is not None:
                out[shown.labels] = out.get(shown.labels, 0) + shown.count
        self.end_map(map_name)
        for labels, count in self.folded(map_name).items():
            out[labels] = out.get(labels, 0) + count
        return out

    def start_scrape(self) -> None:
        """From here on each cgroup is resolved (names, whether it is gone) once, for every
        map of the scrape."""
        self._now = self._clock()
        self._settled = {}
        self._present = set()

    def gone(self, cgroup_ids: set[int]) -> set[int]:
        """Of the cgroups of a map's entries, those seen gone: their entries are to be folded,
        so none of them may be shown plainly any more. Resolves each (once a scrape)."""
        return {i for i in cgroup_ids if self._settle(i).gone_since is not None}

    def entry(
        self, map_name: str, raw: bytes, cgroup_id: int, rest: Row, count: int, table: Table
    ) -> Shown | None:
        """Where one kernel entry's count shows in this scrape, and how much of it; None once
        it is reclaimed (taken from the kernel map, its count folded)."""
        cgroup = self._settle(cgroup_id)
        labels: Row = (*cgroup.labels, *rest)
        key = (map_name, raw)
        entry = self._entries.get(key)
        if entry is None and not cgroup.final:  # names may still come: remember where
            entry = self._entries[key] = _Entry(labels, 0)
        elif entry is not None and entry.labels != labels:  # late names: nothing moves
            self._fold(map_name, entry.labels, count - entry.base)
            entry.labels, entry.base = labels, count
        base = entry.base if entry is not None else 0
        if cgroup.gone_since is not None and self._now - cgroup.gone_since >= self._reclaim_after:
            last = table.take(raw)
            self._fold(map_name, labels, (count if last is None else last) - base)
            self._entries.pop(key, None)
            self.reclaimed += 1
            return None
        if entry is not None and cgroup.final and base == 0:
            del self._entries[key]  # final names from its first count on: nothing to remember
            entry = None
        if entry is not None:
            self._present.add(key)
        plain = entry is None and cgroup.gone_since is None
        return Shown(labels, count - base, plain)

    def end_map(self, map_name: str) -> None:
        """After a map's entries: forget the recorded ones it no longer has (deleted by
        someone else: nothing more to account)."""
        present = self._present
        for key in [k for k in self._entries if k[0] == map_name and k not in present]:
            del self._entries[key]

    def folded(self, map_name: str) -> dict[Row, int]:
        """Counts of entries no longer in the kernel map, by the labels they showed under."""
        return self._folded.setdefault(map_name, {})

    def forget_unused(self, older_than: float = FORGET_AFTER_SECONDS) -> None:
        """Drop cgroups no map entry has named for ``older_than`` seconds (after a reclaim):
        called once a scrape, it keeps what is remembered bounded by what the maps hold."""
        cutoff = self._clock() - older_than
        for cgroup_id in [i for i, c in self._cgroups.items() if c.seen < cutoff]:
            del self._cgroups[cgroup_id]

    def _settle(self, cgroup_id: int) -> _Cgroup:
        cgroup = self._settled.get(cgroup_id)
        if cgroup is None:
            cgroup = self._settled[cgroup_id] = self._cgroup(cgroup_id, self._now)
        return cgroup

    def _cgroup(self, cgroup_id: int, now: float) -> _Cgroup:
        cgroup = self._cgroups.get(cgroup_id)
        if cgroup is None or not cgroup.final:
            labels, final = self._namer.labels(cgroup_id) if cgroup_id else (UNKNOWN, True)
            if cgroup is None:
                cgroup = self._cgroups[cgroup_id] = _Cgroup(labels, final)
            elif labels != cgroup.labels and not _less_known(labels, cgroup.labels):
                cgroup.labels, cgroup.final = labels, final
            else:
                cgroup.final = final
        cgroup.seen = now
        if cgroup_id and cgroup.gone_since is None and self._namer.alive(cgroup_id) is False:
            cgroup.gone_since = now
        return cgroup

    def _fold(self, map_name: str, labels: Row, count: int) -> None:
        if count <= 0:
            return
        folded = self.folded(map_name)
        if labels not in folded and len(folded) >= self._capacity:
            labels = (self._overflow,) * len(labels)
        folded[labels] = folded.get(labels, 0) + count


def _less_known(new: CgroupLabels, old: CgroupLabels) -> bool:
    """Whether ``new`` knows less than ``old`` (a name that went away): keep the old ones."""
    return any(o and not n for n, o in zip(new, old, strict=True))
