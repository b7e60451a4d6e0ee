"""The storm monitor's alarm: it sleeps, with no timer, until the host has created a given
number of tasks; the probe then wakes it.

Reading /proc/stat once a second cost an idle daemon ~0.3 ms of CPU a second on the machines
it is measured on, and most of that was the wake-up itself (~0.1 ms of a thread's CPU, then a
tick's Python on cold caches), not the read (~0.01 ms hot): no cheaper read could meet the
idle target (benchmarks/README.md, idle CPU). The probe counts every task the host creates in
``storm_tally[TALLY_CREATED]``; the monitor puts the count it wants to wake at in
``storm_tally[TALLY_WAKE_AT]`` and waits on the ``storm_wake`` ring buffer's descriptor, which
the probe makes readable once the count gets there (bpf/procmond.bpf.c, ``tally_creation``).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import select
import struct
from typing import Protocol

from procmond.errors import BPFLoadError
from procmond.header import Header, read_header

TALLY_MAP = "storm_tally"
RING_MAP = "storm_wake"
ALARM_MAPS = (TALLY_MAP, RING_MAP)  # handed to the daemon beside procmond.metrics.daemon_maps

_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")


class Map(Protocol):
    """What is needed of a map: procmond.bpfmap.BPFMap."""

    fd: int
    key_size: int
    value_size: int

    def lookup(self, key: bytes) -> bytes | None: ...

    def update(self, key: bytes, value: bytes) -> None: ...


class CreationAlarm:
    """Made from the probe's storm_tally and storm_wake maps; ``close`` frees what it opened
    (not the maps: the probe holds them)."""

    def __init__(self, tally: Map, ring: Map, header: Header | None = None) -> None:
        if (tally.key_size, tally.value_size) != (_U32.size, _U64.size):
            raise BPFLoadError(
                f"{TALLY_MAP} has {tally.key_size}-byte keys and {tally.value_size}-byte values, "
                f"not {_U32.size} and {_U64.size}",
                "bpf/procmond.bpf.c and procmond/alarm.py are from different versions: reinstall",
            )
        slots = (header or read_header()).enum("storm_tally_slot")
        self._created_key = _U32.pack(slots["TALLY_CREATED"])
        self._wake_key = _U32.pack(slots["TALLY_WAKE_AT"])
        self._tally = tally
        self._ring = ring.fd
        page = mmap.PAGESIZE
        # A BPF ring buffer maps as its consumer position (the first page, the only one user
        # space may write) and its producer position (the second): draining it is copying the
        # second to the first. The records themselves (the count that rang) are not needed.
        self._consumer = mmap.mmap(ring.fd, page, offset=0)
        self._producer = mmap.mmap(ring.fd, page, prot=mmap.PROT_READ, offset=page)
        self._poke = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._poll = select.epoll()
        self._poll.register(ring.fd, select.EPOLLIN)
        self._poll.register(self._poke, select.EPOLLIN)

    def created(self) -> int:
        """Tasks the host created since the probe was loaded."""
        value = self._tally.lookup(self._created_key)
        if value is None:
            raise OSError(f"{TALLY_MAP} has no slot {_U32.unpack(self._created_key)[0]}")
        return int(_U64.unpack(value)[0])

    def ring_at(self, count: int) -> None:
        """Ring once created() reaches ``count`` (at once if it already has); 0: never."""
        self._drain()  # what rang before is stale; the ring is empty before the probe can ring
        self._tally.update(self._wake_key, _U64.pack(count))

    def wait(self, timeout: float | None) -> bool:
        """Block until the alarm rings, ``poke`` is called, or ``timeout`` seconds pass (None:
        no limit). Whether it rang."""
        rang = False
        for fd, _events in self._poll.poll(-1 if timeout is None else timeout):
            if fd == self._poke:
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(self._poke)
            else:
                rang = True
        if rang:
            self._drain()
        return rang

    def poke(self) -> None:
        """End a wait now (from another thread)."""
        os.eventfd_write(self._poke, 1)

    def _drain(self) -> None:
        self._consumer[0:8] = self._producer[0:8]

    def close(self) -> None:
        """Switch the alarm off (the probe no longer rings) and free what it opened."""
        with contextlib.suppress(OSError):
            self._tally.update(self._wake_key, _U64.pack(0))
        self._poll.close()
        os.close(self._poke)
        self._consumer.close()
        self._producer.close()
