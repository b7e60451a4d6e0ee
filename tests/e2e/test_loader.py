"""The loader's fallbacks, exercised on the real kernel."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest

from procmond.config import Config
from procmond.kernel import bpf_loader
from procmond.storms import creators
from tests.e2e.cgroup_tree import CgroupTree
from tests.e2e.harness import own_comm, run_creator, unique_name


def test_exit_count_without_group_dead(creator: Path) -> None:
    """Kernels whose sched_process_exit has no group_dead: signal->live decides instead."""
    probe = bpf_loader.load(Config(), force_no_group_dead=True)
    try:
        assert "-DEXIT_HAS_GROUP_DEAD" not in probe.cflags
        name = unique_name("old")
        run_creator(creator, "fork", 30, [name], "--exit-name-hex", unique_name().hex())
        run_creator(creator, "thread", 30, [name], "--exit-name-hex", unique_name().hex())
        reader = probe.reader()
        exits = reader.counters("exits_total", ("comm",))
        assert exits[(name,)] == 30  # children only: threads are not processes
        lifetimes = reader.histograms("process_lifetime_seconds", ("comm",))
        assert lifetimes[(name,)].count == 30
    finally:
        probe.close()


def test_without_btf_falls_back_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, creator: Path
) -> None:
    caplog.set_level(logging.WARNING)
    probe = bpf_loader.load(Config(), btf_path=tmp_path / "no-btf")
    try:
        assert probe.btf_offsets is False
        assert "-DPROCMOND_BTF_OFFSETS" not in probe.cflags
        assert any(
            "falling back to the installed kernel headers" in r.message for r in caplog.records
        )
        # the pids controller's layout comes from BTF only: without, that probe is left out
        assert {name for name, ok in probe.attached.items() if not ok} == {"cgroup_rmdir"}
    finally:
        probe.close()


def test_missing_tracepoint_is_reported_not_fatal(
    monkeypatch: pytest.MonkeyPatch, creator: Path
) -> None:
    """A kernel without one tracepoint: the rest attach and count."""
    broken = bpf_loader.Probe(
        "syscalls:sys_enter_nonexistent", "on_sys_enter_clone", raw=False, only_for_timing=True
    )
    monkeypatch.setattr(bpf_loader, "PROBES", (*bpf_loader.PROBES, broken))
    probe = bpf_loader.load(Config(syscall_probes=True))
    try:
        assert probe.attached["sys_enter_nonexistent"] is False
        assert sum(probe.attached.values()) == 13
        name = unique_name("tp")
        run_creator(creator, "fork", 10, [name])
        forks = probe.reader().counters("forks_total", ("comm", "parent_comm"))
        assert sum(v for k, v in forks.items() if k[0] == name) == 10
    finally:
        probe.close()


def test_c_is_the_one_source_of_the_layouts_and_map_ids(tmp_path: Path, creator: Path) -> None:
    """Python restates nothing of bpf/procmond.h: a probe built from a header whose key fields
    and map ids are reordered still decodes every count to the right label and map."""
    source = tmp_path / "bpf"
    shutil.copytree(bpf_loader.bpf_source_dir(), source)
    header = source / "procmond.h"
    text = header.read_text()
    swapped = "char parent_comm[COMM_LEN];\n    char comm[COMM_LEN];"
    text = text.replace("char comm[COMM_LEN];\n    char parent_comm[COMM_LEN];", swapped)
    lifetime, duration = "MAP_ID_PROCESS_LIFETIME_SECONDS,", "MAP_ID_FORK_DURATION_SECONDS,"
    text = text.replace(lifetime, "@").replace(duration, lifetime).replace("@", duration)
    assert swapped in text and text.index(duration) < text.index(lifetime)
    header.write_text(text)

    # One histogram entry, taken by a first creator: the children's lifetimes and fork
    # durations then overflow, each into its own map's slot of overflow_hist.
    config = Config(histogram_max_entries=1, syscall_probes=True)
    probe = bpf_loader.load(config, source_dir=source)
    try:
        assert probe.map_ids.index("fork_duration_seconds") < probe.map_ids.index(
            "process_lifetime_seconds"
        )
        run_creator(creator, "fork", 1, [unique_name("first")])
        name, children = unique_name("src"), 20
        run_creator(
            creator,
            "fork",
            children,
            [name],
            *("--child-sleep-ms", "300", "--together", "--exit-name-hex", unique_name().hex()),
        )
        reader = probe.reader()
        forks = reader.counters("forks_total", ("comm", "parent_comm"))
        assert forks[(name, own_comm().encode())] == children
        lifetimes = reader.overflow_histogram("process_lifetime_seconds")
        durations = reader.overflow_histogram("fork_duration_seconds")
        assert lifetimes.count >= children and durations.count >= children
        # the children lived 0.3 s each; forks (ours and the host's) take microseconds
        assert lifetimes.sum_ns >= children * 0.3e9 > durations.sum_ns
    finally:
        probe.close()


def test_doctor_finds_every_tracepoint_the_probe_attaches() -> None:
    """doctor looks each probe up under its tracefs category (task_newtask is task:, not
    sched:): on this kernel every one is present."""
    from procmond.tools.doctor import check_tracepoints

    checks = check_tracepoints()
    assert len(checks) == len(bpf_loader.PROBES)
    assert [c.name for c in checks if not c.ok] == []


@pytest.mark.parametrize("probe_reads", [False, True], ids=["typed-loads", "probe-reads"])
def test_both_ways_of_reading_the_task_give_the_same_keys(
    probe_reads: bool, creator: Path, tree: CgroupTree
) -> None:
    """The probe reads the current task by typed loads where the kernel allows (5.11+, BTF) and
    by probe reads elsewhere: both give every key field (cgroup id, command, parent command),
    the lifetimes and the per-process counts exactly."""
    probe = bpf_loader.load(Config(), force_probe_reads=probe_reads)
    try:
        assert ("-DPROCMOND_TASK_BTF" in probe.cflags) is not probe_reads
        cgroup = tree.make(f"/pm-reads-{unique_name().hex()}")
        name, exit_name = unique_name("rd"), unique_name("rx")
        creators.switch(probe.map("storm_watch"), 7)
        runs = [
            tree.start(
                cgroup, str(creator), mode, "20", "--exit-name-hex", exit_name.hex(), name.hex()
            )
            for mode in ("fork", "thread")
        ]
        for run in runs:
            assert run.wait(timeout=60) == 0, run.stderr.read() if run.stderr else ""
        creators.switch(probe.map("storm_watch"), 0)
        reader = probe.reader()
        cgroup_id, parent = cgroup.stat().st_ino, own_comm().encode()
        keys = ("cgroup_id", "comm", "parent_comm")
        assert reader.counters("forks_total", keys)[(cgroup_id, name, parent)] == 20
        assert reader.counters("threads_created_total", keys)[(cgroup_id, name, parent)] == 20
        exits = reader.counters("exits_total", ("cgroup_id", "comm"))
        assert exits[(cgroup_id, name)] == 20  # the children: the creators exit as exit_name
        assert exits[(cgroup_id, exit_name)] == 2
        assert reader.histograms("process_lifetime_seconds", ("comm",))[(name,)].count == 20
        counted = creators.CreatorsReader(probe.map("creators"), probe.layouts["creators"]).read(7)
        mine = {c.pid: c for c in counted.values() if c.comm == name}
        assert sorted((c.forks, c.threads) for c in mine.values()) == [(0, 20), (20, 0)]
        assert {c.pid for c in mine.values()} == {run.pid for run in runs}
        assert all(c.parent_comm == parent and c.ppid == os.getpid() for c in mine.values())
        assert all(c.cgroup_id == cgroup_id for c in mine.values())
    finally:
        probe.close()
