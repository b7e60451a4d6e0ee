"""containers/storage's container list: names by container id, for Podman and CRI-O.

``<root>/<driver>-containers/containers.json`` (overlay, vfs...) lists every container the
store holds with its ``names``. It is re-read on a miss, when it changed (inode, size or
mtime) or at most once a second; a file above :data:`STORE_LIMIT` is not read; at most
``capacity`` names are kept, and names read once stay (bounded LRU) after their container is
gone.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Sequence

from procmond.naming.lru import BoundedLRU
from procmond.naming.runtime import HEX_ID, clean_name, read_json, stamp

STORE_LIMIT = 16 << 20
NEWEST = 64  # entries at a list's end taken as new when it changes


class ContainerStore:
    name = "containers-storage"
    watch_depth = 2  # <driver>-containers/containers.json

    def __init__(self, root: str, capacity: int = 16384, refresh_interval: float = 1.0) -> None:
        self.root = root
        self._refresh_interval = refresh_interval
        self._last_read: float | None = None
        self._names: BoundedLRU[str, str] = BoundedLRU(capacity)
        self._stamps: dict[str, tuple[int, int, int] | None] = {}

    def lists(self) -> list[str]:
        """The store's containers.json files (one per storage driver used)."""
        if not self.root:
            return []
        return sorted(
            glob.glob(os.path.join(glob.escape(self.root), "*-containers", "containers.json"))
        )

    def name_of(self, container_id: str) -> str | None:
        known = self._names.get(container_id)
        if known is None and (self._changed() or self._due()):
            self._last_read = time.monotonic()
            known = self._read(container_id)
        return known

    def _changed(self) -> bool:
        """Whether a list changed since it was last read (a miss in an unchanged list is not
        worth reading it again: its names were offered to the cache then)."""
        changed = False
        for path in self.lists():
            now = self._stamp(path)
            if now is not None and self._stamps.get(path) != now:
                self._stamps[path] = now
                changed = True
        return changed

    def _due(self) -> bool:
        """A miss in an unchanged list (its names did not all fit the cache) reads it again
        at most once per ``refresh_interval``."""
        last = self._last_read
        return last is None or time.monotonic() - last >= self._refresh_interval

    def noticed(self, relative: Sequence[str]) -> None:
        """The list rewritten (it is replaced at each create): keep the new containers' names,
        which are at its end (a CI job removed before the next scrape is still named)."""
        if len(relative) == 2 and relative[1] == "containers.json" and self._changed():
            self._read(None, newest=NEWEST)

    def _read(self, wanted: str | None, newest: int = 0) -> str | None:
        """Read every list: the wanted id's name (and the ``newest`` entries' names) are kept,
        the others only where there is room (a store larger than the cache never pushes out
        names in use)."""
        found = None
        for path in self.lists():
            entries = self._load(path)
            if not isinstance(entries, list):
                continue
            for number, entry in enumerate(entries):
                if not isinstance(entry, dict):
                    continue
                cid, names = entry.get("id"), entry.get("names")
                if not (isinstance(cid, str) and HEX_ID.match(cid) and isinstance(names, list)):
                    continue
                name = clean_name(names[0]) if names else ""
                if not name:
                    continue
                if cid == wanted or number >= len(entries) - newest:
                    found = name if cid == wanted else found
                    self._names.put(cid, name)
                else:
                    self._names.offer(cid, name)
        return found

    def _load(self, path: str) -> object:
        """A container list, parsed (None if missing, too big or not JSON)."""
        return read_json(path, STORE_LIMIT)

    def _stamp(self, path: str) -> tuple[int, int, int] | None:
        return stamp(path)

    def config(self, container_id: str) -> object:
        """The container's OCI config (userdata/config.json), parsed, or None."""
        for path in self.lists():
            found = read_json(
                os.path.join(os.path.dirname(path), container_id, "userdata", "config.json")
            )
            if found is not None:
                return found
        return None

    def state_dirs(self) -> list[str]:
        return [self.root] if self.root else []

    def descend(self, relative: Sequence[str]) -> bool:
        return len(relative) == 1 and relative[0].endswith("-containers")

    def size(self) -> tuple[int, int]:
        return (len(self._names), self._names.capacity)
