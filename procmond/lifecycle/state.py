"""What the daemon counts in user space, kept across a restart that adopts the pinned probe.

Most counts live in the kernel maps and survive with the probe (procmond/kernel/pins.py). A few live
in the daemon: counts of reclaimed entries of gone cgroups folded under their labels, and
where each entry of late-named cgroups shows (procmond/scrape/attribution.py); the task-limit totals
and the probe's lost-count baseline (procmond/scrape/tasklimits.py); the storm state, saved by the
storm thread as its own part (procmond/storms/monitor.py). Without them a restart would drop
folded series, or show a count under two label sets at once, or a storm as started twice.
They are written to ``<state_dir>/state-<identity>.json`` after each scrape that changed them
(atomically: a temporary file renamed), and read back only by a daemon that adopted the very
probe they belong to (its forks_total map's kernel id), never by one that loaded a fresh probe.

Each owner turns its own tables into plain JSON values and back (``state()``/``restore()``,
bytes tagged by procmond/saved.py); this module keeps the file. JSON, not pickle: the file is
data, never code.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from procmond.kernel.maps import Histogram, MapReader
from procmond.lifecycle.sources import CgroupSources

log = logging.getLogger(__name__)

VERSION = 1


def carried_state(reader: MapReader) -> dict[str, Any]:
    return {
        "counters": {
            name: [[raw.hex(), count] for raw, count in rows.items()]
            for name, rows in reader.carried.items()
        },
        "histograms": {
            name: [[raw.hex(), list(h.slots), h.sum_ns] for raw, h in rows.items()]
            for name, rows in reader.carried_histograms.items()
        },
    }


def restore_carried(reader: MapReader, data: dict[str, Any]) -> None:
    """Adds the saved counts to those carried at this start (a retired probe's)."""
    for name, rows in data.get("counters", {}).items():
        counts = reader.carried.setdefault(name, {})
        for raw, count in rows:
            key = bytes.fromhex(raw)
            counts[key] = counts.get(key, 0) + int(count)
    for name, rows in data.get("histograms", {}).items():
        histograms = reader.carried_histograms.setdefault(name, {})
        for raw, slots, sum_ns in rows:
            key = bytes.fromhex(raw)
            value = Histogram(tuple(int(s) for s in slots), int(sum_ns))
            known = histograms.get(key)
            histograms[key] = value if known is None else known + value


def take_over_retired(sources: CgroupSources, data: dict[str, Any]) -> None:
    """What the daemon of a retired probe kept, taken over by this one: its task-limit totals
    (the pids controller's, whatever the probe) and the counts it folded under labels."""
    sources.task_limits.restore(data["task_limits"])
    if sources.attribution is not None and "attribution" in data:
        sources.attribution.take_over(data["attribution"])


class StateFile:
    """The state of the probe ``probe_id`` in ``path``; writes only what changed. Parts are
    saved by two threads (scrapes; the storm monitor's ``storms``): each save replaces the
    parts it names and keeps the others."""

    def __init__(self, path: Path, probe_id: int) -> None:
        self.path = path
        self.probe_id = probe_id
        self._written = b""
        self._failing = False  # logged once, until a write succeeds again
        self._parts: dict[str, str] = {}  # JSON text by part
        self._lock = threading.Lock()

    def load(self) -> dict[str, Any] | None:
        """The saved state, if it is this probe's and readable; else None (logged)."""
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring the saved counts in %s: %s", self.path, exc)
            return None
        if data.get("version") != VERSION or data.get("probe") != self.probe_id:
            log.info("the saved counts in %s are of another probe: not used", self.path)
            return None
        return data

    def save(self, parts: dict[str, Any]) -> None:
        """Each part is encoded as it is saved, and kept encoded: the storm thread saves its
        small part every second of a storm without encoding the others again."""
        with self._lock:
            head = {"version": VERSION, "probe": self.probe_id}
            self._parts.update((name, json.dumps(value)) for name, value in parts.items())
            items = [
                *((json.dumps(k), json.dumps(v)) for k, v in head.items()),
                *((json.dumps(name), text) for name, text in self._parts.items()),
            ]
            self._write("{" + ", ".join(f"{k}: {v}" for k, v in items) + "}")

    def _write(self, json_text: str) -> None:
        text = json_text.encode()
        if text == self._written:
            return
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with open(temporary, "wb") as f:
                f.write(text)
            os.replace(temporary, self.path)
        except OSError as exc:
            if not self._failing:
                log.warning("cannot save the counts kept in user space to %s: %s", self.path, exc)
            self._failing = True
            return
        self._written, self._failing = text, False
