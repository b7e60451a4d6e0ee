"""Finding this process's memory cgroups on either layout, and the one line said when the
loader dies (the real kernel's side is tests/e2e/test_memory_limits.py)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from procmond.kernel import memory_limits
from procmond.kernel.memory_limits import MemoryCgroup, OomWatch, loader_exit_error, memory_cgroups

V2 = "30 1 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
HYBRID = (
    "30 1 0:26 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
    "31 1 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    "32 1 0:28 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n"
)


def test_v2_when_its_memory_controller_is_on() -> None:
    chain = memory_cgroups(V2, "0::/system.slice/procmond.service\n", lambda _c: True)
    assert [(c.path, str(c.directory), c.version) for c in chain] == [
        ("/system.slice/procmond.service", "/sys/fs/cgroup/system.slice/procmond.service", 2),
        ("/system.slice", "/sys/fs/cgroup/system.slice", 2),
        ("/", "/sys/fs/cgroup", 2),
    ]


def test_v1_memory_hierarchy_when_v2_has_no_memory_controller() -> None:
    chain = memory_cgroups(HYBRID, "8:pids:/\n4:memory:/a/b\n0::/\n", lambda c: c.version == 1)
    assert [(c.path, str(c.directory), c.version) for c in chain] == [
        ("/a/b", "/sys/fs/cgroup/memory/a/b", 1),
        ("/a", "/sys/fs/cgroup/memory/a", 1),
        ("/", "/sys/fs/cgroup/memory", 1),
    ]


def test_a_mount_of_a_subtree_maps_paths_below_it() -> None:
    mountinfo = "30 1 0:26 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    chain = memory_cgroups(mountinfo, "0::/kubepods/pod1/ctr\n", lambda _c: True)
    assert [(c.path, str(c.directory)) for c in chain] == [
        ("/kubepods/pod1/ctr", "/sys/fs/cgroup/ctr"),
        ("/kubepods/pod1", "/sys/fs/cgroup"),
    ]


@pytest.mark.parametrize(
    ("mountinfo", "proc_cgroup"),
    [
        # the host's hierarchy mounted into a container with its own cgroup namespace
        ("30 1 0:26 /../.. /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n", "0::/\n"),
        # our cgroup is outside the mounted subtree
        ("30 1 0:26 /a /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n", "0::/b\n"),
        # no memory controller anywhere
        ("30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n", "0::/x\n"),
        ("", "garbage\n"),
    ],
)
def test_nothing_when_our_memory_cgroup_cannot_be_seen(mountinfo: str, proc_cgroup: str) -> None:
    assert memory_cgroups(mountinfo, proc_cgroup, lambda c: c.version == 1) == []


def _cgroup(tmp_path: Path, version: int, limit: str, oom_kills: int) -> MemoryCgroup:
    if version == 2:
        (tmp_path / "memory.max").write_text(limit + "\n")
        (tmp_path / "memory.events").write_text(
            f"low 0\nhigh 0\nmax 9\noom 1\noom_kill {oom_kills}\n"
        )
    else:
        (tmp_path / "memory.limit_in_bytes").write_text(limit + "\n")
        text = f"oom_kill_disable 0\nunder_oom 0\noom_kill {oom_kills}\n"
        (tmp_path / "memory.oom_control").write_text(text)
    return MemoryCgroup("/pm/test", tmp_path, version)


@pytest.mark.parametrize("version", [1, 2])
def test_an_oom_kill_counted_since_the_start_names_the_cgroup_and_its_limit(
    tmp_path: Path, version: int
) -> None:
    cgroup = _cgroup(tmp_path, version, str(64 << 20), 3)
    watch = OomWatch([cgroup], [cgroup.oom_kills()])
    _cgroup(tmp_path, version, str(64 << 20), 4)
    error = loader_exit_error(-signal.SIGKILL, watch)
    assert (error.message, error.hint) == (
        "the probe loader was killed by the kernel for lack of memory (its memory cgroup "
        "/pm/test, limited to 64 MiB, counted an OOM kill): compiling the probe needs about "
        "150 MiB for a second or two",
        "raise MemoryMax= (systemd) or the pod's memory limit to at least 192 MiB",
    )


def test_no_limit_is_read_as_none(tmp_path: Path) -> None:
    assert _cgroup(tmp_path, 2, "max", 0).limit() is None
    assert _cgroup(tmp_path, 1, "9223372036854771712", 0).limit() is None


def test_a_sigkill_the_cgroup_did_not_count_was_sent_by_something_else(tmp_path: Path) -> None:
    cgroup = _cgroup(tmp_path, 2, "max", 0)
    error = loader_exit_error(-signal.SIGKILL, OomWatch([cgroup], [0]))
    assert error.message.startswith("the probe loader was killed (SIGKILL), and not by the ")


def test_a_sigkill_without_readable_counts_is_most_likely_memory() -> None:
    error = loader_exit_error(-signal.SIGKILL, OomWatch([], []))
    assert error.message == (
        "the probe loader was killed by the kernel (SIGKILL), most likely for memory: "
        "compiling the probe needs about 150 MiB for a second or two"
    )


def test_an_abort_under_an_address_space_limit_names_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(memory_limits, "address_space_limit", lambda: 256 << 20)
    error = loader_exit_error(-signal.SIGABRT, OomWatch([], []))
    assert "RLIMIT_AS is 256 MiB" in error.message
    assert error.hint == "raise that limit to at least 384 MiB, or remove it"
    monkeypatch.setattr(memory_limits, "address_space_limit", lambda: None)
    error = loader_exit_error(-signal.SIGABRT, OomWatch([], []))
    assert error.message.startswith("the probe loader was killed by SIGABRT")


def test_the_dynamic_loaders_exit_under_an_address_space_limit_names_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(memory_limits, "address_space_limit", lambda: 256 << 20)
    error = loader_exit_error(127, OomWatch([], []))
    assert "exit status 127" in error.message and "RLIMIT_AS is 256 MiB" in error.message
    monkeypatch.setattr(memory_limits, "address_space_limit", lambda: None)
    assert loader_exit_error(127, OomWatch([], [])).message == (
        "the probe loader exited with status 127 before handing over the probe"
    )


def test_other_exits_keep_pointing_at_the_loaders_own_log() -> None:
    assert loader_exit_error(3, OomWatch([], [])).message == (
        "the probe loader exited with status 3 before handing over the probe"
    )


def test_what_counts_as_out_of_memory() -> None:
    assert memory_limits.is_out_of_memory(MemoryError())
    mapped = OSError("libLLVM-14.so.1: failed to map segment from shared object")
    assert memory_limits.is_out_of_memory(mapped)
    assert not memory_limits.is_out_of_memory(OSError("libbcc.so.0: cannot open shared object"))
    assert not memory_limits.is_out_of_memory(ValueError("x"))


def test_a_directory_that_does_not_list_us_is_not_our_cgroup(tmp_path: Path) -> None:
    """A mount hidden under another (a host's hierarchy over a container's own) leads a path
    to some other cgroup: only one that lists this process counts."""
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "cgroup.procs").write_text(f"1\n{os.getpid() + 1}\n")
    assert not memory_limits.holds_us(MemoryCgroup("/x", tmp_path, 2))
    (tmp_path / "cgroup.procs").write_text(f"1\n{os.getpid()}\n")
    assert memory_limits.holds_us(MemoryCgroup("/x", tmp_path, 2))
    (tmp_path / "memory.max").unlink()  # v2 without its memory controller on
    assert not memory_limits.holds_us(MemoryCgroup("/x", tmp_path, 2))
    assert memory_limits.holds_us(MemoryCgroup("/x", tmp_path, 1))
