"""Pure logic around the host checks: what procmond says when a piece is missing."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from procmond.config import Config
from procmond.errors import BPFLoadError, PermissionDeniedError
from procmond.kernel import bpf_loader
from procmond.kernel import features as kernel
from procmond.tools.doctor import Check, doctor


def test_doctor_reports_fixes_and_fails_on_fatal_checks() -> None:
    out = io.StringIO()
    code = doctor(
        out,
        lambda: [
            Check("kernel", True, "6.18"),
            Check("BTF", False, "missing", "use a BTF kernel", fatal=False),
            Check("tracefs", False, "not mounted", "mount -t tracefs nodev /sys/kernel/tracing"),
        ],
    )
    text = out.getvalue()
    assert code == 1
    assert "[warn] BTF: missing" in text
    assert "[FAIL] tracefs: not mounted\n       fix: mount -t tracefs" in text
    assert text.endswith("procmond cannot run here\n")


def test_doctor_passes_with_only_warnings() -> None:
    out = io.StringIO()
    assert doctor(out, lambda: [Check("BTF", False, "x", "y", fatal=False)]) == 0


def test_missing_capabilities_are_named() -> None:
    assert kernel.missing_capabilities(0) == ["CAP_BPF", "CAP_PERFMON"]
    assert kernel.missing_capabilities(1 << kernel.CAP_BPF) == ["CAP_PERFMON"]
    assert kernel.missing_capabilities(1 << kernel.CAP_SYS_ADMIN) == []


def test_without_capabilities_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernel, "missing_capabilities", lambda: ["CAP_BPF"])
    with pytest.raises(PermissionDeniedError, match="procmond needs CAP_BPF"):
        bpf_loader.load(Config())


def test_without_bcc_one_sentence_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernel, "missing_capabilities", lambda: [])
    monkeypatch.setattr(kernel, "tracefs_root", lambda: Path("/sys/kernel/tracing"))
    monkeypatch.setitem(sys.modules, "bcc", None)  # import bcc now raises ImportError
    with pytest.raises(BPFLoadError) as caught:
        bpf_loader.load(Config())
    assert "apt-get install python3-bpfcc" in caught.value.hint


def test_syscall_entry_probes_only_when_something_uses_them() -> None:
    timed = Config(histograms=False, syscall_probes=True, labels=("comm",))
    names = {p.name for p in bpf_loader.wanted_probes(timed, watch=False)}
    exits = {f"sys_exit_{call}" for call in ("clone", "clone3", "fork", "vfork")}
    daemon = {"task_newtask", "sched_process_exec", "sched_process_exit", "cgroup_rmdir"}
    assert names == daemon | exits
    assert len(bpf_loader.wanted_probes(Config(histograms=False), watch=True)) == 12
    assert len(bpf_loader.wanted_probes(Config(syscall_probes=True), watch=False)) == 13
    # the default: no syscall probes; cgroup_mkdir names cgroups for the unit and pod labels,
    # cgroup_rmdir keeps the task-limit hits of removed cgroups
    assert {p.name for p in bpf_loader.wanted_probes(Config(), watch=False)} == {
        "task_newtask",
        "sched_process_exec",
        "sched_process_exit",
        "cgroup_mkdir",
        "cgroup_rmdir",
    }


def test_tracepoint_field_lookup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    event = tmp_path / "events" / "sched" / "sched_process_exit"
    event.mkdir(parents=True)
    (event / "format").write_text(
        "name: sched_process_exit\nformat:\n"
        "\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;\n"
        "\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;\n"
    )
    monkeypatch.setattr(kernel, "TRACEFS_CANDIDATES", (tmp_path,))
    assert kernel.tracepoint_has_field("sched", "sched_process_exit", "group_dead")
    assert not kernel.tracepoint_has_field("sched", "sched_process_exit", "prio")
    assert not kernel.tracepoint_has_field("sched", "task_newtask", "group_dead")


def test_no_syscall_probes_means_no_syscall_tracepoints() -> None:
    config = Config(syscall_probes=False, labels=("comm", "parent_comm"))
    names = {p.name for p in bpf_loader.wanted_probes(config, watch=False)}
    assert names == {"task_newtask", "sched_process_exec", "sched_process_exit", "cgroup_rmdir"}
    assert len(bpf_loader.wanted_probes(config, watch=True)) == 11  # watch names the calls


def test_text_is_served_to_whoever_accepts_it() -> None:
    from procmond.web.negotiation import accepts_text

    prometheus = (
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
        "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    )
    assert accepts_text(prometheus)
    assert accepts_text("")
    assert accepts_text("*/*")
    assert not accepts_text("application/openmetrics-text; version=1.0.0")


def test_a_check_that_cannot_read_fails_in_a_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    def denied() -> Path:
        raise PermissionError(13, "Permission denied", "/sys/kernel/tracing/events")

    monkeypatch.setattr(kernel, "tracefs_root", denied)
    monkeypatch.setattr(kernel, "missing_capabilities", lambda: ["CAP_BPF", "CAP_PERFMON"])
    out = io.StringIO()
    assert doctor(out) == 77
    text = out.getvalue()
    assert "[FAIL] tracefs: cannot read /sys/kernel/tracing/events: Permission denied\n" in text
    assert "tracepoint" not in text  # not reported missing: they could not be looked at
    assert text.endswith("run `sudo procmond doctor` to check the rest\n")


def test_doctor_says_why_there_are_no_unit_or_pod_labels_on_a_v1_only_host() -> None:
    from procmond.naming.cgroups import detect_layout
    from procmond.tools.doctor import check_cgroups

    v1_only = detect_layout("30 25 0:26 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids\n")
    check = check_cgroups(v1_only)
    assert not check.ok and not check.fatal
    assert "only cgroup v1 is mounted" in check.detail and "labels stay empty" in check.detail
    assert "unified_cgroup_hierarchy" in check.fix
    hybrid = detect_layout(
        "30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n"
        "31 25 0:27 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids\n"
    )
    assert check_cgroups(hybrid).ok


@pytest.mark.parametrize(
    ("release", "version"),
    [("6.18.44-fc-v857", (6, 18)), ("5.10.0-28-amd64", (5, 10)), ("5.11", (5, 11)), ("x", (0, 0))],
)
def test_kernel_version_from_its_release(release: str, version: tuple[int, int]) -> None:
    assert kernel.kernel_version(release) == version


def test_typed_reads_only_from_5_11(monkeypatch: pytest.MonkeyPatch) -> None:
    """bpf_get_current_task_btf() came in 5.11: older kernels compile the probe-read path."""
    btf = bpf_loader.BTF.from_file()
    monkeypatch.setattr(kernel, "kernel_release", lambda: "5.10.0-28-amd64")
    assert bpf_loader.typed_read_flags(btf) == []
    monkeypatch.setattr(kernel, "kernel_release", lambda: "5.11.0")
    flags = bpf_loader.typed_read_flags(btf)
    assert flags[0] == "-DPROCMOND_TASK_BTF"
    assert {f.split("=")[0] for f in flags[1:]} == {
        "-DTASK_CGROUPS_OFF",
        "-DCSS_SET_DFL_CGRP_OFF",
        "-DCGROUP_KN_OFF",
        "-DKERNFS_NODE_ID_OFF",
    }


def test_doctor_says_when_32_bit_programs_can_run(tmp_path: Path) -> None:
    """Their fork failures are invisible to the syscall probes: a warning, not a failure."""
    from procmond.tools.doctor import check_32bit_programs

    sysctl, cmdline = tmp_path / "vsyscall32", tmp_path / "cmdline"
    cmdline.write_text("console=ttyS0 quiet\n")
    assert check_32bit_programs(sysctl, cmdline).ok  # no ia32 emulation built in
    sysctl.write_text("1\n")
    check = check_32bit_programs(sysctl, cmdline)
    assert not check.ok and not check.fatal
    out = io.StringIO()
    assert doctor(out, lambda: [check]) == 0
    assert out.getvalue().startswith(
        "[warn] 32-bit programs: this kernel runs 32-bit (ia32) programs"
    )
    assert "failed forks and fork durations are not counted" in out.getvalue()
    cmdline.write_text("console=ttyS0 ia32_emulation=0 quiet\n")
    assert check_32bit_programs(sysctl, cmdline).ok  # built in, but off since boot
