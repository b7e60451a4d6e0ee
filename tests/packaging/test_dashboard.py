"""The shipped Grafana dashboard, read as Grafana would import it. Whether its queries run and
return data is tested against a real Prometheus in tests/e2e/test_prometheus.py."""

from __future__ import annotations

import re

import pytest
import yaml

from procmond.scrape.metrics import COUNTERS, HISTOGRAMS
from tests.packaging import shipped as db

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SELF_METRICS = (
    "procmond_build_info",
    "procmond_probe_attached",
    "procmond_btf_offsets_in_use",
    "procmond_map_entries",
    "procmond_map_max_entries",
    "procmond_map_overflow_events_total",
    "procmond_scrape_success",
    "procmond_scrape_duration_seconds",
    "procmond_config_last_reload_successful",
    "procmond_config_last_reload_success_timestamp_seconds",
)


def recording_rules() -> dict[str, str]:
    groups = yaml.safe_load(db.RULES.read_text())["groups"]
    return {r["record"]: r["expr"] for g in groups for r in g["rules"] if "record" in r}


def test_importable_shape() -> None:
    d = db.load()
    assert d["uid"] == "procmond" and d["title"] == "procmond"
    assert d["id"] is None
    assert 36 <= d["schemaVersion"] <= 41
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    job = variables["job"]
    assert job["datasource"] == DATASOURCE
    assert job["query"]["query"] == job["definition"] == "label_values(procmond_build_info, job)"
    assert job["current"]["value"] == "procmond"  # the job name the rules expect
    instance = variables["instance"]
    assert instance["datasource"] == DATASOURCE
    query = 'label_values(procmond_build_info{job=~"$job"}, instance)'
    assert instance["query"]["query"] == instance["definition"] == query
    names = [v["name"] for v in d["templating"]["list"]]
    assert names.index("job") < names.index("instance")  # instance's query reads $job


def test_every_panel_uses_the_datasource_variable_and_the_job_and_instance_filters() -> None:
    """Every series selector filters by job as well as instance: where Prometheus relabels
    instance to the host name, node_exporter's up, process_* and scrape_duration_seconds
    share procmond's instance label."""
    d = db.load()
    ids = [p["id"] for p in db.panels(d)]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in db.panels(d):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        assert panel.get("description"), panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            selectors = re.findall(r"\{[^{}]*\}", target["expr"])
            assert selectors, (panel["title"], target["expr"])
            for selector in selectors:
                assert 'job=~"$job"' in selector, (panel["title"], target["expr"])
                assert 'instance=~"$instance' in selector, (panel["title"], target["expr"])


def test_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in db.load()["panels"]:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, (panel["title"], cells.get((x, y)))
                cells[(x, y)] = panel["title"]


def test_recorded_series_it_reads_are_in_the_shipped_rules() -> None:
    recorded = recording_rules()
    for query in db.queries(db.load()):
        for name in re.findall(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", query.expr):
            assert name in recorded, (query.panel, name)


def test_it_shows_every_metric_of_the_contract() -> None:
    """Each metric appears in a panel, directly or through a recording rule it reads."""
    recorded = recording_rules()
    shown = ""
    for query in db.queries(db.load()):
        shown += query.expr
        for name in re.findall(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", query.expr):
            shown += recorded[name]
            for inner in re.findall(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", recorded[name]):
                shown += recorded.get(inner, "")
    for metric in [m.name for m in COUNTERS] + [h.name for h in HISTOGRAMS] + list(SELF_METRICS):
        assert metric in shown, metric


def test_it_lists_procmond_alerts_and_has_the_required_views() -> None:
    exprs = [q.expr for q in db.queries(db.load())]
    assert any(e.startswith('ALERTS{alertname=~"Procmond.*"') for e in exprs)
    assert any("topk" in e and "by (comm)" in e and "forks" in e for e in exprs)
    assert any("topk" in e and "by (parent_comm)" in e for e in exprs)
    assert any("topk" in e and "by (comm, error)" in e and "fork_failures" in e for e in exprs)
    assert any("histogram_quantile(0.99" in e and "lifetime" in e for e in exprs)
    assert any("histogram_quantile(0.99" in e and "fork_duration" in e for e in exprs)
    heatmaps = [p for p in db.panels(db.load()) if p["type"] == "heatmap"]
    assert heatmaps and all(t["format"] == "heatmap" for p in heatmaps for t in p["targets"])


def test_substitute_refuses_unknown_variables() -> None:
    assert db.substitute("rate(x[$__rate_interval])", {"__rate_interval": "1m"}) == "rate(x[1m])"
    with pytest.raises(AssertionError, match="without a value"):
        db.substitute("x[$__interval]", {"__rate_interval": "1m"})


CGROUP_PANELS = {
    "Top units by creation rate": ("instance_unit:procmond_creations:rate1m", "unit"),
    "Top pods by creation rate": ("instance_namespace_pod:procmond_creations:rate1m", "pod"),
}


def test_unit_and_pod_variables_offer_the_recorded_ones_and_all_takes_in_the_rest() -> None:
    """All must match the empty label too (creations outside any unit or pod): Grafana's
    default All is a regex of the values offered, which would drop them, hence allValue .*."""
    variables = {v["name"]: v for v in db.load()["templating"]["list"]}
    names = list(variables)
    for (series, label), name in zip(CGROUP_PANELS.values(), ("unit", "pod"), strict=True):
        v = variables[name]
        query = f'label_values({series}{{job=~"$job", instance=~"$instance"}}, {label})'
        assert v["query"]["query"] == v["definition"] == query, name
        assert v["datasource"] == DATASOURCE
        assert v["multi"] and v["includeAll"] and v["allValue"] == ".*", name
        assert v["current"]["value"] == ["$__all"], name
        assert names.index("instance") < names.index(name)  # its query reads $instance


def test_top_units_and_pods_panels_rank_the_recorded_creation_rates() -> None:
    panels = {p["title"]: p for p in db.panels(db.load())}
    for title, (series, label) in CGROUP_PANELS.items():
        (target,) = panels[title]["targets"]
        assert target["expr"].startswith("topk(10, sum by ("), title
        assert f"{series}{{" in target["expr"] and f'{label}=~"${label}"' in target["expr"]
    assert "by (namespace, pod)" in panels["Top pods by creation rate"]["targets"][0]["expr"]


def test_per_command_panels_follow_the_unit_and_pod_variables() -> None:
    """The panels over counters that carry unit and pod narrow to the chosen ones; those over
    the histograms (by command only) cannot, and must not (they would show nothing)."""
    filtered = 0
    for q in db.queries(db.load()):
        uses_cgroup = 'unit=~"$unit"' in q.expr
        assert uses_cgroup == ('pod=~"$pod"' in q.expr) or q.panel in CGROUP_PANELS, q
        by_command_only = ("lifetime", "fork_duration", "short_lived", "sum(instance:")
        if any(word in q.expr for word in by_command_only):
            assert not uses_cgroup, q
        elif "by (comm" in q.expr or "by (parent_comm)" in q.expr:
            assert uses_cgroup and all(
                'unit=~"$unit", pod=~"$pod"' in s for s in re.findall(r"\{[^{}]*\}", q.expr)
            ), q
            filtered += 1
    assert filtered >= 5
