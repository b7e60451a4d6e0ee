"""The probe outlives the daemon (procmond/kernel/pins.py): pinned in bpffs, adopted by the next
daemon, so a restart or a crash misses no creation and no counter starts over; `procmond
detach` leaves nothing loaded. Each test pins in a bpffs of its own (mounted in its tmp_path):
no daemon of another test or run on this host adopts its probe, nor it theirs."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from procmond.kernel import pins
from procmond.kernel.header import bpf_source_dir
from tests.e2e.bpf_objects import held_by, snapshot
from tests.e2e.cgroup_tree import CgroupTree
from tests.e2e.harness import PROCMOND, Daemon, procmond, start_daemon, unique_name
from tests.e2e.prom_harness import start_prometheus

LOAD = 2400  # forks, at RATE a second: the restart falls in the middle
RATE = 800
COUNTERS = (
    "procmond_forks_total",
    "procmond_threads_created_total",
    "procmond_execs_total",
    "procmond_exits_total",
    "procmond_cgroup_entries_reclaimed_total",
)


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
    return start_daemon(folder, f"pin_root: {root}\nstate_dir: {tmp / 'state'}\n")


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


def still_loaded(objects: tuple[set[int], set[int]], timeout: float = 10) -> set[int]:
    """Of these maps and programs, those still loaded after ``timeout`` (freeing waits for
    RCU). Only the test's own objects: other processes on the host load and free theirs."""
    deadline = time.monotonic() + timeout
    while True:
        maps, progs = snapshot()
        alive = (objects[0] & maps) | (objects[1] & progs)
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def test_stop_and_detach_leave_nothing_loaded(tmp_path: Path, pin_root: Path) -> None:
    daemon = start(tmp_path, pin_root, "only")
    mine = held_by(daemon.process.pid)
    assert daemon.stop() == 0
    assert still_loaded(mine, timeout=0) == mine[0] | mine[1], "the probe was not kept"
    config = tmp_path / "only" / "procmond.yaml"
    result = procmond("detach", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "unpinned 1 probe" in result.stdout
    assert not pin_root.exists()
    assert sorted(p.name for p in pin_root.parent.iterdir()) == ["maps.debug", "progs.debug"]
    assert still_loaded(mine) == set()


def test_ctrl_c_at_the_terminal_leaves_nothing_pinned_or_loaded(
    tmp_path: Path, pin_root: Path
) -> None:
    """A service is stopped with SIGTERM and keeps its probe for the next start; a daemon run
    by hand and stopped with Ctrl-C (SIGINT) stops for good, as it always did."""
    daemon = start(tmp_path, pin_root, "only")
    mine = held_by(daemon.process.pid)
    assert pin_root.is_dir()
    assert daemon.stop(signal.SIGINT) == 0
    assert not pin_root.exists(), sorted(p.name for p in pin_root.iterdir())
    assert sorted(p.name for p in pin_root.parent.iterdir()) == ["maps.debug", "progs.debug"]
    assert list((tmp_path / "state").glob("state-*.json")) == []
    assert still_loaded(mine) == set()
    assert "stopped: probes detached" in daemon.log()


def test_another_config_replaces_the_pinned_probe(tmp_path: Path, pin_root: Path) -> None:
    """A probe of another identity is not adopted; once the new one counts, the old is gone."""
    first = start(tmp_path, pin_root, "first")
    old_objects = held_by(first.process.pid)
    assert first.stop() == 0
    old = {p.name for p in pin_root.iterdir() if p.is_dir()}
    folder = tmp_path / "second"
    folder.mkdir()
    second = start_daemon(folder, f"pin_root: {pin_root}\nmax_entries: 2048\n")
    try:
        assert "adopted" not in second.log()
        new = {p.name for p in pin_root.iterdir() if p.is_dir()}
        assert len(new) == 1 and new != old
        assert still_loaded(old_objects) == set()
        new_objects = held_by(second.process.pid)
    finally:
        assert second.stop() == 0
    pins.detach(pin_root)
    assert still_loaded(new_objects) == set()


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


@pytest.mark.parametrize("upgrade", [False, True], ids=["restart", "upgrade"])
def test_folded_counts_of_gone_cgroups_survive_a_restart(
    tmp_path: Path, pin_root: Path, tree: CgroupTree, creator: Path, upgrade: bool
) -> None:
    """A removed unit's entry is given back to the kernel map and its count kept in the
    daemon (procmond/scrape/attribution.py): the next daemon, of this build or of another layout,
    shows it still (procmond/lifecycle/state.py)."""
    first = start(tmp_path, pin_root, "first")
    name = unique_name("gone")
    unit = f"pin-{secrets.token_hex(3)}.service"
    cgroup = tree.make(f"/test.slice/{unit}")
    p = tree.start(cgroup, str(creator), "fork", "5", name.hex())
    p.communicate(timeout=60)
    assert p.returncode == 0
    tree.made.remove(cgroup)
    cgroup.rmdir()
    first.scrape()  # sees the unit gone; a scrape a second later gives its entry back
    time.sleep(1.05)
    reclaimed = first.scrape().value("procmond_cgroup_entries_reclaimed_total")
    assert reclaimed >= 1
    assert units_of(first, name) == {unit: 5}
    assert first.stop() == 0
    if upgrade:
        build = another_build(tmp_path)
        folder = tmp_path / "second"
        folder.mkdir()
        config = f"pin_root: {pin_root}\nstate_dir: {tmp_path / 'state'}\n"
        second = start_daemon(folder, config, env={"PYTHONPATH": str(build)}, cwd=build)
    else:
        second = start(tmp_path, pin_root, "second")
    try:
        assert units_of(second, name) == {unit: 5}, second.log()
        assert second.scrape().value("procmond_cgroup_entries_reclaimed_total") >= reclaimed
    finally:
        assert second.stop() == 0


def units_of(daemon: Daemon, name: bytes) -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, value in daemon.scrape().series("procmond_forks_total").items():
        d = dict(labels)
        if d["comm"] == name.decode():
            out[d["unit"]] = out.get(d["unit"], 0) + value
    return out


def test_prometheus_sees_no_counter_reset_across_a_restart(
    tmp_path: Path, pin_root: Path, creator: Path
) -> None:
    """resets() of every procmond counter is 0 across a restart in the middle of a load:
    dashboards and alerts need no special case for it."""
    first = start(tmp_path, pin_root, "first")
    prometheus = start_prometheus(tmp_path, [f"127.0.0.1:{first.port}"], [])
    name = unique_name("pr")
    series = f'procmond_forks_total{{comm="{name.decode()}"}}'
    load: subprocess.Popen | None = None
    try:
        prometheus.wait_until("a scrape", lambda: prometheus.query('up{job="procmond"} == 1'), 30)
        load = steady_load(creator, name)
        prometheus.wait_until("a scrape of the load", lambda: prometheus.query(series), 10)
        first.stop()
        folder = tmp_path / "second"
        folder.mkdir()
        config = f"pin_root: {pin_root}\nstate_dir: {tmp_path / 'state'}\n"
        second = start_daemon(folder, config, port=first.port)
        try:
            load.communicate(timeout=60)
            done = time.time()
            prometheus.wait_until(
                "the whole load scraped by the second daemon",
                lambda: prometheus.query(f"{series} == {LOAD} and timestamp({series}) > {done}"),
                30,
            )
            resets = {
                metric: prometheus.query(f"sum(resets({metric}[5m]))")[0]["value"][1]
                for metric in COUNTERS
            }
        finally:
            assert second.stop() == 0
    finally:
        if load is not None and load.poll() is None:
            load.kill()
        prometheus.stop()
    assert resets == dict.fromkeys(COUNTERS, "0"), resets


def another_build(tmp: Path) -> Path:
    """This tree's procmond with a header whose forks key lays comm and parent_comm out the
    other way round: a build whose map layout differs (the import root for PYTHONPATH)."""
    build = tmp / "build"
    package = Path(pins.__file__).parents[1]  # procmond/kernel/pins.py
    shutil.copytree(package, build / "procmond", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(bpf_source_dir(), build / "procmond" / "bpf")
    header = build / "procmond" / "bpf" / "procmond.h"
    text = header.read_text()
    swapped = "char parent_comm[COMM_LEN];\n    char comm[COMM_LEN];"
    text = text.replace("char comm[COMM_LEN];\n    char parent_comm[COMM_LEN];", swapped)
    assert swapped in text
    header.write_text(text)
    return build


def test_an_upgrade_to_another_layout_carries_every_count(
    tmp_path: Path, pin_root: Path, creator: Path
) -> None:
    """The new build loads its own probe, takes the duty over from the old one in one write,
    retires it and carries its counts on: mid-load, nothing is lost or counted twice."""
    build = another_build(tmp_path)
    name = unique_name("up")
    first = start(tmp_path, pin_root, "first")
    load = steady_load(creator, name)
    try:
        time.sleep(LOAD / RATE / 3)
        before = forks_of(first, name)
        assert 0 < before < LOAD
        assert first.stop() == 0
        folder = tmp_path / "second"
        folder.mkdir()
        second = start_daemon(
            folder,
            f"pin_root: {pin_root}\nstate_dir: {tmp_path / 'state'}\n",
            env={"PYTHONPATH": str(build)},
            cwd=build,
        )
        try:
            assert forks_of(second, name) >= before, second.log()
            out, _ = load.communicate(timeout=60)
            assert out.split()[-1] == str(LOAD)
            assert forks_of(second, name) == LOAD, second.log()
            assert "retired the probe pinned at" in second.log()
            # The children's exits and lifetimes, and the creator's own (it exited).
            m = second.scrape()
            comm = name.decode()
            assert m.value("procmond_process_lifetime_seconds_count", comm=comm) == LOAD + 1
            exits = m.series("procmond_exits_total")
            assert sum(v for k, v in exits.items() if dict(k)["comm"] == comm) == LOAD + 1
        finally:
            assert second.stop() == 0
    finally:
        if load.poll() is None:
            load.kill()
    assert len([p for p in pin_root.iterdir() if p.is_dir()]) == 1  # the old one is gone


def test_the_half_pinned_folder_of_a_dead_daemon_is_removed(tmp_path: Path, pin_root: Path) -> None:
    """A daemon killed while pinning leaves a pinning_* folder: the next start removes it
    (one of a running daemon's pid would be left alone)."""
    pin_root.mkdir()
    process = subprocess.Popen(["true"])
    process.wait()
    leftover = pin_root / f"pinning_0123456789abcdef_{process.pid}"
    leftover.mkdir()
    daemon = start(tmp_path, pin_root, "only")
    try:
        assert not leftover.exists()
        assert len([p for p in pin_root.iterdir() if p.is_dir()]) == 1
    finally:
        assert daemon.stop() == 0
