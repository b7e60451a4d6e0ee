"""The BTF reader on a blob built here, byte by byte, from the documented format."""

from __future__ import annotations

import struct

import pytest

from procmond.kernel.btf import (
    BTF,
    KIND_ARRAY,
    KIND_CONST,
    KIND_ENUM,
    KIND_ENUM64,
    KIND_INT,
    KIND_PTR,
    KIND_STRUCT,
    KIND_TYPEDEF,
    KIND_UNION,
    PIDS_FORKFAIL,
    PIDS_MAX,
    BTFError,
    pids_offsets,
    probe_offsets,
)


class Builder:
    def __init__(self) -> None:
        self.strings = bytearray(b"\0")
        self.types = bytearray()
        self.count = 0

    def name(self, text: str) -> int:
        if not text:
            return 0
        offset = len(self.strings)
        self.strings += text.encode() + b"\0"
        return offset

    def add(
        self,
        kind: int,
        name: str,
        size_or_type: int,
        vlen: int = 0,
        kflag: bool = False,
        extra: bytes = b"",
    ) -> int:
        info = (kind << 24) | vlen | (int(kflag) << 31)
        self.types += struct.pack("<III", self.name(name), info, size_or_type) + extra
        self.count += 1
        return self.count

    def struct(
        self,
        name: str,
        members: list[tuple[str, int, int]],
        kind: int = KIND_STRUCT,
        kflag: bool = False,
    ) -> int:
        extra = b"".join(struct.pack("<III", self.name(n), t, off) for n, t, off in members)
        return self.add(kind, name, 8, len(members), kflag, extra)

    def blob(self) -> bytes:
        header = struct.pack(
            "<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(self.types), len(self.types), len(self.strings)
        )
        return header + bytes(self.types) + bytes(self.strings)


def task_struct_btf(comm_len: int = 16) -> bytes:
    b = Builder()
    int_t = b.add(KIND_INT, "int", 4, extra=struct.pack("<I", 32))
    char_t = b.add(KIND_INT, "char", 1, extra=struct.pack("<I", 8))
    pid_t = b.add(KIND_TYPEDEF, "pid_t", int_t)
    const_pid = b.add(KIND_CONST, "", pid_t)
    comm_t = b.add(KIND_ARRAY, "", 0, extra=struct.pack("<III", char_t, int_t, comm_len))
    ptr_t = b.add(KIND_PTR, "", 0)
    live = b.struct("atomic_t", [("counter", int_t, 0)])
    b.struct("signal_struct", [("flags", int_t, 0), ("live", live, 32)])
    # an anonymous union holding an anonymous struct, with a bitfield before it (kind_flag)
    inner = b.struct("", [("tgid", pid_t, 0), ("start_time", int_t, 64)])
    union = b.struct("", [("unused", int_t, 0), ("", inner, 0)], kind=KIND_UNION)
    b.struct(
        "task_struct",
        [
            ("flags", int_t, (3 << 24) | 0),
            ("pid", const_pid, 64),
            ("", union, 128),
            ("real_parent", ptr_t, 320),
            ("group_leader", ptr_t, 384),
            ("comm", comm_t, 448),
            ("signal", ptr_t, 576),
        ],
        kflag=True,
    )
    return b.blob()


def test_offsets_through_typedefs_and_anonymous_members() -> None:
    assert probe_offsets(BTF(task_struct_btf())) == {
        "TASK_PID_OFF": 8,
        "TASK_TGID_OFF": 16,
        "TASK_REAL_PARENT_OFF": 40,
        "TASK_GROUP_LEADER_OFF": 48,
        "TASK_START_TIME_OFF": 24,
        "TASK_COMM_OFF": 56,
        "TASK_SIGNAL_OFF": 72,
        "SIGNAL_LIVE_OFF": 4,
    }


def test_unexpected_comm_length_is_refused() -> None:
    with pytest.raises(BTFError, match="comm is 32 bytes"):
        probe_offsets(BTF(task_struct_btf(comm_len=32)))


def test_missing_member_and_struct() -> None:
    btf = BTF(task_struct_btf())
    with pytest.raises(BTFError, match="has no member nope"):
        btf.member_offset("task_struct", "nope")
    with pytest.raises(BTFError, match="struct mm_struct not found"):
        btf.struct_id("mm_struct")


def test_bitfield_member_is_refused() -> None:
    with pytest.raises(BTFError, match="bitfield"):
        b = Builder()
        int_t = b.add(KIND_INT, "int", 4, extra=struct.pack("<I", 32))
        b.struct("s", [("bits", int_t, (3 << 24) | 5)], kflag=True)
        BTF(b.blob()).member_offset("s", "bits")


@pytest.mark.parametrize("blob", [b"", b"\x9f\xeb" + b"\0" * 30, task_struct_btf()[:40]])
def test_malformed_blobs_raise_btf_error(blob: bytes) -> None:
    with pytest.raises(BTFError):
        BTF(blob)


def pids_btf(events_local: bool = True, enum64: bool = False) -> bytes:
    """struct cgroup (subsys[], kn), kernfs_node, pids_cgroup and the two enums: as 6.13+
    lays them out (events_local[]), or as before (one events_limit count)."""
    b = Builder()
    long_t = b.add(KIND_INT, "long", 8, extra=struct.pack("<I", 64))
    ptr_t = b.add(KIND_PTR, "", 0)
    atomic = b.struct("", [("counter", long_t, 0)])
    atomic64_t = b.add(KIND_TYPEDEF, "atomic64_t", atomic)
    subsys = b.add(KIND_ARRAY, "", 0, extra=struct.pack("<III", ptr_t, long_t, 14))
    counts = b.add(KIND_ARRAY, "", 0, extra=struct.pack("<III", atomic64_t, long_t, 2))

    def enum(name: str, members: list[tuple[str, int]]) -> None:
        if enum64:
            extra = b"".join(struct.pack("<III", b.name(n), v, 0) for n, v in members)
            b.add(KIND_ENUM64, name, 4, len(members), extra=extra)
        else:
            extra = b"".join(struct.pack("<Ii", b.name(n), v) for n, v in members)
            b.add(KIND_ENUM, name, 4, len(members), extra=extra)

    enum("cgroup_subsys_id", [("cpuset_cgrp_id", 0), ("pids_cgrp_id", 11)])
    enum("pidcg_event", [("PIDCG_MAX", 0), ("PIDCG_FORKFAIL", 1)])
    b.struct("kernfs_node", [("parent", ptr_t, 0), ("id", long_t, 768)])
    b.struct("cgroup", [("kn", ptr_t, 2048), ("subsys", subsys, 4416)])
    css = b.struct("cgroup_subsys_state", [("cgroup", ptr_t, 0)])
    last = ("events_local", counts, 2880) if events_local else ("events_limit", long_t, 2240)
    b.struct("pids_cgroup", [("css", css, 0), ("counter", atomic64_t, 1664), last])
    return b.blob()


@pytest.mark.parametrize("enum64", [False, True])
def test_pids_offsets_name_the_count_pids_events_shows(enum64: bool) -> None:
    btf = BTF(pids_btf(enum64=enum64))
    common = {
        "CGROUP_PIDS_CSS_OFF": 552 + 8 * 11,
        "CGROUP_KN_OFF": 256,
        "KERNFS_NODE_ID_OFF": 96,
    }
    assert pids_offsets(btf, PIDS_FORKFAIL) == {**common, "PIDS_EVENTS_OFF": 360 + 8}
    assert pids_offsets(btf, PIDS_MAX) == {**common, "PIDS_EVENTS_OFF": 360}


def test_pids_offsets_before_6_13_read_the_one_count() -> None:
    btf = BTF(pids_btf(events_local=False))
    assert pids_offsets(btf, PIDS_MAX)["PIDS_EVENTS_OFF"] == 280
    assert pids_offsets(btf, PIDS_FORKFAIL)["PIDS_EVENTS_OFF"] == 280


def test_pids_offsets_without_a_pids_controller_raise() -> None:
    with pytest.raises(BTFError, match="enum cgroup_subsys_id not found"):
        pids_offsets(BTF(task_struct_btf()), PIDS_FORKFAIL)


def test_enum_values_and_missing_members() -> None:
    btf = BTF(pids_btf())
    assert btf.enum_value("pidcg_event", "PIDCG_FORKFAIL") == 1
    with pytest.raises(BTFError, match="enum pidcg_event has no member PIDCG_NOPE"):
        btf.enum_value("pidcg_event", "PIDCG_NOPE")
