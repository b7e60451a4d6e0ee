"""The probe outlives the daemon (procmond/pins.py): pinned in bpffs, adopted by the next
daemon, so a restart or a crash misses no creation and no counter starts over; `procmond
detach` leaves nothing loaded. Each test pins in a bpffs of its own (mounted in its tmp_path):
no daemon of another test or run on this host adopts its probe, nor it theirs."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from procmond import pins
from tests.e2e.bpf_objects import left_behind, snapshot
from tests.e2e.harness import PROCMOND, Daemon, procmond, start_daemon, unique_name

LOAD = 2400  # forks, at RATE a second: the restart falls in the middle
RATE = 800


@pytest.fixture
def pin_root(tmp_path: Path) -> Iterator[Path]:
    """A private bpffs; every pin in it removed and it unmounted, whatever the test did."""
    fs = tmp_path / "bpffs"
    fs.mkdir()
    subprocess.run(["mount", "-t", "bpf", "bpf", str(fs)], check=True)
    try:
        yield fs / "procmond"
    finally:
        pins.detach(fs / "procmond")
        subprocess.run(["umount", "-l", str(fs)], check=True)


def start(tmp: Path, root: Path, run: str) -> Daemon:
    folder = tmp / run
    folder.mkdir()
    return start_daemon(folder, f"pin_root: {root}\n")


def forks_of(daemon: Daemon, name: bytes) -> float:
    series = daemon.scrape().series("procmond_forks_total")
    return sum(v for labels, v in series.items() if dict(labels)["comm"] == name.decode())


def steady_load(creator: Path, name: bytes) -> subprocess.Popen:
    return subprocess.Popen(
        [str(creator), "fork", str(LOAD), "--rate", str(RATE), name.hex()],
        stdout=subprocess.PIPE,
        text=True,
    )


def restart_mid_load(tmp: Path, root: Path, creator: Path, sig: int) -> tuple[Daemon, float]:
    """A daemon stopped by ``sig`` and started again while a steady load runs; the new
    daemon, and how long it took from start to serving."""
    name = unique_name("pin")
    first = start(tmp, root, "first")
    load = steady_load(creator, name)
    try:
        time.sleep(LOAD / RATE / 3)
        before = forks_of(first, name)
        assert 0 < before < LOAD
        first.stop(sig)
        started = time.monotonic()
        second = start(tmp, root, "second")
        serving = time.monotonic() - started
        assert forks_of(second, name) >= before, "a counter went down across the restart"
        out, _ = load.communicate(timeout=60)
    finally:
        if load.poll() is None:
            load.kill()
    assert load.returncode == 0 and out.split()[-1] == str(LOAD), out
    assert forks_of(second, name) == LOAD, second.log()
    assert "adopted the probe pinned at" in second.log()
    return second, serving


def test_a_restart_mid_load_misses_nothing(tmp_path: Path, pin_root: Path, creator: Path) -> None:
    daemon, serving = restart_mid_load(tmp_path, pin_root, creator, signal.SIGTERM)
    assert daemon.stop() == 0
    print(f"start to serving when adopting: {serving:.2f} s")


def test_after_sigkill_the_next_daemon_adopts_the_probe(
    tmp_path: Path, pin_root: Path, creator: Path
) -> None:
    daemon, _ = restart_mid_load(tmp_path, pin_root, creator, signal.SIGKILL)
    assert daemon.stop() == 0


def test_stop_and_detach_leave_nothing_loaded(tmp_path: Path, pin_root: Path) -> None:
    before = snapshot()
    daemon = start(tmp_path, pin_root, "only")
    assert daemon.stop() == 0
    assert left_behind(before, timeout=0.5), "the stopped daemon's probe was not kept"
    config = tmp_path / "only" / "procmond.yaml"
    result = procmond("detach", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "unpinned 1 probe" in result.stdout
    assert not pin_root.exists()
    assert sorted(p.name for p in pin_root.parent.iterdir()) == ["maps.debug", "progs.debug"]
    assert left_behind(before) == set()


def test_another_config_replaces_the_pinned_probe(tmp_path: Path, pin_root: Path) -> None:
    """A probe of another identity is not adopted; once the new one counts, the old is gone."""
    before = snapshot()
    first = start(tmp_path, pin_root, "first")
    assert first.stop() == 0
    old = {p.name for p in pin_root.iterdir()}
    folder = tmp_path / "second"
    folder.mkdir()
    second = start_daemon(folder, f"pin_root: {pin_root}\nmax_entries: 2048\n")
    try:
        assert "adopted" not in second.log()
        new = {p.name for p in pin_root.iterdir()}
        assert len(new) == 1 and new != old
    finally:
        assert second.stop() == 0
    pins.detach(pin_root)
    assert left_behind(before) == set()


def test_top_reads_the_running_daemons_probe_without_bcc(
    tmp_path: Path, pin_root: Path, creator: Path
) -> None:
    """`procmond top` against a running daemon opens its pins: no compile, no BCC at all (an
    import of bcc fails here); without a daemon it would need BCC to load its own."""
    poison = tmp_path / "poison"
    poison.mkdir()
    (poison / "bcc.py").write_text("raise ImportError('no BCC in this test')\n")
    env = {**os.environ, "PYTHONPATH": str(poison)}
    daemon = start(tmp_path, pin_root, "daemon")
    config = tmp_path / "daemon" / "procmond.yaml"
    name = unique_name("tp")
    load = steady_load(creator, name)
    try:
        started = time.monotonic()
        top = subprocess.run(
            [*PROCMOND, "top", "--once", "-d", "0.5", "--config", str(config)],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
        took = time.monotonic() - started
    finally:
        load.kill()
        load.wait()
        assert daemon.stop() == 0
    assert top.returncode == 0, top.stderr
    assert name.decode() in top.stdout, top.stdout
    print(f"top --once -d 0.5 against a running daemon: {took:.2f} s")
    pins.detach(pin_root)
    alone = subprocess.run(
        [*PROCMOND, "top", "--once", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert alone.returncode != 0 and "bcc" in alone.stderr, alone.stderr
