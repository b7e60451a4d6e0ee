"""``procmond watch`` filters and options, on events made by hand (tests/e2e/test_watch.py
runs them on the real probe)."""

from __future__ import annotations

import datetime
import io
import json
import re

import pytest

from procmond.config import Config
from procmond.errors import ProcmondError
from procmond.tools.watch import (
    CgroupLabelCache,
    Selection,
    command_name,
    exec_kind,
    format_json,
    format_text,
    formatter,
    unit_pattern,
    watch,
)
from tests.unit.watch_events import event

LABELS = {
    1: ("", "", "", ""),
    2: ("cron.service", "", "", ""),
    3: ("", "shop", "web-1", "app"),
    4: ("", "", "", "ci-job"),
}


def shown(selection: Selection, *events: object) -> list[object]:
    return [e for e in events if selection.matches(e, LABELS.__getitem__)]


def test_no_filter_shows_every_creation_and_no_exec() -> None:
    creation, execd = event(), event(kind=exec_kind())
    assert shown(Selection(), creation, execd) == [creation]
    assert shown(Selection(execs=True), creation, execd) == [creation, execd]


def test_each_filter_selects_and_filters_combine() -> None:
    a = event(b"make", pid=10, cgroup_id=1)
    b = event(b"sh", pid=11, cgroup_id=2)
    c = event(b"sh", pid=12, cgroup_id=3)
    assert shown(Selection(comms=frozenset({b"sh"})), a, b, c) == [b, c]
    assert shown(Selection(pids=frozenset({10, 12})), a, b, c) == [a, c]
    assert shown(Selection(units=frozenset({"cron.service"})), a, b, c) == [b]
    assert shown(Selection(pods=frozenset({"web-1"})), a, b, c) == [c]
    assert shown(Selection(pods=frozenset({"shop/web-1"})), a, b, c) == [c]
    assert shown(Selection(pods=frozenset({"other/web-1"})), a, b, c) == []
    assert shown(Selection(comms=frozenset({b"sh"}), pids=frozenset({10, 11})), a, b, c) == [b]


def test_container_selects_by_the_containers_name() -> None:
    """``--container`` matches the container label: Docker's or Podman's name outside
    Kubernetes, the kubelet's container name inside."""
    a = event(b"make", pid=10, cgroup_id=4)
    b = event(b"sh", pid=11, cgroup_id=3)
    assert shown(Selection(containers=frozenset({"ci-job"})), a, b) == [a]
    assert shown(Selection(containers=frozenset({"app"})), a, b) == [b]
    assert shown(Selection(containers=frozenset({"web"})), a, b) == []


def test_an_exec_line_says_exec() -> None:
    line = format_text(event(b"ls", kind=exec_kind()))
    assert line == "Process ls (PID:10, PPID: 1) called exec"
    assert json.loads(format_json(event(b"ls", kind=exec_kind())))["kind"] == "exec"


def test_the_default_line_is_the_prototypes() -> None:
    assert formatter(False, False)(event()) == "Process make (PID:10, PPID: 1) called sys_clone"


def test_timestamps_on_request() -> None:
    e = event()
    before = datetime.datetime.now(datetime.timezone.utc)
    stamp, rest = formatter(False, True)(e).split(" ", 1)
    assert rest == format_text(e)
    seen = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert abs((seen - before).total_seconds()) < 5
    obj = json.loads(formatter(True, True)(e))
    assert obj["time"].startswith(stamp[:10]) and obj["pid"] == 10


def test_comm_is_cut_as_the_kernel_cuts_it() -> None:
    assert command_name("systemd-journald") == b"systemd-journal"
    with pytest.raises(ProcmondError):
        command_name("")


def test_unit_and_pod_need_a_namer() -> None:
    with pytest.raises(ProcmondError, match="--unit, --pod and --container"):
        watch(Config(), False, io.StringIO(), io.StringIO(), Selection(units=frozenset({"x"})))


def test_labels_are_asked_once_per_cgroup() -> None:
    asked: list[int] = []

    def namer(cgroup_id: int) -> tuple[str, ...]:
        asked.append(cgroup_id)
        return LABELS[cgroup_id]

    cache = CgroupLabelCache(namer)
    assert [cache(2), cache(2), cache(3)] == [LABELS[2], LABELS[2], LABELS[3]]
    assert asked == [2, 3]


def test_a_unit_is_named_as_systemctl_names_it() -> None:
    """A bare name means NAME.service; a name with a unit type's suffix and a glob are kept;
    a type procmond never names a cgroup by is refused, not watched in silence."""
    assert unit_pattern("cron") == "cron.service"
    assert unit_pattern("cron.service") == "cron.service"
    assert unit_pattern("session-3.scope") == "session-3.scope"
    assert unit_pattern("getty@tty1") == "getty@tty1.service"
    assert unit_pattern("cr*") == "cr*"
    for bad in ("", "a/b.service", "user.slice", "cron.timer"):
        with pytest.raises(ProcmondError):
            unit_pattern(bad)
    cron, other = event(b"sh", cgroup_id=2), event(b"sh", cgroup_id=1)
    for given in ("cron", "cron.service", "cr*", "c?on.*", "[bc]ron.service"):
        selection = Selection(units=frozenset({unit_pattern(given)}))
        assert shown(selection, cron, other) == [cron], given
    assert shown(Selection(units=frozenset({unit_pattern("cro")})), cron, other) == []


def test_json_names_the_cgroup_as_the_daemon_labels_it() -> None:
    pod = event(b"sh", cgroup_id=3)
    obj = json.loads(formatter(True, False, LABELS.__getitem__)(pod))
    assert {k: obj[k] for k in ("cgroup_id", "unit", "namespace", "pod", "container")} == {
        "cgroup_id": 3,
        "unit": "",
        "namespace": "shop",
        "pod": "web-1",
        "container": "app",
    }
    assert json.loads(formatter(True, False, LABELS.__getitem__)(event(cgroup_id=2)))["unit"] == (
        "cron.service"
    )


def test_the_help_documents_every_json_field_and_says_timestamps_are_utc() -> None:
    from procmond.cli import WATCH_HELP, build_parser

    documented = set(re.findall(r"^  (\w+(?:, \w+)*)", WATCH_HELP, re.M))
    documented = {name for names in documented for name in names.split(", ")}
    assert set(json.loads(format_json(event()))) <= documented
    (commands,) = [a for a in build_parser()._actions if a.dest == "command"]
    (timestamp,) = [a for a in commands.choices["watch"]._actions if a.dest == "timestamp"]
    assert "UTC" in timestamp.help and "local" not in timestamp.help
    stamp = formatter(False, True)(event()).split(" ", 1)[0]
    assert datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).utcoffset() == (
        datetime.timedelta(0)
    ) and stamp.endswith("Z")
