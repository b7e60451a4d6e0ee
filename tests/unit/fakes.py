"""Stand-ins for BCC tables, shaped like what bcc 0.26 returns, for tests without root."""

from __future__ import annotations

import ctypes
from typing import Any

from procmond.maps import HIST_SLOTS


class PairKey(ctypes.Structure):
    _fields_ = [("comm", ctypes.c_char * 16), ("parent_comm", ctypes.c_char * 16)]


class CommKey(ctypes.Structure):
    _fields_ = [("comm", ctypes.c_char * 16)]


class FailureKey(ctypes.Structure):
    _fields_ = [("comm", ctypes.c_char * 16), ("error", ctypes.c_uint)]


class HistValue(ctypes.Structure):
    _fields_ = [("slots", ctypes.c_ulong * HIST_SLOTS), ("sum_ns", ctypes.c_ulong)]


def hist(slots: dict[int, int], sum_ns: int) -> HistValue:
    value = HistValue()
    for k, n in slots.items():
        value.slots[k] = n
    value.sum_ns = sum_ns
    return value


class FakeHash:
    def __init__(
        self,
        rows: list[tuple[Any, Any]],
        max_entries: int = 100,
        batch: bool = True,
        broken: bool = False,
    ) -> None:
        self.rows = rows
        self.max_entries = max_entries
        self.batch = batch
        self.broken = broken

    def items_lookup_batch(self) -> list[tuple[Any, Any]]:
        if self.broken:
            raise OSError(5, "Input/output error")
        if not self.batch:
            raise Exception("BPF_MAP_LOOKUP_BATCH unsupported")
        return [(k, v if isinstance(v, HistValue) else int(v)) for k, v in self.rows]

    def items(self) -> list[tuple[Any, Any]]:
        if self.broken:
            raise OSError(5, "Input/output error")
        return [(k, v if isinstance(v, HistValue) else ctypes.c_ulong(v)) for k, v in self.rows]


class FakePerCpuArray:
    def __init__(self, per_index: list[list[Any]]) -> None:
        self.per_index = per_index
        self.max_entries = len(per_index)

    def __getitem__(self, index: ctypes.c_int) -> list[Any]:
        return self.per_index[index.value]


def pair(comm: bytes, parent: bytes = b"") -> PairKey:
    return PairKey(comm, parent)


def one(comm: bytes) -> CommKey:
    return CommKey(comm)


def failure(comm: bytes, error: int) -> FailureKey:
    return FailureKey(comm, error)
