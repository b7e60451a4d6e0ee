"""The probe's per-process counting, from user space: its switch, its map, and what /proc adds.

Shared by the daemon's storm reports (procmond/storms/monitor.py) and ``procmond top``. The
probe counts creations per creating process in the ``creators`` LRU map only while
``storm_watch[0]`` holds a non-zero generation (bpf/procmond.bpf.c); entries of other
generations are stale and skipped here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from procmond.kernel.inventory import FIRST, SLOT
from procmond.kernel.layout import MapLayout
from procmond.storms.detector import CMDLINE_MAX_CHARS, Creator
from procmond.text import command_line


class Map(Protocol):
    """What is needed of a map: procmond.kernel.bpfmap.BPFMap."""

    def items(self) -> list[tuple[bytes, bytes]]: ...

    def update(self, key: bytes, value: bytes) -> None: ...

    def lookup(self, key: bytes) -> bytes | None: ...


def switch(storm_watch: Map, generation: int) -> None:
    """Per-process counting on (as ``generation``), or off (0)."""
    storm_watch.update(FIRST, SLOT.pack(generation))


class SharedSwitch:
    """Per-process counting kept on by `procmond top` in the running daemon's probe
    (procmond/kernel/pins.py), which the daemon's storm monitor switches too: top follows the
    generation in force, sets its own while none is, and switches off at the end only if its
    own is still in force."""

    OWN = 0x70D00000  # far above the storm monitor's generations (1, 2, ...)

    def __init__(self, storm_watch: Map) -> None:
        self._map = storm_watch

    def generation(self) -> int:
        (current,) = SLOT.unpack(self._map.lookup(FIRST) or FIRST)
        if current == 0:
            switch(self._map, self.OWN)
            return self.OWN
        return current

    def release(self) -> None:
        if self.generation() == self.OWN:
            switch(self._map, 0)


class CreatorsReader:
    """The creators map's entries of one generation, as Creator values."""

    def __init__(self, creators: Map, layout: MapLayout) -> None:
        self._map = creators
        value = layout.value
        self._pid = layout.key.field("").decoder()
        self._fields: dict[str, Callable[[bytes], object]] = {
            name: value.field(name).decoder()
            for name in (
                "forks",
                "threads",
                "cgroup_id",
                "start_ns",
                "ppid",
                "generation",
                "comm",
                "parent_comm",
            )
        }
        self._last: dict[bytes, tuple[bytes, Creator]] = {}

    def read(self, generation: int) -> dict[int, Creator]:
        """Entries of other generations are stale. Entries whose bytes did not change since the
        last read are not decoded again (read every second while the host is busy)."""
        f = self._fields
        out = {}
        last, self._last = self._last, {}
        for key, value in self._map.items():
            if f["generation"](value) != generation:
                continue
            known = last.get(key)
            if known is not None and known[0] == value:
                creator = known[1]
            else:
                creator = self._decode(key, value)
            self._last[key] = (value, creator)
            out[creator.pid] = creator
        return out

    def _decode(self, key: bytes, value: bytes) -> Creator:
        f = self._fields
        return Creator(
            int(self._pid(key)),  # type: ignore[call-overload]
            f["comm"](value),  # type: ignore[arg-type]
            f["ppid"](value),  # type: ignore[arg-type]
            f["parent_comm"](value),  # type: ignore[arg-type]
            f["cgroup_id"](value),  # type: ignore[arg-type]
            f["forks"](value),  # type: ignore[arg-type]
            f["threads"](value),  # type: ignore[arg-type]
            f["start_ns"](value),  # type: ignore[arg-type]
        )


class HostCreations:
    """Processes and threads created on the host since boot, the kernel's own count (the
    ``processes`` line of /proc/stat), read once a second: the file stays open and is read
    from its start each time (~10 µs)."""

    _LINE = b"\nprocesses "

    def __init__(self, stat: Path = Path("/proc/stat")) -> None:
        self._path = stat
        self._fd: int | None = None

    def read(self) -> int:
        if self._fd is None:
            self._fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        data = b"\n" + os.pread(self._fd, 1 << 16, 0)
        start = data.find(self._LINE)
        if start < 0:
            raise OSError(f"{self._path} has no processes line")
        start += len(self._LINE)
        return int(data[start : data.index(b"\n", start)])

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def cmdline(pid: int, comm: bytes, proc: Path = Path("/proc")) -> str | None:
    """The process's command line, printable and cut to CMDLINE_MAX_CHARS; None when the
    process is gone, has none (a kernel thread, a zombie), or is not the process the probe saw
    (its command differs: the pid was reused, or it exec'd)."""
    base = proc / str(pid)
    try:
        if (base / "comm").read_bytes().rstrip(b"\n") != comm:
            return None
        with (base / "cmdline").open("rb") as f:
            raw = f.read(4 * CMDLINE_MAX_CHARS)
    except OSError:
        return None
    return command_line(raw, CMDLINE_MAX_CHARS)
