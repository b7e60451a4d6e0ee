"""A kernel BPF map, read by file descriptor through libbpf: no ``bcc`` here.

The daemon reads its maps this way so that it never loads BCC and its compiler (~100 MB of
libraries) into the long-running process; the loader (procmond/kernel/handoff.py) hands it the map
descriptors. libbpf (~0.2 MiB, no LLVM) is what BCC itself is built on, so it is on every host
that has BCC; it knows the bpf() syscall's number and attribute layouts on every architecture.
Keys and values stay raw bytes: procmond/kernel/maps.py knows their layout.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
from pathlib import Path

from procmond.errors import BPFLoadError

# The sonames BCC's packages pull in: libbpf1 (Debian 12, Ubuntu 24.04), libbpf0 (Ubuntu 22.04).
LIBBPF_NAMES = ("libbpf.so.1", "libbpf.so.0")

# enum bpf_map_type: the per-CPU ones return one value per possible CPU
_PERCPU_TYPES = {5, 6, 10, 21}  # PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH, PERCPU_CGROUP_STORAGE

_ENOTSUPP = 524  # the kernel-internal "not supported" some map types return for batch ops

_P = ctypes.c_void_p
_COUNT = ctypes.POINTER(ctypes.c_uint32)
_SIGNATURES = {
    "bpf_map_lookup_elem": (ctypes.c_int, _P, _P),
    "bpf_map_lookup_and_delete_elem": (ctypes.c_int, _P, _P),
    "bpf_map_update_elem": (ctypes.c_int, _P, _P, ctypes.c_uint64),
    "bpf_map_get_next_key": (ctypes.c_int, _P, _P),
    "bpf_map_lookup_batch": (ctypes.c_int, _P, _P, _P, _P, _COUNT, _P),
    "bpf_obj_get_info_by_fd": (ctypes.c_int, _P, _COUNT),
    "bpf_enable_stats": (ctypes.c_int,),
    "bpf_obj_pin": (ctypes.c_int, ctypes.c_char_p),
    "bpf_obj_get": (ctypes.c_char_p,),
    "bpf_link_create": (ctypes.c_int, ctypes.c_int, ctypes.c_int, _P),
    "bpf_map_create": (
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint32,
        ctypes.c_uint32,
        ctypes.c_uint32,
        _P,
    ),
}


class _MapInfo(ctypes.Structure):
    """The head of struct bpf_map_info: the kernel fills what fits in info_len."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
    ]


@functools.cache
def _libbpf() -> ctypes.CDLL:
    for name in LIBBPF_NAMES:
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError:
            continue
        for function, argtypes in _SIGNATURES.items():
            if not hasattr(lib, function):  # libbpf 0.x lacks bpf_map_create: no pinning
                continue
            getattr(lib, function).argtypes = argtypes
            getattr(lib, function).restype = ctypes.c_int
        return lib
    raise BPFLoadError(
        f"libbpf is not installed (none of {', '.join(LIBBPF_NAMES)} loads)",
        "install libbpf1 (or libbpf0 on Ubuntu 22.04): BCC's own packages depend on it",
    )


def library() -> ctypes.CDLL:
    """libbpf itself, for what is not a plain int-returning call (its ring buffer API)."""
    return _libbpf()


def libbpf(function: str, *args: object) -> int:
    """One libbpf call, and what it returns; raises OSError with the kernel's errno. The GIL is
    released meanwhile.

    libbpf 1.x returns -errno, 0.x returns -1: both set errno."""
    result: int = getattr(_libbpf(), function)(*args)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


@functools.cache
def possible_cpus() -> int:
    """How many values a per-CPU map returns: one per possible CPU, not per online one."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    return max(int(part.split("-")[-1]) for part in text.split(",")) + 1


def _round8(n: int) -> int:
    return (n + 7) & ~7


class BPFMap:
    """One map, by descriptor. Its shape comes from the kernel (BPF_OBJ_GET_INFO_BY_FD), so a
    layout mismatch with procmond/kernel/maps.py is caught at start, not read as garbage."""

    # Entries per batched lookup: the default maps fit in one call, and a map raised to a
    # million entries is read in steps rather than into a buffer of tens of megabytes.
    batch_entries = 8192

    def __init__(self, fd: int) -> None:
        self.fd = fd
        info = _MapInfo()
        libbpf(
            "bpf_obj_get_info_by_fd",
            fd,
            ctypes.byref(info),
            ctypes.byref(ctypes.c_uint32(ctypes.sizeof(info))),
        )
        self.name = info.name.decode(errors="replace")
        self.id = int(info.id)  # the kernel's, unique while the map lives
        self.key_size = int(info.key_size)
        self.value_size = int(info.value_size)
        self.max_entries = int(info.max_entries)
        self.type = int(info.type)  # BPF_MAP_TYPE_*
        self.per_cpu = self.type in _PERCPU_TYPES
        self._batch = True  # until the kernel says otherwise (batch ops are 5.6+)
        self._last_count: int | None = None  # entries at the last batched read

    @property
    def stored_value_size(self) -> int:
        """Bytes one lookup returns: per-CPU maps give a value, 8-byte aligned, per CPU."""
        if self.per_cpu:
            return _round8(self.value_size) * possible_cpus()
        return self.value_size

    def lookup(self, key: bytes) -> bytes | None:
        """The value at ``key``, or None if absent."""
        return self._value_of("bpf_map_lookup_elem", key)

    def update(self, key: bytes, value: bytes) -> None:
        """Set the entry at ``key`` (created if absent): a switch the probe reads."""
        libbpf(
            "bpf_map_update_elem",
            self.fd,
            ctypes.create_string_buffer(key, self.key_size),
            ctypes.create_string_buffer(value, self.stored_value_size),
            0,  # BPF_ANY
        )

    def take(self, key: bytes) -> bytes | None:
        """Delete the entry at ``key`` and return its last value, in one step (hash maps,
        Linux 5.14+): a count made up to the deletion is in the value, none is lost. None if
        absent."""
        return self._value_of("bpf_map_lookup_and_delete_elem", key)

    def _value_of(self, function: str, key: bytes) -> bytes | None:
        """A libbpf call that fills the value at ``key``; None if the key is absent."""
        value = ctypes.create_string_buffer(self.stored_value_size)
        try:
            libbpf(function, self.fd, ctypes.create_string_buffer(key, self.key_size), value)
        except FileNotFoundError:
            return None
        return value.raw

    def per_cpu_values(self, key: bytes) -> list[bytes]:
        """A per-CPU map's value at ``key``, one bytes object per possible CPU."""
        raw = self.lookup(key) or b""
        step = _round8(self.value_size)
        return [raw[i : i + self.value_size] for i in range(0, len(raw), step)]

    def batches(self) -> list[tuple[bytes, bytes, int]]:
        """Every entry, in (keys, values, count) as the kernel returns them: ``count`` keys of
        key_size bytes back to back, and their values of stored_value_size bytes likewise.

        One batched syscall per batch_entries entries where the kernel has them (5.6+), else
        key by key. Entries added or removed meanwhile may or may not be seen. A scrape slices
        keys out itself: a list of (key, value) pairs cost it ~3 ms and ~1.8 MB at 10,000."""
        if self._batch:
            try:
                return self._batched()
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, _ENOTSUPP):
                    raise
                self._batch = False
        return self._one_by_one()

    def items(self) -> list[tuple[bytes, bytes]]:
        """Every (key, value)."""
        ks, vs = self.key_size, self.stored_value_size
        return [
            (keys[i * ks : (i + 1) * ks], values[i * vs : (i + 1) * vs])
            for keys, values, count in self.batches()
            for i in range(count)
        ]

    def _batch_capacity(self) -> int:
        """Entries the next batch buffer holds: what the map held last time and a quarter
        more, so that a nearly empty map of large capacity is not read into (and the
        allocator made to clear) hundreds of kilobytes every scrape."""
        cap = min(self.max_entries, self.batch_entries)
        if self._last_count is not None:
            cap = min(cap, self._last_count + self._last_count // 4 + 64)
        return max(1, cap)

    def _batched(self) -> list[tuple[bytes, bytes, int]]:
        ks, vs = self.key_size, self.stored_value_size
        capacity = self._batch_capacity()
        keys = ctypes.create_string_buffer(ks * capacity)
        values = ctypes.create_string_buffer(vs * capacity)
        token_in = ctypes.create_string_buffer(max(ks, 8))
        token_out = ctypes.create_string_buffer(max(ks, 8))
        count = ctypes.c_uint32()
        batches: list[tuple[bytes, bytes, int]] = []
        first = True
        while True:
            count.value = capacity
            done = False
            try:
                libbpf(
                    "bpf_map_lookup_batch",
                    self.fd,
                    None if first else token_in,
                    token_out,
                    keys,
                    values,
                    ctypes.byref(count),
                    None,
                )
            except FileNotFoundError:
                done = True  # the last batch: count still says how many it holds
            except OSError as exc:
                if exc.errno != errno.ENOSPC or capacity >= self.max_entries:
                    raise
                # One hash bucket holds more entries than a batch: retry it, twice as large.
                capacity = min(2 * capacity, self.max_entries)
                keys = ctypes.create_string_buffer(ks * capacity)
                values = ctypes.create_string_buffer(vs * capacity)
                continue
            n = count.value
            if n:
                batches.append(
                    (ctypes.string_at(keys, n * ks), ctypes.string_at(values, n * vs), n)
                )
            if done:
                self._last_count = sum(b[2] for b in batches)
                return batches
            ctypes.memmove(token_in, token_out, len(token_out))
            first = False
            if capacity < min(self.batch_entries, self.max_entries):  # more than last time
                capacity = min(2 * capacity, self.batch_entries, self.max_entries)
                keys = ctypes.create_string_buffer(ks * capacity)
                values = ctypes.create_string_buffer(vs * capacity)

    def _one_by_one(self) -> list[tuple[bytes, bytes, int]]:
        """Key by key. get_next_key starts over from the first key when the one it is given
        was deleted meanwhile, so a key can come twice: each is kept once (a scrape must not
        show a series twice)."""
        key = ctypes.create_string_buffer(self.key_size)
        next_key = ctypes.create_string_buffer(self.key_size)
        rows: dict[bytes, bytes] = {}
        first = True
        while True:
            try:
                libbpf("bpf_map_get_next_key", self.fd, None if first else key, next_key)
            except FileNotFoundError:
                if not rows:
                    return []
                return [(b"".join(rows), b"".join(rows.values()), len(rows))]
            first = False
            ctypes.memmove(key, next_key, self.key_size)
            value = self.lookup(key.raw)
            if value is not None:
                rows[key.raw] = value

    def close(self) -> None:
        os.close(self.fd)
