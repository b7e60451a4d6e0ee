"""The storm monitor's alarm: it sleeps, with no timer, until the host has created a given
number of tasks more; the probe then wakes it.

Reading /proc/stat once a second cost an idle daemon ~0.3 ms of CPU a second on the machines
it is measured on, and most of that was the wake-up itself (~0.1 ms of a thread's CPU, then a
tick's Python on cold caches), not the read (~0.01 ms hot): no cheaper read could meet the
idle target (benchmarks/README.md, idle CPU). So the monitor puts a number of creations in
``storm_alarm[0]``, which the probe counts down at each creation, and waits on the
``storm_wake`` ring buffer's descriptor, which the probe makes readable when the count runs
out (bpf/procmond.bpf.c, ``count_down_alarm``). While no alarm is set (0), a creation only
reads the slot.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import mmap
import os
import select
from typing import Protocol

from procmond.errors import BPFLoadError
from procmond.kernel.inventory import COUNT as _COUNT
from procmond.kernel.inventory import FIRST as _SLOT
from procmond.kernel.inventory import STORM_ALARM as ALARM_MAP
from procmond.kernel.inventory import STORM_WAKE as RING_MAP

_MAP_FAILED = ctypes.c_void_p(-1).value


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    )
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    return libc


class _Position:
    """A ring buffer position: the first 8 bytes of one page of the ring's mapping. Mapped
    through libc, not Python's mmap, which keeps a duplicate of the descriptor per mapping."""

    def __init__(self, fd: int, page: int, writable: bool) -> None:
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        address = _libc().mmap(None, mmap.PAGESIZE, prot, mmap.MAP_SHARED, fd, page * mmap.PAGESIZE)
        if address in (None, _MAP_FAILED):
            err = ctypes.get_errno()
            raise OSError(err, f"cannot map page {page} of {RING_MAP}: {os.strerror(err)}")
        self._address: int | None = address
        self._value = ctypes.c_uint64.from_address(address)  # aligned: one load, one store

    @property
    def value(self) -> int:
        assert self._address is not None, "read after close"
        return int(self._value.value)

    @value.setter
    def value(self, position: int) -> None:
        assert self._address is not None, "written after close"
        self._value.value = position

    def close(self) -> None:
        if self._address is not None:
            _libc().munmap(self._address, mmap.PAGESIZE)
            self._address = None


class Map(Protocol):
    """What is needed of a map: procmond.kernel.bpfmap.BPFMap."""

    fd: int
    key_size: int
    value_size: int

    def update(self, key: bytes, value: bytes) -> None: ...


class CreationAlarm:
    """Made from the probe's storm_alarm and storm_wake maps; ``close`` frees what it opened
    (not the maps: the probe holds them)."""

    def __init__(self, alarm: Map, ring: Map) -> None:
        if (alarm.key_size, alarm.value_size) != (len(_SLOT), _COUNT.size):
            raise BPFLoadError(
                f"{ALARM_MAP} has {alarm.key_size}-byte keys and {alarm.value_size}-byte values, "
                f"not {len(_SLOT)} and {_COUNT.size}",
                "bpf/procmond.bpf.c and procmond/kernel/alarm.py are from different versions:"
                " reinstall",
            )
        self._alarm = alarm
        self._ring = ring.fd
        # A BPF ring buffer maps as its consumer position (the first page, the only one user
        # space may write) and its producer position (the second): draining it is copying the
        # second to the first. What the records hold is not needed.
        self._consumer = _Position(ring.fd, 0, writable=True)
        try:
            self._producer = _Position(ring.fd, 1, writable=False)
        except OSError:
            self._consumer.close()
            raise
        self._poke = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._poll = select.epoll()
        self._poll.register(ring.fd, select.EPOLLIN)
        self._poll.register(self._poke, select.EPOLLIN)

    def ring_after(self, creations: int) -> None:
        """Ring once the host has created ``creations`` (>= 1) more tasks."""
        if creations < 1:
            raise ValueError(f"an alarm needs at least one creation, not {creations}")
        self._drain()  # what rang before is stale; the ring is empty before the probe can ring
        self._alarm.update(_SLOT, _COUNT.pack(creations))

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
        self._consumer.value = self._producer.value

    def close(self) -> None:
        """Switch the alarm off (the probe no longer counts it down) and free what it opened."""
        with contextlib.suppress(OSError):
            self._alarm.update(_SLOT, _COUNT.pack(0))
        self._poll.close()
        os.close(self._poke)
        self._consumer.close()
        self._producer.close()
