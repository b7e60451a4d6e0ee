"""Loading under a memory limit: when the limit is too tight, procmond says in one line what
happened and what to do; under the figures that line gives, it loads and serves.

Compiling the probe is the only moment procmond needs much memory (procmond/kernel/memory_limits.py:
the loader child peaks at ~145 MiB resident, ~294 MiB of address space)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from procmond.kernel.memory_limits import ADDRESS_SPACE_NEEDED_MIB, MEMORY_NEEDED_MIB
from tests.e2e.harness import PROCMOND, free_port, start_daemon
from tests.e2e.memory_cgroup import MemoryCgroup

MIB = 1 << 20


def enough(tmp: Path) -> Path:
    (tmp / "enough").mkdir()
    return tmp / "enough"


def run_to_exit(tmp: Path, wrapper: list[str]) -> subprocess.CompletedProcess:
    config = tmp / "procmond.yaml"
    # No pinning (as tests/e2e/harness.py): without bpffs it would be a warning of its own.
    config.write_text(f'listen: "127.0.0.1:{free_port()}"\npin_root: ""\n')
    return subprocess.run(
        [*wrapper, *PROCMOND, "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def error_line(result: subprocess.CompletedProcess) -> str:
    """The last line, and a check that nothing but the daemon's own INFO lines (no traceback,
    no empty error) comes before it."""
    lines = result.stderr.splitlines()
    assert lines, result
    assert [line for line in lines[:-1] if " INFO " not in line] == [], result.stderr
    return lines[-1]


def test_under_a_64_mib_memory_cgroup_it_says_the_kernel_killed_the_loader(
    tmp_path: Path,
) -> None:
    with MemoryCgroup(64 * MIB) as cgroup:
        result = run_to_exit(tmp_path, cgroup.command())
        kills = cgroup.oom_kills()
        path = cgroup.path
    assert (result.returncode, kills) == (70, 1), result.stderr
    assert error_line(result) == (
        "procmond: error: the probe loader was killed by the kernel for lack of memory (its "
        f"memory cgroup {path}, limited to 64 MiB, counted an OOM kill): compiling the probe "
        "needs about 150 MiB for a second or two; fix: raise MemoryMax= (systemd) or the pod's "
        f"memory limit to at least {MEMORY_NEEDED_MIB} MiB"
    )
    # Under the limit that line asks for, it loads and serves.
    with MemoryCgroup(MEMORY_NEEDED_MIB * MIB) as cgroup:
        daemon = start_daemon(enough(tmp_path), command=cgroup.command(*PROCMOND))
        try:
            assert daemon.scrape().value("procmond_probe_attached", probe="task_newtask") == 1
        finally:
            assert daemon.stop() == 0, daemon.log()
        peak = cgroup.peak()
    print(
        f"loading under {MEMORY_NEEDED_MIB} MiB: the cgroup peaked at {(peak or 0) / MIB:.0f} MiB"
    )


def test_under_a_256_mib_address_space_limit_it_says_which_limit_to_raise(
    tmp_path: Path,
) -> None:
    result = run_to_exit(tmp_path, ["prlimit", f"--as={256 * MIB}"])
    assert result.returncode == 70, result.stderr
    # How it shows depends on where the mapping failed: a library that cannot be mapped, a
    # MemoryError, the compiler's abort (whose own message libstdc++ prints first), or the
    # dynamic loader's exit when it cannot allocate a new thread's data.
    line = result.stderr.splitlines()[-1]
    assert re.fullmatch(
        r"procmond: error: the probe loader ran out of address space \((OSError: .*failed to "
        r"map segment from shared object|MemoryError|SIGABRT, what the compiler does when an "
        r"allocation fails|exit status 127, the dynamic loader's when it cannot map a library "
        r"or allocate a thread's data)\): RLIMIT_AS is 256 MiB \(ulimit -v, prlimit --as, "
        r"LimitAS=\) and compiling the probe maps about 300 MiB; fix: raise that limit to at least "
        rf"{ADDRESS_SPACE_NEEDED_MIB} MiB, or remove it",
        line,
    ), result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    # Under the limit that line asks for, it loads and serves.
    daemon = start_daemon(
        enough(tmp_path),
        command=["prlimit", f"--as={ADDRESS_SPACE_NEEDED_MIB * MIB}", *PROCMOND],
    )
    try:
        assert daemon.scrape().value("procmond_probe_attached", probe="task_newtask") == 1
    finally:
        assert daemon.stop() == 0, daemon.log()
