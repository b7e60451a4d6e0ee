"""The loader's fallbacks, exercised on the real kernel."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from procmond import bpf_loader
from procmond.config import Config
from procmond.maps import MapReader
from tests.e2e.harness import run_creator, unique_name


def test_exit_count_without_group_dead(creator: Path) -> None:
    """Kernels whose sched_process_exit has no group_dead: signal->live decides instead."""
    probe = bpf_loader.load(Config(), force_no_group_dead=True)
    try:
        assert "-DEXIT_HAS_GROUP_DEAD" not in probe.cflags
        name = unique_name("old")
        run_creator(creator, "fork", 30, [name], "--exit-name-hex", unique_name().hex())
        run_creator(creator, "thread", 30, [name], "--exit-name-hex", unique_name().hex())
        reader = MapReader(probe.map)
        exits = reader.counters("exits_total", ("comm",))
        assert exits[(name,)] == 30  # children only: threads are not processes
        lifetimes = reader.histograms("process_lifetime_seconds")
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
        assert all(probe.attached.values())
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
    probe = bpf_loader.load(Config())
    try:
        assert probe.attached["sys_enter_nonexistent"] is False
        assert sum(probe.attached.values()) == 11
        name = unique_name("tp")
        run_creator(creator, "fork", 10, [name])
        forks = MapReader(probe.map).counters("forks_total", ("comm", "parent_comm"))
        assert sum(v for k, v in forks.items() if k[0] == name) == 10
    finally:
        probe.close()
