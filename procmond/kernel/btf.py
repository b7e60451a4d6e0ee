"""Struct member offsets from the running kernel's BTF.

BCC compiles the probe against whatever kernel headers are installed, and on many hosts those
headers do not match the running kernel: a read of ``task->real_parent`` through them returns
garbage. The kernel describes its own layout in ``/sys/kernel/btf/vmlinux``; this module reads
the few offsets the probe needs from there, so they can be passed in as ``-D`` defines.

It is a small parser of the documented BTF format (Documentation/bpf/btf.rst): a 24-byte
header, then 12-byte type records each followed by kind-specific data. Parsing the whole of
vmlinux this way takes a few milliseconds and needs no extra tool.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from procmond.kernel.header import comm_len

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")

BTF_MAGIC = 0xEB9F

# BTF kinds (include/uapi/linux/btf.h)
KIND_INT = 1
KIND_PTR = 2
KIND_ARRAY = 3
KIND_STRUCT = 4
KIND_UNION = 5
KIND_ENUM = 6
KIND_FWD = 7
KIND_TYPEDEF = 8
KIND_VOLATILE = 9
KIND_CONST = 10
KIND_RESTRICT = 11
KIND_FUNC = 12
KIND_FUNC_PROTO = 13
KIND_VAR = 14
KIND_DATASEC = 15
KIND_FLOAT = 16
KIND_DECL_TAG = 17
KIND_TYPE_TAG = 18
KIND_ENUM64 = 19

# Bytes of kind-specific data after the 12-byte record: fixed, or per member (times vlen).
_FIXED_EXTRA = {KIND_INT: 4, KIND_ARRAY: 12, KIND_VAR: 4, KIND_DECL_TAG: 4}
_PER_MEMBER_EXTRA = {
    KIND_STRUCT: 12,
    KIND_UNION: 12,
    KIND_ENUM: 8,
    KIND_FUNC_PROTO: 8,
    KIND_DATASEC: 12,
    KIND_ENUM64: 12,
}
_MODIFIERS = {KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG}


class BTFError(Exception):
    """The BTF blob is missing, malformed, or lacks a struct or member we need."""


_RECORD = struct.Struct("<III")


@dataclass(frozen=True)
class BTFType:
    kind: int
    name: str
    size_or_type: int
    vlen: int
    kind_flag: bool
    data_offset: int  # where the kind-specific data starts in the blob


@dataclass(frozen=True)
class Member:
    name: str
    type_id: int
    bit_offset: int


class BTF:
    """One BTF blob, indexed by type id (id 0 is void); types are decoded only when asked for.

    The index pass touches every record once (~50 ms for vmlinux's ~127,000 types) and keeps
    just record positions, plus struct records by name offset for lookups by name.
    """

    def __init__(self, blob: bytes) -> None:
        self._blob = blob
        if len(blob) < 24:
            raise BTFError("BTF blob shorter than its header")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", blob, 0)
        if magic != BTF_MAGIC:
            raise BTFError(f"bad BTF magic 0x{magic:04x} (big-endian BTF is not supported)")
        if hdr_len < 24:
            raise BTFError(f"BTF header length {hdr_len} is shorter than 24 bytes")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", blob, 8)
        self._types_start = hdr_len + type_off
        self._types_end = self._types_start + type_len
        self._str_start = hdr_len + str_off
        self._str_end = self._str_start + str_len
        if self._types_end > len(blob) or self._str_end > len(blob):
            raise BTFError("BTF sections run past the end of the blob")
        self._positions: list[int] = [0]  # record position of each type id
        self._structs: dict[int, list[int]] = {}  # name offset -> struct type ids
        self._enums: dict[int, list[int]] = {}  # name offset -> enum type ids
        self._index()

    @classmethod
    def from_file(cls, path: Path = VMLINUX_BTF) -> BTF:
        try:
            return cls(path.read_bytes())
        except OSError as exc:
            raise BTFError(f"cannot read {path}: {exc.strerror}") from exc

    def _index(self) -> None:
        blob, unpack, positions = self._blob, _RECORD.unpack_from, self._positions
        structs: dict[int, list[int]] = {}
        enums: dict[int, list[int]] = {}
        pos, end = self._types_start, self._types_end
        while pos < end:
            name_off, info, _ = unpack(blob, pos)
            kind = (info >> 24) & 0x1F
            if kind == KIND_STRUCT and name_off:
                structs.setdefault(name_off, []).append(len(positions))
            elif kind in (KIND_ENUM, KIND_ENUM64) and name_off:
                enums.setdefault(name_off, []).append(len(positions))
            positions.append(pos)
            if kind in _PER_MEMBER_EXTRA:
                pos += 12 + _PER_MEMBER_EXTRA[kind] * (info & 0xFFFF)
            elif kind in _FIXED_EXTRA:
                pos += 12 + _FIXED_EXTRA[kind]
            elif kind in _MODIFIERS or kind in (KIND_PTR, KIND_FWD, KIND_FUNC, KIND_FLOAT):
                pos += 12
            else:
                raise BTFError(f"unknown BTF kind {kind} at type id {len(positions) - 1}")
        self._structs = structs
        self._enums = enums

    def _string(self, offset: int) -> str:
        start = self._str_start + offset
        end = self._blob.index(b"\0", start, self._str_end)
        return self._blob[start:end].decode("ascii", "replace")

    def type(self, type_id: int) -> BTFType:
        if not 0 < type_id < len(self._positions):
            raise BTFError(f"type id {type_id} out of range")
        pos = self._positions[type_id]
        name_off, info, size_or_type = _RECORD.unpack_from(self._blob, pos)
        return BTFType(
            (info >> 24) & 0x1F,
            self._string(name_off) if name_off else "",
            size_or_type,
            info & 0xFFFF,
            bool(info >> 31),
            pos + 12,
        )

    def members(self, type_id: int) -> list[Member]:
        t = self.type(type_id)
        assert t.kind in (KIND_STRUCT, KIND_UNION)
        out = []
        for i in range(t.vlen):
            name_off, mtype, offset = _RECORD.unpack_from(self._blob, t.data_offset + 12 * i)
            bit_offset = offset & 0xFFFFFF if t.kind_flag else offset
            out.append(Member(self._string(name_off) if name_off else "", mtype, bit_offset))
        return out

    def resolve(self, type_id: int) -> int:
        """Follow typedefs and qualifiers to the underlying type."""
        while type_id and (t := self.type(type_id)).kind in _MODIFIERS:
            type_id = t.size_or_type
        return type_id

    def _name_offset(self, name: str) -> int | None:
        needle = b"\0" + name.encode() + b"\0"  # BTF strings are unique: one exact match
        at = self._blob.find(needle, self._str_start, self._str_end)
        return None if at < 0 else at + 1 - self._str_start

    def struct_id(self, name: str) -> int:
        """Id of the complete struct called ``name`` (forward declarations are not structs)."""
        for type_id in self._structs.get(self._name_offset(name) or -1, []):
            if self.type(type_id).vlen > 0:
                return type_id
        raise BTFError(f"struct {name} not found in BTF")

    def enum_value(self, enum_name: str, member: str) -> int:
        """The value of ``member`` in ``enum enum_name`` (enum or enum64)."""
        for type_id in self._enums.get(self._name_offset(enum_name) or -1, []):
            t = self.type(type_id)
            stride = _PER_MEMBER_EXTRA[t.kind]
            for i in range(t.vlen):
                at = t.data_offset + stride * i
                name_off, low = struct.unpack_from("<Ii", self._blob, at)
                if self._string(name_off) != member:
                    continue
                if t.kind == KIND_ENUM64:
                    low, high = struct.unpack_from("<II", self._blob, at + 4)
                    return high << 32 | low
                return low
            raise BTFError(f"enum {enum_name} has no member {member}")
        raise BTFError(f"enum {enum_name} not found in BTF")

    def member_offset(self, struct_name: str, member: str) -> int:
        """Byte offset of ``member`` in ``struct struct_name``, looking into anonymous members."""
        bit_offset, _ = self._member(struct_name, member)
        if bit_offset % 8:
            raise BTFError(f"{struct_name}.{member} is a bitfield")
        return bit_offset // 8

    def member_type(self, struct_name: str, member: str) -> BTFType:
        return self.type(self.resolve(self._member(struct_name, member)[1]))

    def array_length(self, t: BTFType) -> int:
        if t.kind != KIND_ARRAY:
            raise BTFError(f"type {t.name or '(anonymous)'} is not an array")
        _elem, _index, nelems = _RECORD.unpack_from(self._blob, t.data_offset)
        return nelems

    def element_size(self, t: BTFType) -> int:
        """Bytes of one element of array type ``t`` (0 if not a sized type)."""
        self.array_length(t)  # raises if not an array
        element, _index, _nelems = _RECORD.unpack_from(self._blob, t.data_offset)
        resolved = self.type(self.resolve(element))
        sized = (KIND_INT, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64, KIND_FLOAT)
        return resolved.size_or_type if resolved.kind in sized else 0

    def _member(self, struct_name: str, member: str) -> tuple[int, int]:
        found = self._find_member(self.struct_id(struct_name), member, 0)
        if found is None:
            raise BTFError(f"struct {struct_name} has no member {member}")
        return found

    def _find_member(self, type_id: int, member: str, base: int) -> tuple[int, int] | None:
        for m in self.members(type_id):
            if m.name == member:
                return base + m.bit_offset, m.type_id
            if not m.name:  # anonymous struct or union: its members belong to the parent
                inner = self.resolve(m.type_id)
                if self.type(inner).kind in (KIND_STRUCT, KIND_UNION):
                    found = self._find_member(inner, member, base + m.bit_offset)
                    if found is not None:
                        return found
        return None


# The offsets the probe reads, as (define name, struct, member). The C file has a fallback
# for each (offsetof() through the installed headers) when BTF is not available.
PROBE_OFFSETS: tuple[tuple[str, str, str], ...] = (
    ("TASK_PID_OFF", "task_struct", "pid"),
    ("TASK_TGID_OFF", "task_struct", "tgid"),
    ("TASK_REAL_PARENT_OFF", "task_struct", "real_parent"),
    ("TASK_GROUP_LEADER_OFF", "task_struct", "group_leader"),
    ("TASK_START_TIME_OFF", "task_struct", "start_time"),
    ("TASK_COMM_OFF", "task_struct", "comm"),
    ("TASK_SIGNAL_OFF", "task_struct", "signal"),
    ("SIGNAL_LIVE_OFF", "signal_struct", "live"),
)

# The offsets of the path from a task to its cgroup v2 id (task->cgroups->dfl_cgrp->kn->id),
# read only when the probe reads the current task by typed loads (bpf_loader decides).
TYPED_READ_OFFSETS: tuple[tuple[str, str, str], ...] = (
    ("TASK_CGROUPS_OFF", "task_struct", "cgroups"),
    ("CSS_SET_DFL_CGRP_OFF", "css_set", "dfl_cgrp"),
    ("CGROUP_KN_OFF", "cgroup", "kn"),
    ("KERNFS_NODE_ID_OFF", "kernfs_node", "id"),
)


def probe_offsets(btf: BTF) -> dict[str, int]:
    """The ``-D`` defines for the probe, read from ``btf``; raises BTFError if one is missing."""
    offsets = {define: btf.member_offset(s, m) for define, s, m in PROBE_OFFSETS}
    length, expected = btf.array_length(btf.member_type("task_struct", "comm")), comm_len()
    if length != expected:
        raise BTFError(f"task_struct.comm is {length} bytes, procmond expects {expected}")
    return offsets


# Where the count a cgroup's pids.events shows sits, by the enum pidcg_event member the kernel
# shows there (since 6.13, kernel/cgroup/pids.c): PIDCG_FORKFAIL (forks refused to this
# cgroup's tasks) on v1 and on v2 mounted with pids_localevents, else PIDCG_MAX (forks refused
# because this cgroup's own limit was hit, as pids.events.local shows it).
PIDS_FORKFAIL = "PIDCG_FORKFAIL"
PIDS_MAX = "PIDCG_MAX"
POINTER_SIZE = 8
COUNT_SIZE = 8  # atomic64_t


def pids_offsets(btf: BTF, shown: str) -> dict[str, int]:
    """The ``-D`` defines with which the probe reads a removed cgroup's refused forks
    (on_cgroup_rmdir): the pids state's place in struct cgroup, the ``shown`` count's place in
    it (events_local[shown] since 6.13; before, the one count events_limit), and the cgroup's
    id. Raises BTFError if the kernel has no pids controller or another layout."""
    pids_id = btf.enum_value("cgroup_subsys_id", "pids_cgrp_id")
    if pids_id >= btf.array_length(btf.member_type("cgroup", "subsys")):
        raise BTFError(f"pids_cgrp_id {pids_id} is past the end of cgroup.subsys")
    css = btf.member_offset("pids_cgroup", "css")
    try:
        events = btf.member_offset("pids_cgroup", "events_local")
        counts = btf.member_type("pids_cgroup", "events_local")
        index = btf.enum_value("pidcg_event", shown)
        if index >= btf.array_length(counts) or btf.element_size(counts) != COUNT_SIZE:
            raise BTFError(f"pids_cgroup.events_local has no 8-byte count {shown}")
        count = events + COUNT_SIZE * index
    except BTFError:
        count = btf.member_offset("pids_cgroup", "events_limit")  # before 6.13
    return {
        "CGROUP_PIDS_CSS_OFF": btf.member_offset("cgroup", "subsys") + POINTER_SIZE * pids_id,
        "PIDS_EVENTS_OFF": count - css,
        "CGROUP_KN_OFF": btf.member_offset("cgroup", "kn"),
        "KERNFS_NODE_ID_OFF": btf.member_offset("kernfs_node", "id"),
    }


def typed_read_offsets(btf: BTF) -> dict[str, int]:
    """The ``-D`` defines the typed reads need besides probe_offsets(); raises BTFError."""
    return {define: btf.member_offset(s, m) for define, s, m in TYPED_READ_OFFSETS}
