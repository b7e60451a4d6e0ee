from __future__ import annotations

import json
import time

from procmond.tools.watch import format_json, format_text, monotonic_to_wall_ns, printable, rfc3339
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


def test_json_time_is_wall_clock_rfc3339_utc_to_the_microsecond() -> None:
    e = event(b"make")
    offset = 1_796_193_386_894_123_456 - e.timestamp_ns  # → 2026-12-02T06:36:26.894123456 UTC
    obj = json.loads(format_json(e, offset))
    assert obj["time"] == "2026-12-02T06:36:26.894123Z"
    assert obj["timestamp_ns"] == e.timestamp_ns
    assert rfc3339(0) == "1970-01-01T00:00:00.000000Z"
    assert rfc3339(999_999_999) == "1970-01-01T00:00:00.999999Z"  # truncated, not rounded


def test_clock_offset_maps_monotonic_to_wall_clock() -> None:
    offset = monotonic_to_wall_ns()
    # read the two clocks independently: the same offset, but for the time between readings
    independent = time.time_ns() - time.monotonic_ns()
    assert abs(offset - independent) < 50_000_000
