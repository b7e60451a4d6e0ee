"""The shipped Prometheus rules: valid for promtool, and every alert unit-tested by promtool.

promtool comes with the test set-up (Debian's prometheus package); without it these tests
fail rather than skip, as a missing tool must not pass for a tested rules file.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.packaging.shipped import REPO, RULES, github_anchor

PROMTOOL_TESTS = Path(__file__).resolve().parent / "promtool"
UNIT_TEST_FILES = sorted(PROMTOOL_TESTS.glob("*.test.yml"))
SEVERITIES = {"critical", "warning", "info"}
RUNBOOK_BASE = "https://github.com/procmond/procmond/blob/main/packaging/prometheus/README.md"
LOAD_ALERTS = {
    "ProcmondForkStorm",
    "ProcmondThreadStorm",
    "ProcmondProcessChurn",
    "ProcmondForkFailures",
}


def promtool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def alerts() -> dict[str, dict]:
    return {r["alert"]: r for r in rules() if "alert" in r}


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize("test_file", UNIT_TEST_FILES, ids=lambda p: p.name)
def test_promtool_unit_tests(test_file: Path) -> None:
    result = promtool("test", "rules", test_file.name, cwd=PROMTOOL_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_unit_test_files_exist() -> None:
    assert len(UNIT_TEST_FILES) >= 3, UNIT_TEST_FILES


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    """Each alert has a promtool case where it fires and one where it must not."""
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in UNIT_TEST_FILES:
        for group in yaml.safe_load(path.read_text())["tests"]:
            for case in group.get("alert_rule_test", []):
                (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
                for alert in case.get("exp_alerts") or []:
                    assert alert.get("exp_annotations"), (path.name, case)
    assert set(alerts()) <= fires, set(alerts()) - fires
    assert set(alerts()) <= quiet, set(alerts()) - quiet


def test_alerts_carry_severity_summary_and_description() -> None:
    for name, rule in alerts().items():
        assert name.startswith("Procmond"), name
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert rule["annotations"]["summary"].strip(), name
        description = rule["annotations"]["description"]
        if name in LOAD_ALERTS:
            assert "$labels.comm" in description, name
        if name in LOAD_ALERTS | {"ProcmondHostForkStorm"}:
            assert "$value | humanize" in description, name


def test_recording_rule_names_follow_level_metric_operations() -> None:
    for rule in rules():
        if "record" in rule:
            assert re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", rule["record"]), rule["record"]


def test_every_threshold_has_a_default_and_a_resolved_series() -> None:
    """The tuning contract of the README: procmond:<name>_threshold:per_second, default
    labelled default="true", resolved as <level>:procmond_<name>_threshold:per_second."""
    records = {r["record"]: r for r in rules() if "record" in r}
    thresholds = [n for n in records if n.startswith("procmond:") and "_threshold" in n]
    assert len(thresholds) == 5, thresholds
    for name in thresholds:
        assert records[name]["labels"] == {"default": "true"}, name
        assert re.fullmatch(r"vector\(\d+(\.\d+)?\)", records[name]["expr"]), name
        stem = name.split(":")[1]
        resolved = [n for n in records if n.endswith(f":procmond_{stem}:per_second")]
        assert len(resolved) == 1, (name, resolved)
        used_by = [a for a in alerts().values() if resolved[0] in a["expr"]]
        assert len(used_by) == 1, (name, used_by)


def readme_scrape_config() -> str:
    """The example prometheus.yml in the README's "Prometheus and Grafana" section."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Prometheus and Grafana\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.DOTALL)
    configs = [b for b in blocks if "scrape_configs:" in b]
    assert len(configs) == 1, blocks
    return configs[0]


def test_readme_example_config_passes_promtool(tmp_path: Path) -> None:
    config = readme_scrape_config()
    assert yaml.safe_load(config)["scrape_configs"][0]["job_name"] == "procmond"
    (tmp_path / "prometheus.yml").write_text(config)
    (tmp_path / "procmond.rules.yml").write_text(RULES.read_text())
    result = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout, result.stdout
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout, result.stdout


def test_readme_override_example_passes_promtool(tmp_path: Path) -> None:
    """The threshold override examples (README and packaging README) are valid rule files."""
    for doc in (REPO / "README.md", RULES.parent / "README.md"):
        blocks = re.findall(r"```yaml\n(groups:.*?)```", doc.read_text(), re.DOTALL)
        assert blocks, doc
        for i, block in enumerate(blocks):
            path = tmp_path / f"{doc.parent.name}-{i}.yml"
            path.write_text(block)
            result = promtool("check", "rules", str(path))
            assert result.returncode == 0, result.stdout + result.stderr
            records = [r["record"] for g in yaml.safe_load(block)["groups"] for r in g["rules"]]
            shipped = {r["record"] for r in rules() if "record" in r}
            assert set(records) <= shipped, records


def test_every_alert_waits_before_firing() -> None:
    """A `for:` on every alert: one evaluation's blip (a burst that overflows a map for a
    moment) pages nobody."""
    for name, rule in alerts().items():
        assert "for" in rule, name


def test_every_alert_links_its_runbook() -> None:
    """Each alert's runbook_url is one base (replaceable in one substitution, as the README
    says) plus the anchor of a runbook section named after the alert in that README."""
    readme = (RULES.parent / "README.md").read_text()
    headings = re.findall(r"^#+ (.+)$", readme, re.M)
    anchors = {github_anchor(h) for h in headings}
    section = readme.split("\n## Runbooks\n", 1)[1].split("\n## ", 1)[0]
    runbooks = re.findall(r"^### (\w+)$", section, re.M)
    assert sorted(runbooks) == sorted(alerts()), "one runbook per alert, named after it"
    bases = set()
    for name, rule in alerts().items():
        url = rule["annotations"]["runbook_url"]
        base, _, anchor = url.partition("#")
        bases.add(base)
        assert anchor == name.lower() and anchor in anchors, (name, url)
    assert bases == {RUNBOOK_BASE}, bases
    assert RUNBOOK_BASE.endswith("/packaging/prometheus/README.md")
    links = readme.split("\n## Runbook links\n", 1)[1].split("\n## ", 1)[0]
    assert RUNBOOK_BASE in links, "the README says which base to replace"


def test_readme_prometheus_config_examples_pass_promtool(tmp_path: Path) -> None:
    """The packaging README's prometheus.yml snippets (the severity relabelling)."""
    readme = (RULES.parent / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(alerting:.*?)```", readme, re.DOTALL)
    assert blocks
    for block in blocks:
        (tmp_path / "prometheus.yml").write_text(block)
        result = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_name_the_unit_or_pod_they_are_about() -> None:
    """The per-command rates keep unit, namespace and pod (container and parent_comm summed
    away), so the storm and failure alerts carry them as labels and their descriptions name
    them; the host-wide rates sum them all away."""
    records = {r["record"]: r["expr"] for r in rules() if "record" in r}
    for stem in ("forks", "threads_created"):
        assert (
            f"sum without (parent_comm, container) (rate(procmond_{stem}_total[1m]))"
            == (records[f"instance_comm:procmond_{stem}:rate1m"])
        )
        host = records[f"instance:procmond_{stem}:rate1m"]
        assert host.startswith("sum without (comm, unit, namespace, pod) ("), host
    failed = records["instance_comm:procmond_failed_creation_calls:rate1m"]
    assert failed.startswith("sum without (error, container)"), failed
    where = "{{ with $labels.unit }} in unit {{ . }}{{ end }}"
    for name in ("ProcmondForkStorm", "ProcmondThreadStorm", "ProcmondForkFailures"):
        description = alerts()[name]["annotations"]["description"]
        assert where in description and "in pod {{ $labels.namespace }}/" in description, name
    limit = alerts()["ProcmondTaskLimitReached"]
    assert 'procmond_task_limit_hits_total{unit!="__overflow__"}' in limit["expr"]
    assert "$labels.unit" in limit["annotations"]["description"]
    assert "$labels.pod" in limit["annotations"]["description"]
    assert "$labels.container" in limit["annotations"]["description"]
