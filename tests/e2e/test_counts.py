"""Exact counts from the real probe: each creation path, under a name nothing else uses.

``daemon`` runs the default config (no syscall probes); ``timed`` the same with
``syscall_probes: true`` (fork durations, failures by error). Both watch every creation.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import (
    Daemon,
    created_on_host,
    own_comm,
    run_creator,
    start_daemon,
    unique_name,
)

N = 200
CREATION_METRICS = ("procmond_forks_total", "procmond_threads_created_total")


@pytest.fixture(scope="module")
def timed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = start_daemon(tmp_path_factory.mktemp("timed"), "syscall_probes: true\n")
    yield d
    assert d.stop() == 0, d.log()


# (creator mode, metric it must count in, syscall it makes)
PATHS = [
    ("fork", "procmond_forks_total"),
    ("vfork", "procmond_forks_total"),
    ("clone3", "procmond_forks_total"),
    ("spawn", "procmond_forks_total"),
    ("thread", "procmond_threads_created_total"),
]


@pytest.mark.parametrize(("mode", "metric"), PATHS)
def test_each_creation_path_is_counted_exactly(
    daemon: Daemon, timed: Daemon, creator: Path, mode: str, metric: str
) -> None:
    name = unique_name(mode[:2])
    run_creator(creator, mode, N, [name], "--exit-name-hex", unique_name().hex())
    labels = {"comm": name.decode(), "parent_comm": own_comm()}
    for d in (daemon, timed):
        m = d.scrape()
        assert m.value(metric, **labels) == N
        other = (set(CREATION_METRICS) - {metric}).pop()
        assert m.value(other, **labels) == 0
    # one clone/clone3/fork/vfork call per creation, timed by the syscall probes
    assert timed.scrape().value("procmond_fork_duration_seconds_count", comm=name.decode()) == N


def test_calls_restarted_by_signals_are_one_call(timed: Daemon, creator: Path) -> None:
    """A signal arriving inside clone() makes the kernel restart the call (-ERESTARTNOINTR):
    user space sees one successful fork, so procmond counts no failure and one duration."""
    name = unique_name("sig")
    forks = 3000
    result = run_creator(creator, "fork", forks, [name], "--signal-every-us", "20")
    signals = int(result.stdout.split()[1])
    assert signals > forks  # the timer really interrupted the forking (restarts happen)
    m = timed.scrape()
    comm = name.decode()
    assert m.value("procmond_forks_total", comm=comm, parent_comm=own_comm()) == forks
    assert {
        k: v for k, v in m.series("procmond_fork_failures_total").items() if ("comm", comm) in k
    } == {}
    assert m.value("procmond_fork_duration_seconds_count", comm=comm) == forks


@pytest.mark.parametrize("mode", ["thread", "spawn"])
def test_clone3_answered_enosys_by_seccomp_is_no_failure(
    timed: Daemon, creator: Path, mode: str
) -> None:
    """Docker 20.10's default seccomp profile answers clone3 with ENOSYS and the C library falls
    back to clone: the same filter, installed for real, makes every creation try clone3 first.
    That is the fallback protocol, not a failure; each fallback clone is one timed call."""
    name = unique_name("sec")
    exit_name = unique_name().hex()
    run_creator(creator, mode, 50, [name], "--clone3-enosys", "--exit-name-hex", exit_name)
    m = timed.scrape()
    comm = name.decode()
    metric = "procmond_threads_created_total" if mode == "thread" else "procmond_forks_total"
    assert m.value(metric, comm=comm, parent_comm=own_comm()) == 50
    assert {
        k: v for k, v in m.series("procmond_fork_failures_total").items() if ("comm", comm) in k
    } == {}
    assert m.value("procmond_fork_duration_seconds_count", comm=comm) == 50


def test_every_task_the_kernel_creates_is_counted(daemon: Daemon, creator: Path) -> None:
    """io_uring's io-wq workers are made by copy_process() without kernel_clone(): procmond
    counts them, so its creations grow exactly as the kernel's own count (/proc/stat
    `processes`), bounded only by when each scrape read the maps."""

    def creations() -> tuple[int, float, int]:
        before = created_on_host()
        m = daemon.scrape()
        return before, sum(m.total(metric) for metric in CREATION_METRICS), created_on_host()

    first_before, first, first_after = creations()
    name = unique_name("uring")
    run_creator(creator, "iouring", 100, [name])
    run_creator(creator, "fork", 100, [name])
    last_before, last, last_after = creations()
    counted = last - first
    assert last_before - first_after <= counted <= last_after - first_before
    workers = daemon.scrape().value(
        "procmond_threads_created_total", comm=name.decode(), parent_comm=own_comm()
    )
    assert workers >= 1  # io-wq workers, counted as threads of the process they serve


def test_fork_children_exits_and_lifetimes(daemon: Daemon, creator: Path) -> None:
    """Children living ~0.2 s: each exit counted once, in the (0.067 s, 0.268 s] bucket."""
    name = unique_name("life")
    children = 20
    run_creator(
        creator,
        "fork",
        children,
        [name],
        "--child-sleep-ms",
        "200",
        "--together",
        "--exit-name-hex",
        unique_name().hex(),
    )
    m = daemon.scrape()
    comm = name.decode()
    assert m.value("procmond_forks_total", comm=comm, parent_comm=own_comm()) == children
    assert m.value("procmond_exits_total", comm=comm) == children
    assert m.value("procmond_process_lifetime_seconds_count", comm=comm) == children
    bucket = "procmond_process_lifetime_seconds_bucket"
    assert m.value(bucket, comm=comm, le="0.067108864") == 0
    assert m.value(bucket, comm=comm, le="0.268435456") == children
    assert m.value(bucket, comm=comm, le="+Inf") == children
    total = m.value("procmond_process_lifetime_seconds_sum", comm=comm)
    assert 0.2 * children <= total < 0.268435456 * children


def test_threads_do_not_count_as_exits(daemon: Daemon, creator: Path) -> None:
    name = unique_name("thr")
    run_creator(creator, "thread", 50, [name], "--exit-name-hex", unique_name().hex())
    m = daemon.scrape()
    assert (
        m.value("procmond_threads_created_total", comm=name.decode(), parent_comm=own_comm()) == 50
    )
    assert m.value("procmond_exits_total", comm=name.decode()) == 0


def test_execs_counted_under_the_new_command(daemon: Daemon, creator: Path, tmp_path: Path) -> None:
    """posix_spawn of a uniquely named link to true: one exec each, by the new command, with
    the spawning process as its parent."""
    parent = unique_name("exe")
    program = tmp_path / unique_name("new").decode()
    os.symlink("/bin/true", program)
    run_creator(
        creator,
        "spawn",
        N,
        [parent],
        "--exec",
        str(program),
        "--exit-name-hex",
        unique_name().hex(),
    )
    m = daemon.scrape()
    assert m.value("procmond_execs_total", comm=program.name, parent_comm=parent.decode()) == N
    assert m.value("procmond_exits_total", comm=program.name) == N
    assert m.value("procmond_process_lifetime_seconds_count", comm=program.name) == N


def test_counters_never_go_backwards(daemon: Daemon, creator: Path) -> None:
    name = unique_name("mono")
    labels = {"comm": name.decode(), "parent_comm": own_comm()}
    seen = []
    for _ in range(5):
        run_creator(creator, "fork", 10, [name])
        seen.append(daemon.scrape().value("procmond_forks_total", **labels))
    assert seen == [10, 20, 30, 40, 50]


def test_self_metrics(daemon: Daemon) -> None:
    m = daemon.scrape()
    assert m.value("procmond_btf_offsets_in_use") == 1
    assert m.value("procmond_scrape_success") == 1
    probes = m.series("procmond_probe_attached")
    assert {dict(k)["probe"] for k in probes} == {
        "task_newtask",
        "sched_process_exec",
        "sched_process_exit",
        "cgroup_mkdir",
        "cgroup_rmdir",
    }
    assert all(v == 1 for v in probes.values())
    assert m.value("procmond_map_max_entries", map="forks_total") == 4096
    assert m.value("procmond_map_max_entries", map="process_lifetime_seconds") == 256
    assert m.value("procmond_map_overflow_events_total", map="forks_total") == 0
    (info,) = m.series("procmond_build_info")
    assert dict(info)["kernel"] == os.uname().release
    assert m.get("process_resident_memory_bytes") is not None
    assert m.value("procmond_config_last_reload_successful") == 1


def test_failed_calls_are_counted_by_error(timed: Daemon, creator: Path) -> None:
    name = unique_name("bad")
    run_creator(creator, "badclone3", 40, [name], "--exit-name-hex", unique_name().hex())
    m = timed.scrape()
    assert m.value("procmond_fork_failures_total", comm=name.decode(), error="EINVAL") == 40
    assert m.value("procmond_fork_duration_seconds_count", comm=name.decode()) == 40
    assert m.value("procmond_forks_total", comm=name.decode(), parent_comm=own_comm()) == 0


def pids_cgroup_root() -> Path:
    v1 = Path("/sys/fs/cgroup/pids")
    if (v1 / "cgroup.procs").exists():
        return v1
    for v2 in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")):
        if "pids" in (v2 / "cgroup.controllers").read_text(errors="ignore").split():
            return v2
    raise AssertionError("no pids cgroup controller on this host")


def test_task_limit_failures_are_eagain(timed: Daemon, creator: Path) -> None:
    """A cgroup's pids.max, as a contained fork bomb meets it."""
    cgroup = pids_cgroup_root() / f"procmond-test-{os.getpid()}"
    cgroup.mkdir()
    try:
        (cgroup / "pids.max").write_text("4\n")  # the creator itself and 3 children
        name = unique_name("lim")
        script = f'echo $$ > {cgroup}/cgroup.procs && exec "$@"'
        result = subprocess.run(
            [
                "sh",
                "-c",
                script,
                "_",
                str(creator),
                "fork",
                "20",
                "--together",
                "--child-sleep-ms",
                "300",
                "--tolerate-failures",
                name.hex(),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        made, failed = (int(x) for x in result.stdout.split()[1::2])
        assert (made, failed) == (3, 17)
        m = timed.scrape()
        assert m.value("procmond_fork_failures_total", comm=name.decode(), error="EAGAIN") == 17
        assert m.value("procmond_forks_total", comm=name.decode(), parent_comm=own_comm()) == 3
    finally:
        for _ in range(50):
            try:
                cgroup.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def test_syscall_probes_are_opt_in(daemon: Daemon, creator: Path) -> None:
    """The default config attaches no syscall tracepoint (they tax every syscall on the host):
    creations are counted, fork durations and failures by errno are not served."""
    name = unique_name("nosys")
    run_creator(creator, "fork", 30, [name])
    run_creator(creator, "badclone3", 5, [name])
    m = daemon.scrape()
    assert m.value("procmond_forks_total", comm=name.decode(), parent_comm=own_comm()) == 30
    assert not [p for p in m.series("procmond_probe_attached") if "sys_" in dict(p)["probe"]]
    assert not m.series("procmond_fork_failures_total")
    assert not m.series("procmond_fork_duration_seconds_count")


def test_other_perf_users_still_see_the_syscall_events(timed: Daemon, creator: Path) -> None:
    """A BPF program on a tracepoint that returns 0 drops the event for every perf user of it;
    procmond's pass it on, so `perf stat` counts the same with procmond running."""
    forks = 10
    events = "syscalls:sys_enter_clone,syscalls:sys_exit_clone"
    result = subprocess.run(
        [
            "perf",
            "stat",
            "-x",
            ",",
            "-e",
            events,
            "--",
            str(creator),
            "fork",
            str(forks),
            unique_name().hex(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    counts = {
        line.split(",")[2]: int(line.split(",")[0])
        for line in result.stderr.splitlines()
        if line.count(",") >= 2 and line.split(",")[0].isdigit()
    }
    assert timed.scrape().value("procmond_probe_attached", probe="sys_enter_clone") == 1
    # one entry per fork; one exit in the parent and one in each child as it starts
    assert counts == {"syscalls:sys_enter_clone": forks, "syscalls:sys_exit_clone": 2 * forks}


def test_content_negotiation(daemon: Daemon) -> None:
    """Prometheus (which also accepts text) gets the fast text path; a client that takes
    only OpenMetrics gets OpenMetrics, with the same samples."""
    prometheus = (
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
        "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    )
    answers = {}
    for accept in (prometheus, "application/openmetrics-text; version=1.0.0"):
        request = urllib.request.Request(f"{daemon.url}/metrics", headers={"Accept": accept})
        with urllib.request.urlopen(request, timeout=10) as response:
            answers[accept] = (response.headers["Content-Type"], response.read().decode())
    content_type, text = answers[prometheus]
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    content_type, om = answers["application/openmetrics-text; version=1.0.0"]
    assert content_type.startswith("application/openmetrics-text") and om.endswith("# EOF\n")
    assert "procmond_forks_total{" in text and "procmond_forks_total{" in om
