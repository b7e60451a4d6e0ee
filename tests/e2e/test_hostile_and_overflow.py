"""Names chosen by an attacker, and more names than the maps hold: counts stay exact and the
exposition stays valid."""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path

import pytest

from procmond.tools.watch import printable
from tests.e2e.harness import (
    Daemon,
    Watch,
    created_on_host,
    own_comm,
    run_creator,
    start_daemon,
    unique_name,
)

HOSTILE = [
    b'q"uote',
    b"back\\slash",
    b"new\nline",
    b"{br}aces",
    b"bad\xff\xfeutf8",
    b"\x01\x1b[31m\x7f",
    b'o}",le="1',
]


def hostile_names() -> list[bytes]:
    """Each payload behind a random prefix (so nothing else shares it), cut to 15 bytes."""
    return [(secrets.token_hex(2).encode() + payload)[:15] for payload in HOSTILE] + [
        b"A" * 11 + secrets.token_hex(2).encode()
    ]  # exactly 15 bytes


def test_hostile_names_are_counted_under_their_decoded_name(daemon: Daemon, creator: Path) -> None:
    names = hostile_names()
    run_creator(creator, "fork", 7, names, "--exit-name-hex", unique_name().hex())
    m = daemon.scrape()  # parsed by prometheus_client's parser: it would raise on bad syntax
    for name in names:
        comm = name.decode("utf-8", "replace")
        assert m.value("procmond_forks_total", comm=comm, parent_comm=own_comm()) == 7, name
        assert m.value("procmond_exits_total", comm=comm) == 7, name
    assert len(names[-1]) == 15


def test_promtool_accepts_the_whole_exposition(daemon: Daemon, creator: Path) -> None:
    run_creator(creator, "fork", 3, hostile_names())
    text = daemon.scrape().text
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


@pytest.fixture
def small_daemon(tmp_path: Path):
    d = start_daemon(tmp_path, "max_entries: 4\nhistogram_max_entries: 3\nlabels: [comm]\n")
    yield d
    assert d.stop() == 0, d.log()


def test_full_maps_count_under_overflow_and_totals_stay_exact(
    small_daemon: Daemon, creator: Path
) -> None:
    names = [unique_name("ov") for _ in range(12)]
    per_name = 5
    # One creator renames itself to each name in turn; it waits until the baseline scrape.
    proc = subprocess.Popen(
        [str(creator), "fork", str(per_name), "--wait", *(n.hex() for n in names)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline() == "ready\n"
    created_before = created_on_host()  # around the scrapes: their map reads are inside
    before = small_daemon.scrape()
    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert proc.stdout.readline() == f"done {per_name * len(names)}\n"
    created = per_name * len(names)
    after = small_daemon.scrape()
    others = created_on_host() - created_before - created  # the host's own, meanwhile
    proc.stdin.close()
    proc.wait(timeout=10)

    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    forks = "procmond_forks_total"
    # every fork made between the two scrapes is in some series; with 4 entries, whatever
    # else the host creates meanwhile (bounded by /proc/stat) is likely to overflow too
    assert others >= 0
    assert created <= after.total(forks) - before.total(forks) <= created + others
    present = [n for n in names if after.get(forks, comm=n.decode()) is not None]
    assert all(after.value(forks, comm=n.decode()) == per_name for n in present)
    overflowed = per_name * (len(names) - len(present))
    assert overflowed >= per_name * (len(names) - 4)
    assert overflowed <= delta(forks, comm="__overflow__") <= overflowed + others
    events = delta("procmond_map_overflow_events_total", map="forks_total")
    assert events == delta(forks, comm="__overflow__")
    assert after.value("procmond_map_entries", map="forks_total") == 4
    # exits of the children overflow the same way: histograms stay within their 3 entries
    lifetimes = after.series("procmond_process_lifetime_seconds_count")
    assert len(lifetimes) <= 3 + 1
    exits = after.total("procmond_exits_total") - before.total("procmond_exits_total")
    life = after.total("procmond_process_lifetime_seconds_count") - before.total(
        "procmond_process_lifetime_seconds_count"
    )
    assert created <= exits == life <= created + others


def every_byte_names() -> list[bytes]:
    """Bytes 0x01-0xff spread over 15-byte names, each behind its own 2-byte prefix.

    The prefixes must differ: names made only of invalid UTF-8 decode alike and are
    (rightly) counted as one label value, so a shared prefix would merge two names.
    """
    payload = bytes(range(1, 256))
    chunks = [payload[i : i + 13] for i in range(0, len(payload), 13)]
    prefixes = secrets.SystemRandom().sample(range(256), len(chunks))
    return [f"{p:02x}".encode() + chunk for p, chunk in zip(prefixes, chunks, strict=True)]


def test_every_byte_value_in_names(daemon: Daemon, creator: Path) -> None:
    names = every_byte_names()
    watchers = {"text": Watch(), "json": Watch("--json")}
    run_creator(creator, "fork", 2, names, "--exit-name-hex", unique_name().hex())
    decoded = [n.decode("utf-8", "replace") for n in names]
    escaped = [printable(n) for n in names]

    def json_counts(lines: list[str]) -> list[int]:
        comms = [json.loads(line)["comm"] for line in lines]
        return [comms.count(comm) for comm in decoded]

    def text_counts(lines: list[str]) -> list[int]:
        return [sum(ln.startswith(f"Process {comm} (PID:") for ln in lines) for comm in escaped]

    watchers["json"].wait_for("2 events a name", lambda lines: min(json_counts(lines)) >= 2)
    watchers["text"].wait_for("2 lines a name", lambda lines: min(text_counts(lines)) >= 2)
    for w in watchers.values():
        err, code = w.stop()
        assert code == 0, err
    text = daemon.scrape().text  # prometheus_client's parser accepted it
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    m = daemon.scrape()
    for comm in decoded:
        assert m.value("procmond_forks_total", comm=comm, parent_comm=own_comm()) == 2, comm
    # watch: every event is one line, hostile bytes escaped or JSON-encoded
    assert json_counts(watchers["json"].lines()) == [2] * len(names)
    raw = watchers["text"].raw
    assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in raw)
    lines = [line.decode("utf-8").rstrip("\n") for line in raw]  # strict: valid UTF-8
    assert all(line.startswith("Process ") and " called " in line for line in lines)
    assert all(line.isprintable() for line in lines)
    assert text_counts(lines) == [2] * len(names)
