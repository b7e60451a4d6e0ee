"""The shipped rules and dashboard against the real thing: the real daemon, scraped by a real
Prometheus evaluating the shipped rules, under real load from the creator helper.

Thresholds are lowered for the test's own command names through the documented mechanism (a
rules file of overrides). Two other jobs share procmond's instance label, as node_exporter's
does where instance is relabelled to the host name: "node" (an exporter of this test process's
own process_* metrics) and "blackbox" (a port nobody answers, so its up is 0); the dashboard
must show none of their series. `for:` cannot be tuned that way, so ProcmondForkStorm's and
ProcmondTaskLimitReached's `for: 1m` are set to 0s in the copy of the rules this Prometheus
loads; every other rule is loaded as shipped, and the promtool unit tests (tests/packaging)
cover the `for` durations. Load runs in real cgroups named as systemd names units, and as the
kubelet lays out pods (tests/e2e/cgroup_tree.py), for the alerts' unit labels and the
dashboard's unit and pod panels.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector
from prometheus_client.exposition import generate_latest

from procmond.kernel.programs import statistics_on
from tests.e2e.cgroup_tree import CgroupTree, Pod, TaskLimitedUnit
from tests.e2e.harness import (
    Daemon,
    free_port,
    own_comm,
    run_creator,
    start_daemon,
    unique_name,
)
from tests.e2e.prom_harness import JOB, Prometheus, start_prometheus, threshold_overrides
from tests.packaging import shipped

HEALTH_ALERTS = {
    "ProcmondDown",
    "ProcmondNotScraped",
    "ProcmondMapOverflow",
    "ProcmondMapNearlyFull",
    "ProcmondConfigReloadFailed",
    "ProcmondProbeNotAttached",
    "ProcmondScrapeFailing",
    "ProcmondBTFOffsetsNotInUse",
}
STORM_THRESHOLD = 50  # per second, for the storms' names only
STORM_MAX_FORKS = 200_000  # a bound: ~30 s at this machine's rate; stopped once it alerts
FIRING_TIMEOUT = 45
FOR_ZERO = ("ProcmondForkStorm", "ProcmondTaskLimitReached")  # `for` set to 0s, see above
PODS_DIR = Path("/var/log/pods")
CONTAINERS_DIR = Path("/var/log/containers")


@dataclass
class Stack:
    daemon: Daemon
    prometheus: Prometheus
    node: ThreadingHTTPServer  # the "node" job's exporter
    storm: str  # the live alert test's storm
    calm: str  # ordinary activity beside it, above the storm threshold but under the default
    dash: str  # the dashboard test's storm

    @property
    def instance(self) -> str:
        return f"127.0.0.1:{self.daemon.port}"


def process_exporter() -> ThreadingHTTPServer:
    """A real exporter of this process's process_* metrics, on a free loopback port."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def sharing_the_instance(job: str, target: str, instance: str) -> dict[str, Any]:
    """A scrape job whose target is relabelled to procmond's instance label."""
    return {
        "job_name": job,
        "static_configs": [{"targets": [target]}],
        "relabel_configs": [{"target_label": "instance", "replacement": instance}],
    }


def live_rules(path: Path) -> Path:
    """The shipped rules with FOR_ZERO's `for` at 0s (see the module docstring)."""
    rules = yaml.safe_load(shipped.RULES.read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") in FOR_ZERO]
    assert sorted(r["alert"] for r in alerts) == sorted(FOR_ZERO)
    for alert in alerts:
        alert["for"] = "0s"
    path.write_text(yaml.safe_dump(rules, sort_keys=False, width=1000))
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("prometheus")
    storm, calm, dash = (unique_name(p).decode() for p in ("storm", "calm", "dash"))
    # Room for every label set the rest of the host makes meanwhile: no map overflow here.
    # Syscall probes on: the dashboard's fork-duration and failures-by-errno panels read them.
    daemon = start_daemon(tmp, "histogram_max_entries: 4096\nsyscall_probes: true\n")
    instance = f"127.0.0.1:{daemon.port}"
    overrides = threshold_overrides(
        tmp / "thresholds.rules.yml",
        [("fork_storm", STORM_THRESHOLD, {"comm": name}) for name in (storm, dash)],
    )
    node = process_exporter()
    others = [
        sharing_the_instance("node", f"127.0.0.1:{node.server_port}", instance),
        sharing_the_instance("blackbox", f"127.0.0.1:{free_port()}", instance),
    ]
    try:
        prometheus = start_prometheus(
            tmp,
            [instance],
            [live_rules(tmp / "procmond.rules.yml"), overrides],
            other_jobs=others,
        )
    except BaseException:
        daemon.stop()
        node.shutdown()
        raise
    stack = Stack(daemon, prometheus, node, storm, calm, dash)
    try:
        prometheus.wait_until(
            "procmond scraped", lambda: prometheus.query(f'up{{job="{JOB}"}} == 1'), 30
        )
        for name in (storm, dash):
            prometheus.wait_until(
                f"threshold override for {name} recorded",
                lambda n=name: prometheus.query(
                    f'procmond:fork_storm_threshold:per_second{{comm="{n}"}}'
                ),
                30,
            )
        yield stack
    finally:
        prometheus_rc = prometheus.stop()
        daemon_rc = daemon.stop()
        node.shutdown()
    assert prometheus_rc == 0, prometheus.log()
    assert daemon_rc == 0, daemon.log()


def a_unit() -> tuple[str, str]:
    """A new unit's name and its cgroup path, as systemd lays out a service."""
    unit = f"test-{secrets.token_hex(4)}.service"
    return unit, f"/test.slice/{unit}"


def start_creator(
    creator: Path, mode: str, count: int, name: str, *options: str
) -> subprocess.Popen:
    return subprocess.Popen(
        [str(creator), mode, str(count), *options, name.encode().hex()],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def stop(process: subprocess.Popen) -> None:
    process.kill()
    process.wait(10)


def firing(prometheus: Prometheus, alertname: str, **labels: str) -> dict[str, Any] | None:
    """The firing alert of that name whose labels include these."""
    for alert in prometheus.alerts():
        got = alert["labels"]
        if (
            got["alertname"] == alertname
            and all(got.get(k) == v for k, v in labels.items())
            and alert["state"] == "firing"
        ):
            return alert
    return None


def wait_for_fork_storm(prometheus: Prometheus, storm: subprocess.Popen, comm: str) -> dict:
    """The firing ProcmondForkStorm alert for comm; on a timeout, what Prometheus saw."""

    def check() -> dict[str, Any] | None:
        if storm.poll() is not None:
            raise AssertionError(f"the storm exited {storm.returncode}: {storm.stderr.read()}")
        return fork_storm_alert(prometheus, comm)

    try:
        return prometheus.wait_until(f"ProcmondForkStorm firing for {comm}", check, FIRING_TIMEOUT)
    except AssertionError as error:
        seen = {
            expr: prometheus.query(expr)
            for expr in (
                f'up{{job="{JOB}"}}[10s]',
                "scrape_duration_seconds[10s]",
                f'procmond_forks_total{{comm="{comm}"}}',
                f'instance_comm:procmond_forks:rate1m{{comm="{comm}"}}',
                f'instance_comm:procmond_fork_storm_threshold:per_second{{comm="{comm}"}}',
            )
        }
        raise AssertionError(f"{error}\nalerts: {prometheus.alerts()}\nseen: {seen}") from None


def fork_storm_alert(prometheus: Prometheus, comm: str) -> dict[str, Any] | None:
    return firing(prometheus, "ProcmondForkStorm", comm=comm)


def active_at(alert: dict[str, Any]) -> float:
    stamp = alert["activeAt"].replace("Z", "+00:00")
    stamp = stamp.split(".")[0] + "+00:00" if "." in stamp else stamp
    return datetime.fromisoformat(stamp).timestamp()


def test_fork_storm_alert_fires_naming_the_command(stack: Stack, creator: Path) -> None:
    prometheus = stack.prometheus
    # Ordinary activity beside the storm: a shell-loop's rate of /bin/true (~900/s), under the
    # default threshold but above the storm's lowered one, so an override that leaked to
    # other commands would set it off.
    calm = start_creator(creator, "spawn", 30_000, stack.calm)
    storm = None
    try:
        calm_rate = f'instance_comm:procmond_forks:rate1m{{comm="{stack.calm}"}}'
        prometheus.wait_until(
            "the calm load above the storm threshold",
            lambda: prometheus.query(f"{calm_rate} > {STORM_THRESHOLD}"),
            30,
        )
        wall_start = time.time()
        start = time.monotonic()
        storm = start_creator(creator, "fork", STORM_MAX_FORKS, stack.storm)
        alert = wait_for_fork_storm(prometheus, storm, stack.storm)
        elapsed = time.monotonic() - start
        # A few more evaluations, for anything the storm or the calm load might wrongly set off.
        time.sleep(3)
        others = [a for a in prometheus.alerts() if a["labels"] != alert["labels"]]
        assert prometheus.query(f"{calm_rate} > {STORM_THRESHOLD}"), "the calm load stopped"
    finally:
        if storm:
            stop(storm)
        stop(calm)
    print(f"\nProcmondForkStorm firing {elapsed:.1f} s after the storm started")

    assert alert["labels"] == {
        "alertname": "ProcmondForkStorm",
        "severity": "warning",
        "job": JOB,
        "instance": stack.instance,
        "comm": stack.storm,
    }
    annotations = alert["annotations"]
    assert annotations["summary"] == f"{stack.storm} is creating processes far faster than normal"
    description = annotations["description"]
    assert description.startswith(
        f"{stack.storm} (parent {own_comm()}) on {stack.instance} has been creating "
    ), description
    rate = description.split("has been creating ")[1].split(" processes per second")[0]
    assert float(rate.rstrip("k")) * (1000 if rate.endswith("k") else 1) > STORM_THRESHOLD
    assert f"above its threshold of {STORM_THRESHOLD}/s." in description, description

    background = []
    for other in others:
        labels, name = other["labels"], other["labels"]["alertname"]
        ours = labels.get("comm") in (stack.storm, stack.calm)
        assert name not in HEALTH_ALERTS, other
        # The storm's children exit at once: churn for it is due, but only pending (for: 5m).
        if ours and not (name == "ProcmondProcessChurn" and labels["comm"] == stack.storm):
            raise AssertionError(f"the test's own load set off {other}")
        if name == "ProcmondHostForkStorm" and other["state"] == "firing":
            assert active_at(other) < wall_start, f"the storm set off {other}"
        background.append(other)
    for other in background:
        print(f"also active (other activity on this host): {other['labels']} {other['state']}")


def test_every_dashboard_query_runs_and_returns_data(
    stack: Stack, creator: Path, tree: CgroupTree
) -> None:
    with statistics_on():  # for the BPF programs' time in the procmond CPU panel
        every_dashboard_query_runs_and_returns_data(stack, creator, tree)


def every_dashboard_query_runs_and_returns_data(
    stack: Stack, creator: Path, tree: CgroupTree
) -> None:
    prometheus = stack.prometheus
    # A pod, as the kubelet lays it out, creating processes: for the top-pods panel. Its
    # names are looked up once it has created something; its series then carry them.
    pod = Pod()
    try:
        pod.write_pod_dir(PODS_DIR)
        pod.write_link(PODS_DIR, CONTAINERS_DIR)
        in_pod = tree.make(pod.container_cgroup("systemd", "burstable"))
        podded = unique_name("dpod")
        pod_forks = f'procmond_forks_total{{pod="{pod.name}", namespace="{pod.namespace}"}}'
        pod_creations = f'instance_namespace_pod:procmond_creations:rate1m{{pod="{pod.name}"}}'

        def fork_in_pod() -> list[dict[str, Any]]:
            done = tree.start(in_pod, str(creator), "fork", "5", podded.hex())
            assert done.wait(30) == 0, done.stderr.read()
            return prometheus.query(pod_forks)

        prometheus.wait_until(f"{pod_forks} scraped", fork_in_pod, 30)
        prometheus.wait_until(
            f"{pod_creations} recorded", lambda: prometheus.query(pod_creations), 30
        )
        # the top-containers panel: the pod's container, by name
        by_container = (
            "instance_namespace_pod_container:procmond_creations:rate1m"
            f'{{container="{pod.container}"}}'
        )
        prometheus.wait_until(
            f"{by_container} recorded", lambda: prometheus.query(by_container), 30
        )
    finally:
        pod.remove()
    names = [unique_name(p) for p in ("dthr", "dspawn", "dfail")]
    run_creator(creator, "thread", 20_000, names[:1])
    run_creator(creator, "spawn", 300, names[1:2])
    # Failed calls (clone3 with EINVAL) for the failed-calls panel: a first one makes the
    # series, more once Prometheus has it, so that its rate is above 0.
    failing = names[2].decode()
    failed_calls = f'procmond_fork_failures_total{{comm="{failing}", error="EINVAL"}}'
    run_creator(creator, "badclone3", 1, names[2:])
    prometheus.wait_until(f"{failed_calls} scraped", lambda: prometheus.query(failed_calls), 30)
    run_creator(creator, "badclone3", 300, names[2:])
    prometheus.wait_until(
        f"{failed_calls} rising",
        lambda: prometheus.query(f"rate({failed_calls}[1m]) > 0"),
        30,
    )
    # A storm in a unit for the alert panels (ProcmondForkStorm fires for it, so ALERTS has
    # data) and the top-units panel; the alert carries the unit and names it.
    unit, path = a_unit()
    storm = tree.start(
        tree.make(path), str(creator), "fork", str(STORM_MAX_FORKS), stack.dash.encode().hex()
    )
    try:
        alert = wait_for_fork_storm(prometheus, storm, stack.dash)
    finally:
        stop(storm)
    assert alert["labels"]["unit"] == unit, alert
    # The dashboard's recording rules are another group, evaluated on their own schedule.
    unit_creations = f'instance_unit:procmond_creations:rate1m{{unit="{unit}"}}'
    prometheus.wait_until(
        f"{unit_creations} recorded", lambda: prometheus.query(unit_creations), 30
    )
    assert (
        f"{stack.dash} (parent {own_comm()}) in unit {unit} on "
        in (alert["annotations"]["description"])
    ), alert

    dashboard = shipped.load()
    variables = dashboard_variables(stack)
    queries = shipped.queries(dashboard)
    assert len(queries) >= 30
    now = time.time()
    failures = []
    for q in queries:
        expr = shipped.substitute(q.expr, variables)
        answer = prometheus.call("query", query=expr)
        if answer["status"] != "success":
            failures.append(f"{q.panel} [{q.ref_id}] does not run: {answer.get('error')}\n  {expr}")
        elif not answer["data"]["result"]:
            failures.append(f"{q.panel} [{q.ref_id}] returns no data\n  {expr}")
        elif not q.instant:
            answer = prometheus.call(
                "query_range", query=expr, start=str(now - 30), end=str(now), step="1"
            )
            if answer["status"] != "success" or not answer["data"]["result"]:
                failures.append(f"{q.panel} [{q.ref_id}] as a range query: {answer}\n  {expr}")
    assert not failures, "\n".join(failures)

    # The failed-calls panel shows the test's failing command, by error.
    (panel,) = [q for q in queries if "procmond_fork_failures_total" in q.expr]
    shown = prometheus.query(shipped.substitute(panel.expr, variables))
    assert any(
        r["metric"] == {"comm": failing, "error": "EINVAL"} and float(r["value"][1]) > 0
        for r in shown
    ), shown

    # The job and instance variables' queries, as Grafana runs label_values(series, label):
    # only procmond's job and instance are offered.
    offered = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = shipped.substitute(variable["query"]["query"], variables)
            series, label = re.fullmatch(r"label_values\((.+), (\w+)\)", query).groups()
            offered[variable["name"]] = prometheus.api(
                f"label/{label}/values", **{"match[]": series}
            )
    # Units and pods: the test's own among them (other tests on this host may add theirs).
    assert unit in offered.pop("unit") and pod.name in offered.pop("pod"), offered
    assert offered == {"job": [JOB], "instance": [stack.instance]}, offered


def dashboard_variables(stack: Stack) -> dict[str, str]:
    """The dashboard's variables as Grafana interpolates them for this stack."""
    return {
        "__rate_interval": "1m",
        "__interval": "15s",
        "__range": "5m",
        "__range_s": "300",
        "job": JOB,
        # As Grafana interpolates a multi-value variable into a regex: dots escaped.
        "instance": stack.instance.replace(".", "\\\\."),
        # All, as the dashboard's allValue has it: tasks of no unit or pod too.
        "unit": ".*",
        "pod": ".*",
        "datasource": "procmond-test",
    }


def answer(result: list[dict[str, Any]], ties: bool) -> list[str]:
    """A query's answer, comparable between two queries: topk picks any of the series tied
    at its cut, so there only the values are compared."""
    if ties:
        return sorted(r["value"][1] for r in result)
    return sorted(json.dumps(r, sort_keys=True) for r in result)


def test_dashboard_shows_only_procmond_where_other_jobs_share_its_instance(stack: Stack) -> None:
    """Each query returns what it returns with every selector pinned to job="procmond", while
    the "node" and "blackbox" jobs' up, process_* and scrape_duration_seconds carry the same
    instance label (evaluated at one past instant, so the two answers must be identical)."""
    prometheus = stack.prometheus
    impostors = f'{{job=~"node|blackbox", instance="{stack.instance}"}}'
    for metric in ("up", "scrape_duration_seconds"):
        prometheus.wait_until(
            f"{metric} of both other jobs",
            lambda m=metric: len(prometheus.query(m + impostors)) == 2,
            30,
        )
    assert prometheus.query(f"process_resident_memory_bytes{impostors}")
    assert prometheus.query(f"up{impostors} == 0")  # blackbox: nobody answers
    variables = dashboard_variables(stack)
    # a past instant, so that no scrape or rule evaluation lands there between the two queries
    at = str(time.time() - 5)
    mixed = []
    for q in shipped.queries(shipped.load()):
        expr = shipped.substitute(q.expr, variables)
        pinned = expr.replace("{", f'{{job="{JOB}", ')
        shown, truth = (
            answer(prometheus.api("query", query=e, time=at)["result"], ties="topk(" in expr)
            for e in (expr, pinned)
        )
        if shown != truth:
            mixed.append(f"{q.panel} [{q.ref_id}]: {expr}\n  shows {shown}\n  procmond's {truth}")
    assert not mixed, "\n".join(mixed)


def test_task_limit_alert_fires_naming_the_unit(
    stack: Stack, creator: Path, tree: CgroupTree
) -> None:
    """A fork bomb held by its unit's pids.max, with the default probes: the pids controller's
    count of refused forks sets off ProcmondTaskLimitReached for that unit. The pids
    controller is a v1 one on hybrid hosts: the unit's cgroup is made in both, as systemd does
    there."""
    prometheus = stack.prometheus
    unit, _path = a_unit()
    limited = TaskLimitedUnit(tree, unit, 5)  # the creator itself and 4 children
    try:
        name = unique_name("bomb")

        def bomb() -> None:
            assert limited.bomb(creator, 30, name) == (4, 26)

        # A first bomb makes the series; one more once Prometheus has it, so that it rises.
        hits = f'procmond_task_limit_hits_total{{unit="{unit}"}}'
        bomb()
        prometheus.wait_until(f"{hits} scraped", lambda: prometheus.query(hits), 30)
        last_bomb = time.monotonic()

        def bombing_until_firing() -> dict | None:
            """A bomb every 2 s until the alert fires: its description names the unit's busiest
            command from its fork rate, which needs rising samples in the window the alert is
            evaluated in (one bomb's forks could fall out of it: failed 1 CI run in 5)."""
            nonlocal last_bomb
            if time.monotonic() - last_bomb > 2:
                bomb()
                last_bomb = time.monotonic()
            return firing(prometheus, "ProcmondTaskLimitReached", unit=unit)

        bomb()
        alert = prometheus.wait_until(
            f"ProcmondTaskLimitReached firing for {unit}", bombing_until_firing, FIRING_TIMEOUT
        )
    finally:
        limited.remove()
    assert alert["labels"] == {
        "alertname": "ProcmondTaskLimitReached",
        "severity": "warning",
        "job": JOB,
        "instance": stack.instance,
        "unit": unit,
    }
    assert alert["annotations"]["summary"] == f"{unit} on {stack.instance} is at its task limit"
    description = alert["annotations"]["description"]
    assert f"forks per second in unit {unit} on {stack.instance} for over a minute" in (
        description
    ), description
    assert f", and {name.decode()} creates the most there." in description, description
