from __future__ import annotations

import json

from procmond.watch import format_json, format_text, printable
from tests.unit.watch_events import event


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
