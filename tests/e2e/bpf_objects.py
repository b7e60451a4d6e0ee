"""BPF maps and programs as the kernel lists them, to check that procmond leaves none behind."""

from __future__ import annotations

import ctypes
import os
import re
import time
from pathlib import Path

from procmond.kernel.bpfmap import libbpf

MAP_IDS, PROG_IDS = "bpf_map_get_next_id", "bpf_prog_get_next_id"


def loaded(next_id: str) -> set[int]:
    """Ids of every BPF program or map loaded in the kernel now (libbpf's ``next_id``:
    bpf_map_get_next_id or bpf_prog_get_next_id)."""
    ids, current = set(), ctypes.c_uint32(0)
    while True:
        following = ctypes.c_uint32()
        try:
            libbpf(next_id, current, ctypes.byref(following))
        except FileNotFoundError:
            return ids
        ids.add(following.value)
        current = following


def held_by(pid: int | str) -> tuple[set[int], set[int]]:
    """Ids of the BPF maps and programs the process holds descriptors to (from fdinfo)."""
    maps, progs = set(), set()
    try:
        fds = os.listdir(f"/proc/{pid}/fdinfo")
    except OSError:  # gone, or a kernel thread
        return maps, progs
    for fd in fds:
        try:
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        maps |= {int(x) for x in re.findall(r"^map_id:\s+(\d+)", info, re.M)}
        progs |= {int(x) for x in re.findall(r"^prog_id:\s+(\d+)", info, re.M)}
    return maps, progs


def snapshot() -> tuple[set[int], set[int]]:
    """The maps and programs loaded now."""
    return loaded(MAP_IDS), loaded(PROG_IDS)


def left_behind(before: tuple[set[int], set[int]], timeout: float = 10) -> set[int]:
    """Maps and programs loaded since ``before`` that no process holds any more but are still
    loaded after ``timeout`` (freeing waits for RCU): what a process that has exited left
    attached. Those other processes on the host still hold are theirs, not leaks."""
    deadline = time.monotonic() + timeout
    while True:
        maps, progs = snapshot()
        new = (maps - before[0]) | (progs - before[1])
        if new:
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    held_maps, held_progs = held_by(pid)
                    new -= held_maps | held_progs
        if not new or time.monotonic() > deadline:
            return new
        time.sleep(0.1)
