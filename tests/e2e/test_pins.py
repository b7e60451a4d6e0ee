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
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from procmond.kernel import pins
from procmond.kernel.bpfmap import BPFMap, libbpf
from procmond.kernel.header import bpf_source_dir, map_ids, read_header
from procmond.kernel.maps import read_percpu_counts
from procmond.scrape.tasklimits import PidsHierarchy
from tests.e2e import test_cgroups_tasklimits as task_limit_tests
from tests.e2e.bpf_objects import held_by, snapshot
from tests.e2e.cgroup_tree import CgroupTree
from tests.e2e.harness import PROCMOND, Daemon, procmond, run_creator, start_daemon, unique_name
from tests.e2e.prom_harness import start_prometheus

pids = task_limit_tests.pids  # the fixture: the host's pids hierarchy
limited, fork_past_limit = task_limit_tests.limited, task_limit_tests.fork_past_limit
kernel_count, hits_of = task_limit_tests.kernel_count, task_limit_tests.hits_of

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


def replaced_mid_load(
    tmp: Path,
    root: Path,
    creator: Path,
    name: bytes,
    stop: Callable[[Daemon], object],
    start_next: Callable[[], Daemon],
    adopts: bool,
) -> tuple[Daemon, float]:
    """A daemon of this tree stopped by ``stop`` a third of the way into a steady load and the
    next one started by ``start_next``: no count went down, and every fork of the load was
    counted, once. The next daemon, running, and how long it took from start to serving; it
    adopted the pinned probe if ``adopts``, else loaded its own."""
    first = start(tmp, root, "first")
    load = steady_load(creator, name)
    try:
        time.sleep(LOAD / RATE / 3)
        before = forks_of(first, name)
        assert 0 < before < LOAD
        stop(first)
        started = time.monotonic()
        second = start_next()
        serving = time.monotonic() - started
        try:
            assert forks_of(second, name) >= before, "a counter went down: " + second.log()
            out, _ = load.communicate(timeout=60)
            assert load.returncode == 0 and out.split()[-1] == str(LOAD), out
            assert forks_of(second, name) == LOAD, second.log()
            if adopts:
                assert "adopted the probe pinned at" in second.log()
            else:
                assert "adopted" not in second.log()
        except BaseException:
            second.stop()
            raise
    finally:
        if load.poll() is None:
            load.kill()
    return second, serving


def restart_mid_load(tmp: Path, root: Path, creator: Path, sig: int) -> tuple[Daemon, float]:
    """A daemon stopped by ``sig`` and started again while a steady load runs: it adopts."""
    return replaced_mid_load(
        tmp,
        root,
        creator,
        unique_name("pin"),
        lambda daemon: daemon.stop(sig),
        lambda: start(tmp, root, "second"),
        adopts=True,
    )


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


def test_prometheus_sees_no_counter_reset_across_a_restart_and_an_upgrade(
    tmp_path: Path, pin_root: Path, creator: Path
) -> None:
    """A real Prometheus scrapes through a steady load while the daemon is restarted (SIGTERM,
    start, adopt) and then upgraded to a build of another layout: resets() of every series of
    every procmond counter is 0, and the load's forks are all there, once."""
    forks, rate = 8000, 800  # 10 s: the restart and the upgrade fall within it
    first = start(tmp_path, pin_root, "first")
    daemons = [first]  # each stopped at the end, whatever happened
    prometheus = start_prometheus(tmp_path, [f"127.0.0.1:{first.port}"], [])
    name = unique_name("pr")
    series = f'procmond_forks_total{{comm="{name.decode()}"}}'
    build = another_build(tmp_path)
    load: subprocess.Popen | None = None
    try:
        prometheus.wait_until("a scrape", lambda: prometheus.query('up{job="procmond"} == 1'), 30)
        load = subprocess.Popen(
            [str(creator), "fork", str(forks), "--rate", str(rate), name.hex()],
            stdout=subprocess.PIPE,
            text=True,
        )
        prometheus.wait_until("a scrape of the load", lambda: prometheus.query(series), 30)
        assert first.stop() == 0
        folder = tmp_path / "second"
        folder.mkdir()
        config = f"pin_root: {pin_root}\nstate_dir: {tmp_path / 'state'}\n"
        second = start_daemon(folder, config, port=first.port)
        daemons.append(second)
        assert "adopted the probe pinned at" in second.log()
        restarted = time.time()
        prometheus.wait_until(
            "a scrape of the restarted daemon",
            lambda: prometheus.query(f"timestamp({series}) > {restarted}"),
            30,
        )
        assert second.stop() == 0
        assert load.poll() is None, "the load ended before the upgrade"
        third = start_build(tmp_path, pin_root, "third", build, port=first.port)
        daemons.append(third)
        assert "retired the probe pinned at" in third.log()
        out, _ = load.communicate(timeout=60)
        assert out.split()[-1] == str(forks)
        done = time.time()
        prometheus.wait_until(
            "the whole load scraped by the upgraded daemon",
            lambda: prometheus.query(f"{series} == {forks} and timestamp({series}) > {done}"),
            30,
        )
        resets = {
            metric: prometheus.query(f"resets({metric}[1h])")
            for metric in (*COUNTERS, "procmond_map_overflow_events_total")
        }
    finally:
        if load is not None and load.poll() is None:
            load.kill()
        prometheus.stop()
        codes = [daemon.stop() for daemon in daemons]
    assert codes == [0] * len(daemons)
    for metric, results in resets.items():
        assert results, f"no series of {metric}"
        nonzero = [r for r in results if r["value"][1] != "0"]
        assert nonzero == [], (metric, nonzero)


def a_build(tmp: Path, name: str, file: str, old: str, new: str) -> Path:
    """This tree's procmond with ``old`` replaced by ``new`` in bpf/``file`` (the import root
    for PYTHONPATH)."""
    build = tmp / name
    package = Path(pins.__file__).parents[1]  # procmond/kernel/pins.py
    shutil.copytree(package, build / "procmond", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(bpf_source_dir(), build / "procmond" / "bpf")
    path = build / "procmond" / "bpf" / file
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return build


def another_build(tmp: Path) -> Path:
    """A header whose forks key lays comm and parent_comm out the other way round: a build
    whose map layout differs."""
    pair = "char comm[COMM_LEN];\n    char parent_comm[COMM_LEN];"
    swapped = "char parent_comm[COMM_LEN];\n    char comm[COMM_LEN];"
    return a_build(tmp, "build", "procmond.h", pair, swapped)


def program_only_build(tmp: Path) -> Path:
    """Another source of the program (another build identity: its programs are replaced)
    whose maps are laid out as this tree's."""
    forks = "BPF_HASH(forks_total"
    return a_build(tmp, "program", "procmond.bpf.c", forks, f"/* another build */\n{forks}")


def spare_field_build(tmp: Path) -> Path:
    """A build whose counter keys by command pair carry one more field, which this tree's keys
    have no place for."""
    pair = "char comm[COMM_LEN];\n    char parent_comm[COMM_LEN];\n};"
    spare = "char comm[COMM_LEN];\n    char parent_comm[COMM_LEN];\n    u64 spare;\n};"
    return a_build(tmp, "spare", "procmond.h", pair, spare)


def start_build(
    tmp: Path, root: Path, run: str, build: Path, extra: str = "", port: int | None = None
) -> Daemon:
    """A daemon of ``build`` (an import root) pinning under ``root``."""
    folder = tmp / run
    folder.mkdir()
    config = f"pin_root: {root}\nstate_dir: {tmp / 'state'}\n{extra}"
    return start_daemon(folder, config, port=port, env={"PYTHONPATH": str(build)}, cwd=build)


def upgrade_mid_load(tmp: Path, root: Path, creator: Path, build: Path, name: bytes) -> Daemon:
    """A daemon of this tree stopped cleanly in the middle of a steady load and ``build``
    started: it loads its own probe. The new daemon, running."""

    def stopped_cleanly(daemon: Daemon) -> None:
        assert daemon.stop() == 0

    def next_build() -> Daemon:
        return start_build(tmp, root, "second", build)

    return replaced_mid_load(tmp, root, creator, name, stopped_cleanly, next_build, adopts=False)[0]


def same_layout_maps(daemon: Daemon) -> list[str]:
    """The metric maps the daemon carried by raw key at its upgrade, from its log line."""
    [retired] = [line for line in daemon.log().splitlines() if "retired the probe" in line]
    same = retired.rsplit("maps of the same layout: ", 1)[1].rstrip(")")
    return [] if same == "none" else same.split(", ")


def test_an_upgrade_to_another_layout_carries_every_count(
    tmp_path: Path, pin_root: Path, creator: Path
) -> None:
    """The new build loads its own probe, takes the duty over from the old one in one write,
    retires it and carries its counts on: mid-load, nothing is lost or counted twice."""
    name = unique_name("up")
    second = upgrade_mid_load(tmp_path, pin_root, creator, another_build(tmp_path), name)
    try:
        # The forks key's layout differs: carried by field name; the exits' is the same.
        same = same_layout_maps(second)
        assert "forks_total" not in same and "exits_total" in same, same
        # The children's exits and lifetimes, and the creator's own (it exited).
        m = second.scrape()
        comm = name.decode()
        assert m.value("procmond_process_lifetime_seconds_count", comm=comm) == LOAD + 1
        exits = m.series("procmond_exits_total")
        assert sum(v for k, v in exits.items() if dict(k)["comm"] == comm) == LOAD + 1
    finally:
        assert second.stop() == 0
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


def test_an_upgrade_of_the_program_alone_carries_raw_keys(
    tmp_path: Path, pin_root: Path, creator: Path
) -> None:
    """Same maps, other programs: the new build replaces the probe (its programs must run) and
    carries every map's entries by raw key, since their layouts' fingerprints are equal."""
    name = unique_name("raw")
    second = upgrade_mid_load(tmp_path, pin_root, creator, program_only_build(tmp_path), name)
    try:
        assert same_layout_maps(second) == [
            "forks_total",
            "threads_created_total",
            "execs_total",
            "exits_total",
            "fork_failures_total",
            "process_lifetime_seconds",
            "fork_duration_seconds",
        ]
    finally:
        assert second.stop() == 0


def test_a_key_field_the_new_probe_has_no_place_for_leaves_that_map_uncarried(
    tmp_path: Path, pin_root: Path, creator: Path
) -> None:
    """The running build's command-pair keys have a field this tree's lack: those three maps
    are not carried (one line each); the exits, keyed otherwise, carry on exactly."""
    build = spare_field_build(tmp_path)
    name = unique_name("spare")
    first = start_build(tmp_path, pin_root, "first", build)
    try:
        run_creator(creator, "fork", 30, [name])
        assert forks_of(first, name) == 30, first.log()
    finally:
        assert first.stop() == 0
    second = start(tmp_path, pin_root, "second")
    try:
        lines = [line for line in second.log().splitlines() if "are not carried" in line]
        assert len(lines) == 3 and all("'spare'" in line for line in lines), second.log()
        assert forks_of(second, name) == 0
        exits = second.scrape().series("procmond_exits_total")
        assert sum(v for k, v in exits.items() if dict(k)["comm"] == name.decode()) == 31
    finally:
        assert second.stop() == 0


def fork_under_names(creator: Path, names: int, prefix: bytes) -> None:
    """One fork under each of ``names`` names (prefix + a counter)."""
    args = [str(creator), "fork", "1", "--generate", str(names), prefix.hex()]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split()[-1] == str(names), done.stdout


def forks_overflow(pinned: BPFMap) -> int:
    """forks_total's overflow slot of an overflow_events map, summed over CPUs."""
    ids = map_ids(read_header())
    return read_percpu_counts(pinned, len(ids))[ids.index("forks_total")]


def overflow_series(daemon: Daemon) -> float:
    labels = ("unit", "namespace", "pod", "container", "comm", "parent_comm")
    return daemon.scrape().value("procmond_forks_total", **dict.fromkeys(labels, "__overflow__"))


def shown_and_own_overflow(daemon: Daemon, root: Path) -> tuple[float, int, int]:
    """The forks' overflow count the daemon shows, and its own probe's part of it, read from
    its pinned map just before and just after the scrape: equal unless the host's creations
    overflowed the map meanwhile (tried again a few times for a quiet moment)."""
    [folder] = [p for p in root.iterdir() if p.is_dir()]
    pinned = BPFMap(libbpf("bpf_obj_get", os.fsencode(folder / "map_overflow_events")))
    try:
        for _ in range(20):
            before = forks_overflow(pinned)
            shown = daemon.scrape().value("procmond_map_overflow_events_total", map="forks_total")
            after = forks_overflow(pinned)
            if before == after:
                break
    finally:
        pinned.close()
    return shown, before, after


def test_an_upgrade_carries_the_overflow_counts(
    tmp_path: Path, pin_root: Path, creator: Path
) -> None:
    """A full map's overflow count goes on across an upgrade and the restart after it: the
    daemon shows the old probe's last count (read through a descriptor the test holds) plus
    its own probe's."""
    small = "max_entries: 64\n"
    first = start_build(tmp_path, pin_root, "first", Path(pins.__file__).parents[2], small)
    prefix = b"ov" + secrets.token_hex(3).encode()
    try:
        fork_under_names(creator, 200, prefix)
        shown, low, high = shown_and_own_overflow(first, pin_root)
        assert low <= shown <= high and shown >= 200 - 64
        series = overflow_series(first)
        assert series >= shown
        [folder] = [p for p in pin_root.iterdir() if p.is_dir()]
        held = BPFMap(libbpf("bpf_obj_get", os.fsencode(folder / "map_overflow_events")))
    finally:
        assert first.stop() == 0
    build = another_build(tmp_path)
    try:
        # Counted by the old probe while no daemon runs: the map is full, each name overflows.
        fork_under_names(creator, 100, prefix + b"b")
        second = start_build(tmp_path, pin_root, "second", build, small)
        try:
            old = forks_overflow(held)  # the retired probe counts no more
            assert old >= shown + 100
            upgraded, low, high = shown_and_own_overflow(second, pin_root)
            assert old + low <= upgraded <= old + high, second.log()
            assert overflow_series(second) >= max(series, old)
        finally:
            assert second.stop() == 0
    finally:
        held.close()
    third = start_build(tmp_path, pin_root, "third", build, small)
    try:
        assert "adopted" in third.log()
        restarted, low, high = shown_and_own_overflow(third, pin_root)
        assert old + low <= restarted <= old + high and restarted >= upgraded
    finally:
        assert third.stop() == 0


def test_an_upgrade_carries_task_limit_hits_no_scrape_took(
    tmp_path: Path, pin_root: Path, pids: PidsHierarchy, creator: Path
) -> None:
    """A unit refused forks and was removed while no daemon ran: the old probe kept its count,
    and the upgrade hands it to the new probe, whose first scrape shows every refused fork."""
    first = start(tmp_path, pin_root, "first")
    assert first.stop() == 0
    unit = f"pin-{secrets.token_hex(4)}.service"
    tree = CgroupTree(pids.hierarchy.mount_point)
    try:
        cgroup = limited(tree, pids, f"/test.slice/{unit}", 20)
        refused = fork_past_limit(tree, cgroup, creator, 300)
        assert refused == kernel_count(pids, cgroup) > 0
    finally:
        tree.remove()
    second = start_build(tmp_path, pin_root, "second", another_build(tmp_path))
    try:
        assert hits_of(second, unit) == refused, second.log()
    finally:
        assert second.stop() == 0


def test_two_upgrades_in_a_row_keep_every_count(
    tmp_path: Path, pin_root: Path, creator: Path
) -> None:
    """What the second build carried from the first is carried again to the third (its daemon
    saved it): no count of any build before is lost."""
    name = unique_name("two")
    here = Path(pins.__file__).parents[2]  # this tree's import root
    runs = [(here, 30), (another_build(tmp_path), 20), (program_only_build(tmp_path), 10)]
    counted = 0
    for i, (build, forks) in enumerate(runs):
        daemon = start_build(tmp_path, pin_root, f"run{i}", build)
        try:
            assert forks_of(daemon, name) == counted, daemon.log()
            run_creator(creator, "fork", forks, [name])
            counted += forks
            assert forks_of(daemon, name) == counted
        finally:
            assert daemon.stop() == 0
