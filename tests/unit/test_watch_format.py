from __future__ import annotations

import json
from types import SimpleNamespace

from procmond.watch import format_json, format_text, printable


def event(comm: bytes, syscall: int = 1, thread: int = 0) -> SimpleNamespace:
    return SimpleNamespace(
        timestamp_ns=5,
        comm=comm,
        parent_comm=b"bash",
        pid=10,
        ppid=1,
        child_pid=11,
        child_tid=11,
        syscall=syscall,
        is_thread=thread,
        kind=0,
        cgroup_id=0,
    )


def test_prototype_format() -> None:
    assert format_text(event(b"make")) == "Process make (PID:10, PPID: 1) called sys_clone"
    assert format_text(event(b"x", syscall=4)).endswith("called sys_vfork")
    assert format_text(event(b"kworker", syscall=0)).endswith("called kernel_clone")


def test_hostile_names_stay_on_one_line() -> None:
    for comm in (b"a\nb", b"a\rb", b"\x1b[2J", b"\\x0a", b"\xff\xfe"):
        line = format_text(event(comm))
        assert "\n" not in line and "\r" not in line and "\x1b" not in line
        obj = json.loads(format_json(event(comm)))
        assert "\n" not in format_json(event(comm))
        assert obj["comm"] == comm.decode("utf-8", "replace")
    assert printable(b"a\nb") == "a\\x0ab"
    assert printable(b"\\x0a") == "\\\\x0a"  # an escaped-looking name cannot fake an escape


def test_every_byte_value() -> None:
    for byte in range(1, 256):
        line = format_text(event(bytes([byte])))
        assert line.isprintable(), byte
        json.loads(format_json(event(bytes([byte]))))
