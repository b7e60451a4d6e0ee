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
- Folded counts are kept per label set, and share ``capacity`` (the config's ``max_entries``)
  with the label sets live kernel entries show: a metric shows at most ``capacity`` series plus
  ``__overflow__``. A label set that a live entry also shows costs no series and is always
  kept. A gone cgroup's counts go to the ``__overflow__`` label set, as kernel-map overflow
  does, when the live ones leave no room; and when live label sets grow into the room of
  folded ones, the folded label sets least recently added to go there too (the live counters
  are never touched). Each is one move of a count from a series that ends to
  ``__overflow__``: the sum stays exact, no series shown goes down.
- Cgroups are remembered while map entries name them: a gone one is forgotten at the first
  scrape that no longer sees it (its entries all reclaimed), a live one no entry named for
  ``FORGET_AFTER_SECONDS``, and past ``max_cgroups`` the least recently seen. Memory is fixed
  by the config whatever the churn.

Invariants (tests/unit/test_attribution.py, tests/e2e/test_attribution.py,
tests/e2e/test_churn.py): every count shows exactly once; no exposed series goes down; kernel
entries, series and user-space state are bounded by the config.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from procmond.naming.labels import EMPTY_LABELS, CgroupLabels
from procmond.saved import tagged, untagged

Row = tuple[bytes | int | str, ...]
UNKNOWN: CgroupLabels = EMPTY_LABELS
RECLAIM_AFTER_SECONDS = 1.0  # a cgroup seen gone this long ago is reclaimed at the next scrape
FORGET_AFTER_SECONDS = 300.0  # a cgroup no entry named for this long is forgotten


class Namer(Protocol):
    """What attribution needs of cgroup resolution (procmond/naming/cgroups.py)."""

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
    seen_scrape: int = 0


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
    the caller does not already show plainly, ``end_map()``, and ``folded()`` once every entry
    is placed; after every map, ``forget_unused()``. ``rows()`` does one map's part in one
    call. ``max_cgroups`` bounds the cgroups remembered (default: ``capacity``)."""

    def __init__(
        self,
        namer: Namer,
        capacity: int,
        overflow_value: str,
        clock: Callable[[], float] = time.monotonic,
        reclaim_after: float = RECLAIM_AFTER_SECONDS,
        max_cgroups: int | None = None,
    ) -> None:
        self._namer = namer
        self._capacity = capacity
        self._overflow = overflow_value
        self._clock = clock
        self._reclaim_after = reclaim_after
        self.max_cgroups = max_cgroups or capacity
        self._cgroups: dict[int, _Cgroup] = {}
        self._entries: dict[tuple[str, bytes], _Entry] = {}
        # per map: label set → count, least recently added to first
        self._folded: dict[str, dict[Row, int]] = {}
        self._folding: dict[str, list[tuple[Row, int]]] = {}  # reclaimed, not yet placed
        self._now = clock()
        self._scrape = 0
        self._settled: dict[int, _Cgroup] = {}  # cgroups resolved in this scrape
        self._present: set[tuple[str, bytes]] = set()  # recorded entries seen in this scrape
        self.reclaimed = 0  # kernel entries deleted, for procmond_cgroup_entries_reclaimed_total

    def state(self) -> dict[str, Any]:
        """What a restart that adopts the probe must keep (procmond/lifecycle/state.py): the
        counts folded under labels, where each recorded entry shows and how much of it is
        folded, and the reclaimed count."""
        return {
            "folded": {
                name: [[tagged(row), count] for row, count in rows.items()]
                for name, rows in self._folded.items()
            },
            "entries": [
                [name, raw.hex(), tagged(e.labels), e.base]
                for (name, raw), e in self._entries.items()
            ],
            "folding": {
                name: [[tagged(row), count] for row, count in rows]
                for name, rows in self._folding.items()
            },
            "reclaimed": self.reclaimed,
        }

    def restore(self, data: dict[str, Any]) -> None:
        """``state()`` of the daemon before, whose probe this one adopted."""
        self._folded = {
            name: {untagged(row): int(count) for row, count in rows}
            for name, rows in data["folded"].items()
        }
        self._entries = {
            (name, bytes.fromhex(raw)): _Entry(untagged(labels), int(base))
            for name, raw, labels, base in data["entries"]
        }
        self._folding = {
            name: [(untagged(row), int(count)) for row, count in rows]
            for name, rows in data.get("folding", {}).items()
        }
        self.reclaimed = int(data["reclaimed"])

    def take_over(self, data: dict[str, Any]) -> None:
        """``state()`` of a retired probe's daemon (an upgrade), added to this one's: the counts
        it folded under labels. Its entries' records are not taken: their keys were the old
        probe's, and the parts they had folded are left out of the counts carried on."""
        for name, rows in data["folded"].items():
            folded = self._folded.setdefault(name, {})
            for row, count in rows:
                labels = untagged(row)
                folded[labels] = folded.get(labels, 0) + int(count)
        for name, rows in data.get("folding", {}).items():
            self._folding.setdefault(name, []).extend((untagged(r), int(c)) for r, c in rows)
        self.reclaimed += int(data["reclaimed"])

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
        live = set(out)
        for labels, count in self.folded(map_name, live.__contains__, len(live)).items():
            out[labels] = out.get(labels, 0) + count
        return out

    def start_scrape(self) -> None:
        """From here on each cgroup is resolved (names, whether it is gone) once, for every
        map of the scrape."""
        self._now = self._clock()
        self._scrape += 1
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

    def folded(
        self, map_name: str, live: Callable[[Row], bool], live_series: int
    ) -> dict[Row, int]:
        """Counts of entries no longer in the kernel map, by the labels they showed under,
        once this scrape's live entries are placed: ``live_series`` series show them, and
        ``live(labels)`` tells whether a label set is one of those. Folded label sets that
        are not live get the room the live ones leave of ``capacity``; the counts of those
        beyond it go to ``__overflow__`` (module docstring)."""
        folded = self._folded.setdefault(map_name, {})
        folding = self._folding.pop(map_name, [])
        if not folding and (not folded or len(folded) + live_series <= self._capacity):
            return folded  # within the bound whatever is live: the usual case, no look-up
        some = folding[0][0] if folding else next(iter(folded))
        overflow: Row = (self._overflow,) * len(some)
        alone = {labels for labels in folded if labels != overflow and not live(labels)}
        room = max(self._capacity - live_series, 0)
        moved = 0
        for labels, count in folding:
            if labels in folded:
                folded[labels] = folded.pop(labels) + count  # now the most recently added to
            elif live(labels):
                folded[labels] = count  # shown by a live entry anyway: costs no series
            elif len(alone) < room:
                folded[labels] = count
                alone.add(labels)
            else:
                moved += count
        if len(alone) > room:  # live label sets took the room of folded ones: oldest first
            for labels in [labels for labels in folded if labels in alone][: len(alone) - room]:
                moved += folded.pop(labels)
        if moved:
            folded[overflow] = folded.pop(overflow, 0) + moved
        return folded

    def forget_unused(self, older_than: float = FORGET_AFTER_SECONDS) -> None:
        """Drop the cgroups no map entry needs any more, once a scrape: gone ones this scrape
        did not see (their entries are all reclaimed), live ones no entry has named for
        ``older_than`` seconds, and beyond ``max_cgroups`` the least recently seen (never one
        this scrape saw). What is remembered stays bounded by what the maps can hold."""
        cutoff = self._clock() - older_than
        scrape = self._scrape
        for cgroup_id in [
            i
            for i, c in self._cgroups.items()
            if c.seen < cutoff or (c.gone_since is not None and c.seen_scrape < scrape)
        ]:
            del self._cgroups[cgroup_id]
        excess = len(self._cgroups) - self.max_cgroups
        if excess > 0:
            unseen = [(c.seen, i) for i, c in self._cgroups.items() if c.seen_scrape < scrape]
            for _, cgroup_id in sorted(unseen)[:excess]:
                del self._cgroups[cgroup_id]

    def sizes(self) -> dict[str, tuple[int, int]]:
        """Entries and capacity of each table (procmond_table_entries): cgroups and entries
        remembered, and per map the label sets kept for gone cgroups (with __overflow__)."""
        sizes = {
            "attribution_cgroups": (len(self._cgroups), self.max_cgroups),
            "attribution_entries": (len(self._entries), self.max_cgroups),
        }
        for map_name, folded in sorted(self._folded.items()):
            sizes[f"folded_{map_name}"] = (len(folded), self._capacity + 1)
        return sizes

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
        cgroup.seen, cgroup.seen_scrape = now, self._scrape
        if cgroup_id and cgroup.gone_since is None and self._namer.alive(cgroup_id) is False:
            cgroup.gone_since = now
        return cgroup

    def _fold(self, map_name: str, labels: Row, count: int) -> None:
        """Keep ``count`` under ``labels``; where, exactly, once the scrape's live label sets
        are known (``folded()``)."""
        if count > 0:
            self._folding.setdefault(map_name, []).append((labels, count))


def _less_known(new: CgroupLabels, old: CgroupLabels) -> bool:
    """Whether ``new`` knows less than ``old`` (a name that went away): keep the old ones."""
    return any(o and not n for n, o in zip(new, old, strict=True))
