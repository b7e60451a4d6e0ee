"""``procmond watch``: one line per creation, in the prototype's format or as JSON; filters
select what they name and nothing else, execs and timestamps come only on request."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from procmond.naming.cgroups import CgroupResolver, read_layout
from tests.e2e.cgroup_tree import CgroupTree, Pod, proc_cgroup_v2
from tests.e2e.harness import PROCMOND, Watch, run_creator, unique_name


def test_text_lines_name_the_caller_its_parent_and_the_call(creator: Path) -> None:
    watch = Watch()
    name = unique_name("wat")
    runs = {
        mode: subprocess.Popen([str(creator), mode, "2", name.hex()], stdout=subprocess.PIPE)
        for mode in ("fork", "vfork", "clone3")
    }
    for p in runs.values():
        p.wait(timeout=30)
    mine = f"Process {name.decode()} "
    watch.wait_for("6 lines", lambda lines: sum(ln.startswith(mine) for ln in lines) >= 6)
    err, code = watch.stop()
    assert code == 0, err
    lines = watch.lines()
    for mode, p in runs.items():
        call = {"fork": "sys_clone", "vfork": "sys_vfork", "clone3": "sys_clone3"}[mode]
        expected = f"Process {name.decode()} (PID:{p.pid}, PPID: {os.getpid()}) called {call}"
        assert lines.count(expected) == 2, (expected, [ln for ln in lines if mine in ln])


def test_json_lines_carry_kind_child_and_wall_clock_time(creator: Path) -> None:
    watch = Watch("--json")
    name = unique_name("wjs")
    before = time.time_ns()
    run_creator(creator, "thread", 3, [name])
    run_creator(creator, "spawn", 2, [name])
    after = time.time_ns()

    def mine(lines: list[str]) -> list[dict]:
        return [e for e in map(json.loads, lines) if e["comm"] == name.decode()]

    watch.wait_for("5 events", lambda lines: len(mine(lines)) >= 5)
    err, code = watch.stop()
    assert code == 0, err
    events = mine(watch.lines())
    assert sorted(e["kind"] for e in events) == ["process"] * 2 + ["thread"] * 3
    assert all(e["syscall"] == "sys_clone3" for e in events)
    assert all(e["ppid"] == os.getpid() for e in events)
    threads = [e for e in events if e["kind"] == "thread"]
    assert all(e["child_pid"] == e["pid"] != e["child_tid"] for e in threads)
    # time: RFC 3339 UTC to the microsecond, within the creators' run. The slack covers
    # truncation to microseconds and watch's one reading of the clocks' offset at start.
    slack = 5_000_000
    for e in events:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", e["time"]), e
        assert before - slack <= wall_ns(e["time"]) <= after + slack, (before, e, after)
    # timestamp_ns is the same instant on the monotonic clock: one offset for every event
    offsets = [wall_ns(e["time"]) - e["timestamp_ns"] for e in events]
    assert max(offsets) - min(offsets) < 1000, offsets  # up to 999 ns lost to truncation


def wall_ns(rfc3339: str) -> int:
    wall = datetime.fromisoformat(rfc3339.replace("Z", "+00:00"))
    return int(wall.timestamp()) * 1_000_000_000 + wall.microsecond * 1000


def test_reader_going_away_ends_watch_cleanly(creator: Path) -> None:
    """`procmond watch | head -1`: the closed pipe ends the watch, exit 0, no noise."""
    watch = subprocess.Popen(
        [*PROCMOND, "watch"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert watch.stderr is not None and watch.stdout is not None
    assert "watching" in watch.stderr.readline()
    run_creator(creator, "fork", 5, [unique_name("pipe")])
    assert watch.stdout.readline().startswith("Process ")
    watch.stdout.close()  # the reader goes away
    run_creator(creator, "fork", 50, [unique_name("pipe")])  # more events to write
    assert watch.wait(timeout=10) == 0
    assert watch.stderr.read() == ""


def test_comm_shows_only_that_command(creator: Path) -> None:
    wanted, other = unique_name("wc"), unique_name("wo")
    watch = Watch("--comm", wanted.decode())
    run_creator(creator, "fork", 3, [wanted, other])
    run_creator(creator, "thread", 2, [other, wanted])
    lines, err, code = watch.finish(5)
    assert code == 0, err
    assert len(lines) == 5, lines
    assert all(line.startswith(f"Process {wanted.decode()} (PID:") for line in lines), lines


def test_pid_shows_only_that_creating_process(creator: Path) -> None:
    name = unique_name("wp")
    chosen = subprocess.Popen(
        [str(creator), "fork", "4", "--wait", name.hex()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert chosen.stdout is not None and chosen.stdin is not None
    assert chosen.stdout.readline() == "ready\n"
    watch = Watch("--pid", str(chosen.pid))
    run_creator(creator, "fork", 3, [name])  # the same command, another process
    chosen.stdin.write("go\n")
    chosen.stdin.flush()
    assert chosen.stdout.readline() == "done 4\n"
    chosen.stdin.close()
    chosen.wait(timeout=10)
    lines, err, code = watch.finish(4)
    assert code == 0, err
    expected = f"Process {name.decode()} (PID:{chosen.pid}, PPID: {os.getpid()}) called sys_clone"
    assert lines == [expected] * 4


def test_execs_only_on_request(creator: Path, tmp_path: Path) -> None:
    """A program under a name no other has: its execs show with --exec, never without."""
    name = unique_name("wx")
    program = tmp_path / name.decode()
    shutil.copy("/bin/true", program)
    plain, execs = Watch("--comm", name.decode()), Watch("--comm", name.decode(), "--exec")
    spawner = subprocess.Popen(
        [str(creator), "spawn", "3", "--exec", str(program), unique_name("ws").hex()],
        stdout=subprocess.PIPE,
    )
    assert spawner.wait(timeout=30) == 0
    lines, err, code = execs.finish(3)
    assert code == 0, err
    plain_lines, plain_err, plain_code = plain.finish(0)
    assert (plain_lines, plain_code) == ([], 0), plain_err
    assert len(lines) == 3, lines
    pattern = rf"^Process {name.decode()} \(PID:(\d+), PPID: {spawner.pid}\) called exec$"
    assert all(re.match(pattern, line) for line in lines), lines
    assert len({re.match(pattern, line)[1] for line in lines}) == 3  # type: ignore[index]


def test_timestamps_on_request_before_the_unchanged_line(creator: Path) -> None:
    name = unique_name("wt")
    watch = Watch("--timestamp", "--comm", name.decode())
    before = datetime.now(timezone.utc)
    process = subprocess.Popen([str(creator), "fork", "2", name.hex()], stdout=subprocess.PIPE)
    assert process.wait(timeout=30) == 0
    lines, err, code = watch.finish(2)
    assert code == 0, err
    assert len(lines) == 2, lines
    for line in lines:
        stamp, rest = line.split(" ", 1)
        assert (
            rest
            == f"Process {name.decode()} (PID:{process.pid}, PPID: {os.getpid()}) called sys_clone"
        )
        seen = datetime.fromisoformat(stamp.replace("Z", "+00:00"))  # RFC 3339 UTC, as --json
        assert before - timedelta(seconds=1) <= seen <= datetime.now(timezone.utc)


def test_unfiltered_lines_carry_no_exec_and_no_timestamp(creator: Path, tmp_path: Path) -> None:
    name = unique_name("wu")
    program = tmp_path / name.decode()
    shutil.copy("/bin/true", program)
    watch = Watch()
    spawner = subprocess.Popen(
        [str(creator), "spawn", "2", "--exec", str(program), name.hex()], stdout=subprocess.PIPE
    )
    assert spawner.wait(timeout=30) == 0
    lines, err, code = watch.finish(2, lambda line: name.decode() in line)
    assert code == 0, err
    mine = [line for line in lines if name.decode() in line]
    expected = f"Process {name.decode()} (PID:{spawner.pid}, PPID: {os.getpid()}) called sys_clone3"
    assert mine == [expected] * 2
    assert all(re.match(r"^Process .* \(PID:\d+, PPID: \d+\) called \S+$", ln) for ln in lines)
    assert not any(line.endswith(" called exec") for line in lines)


def test_unit_shows_only_that_units_creations(creator: Path, tree: CgroupTree) -> None:
    unit = f"watch-{unique_name().hex()[:8]}.service"
    cgroup = tree.make(f"/test.slice/{unit}")
    name = unique_name("wun")
    watch = Watch("--unit", unit)
    inside = tree.start(cgroup, str(creator), "fork", "3", name.hex())
    assert inside.wait(timeout=30) == 0
    run_creator(creator, "fork", 2, [name])  # the same command outside the unit
    lines, err, code = watch.finish(3)
    assert code == 0, err
    expected = f"Process {name.decode()} (PID:{inside.pid}, PPID: {os.getpid()}) called sys_clone"
    assert lines == [expected] * 3


def test_unit_shows_only_that_units_execs(creator: Path, tree: CgroupTree, tmp_path: Path) -> None:
    """An exec is placed in its unit by the cgroup the probe reads, as a creation is: the same
    program exec'd inside the unit and outside it shows once per exec inside only."""
    unit = f"watch-{unique_name().hex()[:8]}.service"
    cgroup = tree.make(f"/test.slice/{unit}")
    name = unique_name("wux")
    program = tmp_path / name.decode()
    shutil.copy("/bin/true", program)
    watch = Watch("--unit", unit, "--exec")
    spawn = [str(creator), "spawn", "2", "--exec", str(program)]
    inside = tree.start(cgroup, *spawn, unique_name("wui").hex())
    assert inside.wait(timeout=30) == 0
    outside = subprocess.run([*spawn, unique_name("wuo").hex()], capture_output=True, timeout=30)
    assert outside.returncode == 0
    lines, err, code = watch.finish(3)
    assert code == 0, err
    execs = [line for line in lines if line.startswith(f"Process {name.decode()} ")]
    pattern = rf"^Process {name.decode()} \(PID:\d+, PPID: {inside.pid}\) called exec$"
    assert len(execs) == 2 and all(re.match(pattern, line) for line in execs), lines


def test_a_bare_unit_name_means_its_service_and_json_names_unit_and_pod(
    creator: Path, tree: CgroupTree
) -> None:
    """``--unit NAME`` watches NAME.service, as systemctl reads it; ``--json`` gives every
    event its cgroup's id (the directory's inode) and the unit, namespace, pod and container
    the daemon would label it with."""
    unit = f"watch-{unique_name().hex()[:8]}.service"
    unit_cgroup = tree.make(f"/test.slice/{unit}")
    pod = Pod()
    try:
        pods = Path("/var/log/pods")
        pod.write_pod_dir(pods)
        pod.write_link(pods, Path("/var/log/containers"))
        pod_cgroup = tree.make(pod.container_cgroup("cgroupfs", "burstable"))
        name = unique_name("wjl")
        by_unit = Watch("--json", "--unit", unit.removesuffix(".service"))
        by_comm = Watch("--json", "--comm", name.decode())
        in_unit = tree.start(unit_cgroup, str(creator), "fork", "2", name.hex())
        in_pod = tree.start(pod_cgroup, str(creator), "fork", "3", name.hex())
        assert in_unit.wait(timeout=30) == 0 and in_pod.wait(timeout=30) == 0
        run_creator(creator, "fork", 1, [name])  # outside both
        lines, err, code = by_unit.finish(2)
        assert code == 0, err
        in_unit_events = [json.loads(line) for line in lines]
        named = ("cgroup_id", "unit", "namespace", "pod", "container")
        assert [(e["pid"], *(e[k] for k in named)) for e in in_unit_events] == [
            (in_unit.pid, os.stat(unit_cgroup).st_ino, unit, "", "", "")
        ] * 2
        lines, err, code = by_comm.finish(6)
        assert code == 0, err
        by_pid: dict[int, list[tuple]] = {}
        for e in map(json.loads, lines):
            by_pid.setdefault(e["pid"], []).append(tuple(e[k] for k in named))
        own_cgroup = os.stat(tree.mount / proc_cgroup_v2(os.getpid()).lstrip("/")).st_ino
        own_labels = CgroupResolver(read_layout().v2).labels(own_cgroup)
        assert by_pid.pop(in_unit.pid) == [(os.stat(unit_cgroup).st_ino, unit, "", "", "")] * 2
        assert (
            by_pid.pop(in_pod.pid)
            == [(os.stat(pod_cgroup).st_ino, "", pod.namespace, pod.name, pod.container)] * 3
        )
        [[outside]] = by_pid.values()  # run_creator's process, in this test's own cgroup
        assert outside == (own_cgroup, *(own_labels or ("", "", "", "")))
    finally:
        pod.remove()
