"""The probe's event stream for ``procmond watch``: a ring buffer of one's own, on by a lease.

Every probe, the daemon's too, can write each creation (and exec) to up to WATCH_READERS ring
buffers (bpf/procmond.bpf.c), one per reader, since a BPF ring buffer has one consumer
position; but it writes only while a reader's lease runs, and while none does a creation pays
one array lookup. A reader claims a free slot, renews its lease as it polls (every fifth of a
lease) and gives it back when it closes; one killed with SIGKILL cannot give it back, so its
lease runs out within LEASE_NS and the next creation switches the stream off (no daemon needs
to notice). Readers of one probe agree on slots under an flock of a directory (the pin root).
Records are read through libbpf's ring buffer API and decoded by the layout the compiled
program reported (procmond/kernel/layout.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Protocol

from procmond.errors import ProcmondError
from procmond.kernel import inventory
from procmond.kernel.bpfmap import library
from procmond.kernel.header import read_header
from procmond.kernel.inventory import WATCH_LEASES as LEASES_MAP
from procmond.kernel.inventory import WATCH_LOST as LOST_MAP
from procmond.kernel.layout import Layout

LEASE_NS = 1_000_000_000  # how long a killed reader can keep the stream on
RENEW_NS = LEASE_NS // 5

_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")
_VOID = ctypes.c_void_p
_SAMPLE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


class Map(Protocol):
    """What is needed of a map: procmond.kernel.bpfmap.BPFMap."""

    fd: int

    def lookup(self, key: bytes) -> bytes | None: ...

    def update(self, key: bytes, value: bytes) -> None: ...

    def per_cpu_values(self, key: bytes) -> list[bytes]: ...


def readers() -> int:
    """How many readers a probe streams to at once (WATCH_READERS in procmond.h)."""
    return read_header().define("WATCH_READERS")


def ring_name(reader: int) -> str:
    """Reader ``reader``'s ring (the inventory lists one per reader, WATCH_READERS in all)."""
    return ring_maps()[reader]


def ring_maps() -> tuple[str, ...]:
    return inventory.ring_maps()


def stream_maps() -> tuple[str, ...]:
    """Every map of the stream: what a probe hands over and pins beside its counters."""
    return inventory.stream_maps()


def _slot(name: str) -> int:
    return read_header().enum("watch_slot")[name]


def event_decoder(layout: Layout) -> Callable[[bytes], SimpleNamespace]:
    """A record of the ring → an object with the struct's fields (names as bytes)."""
    decoders = [(f.name, f.decoder()) for f in layout.fields]
    return lambda raw: SimpleNamespace(**{name: decode(raw) for name, decode in decoders})


@contextlib.contextmanager
def _locked(directory: Path | None) -> Iterator[None]:
    """Held by one reader of the probe at a time (None: the probe has no other reader)."""
    if directory is None:
        yield
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class EventStream:
    """One reader's events: ``poll`` calls ``on_event`` with each, in order. ``lock_dir``: the
    directory readers of this probe lock to claim a slot (None when this is the only one)."""

    def __init__(
        self,
        maps: Callable[[str], Map],
        layouts: dict[str, object],
        on_event: Callable[[SimpleNamespace], None],
        execs: bool = False,
        lock_dir: Path | None = None,
        clock: Callable[[], int] = time.monotonic_ns,  # the probe's bpf_ktime_get_ns
    ) -> None:
        self._leases = maps(LEASES_MAP)
        self._lost = maps(LOST_MAP)
        self._on_event = on_event
        self._execs = execs
        self._lock_dir = lock_dir
        self._clock = clock
        self._first = _slot("WATCH_SLOT_READER")
        self._error: BaseException | None = None
        self._discarding = False
        self._callback = _SAMPLE(self._on_sample)  # kept: libbpf calls it until freed
        self._ring: int | None = None
        self._until = 0  # this reader's lease as it last set it
        self.gaps = 0  # times it did not poll for a whole lease: events were missed
        with _locked(lock_dir):
            now = clock()
            free = [i for i in range(readers()) if self._lease(self._first + i) <= now]
            if not free:
                raise ProcmondError(
                    f"{readers()} watches already read this probe",
                    "stop one of them, or run this one with another pin_root",
                )
            self.reader = free[0]
            ring_map = maps(ring_name(self.reader))
            layout = layouts[ring_name(self.reader)]
            self._decode = event_decoder(layout.value)  # type: ignore[attr-defined]
            lib = library()
            lib.ring_buffer__new.restype = ctypes.c_void_p
            lib.ring_buffer__new.argtypes = (ctypes.c_int, _SAMPLE, _VOID, _VOID)
            lib.ring_buffer__poll.argtypes = (ctypes.c_void_p, ctypes.c_int)
            lib.ring_buffer__consume.argtypes = (ctypes.c_void_p,)
            lib.ring_buffer__free.argtypes = (ctypes.c_void_p,)
            lib.ring_buffer__free.restype = None
            ring = lib.ring_buffer__new(ring_map.fd, self._callback, None, None)
            if not ring:
                err = ctypes.get_errno()
                raise OSError(err, f"cannot read {ring_name(self.reader)}: {os.strerror(err)}")
            self._ring = ring
            self._lib = lib
            self._discarding = True  # what an earlier reader of this slot left unread
            lib.ring_buffer__consume(ring)
            self._discarding = False
            self._lost_before = self._lost_count()
            self.started_ns = now
            self._renew(now)

    def _lease(self, slot: int) -> int:
        return int(_U64.unpack(self._leases.lookup(_U32.pack(slot)) or bytes(8))[0])

    def _set(self, slot: int, until: int) -> None:
        self._leases.update(_U32.pack(slot), _U64.pack(until))

    def _renew(self, now: int) -> None:
        """This reader's lease, and the stream's switch, on for another LEASE_NS. A reader that
        did not poll for a whole lease (its output blocked, or stopped) has missed events; if
        meanwhile another reader took its slot, it cannot go on."""
        if self._until:
            if self._lease(self._first + self.reader) != self._until:
                raise ProcmondError(
                    "this watch stopped reading for longer than its lease, and another watch "
                    "took its place",
                    "start it again (and keep its output flowing)",
                )
            if now >= self._until:
                self.gaps += 1
        until = now + LEASE_NS
        self._until = until
        self._set(self._first + self.reader, until)
        if self._execs:
            self._set(_slot("WATCH_SLOT_EXECS"), max(until, self._lease(_slot("WATCH_SLOT_EXECS"))))
        any_slot = _slot("WATCH_SLOT_ANY")
        self._set(any_slot, max(until, self._lease(any_slot)))
        self._renewed = now

    def _on_sample(self, _ctx: object, data: int, size: int) -> int:
        if self._discarding:
            return 0
        try:
            event = self._decode(ctypes.string_at(data, size))
            if event.timestamp_ns >= self.started_ns:
                self._on_event(event)
        except BaseException as exc:  # never into libbpf's C: stop, and raise it from poll
            self._error = exc
            return -1
        return 0

    def poll(self, timeout_ms: int) -> None:
        """Wait up to ``timeout_ms`` for events and hand on every one there is; renews the
        lease when due."""
        now = self._clock()
        if now - self._renewed >= RENEW_NS:
            with _locked(self._lock_dir):
                self._renew(now)
        result = self._lib.ring_buffer__poll(self._ring, timeout_ms)
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if result < 0 and -result != errno.EINTR:
            raise OSError(-result, f"reading {ring_name(self.reader)}: {os.strerror(-result)}")

    def _lost_count(self) -> int:
        values = self._lost.per_cpu_values(_U32.pack(self.reader))
        return sum(_U64.unpack_from(v)[0] for v in values)

    def lost(self) -> int:
        """Events this reader's full ring refused since it started."""
        return self._lost_count() - self._lost_before

    def close(self) -> None:
        """Give the slot back; switch the stream off unless another reader's lease runs."""
        if self._ring is None:
            return
        with _locked(self._lock_dir), contextlib.suppress(OSError):
            now = self._clock()
            if self._lease(self._first + self.reader) == self._until:  # not taken meanwhile
                self._set(self._first + self.reader, 0)
            leases = [self._lease(self._first + i) for i in range(readers())]
            alive = max((until for until in leases if until > now), default=0)
            self._set(_slot("WATCH_SLOT_ANY"), alive)
        self._lib.ring_buffer__free(self._ring)
        self._ring = None
