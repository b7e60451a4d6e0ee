"""`procmond watch` against a running daemon reads the daemon's pinned probe
(procmond/kernel/watch_stream.py): it compiles and loads nothing, prints each creation once, several
watches at once each see all of them, and the stream is off again once no watch reads it,
also when the watch was killed. Each test pins in a bpffs of its own (tests/e2e/test_pins.py)."""

from __future__ import annotations

import json
import mmap
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from procmond.config import parse_config
from procmond.kernel import handoff, pins, watch_stream
from procmond.kernel.bpfmap import BPFMap, libbpf
from tests.e2e import test_pins
from tests.e2e.bpf_objects import held_by
from tests.e2e.harness import PROCMOND, Daemon, Watch, run_creator, unique_name, wait_until

pin_root = test_pins.pin_root  # the fixture: a private bpffs
CREATIONS = 40


def start(tmp: Path, root: Path) -> tuple[Daemon, Path]:
    """A daemon pinning under ``root``, and its config file."""
    return test_pins.start(tmp, root, "daemon"), tmp / "daemon" / "procmond.yaml"


@contextmanager
def pinned_map(root: Path, name: str) -> Iterator[BPFMap]:
    [folder] = [p for p in root.iterdir() if p.is_dir()]
    bpf_map = BPFMap(libbpf("bpf_obj_get", os.fsencode(folder / f"map_{name}")))
    try:
        yield bpf_map
    finally:
        bpf_map.close()


def stream_switch(root: Path) -> int:
    """watch_leases[WATCH_SLOT_ANY]: when the stream goes off (CLOCK_MONOTONIC ns), 0 if off."""
    with pinned_map(root, watch_stream.LEASES_MAP) as leases:
        raw = leases.lookup((0).to_bytes(4, "little")) or bytes(8)
    return int.from_bytes(raw, "little")


def written(root: Path) -> list[int]:
    """Each reader ring's producer position (its second page): bytes the probe wrote to it."""
    positions = []
    for ring in watch_stream.ring_maps():
        with pinned_map(root, ring) as bpf_map:
            page = mmap.mmap(bpf_map.fd, mmap.PAGESIZE, prot=mmap.PROT_READ, offset=mmap.PAGESIZE)
            positions.append(int.from_bytes(page[:8], "little"))
            page.close()
    return positions


def no_bcc(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on, an import of bcc in a child fails: nothing may compile."""
    poison = tmp / "poison"
    poison.mkdir()
    (poison / "bcc.py").write_text("raise ImportError('no BCC in this test')\n")
    monkeypatch.setenv("PYTHONPATH", str(poison))


def test_watches_read_the_running_daemons_probe_and_load_nothing(
    tmp_path: Path, pin_root: Path, creator: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon, config = start(tmp_path, pin_root)
    try:
        no_bcc(tmp_path, monkeypatch)
        name = unique_name("wpin")
        started = time.monotonic()
        text = Watch("--comm", name.decode(), "--config", str(config))
        took = time.monotonic() - started
        as_json = Watch("--json", "--comm", name.decode(), "--config", str(config))
        theirs = held_by(daemon.process.pid)
        for watch in (text, as_json):
            maps, programs = held_by(watch.process.pid)
            assert programs <= theirs[1] and maps <= theirs[0], "watch loaded a probe of its own"
        load = subprocess.Popen(
            [str(creator), "fork", str(CREATIONS), name.hex()], stdout=subprocess.PIPE
        )
        assert load.wait(timeout=30) == 0
        lines, err, code = text.finish(CREATIONS)
        events, json_err, json_code = as_json.finish(CREATIONS)
    finally:
        assert daemon.stop() == 0
    assert code == 0 and json_code == 0, err + json_err
    line = f"Process {name.decode()} (PID:{load.pid}, PPID: {os.getpid()}) called unknown"
    assert lines == [line] * CREATIONS, lines
    decoded = [json.loads(e) for e in events]
    assert [(e["kind"], e["pid"], e["syscall"]) for e in decoded] == [
        ("process", load.pid, "unknown")
    ] * CREATIONS
    assert len({e["child_pid"] for e in decoded}) == CREATIONS
    print(f"watch against a running daemon: {took:.2f} s to watching")


def test_the_stream_is_off_once_no_watch_reads_it_even_after_sigkill(
    tmp_path: Path, pin_root: Path, creator: Path
) -> None:
    daemon, config = start(tmp_path, pin_root)
    try:
        before = written(pin_root)
        run_creator(creator, "fork", CREATIONS, [unique_name("woff")])
        assert stream_switch(pin_root) == 0 and written(pin_root) == before, "on unwatched"

        first, second = Watch("--config", str(config)), Watch("--config", str(config))
        assert stream_switch(pin_root) > time.monotonic_ns()
        err, code = first.stop()
        assert code == 0, err
        assert stream_switch(pin_root) > time.monotonic_ns(), "off while a watch still reads"
        name = unique_name("wsec")
        run_creator(creator, "fork", 3, [name])
        second.wait_for(
            "the second watch's lines", lambda ls: sum(name.decode() in ln for ln in ls) == 3
        )
        err, code = second.stop()
        assert code == 0, err
        assert stream_switch(pin_root) == 0, "the last watch to stop left the stream on"

        killed = Watch("--config", str(config))
        killed.process.send_signal(signal.SIGKILL)
        killed.process.wait(timeout=10)
        lease_end = stream_switch(pin_root)
        assert lease_end > time.monotonic_ns(), "the killed watch's lease should still run"
        wait_until(lambda: time.monotonic_ns() > lease_end, 5, "the lease to run out")
        run_creator(creator, "fork", 1, [unique_name("wexp")])  # the probe switches it off
        assert stream_switch(pin_root) == 0, "a killed watch left the stream on"
        before = written(pin_root)
        run_creator(creator, "fork", CREATIONS, [unique_name("woff")])
        assert written(pin_root) == before, "the probe still writes events no one reads"
    finally:
        assert daemon.stop() == 0


def reader_lease(root: Path, reader: int) -> int:
    with pinned_map(root, watch_stream.LEASES_MAP) as leases:
        slot = 2 + reader  # WATCH_SLOT_READER + reader
        return int.from_bytes(leases.lookup(slot.to_bytes(4, "little")) or bytes(8), "little")


def test_a_stalled_watch_says_it_missed_events_and_gives_way(
    tmp_path: Path, pin_root: Path, creator: Path
) -> None:
    """A watch that does not read for a whole lease (stopped here; a blocked pipe alike) says
    so when it reads again; if another watch took its slot meanwhile, it stops with an error
    rather than read that watch's events."""
    daemon, config = start(tmp_path, pin_root)
    try:
        stalled = Watch("--config", str(config))

        def stall() -> int:
            lease_end = reader_lease(pin_root, 0)
            stalled.process.send_signal(signal.SIGSTOP)
            wait_until(lambda: time.monotonic_ns() > lease_end, 5, "the lease to run out")
            return lease_end

        lease_end = stall()
        stalled.process.send_signal(signal.SIGCONT)
        wait_until(lambda: reader_lease(pin_root, 0) > lease_end, 5, "a renewed lease")
        stall()
        other = Watch("--config", str(config))  # takes the stalled watch's slot
        assert reader_lease(pin_root, 0) > time.monotonic_ns()
        stalled.process.send_signal(signal.SIGCONT)
        assert stalled.process.wait(timeout=10) != 0
        _, err = stalled.process.communicate()
        assert b"not read for over a second" in err, err
        assert b"another watch took its place" in err, err
        name = unique_name("wtk")
        run_creator(creator, "fork", 2, [name])
        _lines, err_text, code = other.finish(2, lambda line: name.decode() in line)
        assert code == 0, err_text
        assert stream_switch(pin_root) == 0
    finally:
        assert daemon.stop() == 0


def test_one_watch_more_than_the_probe_has_rings_for_is_told_so(
    tmp_path: Path, pin_root: Path
) -> None:
    daemon, config = start(tmp_path, pin_root)
    watches = []
    try:
        watches = [Watch("--config", str(config)) for _ in range(watch_stream.readers())]
        extra = subprocess.run(
            [*PROCMOND, "watch", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert extra.returncode != 0
        assert f"{watch_stream.readers()} watches already read this probe" in extra.stderr
        assert "Traceback" not in extra.stderr, extra.stderr
    finally:
        for watch in watches:
            watch.stop()
        assert daemon.stop() == 0
    assert stream_switch(pin_root) == 0


def test_mid_upgrade_top_and_watch_read_the_probe_on_duty(
    tmp_path: Path, pin_root: Path, creator: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upgrade pins its probe before it takes the duty over: meanwhile two probes are
    pinned and one counts. Here the one waiting sorts first; top and watch read the other."""
    daemon, config_path = start(tmp_path, pin_root)
    config = parse_config(config_path.read_text())
    try:
        waiting = handoff.load(config, pins.handover_flags(config))
        try:
            folder = pins.pin(waiting, pin_root, "0" * 16)
        finally:
            waiting.close()
        folders = sorted(p for p in pin_root.iterdir() if p.is_dir())
        assert len(folders) == 2 and folders[0] == folder
        duty = pins.duty_in_force(pin_root)
        assert pins.manifest(folder)["duty"] == duty + 1  # type: ignore[index]
        running = pins.running(config)
        assert running is not None
        try:
            assert running.manifest["duty"] == duty
        finally:
            running.close()
        no_bcc(tmp_path, monkeypatch)
        name = unique_name("duty")
        watch = Watch("--comm", name.decode(), "--config", str(config_path))
        run_creator(creator, "fork", CREATIONS, [name])
        lines, err, code = watch.finish(CREATIONS)
        load = subprocess.Popen(
            [str(creator), "fork", "100000", "--rate", "500", name.hex()],
            stdout=subprocess.PIPE,
        )
        try:
            top = subprocess.run(
                [*PROCMOND, "top", "--once", "-d", "0.5", "--config", str(config_path)],
                capture_output=True,
                text=True,
                timeout=30,
            )
        finally:
            load.kill()
            load.wait()
    finally:
        assert daemon.stop() == 0
    assert code == 0, err
    assert len(lines) == CREATIONS and all(name.decode() in line for line in lines), lines
    assert top.returncode == 0, top.stderr
    assert name.decode() in top.stdout, top.stdout
