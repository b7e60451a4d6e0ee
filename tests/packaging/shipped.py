"""What procmond ships, as the tests read it: the .deb built from this tree, the Prometheus
rules, and the Grafana dashboard's panel queries with Grafana's variables substituted so that
Prometheus can run them (shared by the static tests here and the live ones in tests/e2e)."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "packaging" / "prometheus" / "procmond.rules.yml"
DASHBOARD = REPO / "packaging" / "grafana" / "procmond.json"
CHANGELOG = REPO / "packaging" / "debian" / "changelog"
MAN_PAGE = REPO / "packaging" / "man" / "procmond.8"


def build_deb() -> Path:
    """The .deb of this tree, as `make deb` builds it (scripts/build-deb.sh)."""
    out = subprocess.run(
        [str(REPO / "scripts" / "build-deb.sh")],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        timeout=120,
    )
    return REPO / out.stdout.strip()


@dataclass(frozen=True)
class Query:
    panel: str
    ref_id: str
    expr: str
    instant: bool


def load() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict) -> Iterator[dict]:
    """Every panel, including those inside collapsed rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries(dashboard: dict) -> list[Query]:
    return [
        Query(p["title"], t["refId"], t["expr"], bool(t.get("instant")))
        for p in panels(dashboard)
        for t in p.get("targets", [])
    ]


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's interpolation of $var and ${var}; the longest names first ($__range_s before
    $__range). Fails on a variable it was not given, so none reaches Prometheus unexpanded."""
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    left = re.findall(r"\$\{?\w+", expr)
    assert not left, f"variables without a value: {left} in {expr}"
    return expr


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces
    to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
