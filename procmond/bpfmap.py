"""A kernel BPF map, read by file descriptor through the bpf() syscall: no ``bcc`` here.

The daemon reads its maps this way so that it never loads BCC and its compiler (~100 MB of
libraries) into the long-running process; the loader (procmond/handoff.py) hands it the map
descriptors. Keys and values stay raw bytes: procmond/maps.py knows their layout.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
from pathlib import Path

# enum bpf_cmd (include/uapi/linux/bpf.h)
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_GET_NEXT_KEY = 4
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_MAP_LOOKUP_AND_DELETE_ELEM = 21
BPF_MAP_LOOKUP_BATCH = 24

# enum bpf_map_type: the per-CPU ones return one value per possible CPU
_PERCPU_TYPES = {5, 6, 10, 21}  # PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH, PERCPU_CGROUP_STORAGE

# bpf() is not in Python's os module; its number per architecture (asm/unistd.h)
_SYS_BPF = {
    "x86_64": 321,
    "aarch64": 280,
    "riscv64": 280,
    "loongarch64": 280,
    "ppc64le": 361,
    "ppc64": 361,
    "s390x": 351,
    "i686": 357,
    "i386": 357,
    "armv7l": 386,
}

_ENOTSUPP = 524  # the kernel-internal "not supported" some map types return for batch ops


class _ElemAttr(ctypes.Structure):
    _fields_ = [
        ("map_fd", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),  # next_key for BPF_MAP_GET_NEXT_KEY
        ("flags", ctypes.c_uint64),
    ]


class _BatchAttr(ctypes.Structure):
    _fields_ = [
        ("in_batch", ctypes.c_uint64),
        ("out_batch", ctypes.c_uint64),
        ("keys", ctypes.c_uint64),
        ("values", ctypes.c_uint64),
        ("count", ctypes.c_uint32),
        ("map_fd", ctypes.c_uint32),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class _InfoAttr(ctypes.Structure):
    _fields_ = [
        ("bpf_fd", ctypes.c_uint32),
        ("info_len", ctypes.c_uint32),
        ("info", ctypes.c_uint64),
    ]


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
def _syscall() -> tuple[ctypes._CFuncPtr, int]:  # type: ignore[name-defined]
    machine = platform.machine()
    if machine not in _SYS_BPF:
        raise OSError(errno.ENOSYS, f"procmond does not know the bpf() syscall number on {machine}")
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.syscall
    fn.restype = ctypes.c_long
    fn.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint]
    return fn, _SYS_BPF[machine]


def bpf(cmd: int, attr: ctypes.Structure) -> int:
    """One bpf() call; raises OSError with the kernel's errno. The GIL is released meanwhile."""
    fn, number = _syscall()
    ret = fn(number, cmd, ctypes.addressof(attr), ctypes.sizeof(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ret)


@functools.cache
def possible_cpus() -> int:
    """How many values a per-CPU map returns: one per possible CPU, not per online one."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    return max(int(part.split("-")[-1]) for part in text.split(",")) + 1


def _round8(n: int) -> int:
    return (n + 7) & ~7


class BPFMap:
    """One map, by descriptor. Its shape comes from the kernel (BPF_OBJ_GET_INFO_BY_FD), so a
    layout mismatch with procmond/maps.py is caught at start, not read as garbage."""

    # Entries per batched lookup: the default maps fit in one call, and a map raised to a
    # million entries is read in steps rather than into a buffer of tens of megabytes.
    batch_entries = 8192

    def __init__(self, fd: int) -> None:
        self.fd = fd
        info = _MapInfo()
        bpf(BPF_OBJ_GET_INFO_BY_FD, _InfoAttr(fd, ctypes.sizeof(info), ctypes.addressof(info)))
        self.name = info.name.decode(errors="replace")
        self.key_size = int(info.key_size)
        self.value_size = int(info.value_size)
        self.max_entries = int(info.max_entries)
        self.per_cpu = int(info.type) in _PERCPU_TYPES
        self._batch = True  # until the kernel says otherwise (batch ops are 5.6+)

    @property
    def stored_value_size(self) -> int:
        """Bytes one lookup returns: per-CPU maps give a value, 8-byte aligned, per CPU."""
        if self.per_cpu:
            return _round8(self.value_size) * possible_cpus()
        return self.value_size

    def lookup(self, key: bytes) -> bytes | None:
        """The value at ``key``, or None if absent."""
        k = ctypes.create_string_buffer(key, self.key_size)
        v = ctypes.create_string_buffer(self.stored_value_size)
        try:
            bpf(
                BPF_MAP_LOOKUP_ELEM, _ElemAttr(self.fd, 0, ctypes.addressof(k), ctypes.addressof(v))
            )
        except FileNotFoundError:
            return None
        return v.raw

    def update(self, key: bytes, value: bytes) -> None:
        """Set the entry at ``key`` (created if absent): a switch the probe reads."""
        k = ctypes.create_string_buffer(key, self.key_size)
        v = ctypes.create_string_buffer(value, self.stored_value_size)
        bpf(BPF_MAP_UPDATE_ELEM, _ElemAttr(self.fd, 0, ctypes.addressof(k), ctypes.addressof(v)))

    def take(self, key: bytes) -> bytes | None:
        """Delete the entry at ``key`` and return its last value, in one step (hash maps,
        Linux 5.14+): a count made up to the deletion is in the value, none is lost. None if
        absent."""
        k = ctypes.create_string_buffer(key, self.key_size)
        v = ctypes.create_string_buffer(self.stored_value_size)
        try:
            bpf(
                BPF_MAP_LOOKUP_AND_DELETE_ELEM,
                _ElemAttr(self.fd, 0, ctypes.addressof(k), ctypes.addressof(v)),
            )
        except FileNotFoundError:
            return None
        return v.raw

    def per_cpu_values(self, key: bytes) -> list[bytes]:
        """A per-CPU map's value at ``key``, one bytes object per possible CPU."""
        raw = self.lookup(key) or b""
        step = _round8(self.value_size)
        return [raw[i : i + self.value_size] for i in range(0, len(raw), step)]

    def items(self) -> list[tuple[bytes, bytes]]:
        """Every (key, value): in one batched syscall where the kernel has them (5.6+),
        else key by key. Entries added or removed meanwhile may or may not be seen."""
        if self._batch:
            try:
                return self._items_batched()
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, _ENOTSUPP):
                    raise
                self._batch = False
        return self._items_one_by_one()

    def _items_batched(self) -> list[tuple[bytes, bytes]]:
        ks, vs = self.key_size, self.stored_value_size
        capacity = max(1, min(self.max_entries, self.batch_entries))
        keys = ctypes.create_string_buffer(ks * capacity)
        values = ctypes.create_string_buffer(vs * capacity)
        token_in = ctypes.create_string_buffer(max(ks, 8))
        token_out = ctypes.create_string_buffer(max(ks, 8))
        rows: list[tuple[bytes, bytes]] = []
        first = True
        while True:
            attr = _BatchAttr(
                0 if first else ctypes.addressof(token_in),
                ctypes.addressof(token_out),
                ctypes.addressof(keys),
                ctypes.addressof(values),
                capacity,
                self.fd,
            )
            done = False
            try:
                bpf(BPF_MAP_LOOKUP_BATCH, attr)
            except FileNotFoundError:
                done = True  # the last batch: attr.count still says how many it holds
            except OSError as exc:
                if exc.errno != errno.ENOSPC or capacity >= self.max_entries:
                    raise
                # One hash bucket holds more entries than a batch: retry it, twice as large.
                capacity = min(2 * capacity, self.max_entries)
                keys = ctypes.create_string_buffer(ks * capacity)
                values = ctypes.create_string_buffer(vs * capacity)
                continue
            n = attr.count
            kraw, vraw = ctypes.string_at(keys, n * ks), ctypes.string_at(values, n * vs)
            rows += [(kraw[i * ks : (i + 1) * ks], vraw[i * vs : (i + 1) * vs]) for i in range(n)]
            if done:
                return rows
            ctypes.memmove(token_in, token_out, len(token_out))
            first = False

    def _items_one_by_one(self) -> list[tuple[bytes, bytes]]:
        key = ctypes.create_string_buffer(self.key_size)
        next_key = ctypes.create_string_buffer(self.key_size)
        rows = []
        first = True
        while True:
            attr = _ElemAttr(
                self.fd, 0, 0 if first else ctypes.addressof(key), ctypes.addressof(next_key)
            )
            try:
                bpf(BPF_MAP_GET_NEXT_KEY, attr)
            except FileNotFoundError:
                return rows
            first = False
            ctypes.memmove(key, next_key, self.key_size)
            value = self.lookup(key.raw)
            if value is not None:
                rows.append((key.raw, value))

    def close(self) -> None:
        os.close(self.fd)
